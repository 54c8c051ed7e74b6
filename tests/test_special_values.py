"""Non-finite logits, ignored rows, empty batches: SPEC items 7-8 and our documented choices."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import fastxent

inf, nan = np.inf, np.nan
FLOATS = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
OPTION_SETS = {
    "plain": {},
    "smoothing": {"label_smoothing": 0.1},
    "zloss": {"z_loss": 1e-2},
    "softcap": {"softcap": 5.0},
    "weight": {"weight": np.array([1.0, 2.0, 0.5, 1.5])},
}
OPTIONS = pytest.mark.parametrize("opts", list(OPTION_SETS.values()), ids=list(OPTION_SETS))


def ce_none(x, t, backend, **kw):
    return fastxent.cross_entropy_with_grad(x, t, reduction="none", backend=backend, **kw)


@FLOATS
@OPTIONS
def test_ignored_rows_with_nan_and_inf_are_exact_zero(backend, dtype, opts):
    x = np.array([[nan, 1, 2, 3], [inf, 0, 0, 0], [-inf, -inf, -inf, -inf], [1, 2, 3, 4], [inf, -inf, nan, 0]], dtype)
    t = np.array([-100, -100, -100, 2, -100])
    w = opts.get("weight")
    kw = dict(opts)
    if w is not None:
        kw["weight"] = w.astype(dtype)
    loss, grad = ce_none(x, t, backend, **kw)
    for i in (0, 1, 2, 4):
        assert loss[i] == 0.0, (i, loss[i])
        assert np.all(grad[i] == 0.0), (i, grad[i])
    assert np.isfinite(loss[3]) and np.all(np.isfinite(grad[3]))
    for red in ("mean", "sum"):
        L, G = fastxent.cross_entropy_with_grad(x, t, reduction=red, backend=backend, **kw)
        assert np.isfinite(L), red
        assert np.all(G[[0, 1, 2, 4]] == 0.0), red
        assert np.all(np.isfinite(G))


@FLOATS
def test_neg_inf_non_target_gives_zero_probability_and_gradient(backend, dtype):
    x = np.array([[2.0, -inf, 4.0, 0.5]], dtype)
    loss, grad = ce_none(x, np.array([0]), backend)
    denom = math.exp(2) + math.exp(4) + math.exp(0.5)
    assert abs(float(loss[0]) + math.log(math.exp(2) / denom)) < 1e-6
    assert grad[0, 1] == 0.0
    assert np.all(np.isfinite(grad))
    sm = fastxent.softmax(x, backend=backend)
    assert sm[0, 1] == 0.0
    assert fastxent.log_softmax(x, backend=backend)[0, 1] == -inf


@FLOATS
@pytest.mark.parametrize("opts", [{}, {"label_smoothing": 0.0}, {"z_loss": 1e-3}], ids=["plain", "eps0", "zloss"])
def test_neg_inf_target_gives_inf_loss(backend, dtype, opts):
    x = np.array([[2.0, -inf, 4.0], [1.0, 2.0, 3.0]], dtype)
    loss, grad = ce_none(x, np.array([1, 0]), backend, **opts)
    assert loss[0] == inf
    assert np.isfinite(loss[1])
    assert np.all(np.isfinite(grad[1]))
    # The gradient wrt the target column is -(1 - p) = -1, others p: finite.
    assert np.all(np.isfinite(grad[0])), grad[0]
    np.testing.assert_allclose(grad[0, 1], -1.0, rtol=0, atol=1e-6)


@FLOATS
def test_neg_inf_target_with_smoothing_is_inf(backend, dtype):
    x = np.array([[2.0, -inf, 4.0]], dtype)
    loss, _ = ce_none(x, np.array([0]), backend, label_smoothing=0.1)
    assert loss[0] == inf  # the smoothing term sums logp over every class


@FLOATS
@OPTIONS
def test_nan_row_poisons_only_that_row(backend, dtype, opts):
    x = np.array([[1.0, 2.0, 3.0, 4.0], [1.0, nan, 0.0, 0.0], [0.5, 0.25, 0.0, 1.0]], dtype)
    kw = dict(opts)
    if "weight" in kw:
        kw["weight"] = kw["weight"].astype(dtype)
    loss, grad = ce_none(x, np.array([0, 0, 3]), backend, **kw)
    assert np.isnan(loss[1])
    assert np.all(np.isnan(grad[1]))
    assert np.all(np.isfinite(loss[[0, 2]])) and np.all(np.isfinite(grad[[0, 2]]))
    # the mean over the batch is NaN (the row counts), like any NaN in a sum
    assert np.isnan(fastxent.cross_entropy(x, np.array([0, 0, 3]), backend=backend, **kw))


@FLOATS
@pytest.mark.parametrize("row", [[-inf, -inf, -inf, -inf], [inf, 0, 0, 0], [inf, inf, 1, 2], [inf, -inf, 0, 0]],
                         ids=["all-neg-inf", "one-pos-inf", "two-pos-inf", "pos-and-neg-inf"])
def test_non_finite_lse_row_is_nan(backend, dtype, row):
    x = np.array([row, [0.0, 1.0, 2.0, 3.0]], dtype)
    t = np.array([1, 1])
    loss, grad = ce_none(x, t, backend)
    assert np.isnan(loss[0])
    assert np.all(np.isnan(grad[0]))
    assert np.isfinite(loss[1]) and np.all(np.isfinite(grad[1]))
    # soft targets too
    P = np.array([[0.25] * 4, [0.0, 1.0, 0.0, 0.0]], dtype)
    sl, sg = fastxent.cross_entropy_with_grad(x, P, reduction="none", backend=backend)
    assert np.isnan(sl[0]) and np.all(np.isnan(sg[0]))
    assert np.isfinite(sl[1]) and np.all(np.isfinite(sg[1]))


@FLOATS
def test_softmax_family_all_neg_inf_row(backend, dtype):
    x = np.array([[-inf, -inf, -inf], [0.0, 0.0, 0.0]], dtype)
    assert fastxent.logsumexp(x, backend=backend)[0] == -inf
    assert np.all(np.isnan(fastxent.softmax(x, backend=backend)[0]))
    assert np.all(np.isnan(fastxent.log_softmax(x, backend=backend)[0]))
    np.testing.assert_allclose(fastxent.softmax(x, backend=backend)[1], 1 / 3, rtol=1e-6)


@FLOATS
def test_softmax_family_pos_inf_and_nan_rows(backend, dtype):
    x = np.array([[inf, 0.0, 1.0], [nan, 0.0, 1.0], [1.0, 2.0, 3.0]], dtype)
    lse = fastxent.logsumexp(x, backend=backend)
    assert lse[0] == inf and np.isnan(lse[1]) and np.isfinite(lse[2])
    for f in (fastxent.softmax, fastxent.log_softmax):
        r = f(x, backend=backend)
        assert np.all(np.isnan(r[:2])), f.__name__
        assert np.all(np.isfinite(r[2])), f.__name__


@FLOATS
def test_softcap_keeps_neg_inf_masked(backend, dtype):
    x = np.array([[1.0, -inf, 2.0, 0.0]], dtype)
    s = 2.0
    loss, grad = ce_none(x, np.array([0]), backend, softcap=s)
    xs = [s * math.tanh(v / s) for v in (1.0, 2.0, 0.0)]
    expected = -(xs[0] - math.log(sum(math.exp(v) for v in xs)))
    assert abs(float(loss[0]) - expected) < 1e-6
    assert grad[0, 1] == 0.0
    assert np.all(np.isfinite(grad))


@FLOATS
def test_softcap_maps_pos_inf_to_cap(backend, dtype):
    # With softcap, +inf becomes s: the row is finite.
    s = 3.0
    x = np.array([[inf, 0.0, 1.0]], dtype)
    loss, grad = ce_none(x, np.array([1]), backend, softcap=s)
    xs = [s, 0.0, s * math.tanh(1 / s)]
    expected = -(xs[1] - math.log(sum(math.exp(v) for v in xs)))
    assert abs(float(loss[0]) - expected) < 1e-6 * max(1, expected)
    assert grad[0, 0] == 0.0  # tanh' = 0 at +inf
    assert np.all(np.isfinite(grad))


@FLOATS
def test_zero_weight_class_against_neg_inf_is_zero(backend, dtype):
    # A zero class weight contributes exactly 0 even where logp = -inf.
    x = np.array([[0.0, -inf, 1.0]], dtype)
    w = np.array([1.0, 0.0, 1.0], dtype)
    loss, grad = ce_none(x, np.array([0]), backend, weight=w, label_smoothing=0.2)
    assert np.isfinite(loss[0])
    lp = [0.0 - math.log(1 + math.e), 1.0 - math.log(1 + math.e)]
    expected = 0.8 * -lp[0] + 0.2 / 3 * -(lp[0] + lp[1])
    assert abs(float(loss[0]) - expected) < 1e-6
    assert np.all(np.isfinite(grad))
    # target on the zero-weight, -inf class: weight 0 -> loss 0
    loss2, grad2 = ce_none(x, np.array([1]), backend, weight=w)
    assert loss2[0] == 0.0
    assert np.all(grad2 == 0.0)


@FLOATS
def test_zero_probability_soft_target_against_neg_inf_is_zero(backend, dtype):
    x = np.array([[0.0, -inf, 1.0]], dtype)
    P = np.array([[0.5, 0.0, 0.5]], dtype)
    loss, grad = fastxent.cross_entropy_with_grad(x, P, reduction="none", backend=backend)
    expected = -0.5 * (0 - math.log(1 + math.e)) - 0.5 * (1 - math.log(1 + math.e))
    assert abs(float(loss[0]) - expected) < 1e-6
    assert grad[0, 1] == 0.0 and np.all(np.isfinite(grad))


@FLOATS
@pytest.mark.parametrize("opts", [{}, {"z_loss": 0.1}, {"weight": True}], ids=["plain", "zloss", "weight"])
def test_all_ignored_mean_is_zero_with_zero_grad(backend, dtype, opts):
    x = np.array([[1.0, 2.0, 3.0], [nan, 0, 0]], dtype)
    t = np.array([-100, -100])
    kw = dict(opts)
    if kw.get("weight"):
        kw["weight"] = np.array([1.0, 2.0, 3.0], dtype)
    loss, grad = fastxent.cross_entropy_with_grad(x, t, backend=backend, **kw)
    assert float(loss) == 0.0 and not np.isnan(loss)
    assert np.all(grad == 0.0)
    assert fastxent.cross_entropy(x, t, reduction="sum", backend=backend, **kw) == 0.0


@FLOATS
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("kind", ["int", "soft"])
def test_empty_batch(backend, dtype, reduction, kind):
    x = np.zeros((0, 5), dtype)
    t = np.zeros(0, np.int64) if kind == "int" else np.zeros((0, 5), dtype)
    loss, grad = fastxent.cross_entropy_with_grad(x, t, reduction=reduction, backend=backend)
    assert grad.shape == (0, 5) and grad.dtype == dtype
    if reduction == "none":
        assert np.shape(loss) == (0,)
    else:
        assert float(loss) == 0.0 and np.asarray(loss).dtype == dtype
    # empty along an extra dim, PyTorch layout
    x3 = np.zeros((2, 5, 0), dtype)
    t3 = np.zeros((2, 0), np.int64) if kind == "int" else np.zeros((2, 5, 0), dtype)
    loss3, grad3 = fastxent.cross_entropy_with_grad(x3, t3, axis=1, reduction=reduction, backend=backend)
    assert grad3.shape == (2, 5, 0)
    if reduction == "none":
        assert np.shape(loss3) == (2, 0)
    else:
        assert float(loss3) == 0.0


@FLOATS
def test_softmax_family_empty_rows(backend, dtype):
    x = np.zeros((0, 4), dtype)
    assert fastxent.softmax(x, backend=backend).shape == (0, 4)
    assert fastxent.log_softmax(x, backend=backend).shape == (0, 4)
    assert fastxent.logsumexp(x, backend=backend).shape == (0,)


@FLOATS
def test_extreme_finite_logits_do_not_overflow(backend, dtype):
    big = float(np.finfo(dtype).max) / 4
    x = np.array([[big, 0.0, -big], [-big, -big, -big]], dtype)
    loss, grad = ce_none(x, np.array([0, 2]), backend)
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad))
    assert abs(float(loss[0])) < 1e-6
    assert abs(float(loss[1]) - math.log(3)) < 1e-6  # a uniform row, however far out
    loss2, _ = ce_none(x, np.array([2, 0]), backend)
    assert loss2[0] == pytest.approx(2 * big, rel=1e-6)
    sm = fastxent.softmax(x, backend=backend)
    assert np.all(np.isfinite(sm))
    np.testing.assert_allclose(sm, [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3]], rtol=1e-6, atol=0)


# SPEC: lse is "computed with the row max shifted out", and accuracy is relative
# to a float64 evaluation of the same inputs, whatever their magnitude. Logits
# far from 0 (offset) but close to each other: x - max is exact, so a kernel
# that forms logp as (x - max) - log(sum) keeps full accuracy, while one that
# forms x - lse loses ulp(offset) (6e-5 at 1e3 in float32, 1.5e-11 at 1e5 in
# float64), far above SPEC's 1e-6 / 1e-12.
@pytest.mark.parametrize("dtype,offset", [(np.float32, 1e3), (np.float32, -1e3), (np.float64, 1e5), (np.float64, -1e5)],
                         ids=["float32+1e3", "float32-1e3", "float64+1e5", "float64-1e5"])
def test_large_offset_logits_keep_spec_accuracy(backend, dtype, offset):
    import _oracle as O

    rng = np.random.default_rng(7)
    x = (offset + rng.standard_normal((8, 6))).astype(dtype)
    t = rng.integers(0, 6, 8)
    ref_loss, ref_grad = O.cross_entropy(x, t, reduction="none")
    loss, grad = fastxent.cross_entropy_with_grad(x, t, reduction="none", backend=backend)
    O.assert_rowloss_close(loss, ref_loss, O.loss_tol(dtype), "loss")
    O.assert_grad_close(grad, ref_grad, O.grad_tol(dtype), err_msg="grad")
    O.assert_grad_close(fastxent.softmax(x, backend=backend), O.softmax(x, axis=-1), O.grad_tol(dtype), err_msg="softmax")
    ls = fastxent.log_softmax(x, backend=backend)
    O.assert_rowloss_close(-ls, -O.log_softmax(x, axis=-1), O.loss_tol(dtype), "log_softmax")


# A row's gradient factor K / S (K = a w_y + smoothing + b 2 z lse) can exceed
# the largest float32 while every gradient entry p_c K - ... is finite (or
# exactly the smoothing constant where p_c = 0): with z_loss and logits near
# float32's max, or with a large grad_output. Cast to float32 first, the factor
# is inf: 0 * inf = NaN where p_c = 0 and inf where p_c K is finite (found by
# the slow hypothesis run). Every path: one row (per-row kernel), 8 and 64 rows
# of 2 and 10 classes (the class-major blocks, 8 and 16 rows) and of 40 (the
# staged 8-row blocks), on each of Cython's instruction sets, and 80 classes
# (per row on every backend).
BIG = float(np.finfo(np.float32).max)
OVERFLOW_CASES = {
    "z_loss, p = (1, 0, ...)": ([BIG, BIG / 2], 0, {"z_loss": 1.0}),
    "z_loss, p = (1/2, 1/2, 0, ...)": ([3e38, 3e38], 1, {"z_loss": 1.0}),
    "z_loss + smoothing": ([BIG, BIG / 2], 0, {"z_loss": 1.0, "label_smoothing": 0.1}),
    "z_loss + weight": ([BIG, BIG / 2], 1, {"z_loss": 1.0, "weight": True}),
    "grad_output": ([20.0, 0.0], 0, {"grad_output": 1e37, "weight": True}),
    "grad_output + smoothing": ([20.0, 0.0], 0, {"grad_output": 1e37, "weight": True,
                                                 "label_smoothing": 0.2}),
}


@pytest.mark.parametrize("case", list(OVERFLOW_CASES), ids=list(OVERFLOW_CASES))
@pytest.mark.parametrize("C", [2, 10, 40, 80])
@pytest.mark.parametrize("rows", [1, 8, 64])
@pytest.mark.parametrize("soft", [False, True], ids=["int", "soft"])
def test_gradient_factor_beyond_float32_max(backend, case, C, rows, soft):
    import _oracle as O

    head, y, opts = OVERFLOW_CASES[case]
    x = np.zeros((rows, C), np.float32)
    x[:, :2] = head
    x[:, 2:] = np.linspace(-3.0, 3.0, C - 2)  # p_c = 0 beside the big logits
    kw = dict(opts, reduction="sum")
    if kw.pop("weight", False):
        kw["weight"] = np.linspace(40.0, 10.0, C).astype(np.float32)
    t = np.full(rows, y)
    if soft:
        t = np.zeros((rows, C), np.float32)
        t[:, y] = 0.75
        t[:, 1 - y] = 0.25
    _, ref = O.cross_entropy(x.astype(np.float64), t, **kw)
    with np.errstate(over="ignore"):
        ref = ref.astype(np.float32)  # beyond float32's max is inf: the right answer
    isas = [None]
    if backend == "cython":  # each instruction set: per row, 8-row and 16-row blocks
        from fastxent import _kernels

        isas = _kernels._simd_levels()
    for isa in isas:
        if isa is not None:
            assert _kernels._set_simd_isa(isa)
        try:
            _, grad = fastxent.cross_entropy_with_grad(x, t, backend=backend, **kw)
        finally:
            if isa is not None:
                _kernels._set_simd_isa("best")
        assert not np.any(np.isnan(grad)), (isa, grad[0])
        np.testing.assert_array_equal(np.isinf(grad), np.isinf(ref), err_msg=str(isa))
        np.testing.assert_array_equal(grad[np.isinf(ref)], ref[np.isinf(ref)], err_msg=str(isa))
        fin = np.isfinite(ref)
        np.testing.assert_allclose(grad[fin], ref[fin], rtol=1e-5, atol=1e-6, err_msg=str(isa))


# An infinite grad_output g_n scales row n's gradient g_n (p_c - [c == y]):
# every entry is inf with the sign of g_n (p_c - [c == y]) when no p_c is 0,
# by hand, with no NaN (inf * 0 only arises from options that are off: the
# Numba kernels gave an all-NaN row, the reference NaN at the target, before
# they left out the smoothing term when label_smoothing is 0). Every path:
# one row, the few-class blocks (2 and 10 classes, 8 and 64 rows), the staged
# blocks (40) and per row (80); with and without class weights.
@pytest.mark.parametrize("C", [2, 10, 40, 80])
@pytest.mark.parametrize("rows", [1, 8, 64])
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "weight"])
def test_infinite_grad_output_gives_signed_inf_gradient(backend, C, rows, weighted):
    rng = np.random.default_rng(C * 100 + rows)
    x = rng.uniform(-3.0, 3.0, (rows, C)).astype(np.float32)  # every p_c > 0
    t = rng.integers(0, C, rows)
    g = np.ones(rows, np.float32)
    g[rows // 2] = inf
    g[rows - 1] = -inf
    kw = {"weight": np.linspace(0.5, 2.0, C).astype(np.float32)} if weighted else {}
    grad = fastxent.cross_entropy_grad(x, t, reduction="none", grad_output=g, backend=backend, **kw)
    for r in {rows // 2, rows - 1}:
        want = np.full(C, g[r], np.float64)
        want[t[r]] = -g[r]
        np.testing.assert_array_equal(grad[r], want, err_msg="row %d" % r)
    if rows > 2:  # the other rows as usual (g = 1)
        import _oracle as O

        rest = np.ones(rows, bool)
        rest[[rows // 2, rows - 1]] = False
        _, ref = O.cross_entropy(x[rest].astype(np.float64), t[rest], reduction="sum", **kw)
        O.assert_grad_close(grad[rest], ref, O.grad_tol(np.float32))


# A batch loss beyond float64's range is inf, and +inf with -inf row losses
# (probability targets may be negative) is NaN, as np.sum gives; the exact
# small-batch sum (math.fsum) raised OverflowError or ValueError for them
# (found by the slow hypothesis run). Both sides of the small-batch cutoff.
@pytest.mark.parametrize("n", [2, 100])
def test_batch_loss_beyond_float64_range(backend, n):
    import _oracle as O

    big = float(np.finfo(np.float64).max)
    x = np.zeros((n, 3))
    x[:, 0] = big / 4
    x[:, 2] = big  # target 0: each loss lse - x_0 = 3 big / 4, their sum beyond the range
    t = np.zeros(n, np.int64)
    rows, _ = O.cross_entropy(x, t, reduction="none")
    assert np.all(np.isfinite(rows))
    assert fastxent.cross_entropy(x, t, reduction="sum", backend=backend) == inf
    mean = math.fsum(rows / n)
    assert fastxent.cross_entropy(x, t, reduction="mean", backend=backend) == pytest.approx(mean, rel=1e-12)
    xb = np.full(n, -0.75 * big)  # softplus(3 big / 4) per element for y = 1
    assert fastxent.binary_cross_entropy_with_logits(xb, np.ones(n), reduction="sum", backend=backend) == inf
    assert fastxent.binary_cross_entropy_with_logits(xb, np.ones(n), reduction="mean",
                                                     backend=backend) == pytest.approx(0.75 * big, rel=1e-12)


@pytest.mark.parametrize("n", [2, 100])
def test_batch_loss_of_plus_and_minus_inf_rows_is_nan(backend, n):
    x = np.zeros((n, 2))
    x[:, 1] = -inf
    p = np.full((n, 2), 0.5)
    p[1, 1] = -0.5  # a negative target weight on a -inf logit: that row's loss is -inf
    rows = fastxent.cross_entropy(x, p, reduction="none", backend=backend)
    assert rows[0] == inf and rows[1] == -inf
    for red in ("sum", "mean"):
        assert math.isnan(fastxent.cross_entropy(x, p, reduction=red, backend=backend)), red


def _quiet_cases():
    """Public calls whose results sit at the dtype's limits: NaN, inf and
    -inf logits, a float32 loss beyond its max (z_loss at huge logits, per
    row and reduced), probabilities of 0 and 1, weights beyond float32's
    max in the loss and the gradient."""
    big = np.float32(3e38)
    x = np.array([[nan, 1, 2, 3], [inf, 0, 0, 0], [-inf, -inf, -inf, -inf],
                  [big, -big, 0, 1], [1, 2, 3, 4], [-inf, 0, 1, 2]], np.float32)
    t = np.array([0, 1, 2, 0, 3, 0])
    p = np.array([0.0, 1.0, 0.5, 1e-30, 1 - 1e-7, 0.25], np.float32)
    y = np.array([1.0, 0.0, 1.0, 0.0, 1.0, 0.0], np.float32)
    xb = np.array([3e38, -3e38, inf, -inf, nan, 0.0], np.float32)
    wb = np.array([3e38, 1.0, 3e38, 1.0, 1.0, 3e38], np.float32)
    return {
        "ce": lambda b, r: fastxent.cross_entropy_with_grad(x, t, z_loss=1.0, reduction=r, backend=b),
        "ce_smooth": lambda b, r: fastxent.cross_entropy_with_grad(
            x, t, label_smoothing=0.1, z_loss=1.0, grad_output=None if r != "none" else 1e30,
            reduction=r, backend=b),
        "ce_soft": lambda b, r: fastxent.cross_entropy_with_grad(
            x, np.full(x.shape, 0.25, np.float32), z_loss=1.0, reduction=r, backend=b),
        "softmax": lambda b, r: (fastxent.softmax(x, backend=b), fastxent.log_softmax(x, backend=b),
                                 fastxent.logsumexp(x, backend=b)),
        "bce": lambda b, r: fastxent.binary_cross_entropy_with_grad(p, y, weight=wb, reduction=r, backend=b),
        "bce_logits": lambda b, r: fastxent.binary_cross_entropy_with_logits_with_grad(
            xb, y, weight=wb, pos_weight=np.float32([2.0]), reduction=r, backend=b),
    }


@pytest.mark.parametrize("case", list(_quiet_cases()))
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_limits_are_quiet_and_agree_across_backends(backend, case, reduction):
    # The compiled kernels write inf and NaN where the math gives them,
    # without a warning; the NumPy fallback and the public layer do the same
    # (no RuntimeWarning from NumPy's overflow, invalid or divide checks),
    # and every backend gives the NumPy reference's non-finite pattern.
    run = _quiet_cases()[case]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        got = run(backend, reduction)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        want = run("numpy", reduction)
    for g, w in zip(got, want):
        g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w))
        np.testing.assert_array_equal(np.where(np.isinf(g), g, 0), np.where(np.isinf(w), w, 0))


def test_bce_weight_near_float32_max_stays_finite(backend):
    # w (p - y) / (p (1 - p)) and w l pass float32's max before the mean's
    # 1/2 brings them back: formed in float64 and rounded once, the results
    # are finite. By hand: grad = w (p - y) / (p (1 - p)) / 2, loss = mean of
    # -w log(p or 1 - p).
    w = 3e38
    p = np.array([0.5, 0.25], np.float32)
    y = np.array([1.0, 0.0], np.float32)
    loss, grad = fastxent.binary_cross_entropy_with_grad(
        p, y, weight=np.full(2, w, np.float32), backend=backend)
    want_grad = [w * (0.5 - 1) / 0.25 / 2, w * 0.25 / (0.25 * 0.75) / 2]
    want_loss = (-w * math.log(0.5) - w * math.log(0.75)) / 2
    np.testing.assert_allclose(grad.astype(np.float64), want_grad, rtol=1e-6)
    np.testing.assert_allclose(float(loss), want_loss, rtol=1e-6)
