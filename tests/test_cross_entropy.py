"""Cross-entropy on every backend against the float64 oracle, and known values.

The matrix: dtype x reduction x options (each alone and combined) x layout
(class axis last, PyTorch's axis=1 with 1 and 2 extra dims, axis=0, a single
row) x integer / probability targets. Tolerances are SPEC's.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest

import fastxent
import _oracle as O

DTYPES = [np.float32, np.float64, np.float16]
REDUCTIONS = ["none", "mean", "sum"]

# (logits shape, class axis); C = 5 everywhere except "row".
LAYOUTS = {
    "NC": ((6, 5), -1),
    "NCd1": ((3, 5, 4), 1),
    "NCd1d2": ((2, 5, 3, 2), 1),
    "axis0": ((5, 6), 0),
    "row": ((7,), -1),
}

# Option sets. "weight"/"ignore" are flags turned into arrays per case.
INT_OPTIONS = {
    "plain": {},
    "weight": {"weight": True},
    "ignore": {"ignore": True},
    "ignore_index_is_a_class": {"ignore_index": 2},
    "smoothing": {"label_smoothing": 0.1},
    "zloss": {"z_loss": 0.01},
    "softcap": {"softcap": 3.0},
    "weight+smoothing": {"weight": True, "label_smoothing": 0.3},
    "all": {"weight": "with_zero", "ignore": True, "label_smoothing": 0.2, "z_loss": 0.05, "softcap": 4.0},
}
SOFT_OPTIONS = {
    "plain": {},
    "weight": {"weight": True},
    "smoothing": {"label_smoothing": 0.1},
    "zloss": {"z_loss": 0.01},
    "softcap": {"softcap": 3.0},
    "all": {"weight": "with_zero", "label_smoothing": 0.2, "z_loss": 0.05, "softcap": 4.0},
}


def seeded_rng(*parts):
    return np.random.default_rng(zlib.crc32(repr(parts).encode()))


def make_case(rng, shape, axis, dtype, kind, opts):
    """Logits, target and public keyword arguments for one matrix case."""
    x = (2.0 * rng.standard_normal(shape)).astype(dtype)
    C = shape[axis]
    tshape = tuple(s for i, s in enumerate(shape) if i != axis % len(shape))
    kw = {"axis": axis}
    ignore_index = opts.get("ignore_index", -100)
    if kind == "int":
        t = rng.integers(0, C, size=tshape).astype(np.int64)
        if opts.get("ignore"):
            mask = rng.random(tshape) < 0.35
            if t.ndim:
                mask.flat[0] = True   # at least one ignored
                mask.flat[-1] = False  # and at least one kept
            t = np.where(mask, ignore_index, t)
        if "ignore_index" in opts:
            kw["ignore_index"] = opts["ignore_index"]
            if t.ndim:
                t.flat[0] = opts["ignore_index"]
    else:
        P = rng.dirichlet(np.ones(C), size=int(np.prod(tshape, dtype=int)))
        P = np.moveaxis(P.reshape(tshape + (C,)), -1, axis % len(shape))
        t = P.astype(dtype)
    if opts.get("weight"):
        w = rng.integers(1, 9, size=C) / 4.0  # exactly representable in every dtype
        if opts["weight"] == "with_zero":
            w[1] = 0.0
        kw["weight"] = w.astype(dtype if dtype != np.float16 else np.float32)
    for k in ("label_smoothing", "z_loss", "softcap"):
        if k in opts:
            kw[k] = opts[k]
    return x, t, kw


def _cases():
    for kind, options in (("int", INT_OPTIONS), ("soft", SOFT_OPTIONS)):
        for oname, opts in options.items():
            for lname in LAYOUTS:
                yield pytest.param(kind, opts, lname, id="%s-%s-%s" % (kind, oname, lname))


def per_row_grad_output(rng, reduction, loss_shape):
    if reduction == "none":
        return rng.uniform(0.5, 1.5, size=loss_shape) if loss_shape else 0.8
    return 0.75


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("kind,opts,layout", list(_cases()))
def test_matches_oracle(backend, dtype, reduction, kind, opts, layout):
    shape, axis = LAYOUTS[layout]
    rng = seeded_rng(dtype.__name__, reduction, kind, sorted(opts.items()), layout)
    x, t, kw = make_case(rng, shape, axis, dtype, kind, opts)
    kw["reduction"] = reduction
    cdt = O.compute_dtype(dtype)
    ltol, gtol = O.loss_tol(dtype), O.grad_tol(dtype)
    row_shape = tuple(s for i, s in enumerate(shape) if i != axis % len(shape))

    ref_loss, ref_grad = O.cross_entropy(x, t, **kw)
    loss = fastxent.cross_entropy(x, t, backend=backend, **kw)
    if reduction == "none":
        assert np.shape(loss) == row_shape and np.asarray(loss).dtype == cdt
        O.assert_rowloss_close(loss, ref_loss, ltol, "loss")
    else:
        assert np.ndim(loss) == 0 and np.asarray(loss).dtype == cdt, (type(loss), np.asarray(loss).dtype)
        bound = O.reduced_loss_bound(x, t, ltol, **kw)
        assert abs(float(loss) - ref_loss) <= bound, (float(loss), ref_loss, bound)

    # default grad_output (ones / 1)
    grad = fastxent.cross_entropy_grad(x, t, backend=backend, **kw)
    assert grad.shape == x.shape and grad.dtype == cdt
    O.assert_grad_close(grad, ref_grad, gtol, axis=axis, err_msg="grad")

    # fused, with an explicit grad_output
    g = per_row_grad_output(rng, reduction, row_shape)
    ref_loss_g, ref_grad_g = O.cross_entropy(x, t, grad_output=g, **kw)
    loss2, grad2 = fastxent.cross_entropy_with_grad(x, t, grad_output=g, backend=backend, **kw)
    assert grad2.shape == x.shape and grad2.dtype == cdt
    if reduction == "none":
        O.assert_rowloss_close(loss2, ref_loss, ltol, "fused loss")
    else:
        assert abs(float(loss2) - ref_loss) <= O.reduced_loss_bound(x, t, ltol, **kw)
    O.assert_grad_close(grad2, ref_grad_g, gtol, axis=axis, err_msg="fused grad with grad_output")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_backends_agree_on_larger_input(backend, dtype, rng):
    # Bigger than the per-thread cut-off, many classes, all options at once.
    N, C = 700, 129
    x = (3 * rng.standard_normal((N, C))).astype(dtype)
    t = rng.integers(0, C, N)
    t[::7] = -100
    w = (rng.integers(1, 9, C) / 4).astype(dtype)
    kw = dict(weight=w, label_smoothing=0.1, z_loss=1e-3, softcap=20.0)
    loss, grad = fastxent.cross_entropy_with_grad(x, t, reduction="none", backend=backend, **kw)
    ref_loss, ref_grad = O.cross_entropy(x, t, reduction="none", **kw)
    O.assert_rowloss_close(loss, ref_loss, O.loss_tol(dtype))
    O.assert_grad_close(grad, ref_grad, O.grad_tol(dtype))


def test_float32_batch_sum_accumulates_in_float64(backend):
    # SPEC: float64 accumulation of the batch reduction. 2e5 rows of log(3):
    # a float32 running sum would drift by ~1e-3 relative.
    N = 200_000
    x = np.zeros((N, 3), np.float32)
    t = np.zeros(N, np.int64)
    s = fastxent.cross_entropy(x, t, reduction="sum", backend=backend)
    assert s.dtype == np.float32
    assert abs(float(s) - N * math.log(3)) <= 1e-6 * N * math.log(3)
    m = fastxent.cross_entropy(x, t, reduction="mean", backend=backend)
    assert abs(float(m) - math.log(3)) <= 1e-6


# ------------------------------------------------------------ known values


@pytest.mark.parametrize("C", [1, 2, 10, 1000])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_uniform_logits_give_log_C(backend, C, dtype):
    x = np.full((4, C), 1.7, dtype)
    t = np.arange(4) % C
    loss = fastxent.cross_entropy(x, t, backend=backend)
    assert abs(float(loss) - math.log(C)) <= O.loss_tol(dtype) * max(1, math.log(C))
    grad = fastxent.cross_entropy_grad(x, t, reduction="sum", backend=backend)
    expected = np.full((4, C), 1.0 / C)
    expected[np.arange(4), t] -= 1.0
    O.assert_grad_close(grad, expected, O.grad_tol(dtype))


@pytest.mark.parametrize("C", [63, 64, 65, 255, 256, 257, 319, 320, 575, 1000])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_targets_across_the_sum_blocks(backend, C, dtype):
    # The kernels sum a row's exps in blocks (Numba: 256, then 64, then one
    # by one) and leave the target's exp out by a select in its block: a
    # target at every block's first and last class and in the tail, the
    # target's logit the row's largest in half the rows (p_y near 1, where
    # R = S - e_y must not come from a subtraction)
    rng = np.random.default_rng(C)
    edges = sorted({0, 1, 62, 63, 64, 127, 191, 255, 256, 319, 320, 511, 575, C - 2, C - 1})
    t = np.array([y for y in edges if 0 <= y < C] * 2)
    x = rng.standard_normal((t.size, C)).astype(dtype)
    half = t.size // 2
    x[np.arange(half), t[:half]] = 30.0
    ref_l, ref_g = O.cross_entropy(x, t, reduction="none")
    loss, grad = fastxent.cross_entropy_with_grad(x, t, reduction="none", backend=backend)
    tol = O.loss_tol(dtype)
    np.testing.assert_allclose(loss, ref_l, rtol=tol, atol=tol)  # SPEC: tol * max(1, |loss|)
    O.assert_grad_close(grad, ref_g, O.grad_tol(dtype))
    # the loss alone sums the same exps without storing them (Numba may
    # vectorise that sum in another order: the last bit or two may differ)
    loss_only = fastxent.cross_entropy(x, t, reduction="none", backend=backend)
    np.testing.assert_allclose(loss_only, ref_l, rtol=tol, atol=tol)
    np.testing.assert_allclose(loss_only, loss, rtol=4 * np.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("y", [0, 1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_hand_computed_three_classes(backend, y, dtype):
    z = [2.0, 4.0, 0.5]
    denom = math.exp(2.0) + math.exp(4.0) + math.exp(0.5)
    expected = -math.log(math.exp(z[y]) / denom)
    x = np.array([z], dtype)
    loss, grad = fastxent.cross_entropy_with_grad(x, np.array([y]), backend=backend)
    assert abs(float(loss) - expected) <= O.loss_tol(dtype) * max(1, expected)
    expected_grad = [math.exp(v) / denom - (i == y) for i, v in enumerate(z)]
    O.assert_grad_close(grad, np.array([expected_grad]), O.grad_tol(dtype))
    # 1-D logits: a single row with a 0-d target
    loss1 = fastxent.cross_entropy(np.array(z, dtype), np.array(y), reduction="none", backend=backend)
    assert np.shape(loss1) == ()
    assert abs(float(loss1) - expected) <= O.loss_tol(dtype) * max(1, expected)
    # the same target as a one-hot soft target
    P = np.eye(3, dtype=dtype)[[y]]
    assert abs(float(fastxent.cross_entropy(x, P, backend=backend)) - expected) <= O.loss_tol(dtype) * max(1, expected)


def test_hand_computed_smoothing_and_zloss(backend):
    # logits [2, 4, 0.5], target 1, eps = 0.3, z = 0.1, every term by hand
    z = [2.0, 4.0, 0.5]
    lse = math.log(sum(math.exp(v) for v in z))
    logp = [v - lse for v in z]
    eps, zc = 0.3, 0.1
    expected = (1 - eps) * -logp[1] + eps * -(sum(logp) / 3) + zc * lse ** 2
    loss = fastxent.cross_entropy(np.array([z]), np.array([1]), label_smoothing=eps, z_loss=zc, backend=backend)
    assert abs(float(loss) - expected) <= 1e-12 * expected


def test_hand_computed_weighted_mean(backend):
    # weighted mean divides by the sum of the targets' weights (PyTorch)
    x = np.array([[2.0, 4.0, 0.5], [1.0, 1.0, 1.0]])
    t = np.array([0, 2])
    w = np.array([3.0, 1.0, 0.5])
    l0 = -(2.0 - math.log(math.exp(2) + math.exp(4) + math.exp(0.5)))
    l1 = math.log(3)
    expected = (3.0 * l0 + 0.5 * l1) / 3.5
    loss = fastxent.cross_entropy(x, t, weight=w, backend=backend)
    assert abs(float(loss) - expected) <= 1e-12 * expected


def test_ignore_index_is_a_class(backend):
    # ignore_index may be a valid class: those rows are ignored, others kept
    x = np.array([[2.0, 4.0, 0.5], [0.0, 0.0, 0.0]])
    t = np.array([1, 2])
    loss = fastxent.cross_entropy(x, t, ignore_index=1, reduction="none", backend=backend)
    assert loss[0] == 0.0
    assert abs(loss[1] - math.log(3)) < 1e-15


def test_zloss_mean_divides_by_valid_rows(backend):
    # mean: CE part over W = sum of valid weights; z part over the valid-row count
    x = np.array([[1.0, 2.0], [0.0, 3.0], [5.0, 5.0]])
    t = np.array([0, -100, 1])
    w = np.array([2.0, 0.5])
    zc = 0.2
    lse = [math.log(math.exp(1) + math.exp(2)), math.log(2 * math.exp(5))]
    ce = [2.0 * (lse[0] - 1.0), 0.5 * (lse[1] - 5.0)]
    expected = sum(ce) / 2.5 + zc * (lse[0] ** 2 + lse[1] ** 2) / 2
    loss = fastxent.cross_entropy(x, t, weight=w, z_loss=zc, backend=backend)
    assert abs(float(loss) - expected) <= 1e-12 * expected


@pytest.mark.parametrize("tdtype", [np.int32, np.int64, np.uint8, np.int16], ids=lambda d: np.dtype(d).name)
def test_integer_target_dtypes(backend, tdtype):
    x = np.array([[2.0, 4.0, 0.5], [0.0, 1.0, 2.0]])
    t = np.array([1, 2], dtype=tdtype)
    ref, _ = O.cross_entropy(x, t.astype(np.int64), reduction="none")
    O.assert_rowloss_close(fastxent.cross_entropy(x, t, reduction="none", backend=backend), ref, 1e-12)


def test_soft_target_mean_divides_by_rows_even_with_weight(backend):
    x = np.array([[2.0, 4.0, 0.5], [0.0, 1.0, 2.0]])
    P = np.array([[0.2, 0.5, 0.3], [1.0, 0.0, 0.0]])
    w = np.array([1.0, 2.0, 4.0])
    lp = [[v - math.log(sum(math.exp(u) for u in row)) for v in row] for row in x]
    rows = [-sum(w[c] * P[n, c] * lp[n][c] for c in range(3)) for n in range(2)]
    loss = fastxent.cross_entropy(x, P, weight=w, backend=backend)
    assert abs(float(loss) - sum(rows) / 2) <= 1e-12 * sum(rows)


def test_none_grad_output_scalar_equals_broadcast(backend, rng):
    x = rng.normal(size=(4, 6))
    t = rng.integers(0, 6, 4)
    _, g1 = fastxent.cross_entropy_with_grad(x, t, reduction="none", grad_output=0.5, backend=backend)
    _, g2 = fastxent.cross_entropy_with_grad(x, t, reduction="none", grad_output=np.full(4, 0.5), backend=backend)
    np.testing.assert_array_equal(g1, g2)
    _, g3 = fastxent.cross_entropy_with_grad(x, t, reduction="sum", backend=backend)
    np.testing.assert_allclose(g1 * 2, g3, rtol=1e-14, atol=0)
