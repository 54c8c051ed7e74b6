"""Binary cross-entropy (probabilities and logits) against float64 oracles, FD gradients, extremes."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

import fastxent
import _oracle as O

DTYPES = [np.float32, np.float64, np.float16]
REDUCTIONS = ["none", "mean", "sum"]
SHAPES = {"1d": (13,), "2d": (5, 6), "3d": (2, 3, 4), "noncontig": (6, 8)}
inf, nan = np.inf, np.nan


def make_inputs(rng, shape_name, dtype, logits):
    shape = SHAPES[shape_name]
    if logits:
        v = 3 * rng.standard_normal(shape)
    else:
        v = rng.uniform(0.001, 0.999, shape)
    y = rng.uniform(0, 1, shape)
    y.flat[::3] = np.round(y.flat[::3])  # some hard labels
    v, y = v.astype(dtype), y.astype(dtype)
    if shape_name == "noncontig":
        v, y = v[::2, ::2], y.T[::2, ::2].T.copy()[:, :]  # strided input, and a target of its shape
        y = y[: v.shape[0], : v.shape[1]]
    return v, y


def weight_for(rng, shape, dtype, kind):
    if kind == "full":
        return (rng.integers(0, 9, shape) / 4).astype(dtype)
    if kind == "lastaxis":
        return (rng.integers(1, 9, shape[-1:]) / 4).astype(dtype)
    return None


def check_loss(loss, ref_elem, reduction, dtype):
    tol = O.loss_tol(dtype)
    cdt = O.compute_dtype(dtype)
    assert np.asarray(loss).dtype == cdt
    if reduction == "none":
        O.assert_rowloss_close(loss, ref_elem, tol, "bce none")
    else:
        ref = O.reduce(ref_elem, reduction)
        ones = ref_elem.size if reduction == "sum" else 1.0
        bound = tol * (abs(np.sum(np.abs(ref_elem))) / (1 if reduction == "sum" else max(ref_elem.size, 1)) + ones)
        assert np.ndim(loss) == 0
        assert abs(float(loss) - ref) <= bound, (float(loss), ref, bound)


def check_grad(grad, ref_grad, dtype, shape):
    assert grad.shape == shape and grad.dtype == O.compute_dtype(dtype)
    # elementwise: each element is its own "row" (SPEC: relative to the largest
    # reference gradient of the row; here a row has one element)
    tol = O.grad_tol(dtype)
    ref = np.asarray(ref_grad, np.float64)
    err = np.abs(grad.astype(np.float64) - ref)
    bad = err > tol * np.abs(ref) + (0 if dtype == np.float64 else 1e-30)
    assert not np.any(bad), (grad[bad], ref[bad])


@pytest.mark.parametrize("weight", ["noweight", "full", "lastaxis"])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_bce_probabilities_vs_oracle(backend, dtype, reduction, shape, weight):
    rng = np.random.default_rng(hash((shape, weight, reduction)) % 2**32)
    p, y = make_inputs(rng, shape, dtype, logits=False)
    w = weight_for(rng, p.shape, dtype, weight)
    ref_l, ref_g = O.bce(p, y, w)
    loss = fastxent.binary_cross_entropy(p, y, weight=w, reduction=reduction, backend=backend)
    check_loss(loss, ref_l, reduction, dtype)
    g = rng.uniform(0.5, 1.5, p.shape) if reduction == "none" else 0.6
    scale = 1.0 if reduction != "mean" else 1.0 / p.size
    loss2, grad = fastxent.binary_cross_entropy_with_grad(p, y, weight=w, reduction=reduction, grad_output=g, backend=backend)
    check_loss(loss2, ref_l, reduction, dtype)
    check_grad(grad, ref_g * g * scale, dtype, p.shape)


@pytest.mark.parametrize("weights", ["none", "weight", "pos_weight", "both"])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_bce_logits_vs_oracle(backend, dtype, reduction, shape, weights):
    rng = np.random.default_rng(hash((shape, weights, reduction)) % 2**32)
    x, y = make_inputs(rng, shape, dtype, logits=True)
    w = weight_for(rng, x.shape, dtype, "full") if weights in ("weight", "both") else None
    pw = (rng.integers(1, 12, x.shape[-1]) / 4).astype(dtype) if weights in ("pos_weight", "both") else None
    ref_l, ref_g = O.bce_logits(x, y, w, pw)
    loss = fastxent.binary_cross_entropy_with_logits(x, y, weight=w, pos_weight=pw, reduction=reduction, backend=backend)
    check_loss(loss, ref_l, reduction, dtype)
    g = rng.uniform(0.5, 1.5, x.shape) if reduction == "none" else 0.6
    scale = 1.0 if reduction != "mean" else 1.0 / x.size
    loss2, grad = fastxent.binary_cross_entropy_with_logits_with_grad(
        x, y, weight=w, pos_weight=pw, reduction=reduction, grad_output=g, backend=backend)
    check_loss(loss2, ref_l, reduction, dtype)
    # gradient tolerance: relative to the element's |grad|, plus float32's abs floor
    # relative to the largest possible |dl/dx| of the element (w * max(1, pw))
    tol = O.grad_tol(dtype)
    ref = ref_g * g * scale
    mag = np.abs(np.asarray(g) * scale * (1.0 if w is None else w.astype(np.float64))
                 * (1.0 if pw is None else np.maximum(1.0, pw.astype(np.float64))))
    assert grad.shape == x.shape and grad.dtype == O.compute_dtype(dtype)
    err = np.abs(grad.astype(np.float64) - ref)
    assert np.all(err <= tol * np.broadcast_to(mag, err.shape)), (grad, ref)


def test_bce_broadcast_weight(backend):
    rng = np.random.default_rng(1)
    p = rng.uniform(0.1, 0.9, (3, 4, 5))
    y = rng.uniform(0, 1, (3, 4, 5))
    for wshape in [(5,), (4, 1), (1, 4, 5), (3, 1, 1), ()]:
        w = rng.uniform(0, 2, wshape)
        ref, _ = O.bce(p, y, np.broadcast_to(w, p.shape))
        got = fastxent.binary_cross_entropy(p, y, weight=w, reduction="none", backend=backend)
        O.assert_rowloss_close(got, ref, 1e-12, str(wshape))
        got = fastxent.binary_cross_entropy_with_logits(p, y, weight=w, reduction="none", backend=backend)
        O.assert_rowloss_close(got, O.bce_logits(p, y, np.broadcast_to(w, p.shape))[0], 1e-12, str(wshape))


# ------------------------------------------------------------ finite differences


@pytest.mark.parametrize("weights", ["none", "weight", "pos_weight", "both"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_logits_finite_differences(backend, reduction, weights):
    rng = np.random.default_rng(2)
    x = 2 * rng.standard_normal((3, 4))
    y = rng.uniform(0, 1, (3, 4))
    w = rng.uniform(0.2, 2, (3, 4)) if weights in ("weight", "both") else None
    pw = rng.uniform(0.2, 3, 4) if weights in ("pos_weight", "both") else None
    g = rng.uniform(0.5, 1.5, (3, 4)) if reduction == "none" else 0.7
    _, grad = fastxent.binary_cross_entropy_with_logits_with_grad(
        x, y, weight=w, pos_weight=pw, reduction=reduction, grad_output=g, backend=backend)

    def total(xx):
        l = fastxent.binary_cross_entropy_with_logits(xx, y, weight=w, pos_weight=pw, reduction=reduction, backend=backend)
        return np.asarray(l, np.float64) * g  # elementwise, so perturbing all at once is exact per element
    fd = O.central_diff4(total, x, 1e-3)
    if reduction != "none":
        # a reduced loss mixes elements: perturb one at a time
        fd = np.empty_like(x)
        for i in np.ndindex(x.shape):
            def f(s, i=i):
                xx = x.copy()
                xx[i] += s
                return total(xx)
            fd[i] = O.central_diff4(f, 0.0, 1e-3)
    np.testing.assert_allclose(grad, fd, rtol=0, atol=1e-9)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_probabilities_finite_differences(backend, reduction):
    rng = np.random.default_rng(3)
    p = rng.uniform(0.05, 0.95, (3, 4))
    y = rng.uniform(0, 1, (3, 4))
    w = rng.uniform(0.2, 2, (3, 4))
    g = rng.uniform(0.5, 1.5, (3, 4)) if reduction == "none" else 0.7
    _, grad = fastxent.binary_cross_entropy_with_grad(p, y, weight=w, reduction=reduction, grad_output=g, backend=backend)
    fd = np.empty_like(p)
    for i in np.ndindex(p.shape):
        def f(s, i=i):
            pp = p.copy()
            pp[i] += s
            return np.sum(np.asarray(fastxent.binary_cross_entropy(pp, y, weight=w, reduction=reduction, backend=backend)) * g)
        fd[i] = O.central_diff4(f, 0.0, 1e-4)
    np.testing.assert_allclose(grad, fd, rtol=1e-7, atol=1e-9)


# ------------------------------------------------------------ extremes


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_bce_logits_saturated_correct_labels_give_zero(backend, dtype):
    x = np.array([1e4, -1e4, inf, -inf, 800.0, -800.0], dtype)  # exp(-800) underflows to 0
    y = np.array([1.0, 0.0, 1.0, 0.0, 1.0, 0.0], dtype)
    loss, grad = fastxent.binary_cross_entropy_with_logits_with_grad(x, y, reduction="none", backend=backend)
    assert np.all(loss == 0.0), loss
    assert np.all(grad == 0.0), grad
    pw = np.array([3.0] * 6, dtype)
    loss, grad = fastxent.binary_cross_entropy_with_logits_with_grad(x, y, pos_weight=pw, reduction="sum", backend=backend)
    assert loss == 0.0 and np.all(grad == 0.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_bce_logits_saturated_wrong_labels(backend, dtype):
    x = np.array([1e4, -1e4, inf, -inf], dtype)
    y = np.array([0.0, 1.0, 0.0, 1.0], dtype)
    loss, grad = fastxent.binary_cross_entropy_with_logits_with_grad(x, y, reduction="none", backend=backend)
    np.testing.assert_allclose(loss[:2], [1e4, 1e4], rtol=1e-7)
    assert loss[2] == inf and loss[3] == inf
    np.testing.assert_array_equal(grad, [1.0, -1.0, 1.0, -1.0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_bce_logits_large_negative_precise(backend, dtype):
    # y = 0, x very negative: l = log1p(exp(x)) ~ exp(x), tiny but exactly representable;
    # a naive log(1 + exp(x)) gives 0 and a naive formula with x - x*y + ... loses it.
    xs = np.array([-20.0, -40.0, -60.0, -80.0] if dtype == np.float32 else [-20.0, -40.0, -300.0, -700.0])
    x = xs.astype(dtype)
    y = np.zeros_like(x)
    loss, grad = fastxent.binary_cross_entropy_with_logits_with_grad(x, y, reduction="none", backend=backend)
    expected = np.log1p(np.exp(xs))
    tol = O.loss_tol(dtype) * 4
    np.testing.assert_allclose(loss.astype(np.float64), expected, rtol=tol, atol=0)
    np.testing.assert_allclose(grad.astype(np.float64), O.sigmoid(xs), rtol=tol, atol=0)
    # y = 1, x very positive: the mirror image
    loss, grad = fastxent.binary_cross_entropy_with_logits_with_grad(-x, y + 1, reduction="none", backend=backend)
    np.testing.assert_allclose(loss.astype(np.float64), expected, rtol=tol, atol=0)
    np.testing.assert_allclose(grad.astype(np.float64), -O.sigmoid(xs), rtol=tol, atol=0)
    # and the large loss side: y = 1, x very negative -> -x + log1p(exp(x))
    loss, _ = fastxent.binary_cross_entropy_with_logits_with_grad(x, y + 1, reduction="none", backend=backend)
    np.testing.assert_allclose(loss.astype(np.float64), -xs + expected, rtol=tol, atol=0)


def test_bce_probabilities_clamp_at_minus_100(backend):
    p = np.array([0.0, 1.0, 0.0, 1.0, 1e-60])
    y = np.array([1.0, 0.0, 0.0, 1.0, 1.0])
    loss, grad = fastxent.binary_cross_entropy_with_grad(p, y, reduction="none", backend=backend)
    np.testing.assert_array_equal(loss, [100.0, 100.0, 0.0, 0.0, 100.0])
    np.testing.assert_allclose(grad, [-1e12, 1e12, 0.0, 0.0, (1e-60 - 1) / 1e-12], rtol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_bce_probabilities_extremes(backend, dtype):
    p = np.array([1e-7, 1 - 1e-7, 0.5], dtype)
    y = np.array([0.0, 1.0, 0.5], dtype)
    loss, grad = fastxent.binary_cross_entropy_with_grad(p, y, reduction="none", backend=backend)
    ref_l, ref_g = O.bce(p, y)
    O.assert_rowloss_close(loss, ref_l, O.loss_tol(dtype))
    check_grad(grad, ref_g, dtype, p.shape)


def test_bce_nan_propagates(backend):
    p = np.array([nan, 0.5])
    y = np.array([1.0, 1.0])
    loss, grad = fastxent.binary_cross_entropy_with_grad(p, y, reduction="none", backend=backend)
    assert np.isnan(loss[0]) and np.isnan(grad[0]) and np.isfinite(loss[1])
    l2, g2 = fastxent.binary_cross_entropy_with_logits_with_grad(p, y, reduction="none", backend=backend)
    assert np.isnan(l2[0]) and np.isnan(g2[0]) and np.isfinite(l2[1])


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_empty(backend, reduction):
    e = np.zeros((0, 3))
    for f in (fastxent.binary_cross_entropy_with_grad, fastxent.binary_cross_entropy_with_logits_with_grad):
        loss, grad = f(e, e, reduction=reduction, backend=backend)
        assert grad.shape == (0, 3)
        if reduction == "none":
            assert np.shape(loss) == (0, 3)
        elif reduction == "sum":
            assert loss == 0.0


def test_bce_large_parallel_sum(backend):
    # several BCE_BLOCK partial sums; total independent of threads, close to float64 oracle
    rng = np.random.default_rng(4)
    x = rng.standard_normal(100_003).astype(np.float32)
    y = (rng.random(100_003) < 0.3).astype(np.float32)
    pw = np.array([2.0], np.float32)
    ref, _ = O.bce_logits(x, y, None, np.resize(pw, x.size))
    s = fastxent.binary_cross_entropy_with_logits(x, y, pos_weight=pw, reduction="sum", backend=backend)
    assert abs(float(s) - ref.sum()) <= 1e-6 * (ref.sum() + x.size)
    m = fastxent.binary_cross_entropy_with_logits(x, y, pos_weight=pw, backend=backend)
    assert abs(float(m) - ref.mean()) <= 1e-6 * (ref.mean() + 1)


def _many_blocks_inputs(seed, dtype, variant):
    """Logits, labels (0, 1 and fractional), weight and pos_weight for the
    BCE-with-logits tests over several BCE blocks per thread and a tail
    that is not a whole number of the kernels' inner blocks."""
    rng = np.random.default_rng(seed)
    shape = (9409, 7)  # 4 * 16384 + 327 elements
    x = (4 * rng.standard_normal(shape)).astype(dtype)
    y = rng.uniform(0, 1, shape).astype(dtype)
    y.flat[::3] = 0.0
    y.flat[1::3] = 1.0
    w = rng.uniform(0.1, 2, shape).astype(dtype) if variant in ("weight", "both") else None
    pw = rng.uniform(0.5, 3, 7).astype(dtype) if variant in ("pos_weight", "both") else None
    return x, y, w, pw


@contextlib.contextmanager
def _threads(n):
    old = fastxent.get_num_threads()
    fastxent.set_num_threads(n)
    try:
        yield
    finally:
        fastxent.set_num_threads(old)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("variant", ["plain", "weight", "pos_weight", "both"])
def test_bce_logits_many_blocks_elementwise(backend, variant, dtype, threads):
    # every element's loss and gradient against the float64 oracle (the
    # Numba kernel prefetches y, w and the gradient a span at a time),
    # special values spread through the blocks
    x, y, w, pw = _many_blocks_inputs(41, dtype, variant)
    x.flat[::1001] = np.inf
    x.flat[7::1001] = -np.inf
    x.flat[13::997] = 90.0
    ref_l, ref_g = O.bce_logits(x, y, w, pw)
    with _threads(threads):
        loss, grad = fastxent.binary_cross_entropy_with_logits_with_grad(
            x, y, weight=w, pos_weight=pw, reduction="none", backend=backend)
    tol = O.loss_tol(dtype)
    np.testing.assert_allclose(loss, ref_l, rtol=tol, atol=tol)
    np.testing.assert_allclose(grad, ref_g, rtol=O.grad_tol(dtype), atol=O.grad_tol(dtype))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("variant", ["plain", "weight", "pos_weight", "both"])
def test_bce_logits_reduced_losses_many_blocks(backend, variant, dtype, threads):
    # The batch loss of every call form (loss alone, loss with gradient;
    # sum and mean), with whole vectors of each sign of x and of 0 and 1
    # labels, against the float64 oracle's sum: the kernels sum the element
    # losses in their own loop (one the compiler vectorises for each
    # combination of optional operands), so the reduced loss is checked
    # there, not only the elements.
    x, y, w, pw = _many_blocks_inputs(43, dtype, variant)
    x[:64] = 1.0
    x[64:128] = -1.0
    x.flat[13::997] = 90.0
    x.flat[17::991] = -90.0
    y[:32] = 0.0
    y[32:64] = 1.0
    y[64:96] = 0.0
    y[96:128] = 1.0
    ref_l, ref_g = O.bce_logits(x, y, w, pw)
    ref_l = np.asarray(ref_l, np.float64)
    # each element loss within loss_tol of its value, summed in float64
    slack = O.loss_tol(dtype) * np.abs(ref_l).sum() + 1e-9
    with _threads(threads):
        for reduction, ref, scale in (("sum", ref_l.sum(), 1.0), ("mean", ref_l.mean(), 1.0 / x.size)):
            alone = fastxent.binary_cross_entropy_with_logits(
                x, y, weight=w, pos_weight=pw, reduction=reduction, backend=backend)
            loss, grad = fastxent.binary_cross_entropy_with_logits_with_grad(
                x, y, weight=w, pos_weight=pw, reduction=reduction, backend=backend)
            for what, v in (("loss alone", alone), ("loss with grad", loss)):
                assert abs(float(v) - ref) <= slack * scale, (reduction, what, float(v), ref)
            np.testing.assert_allclose(grad, ref_g * scale, rtol=O.grad_tol(dtype),
                                       atol=O.grad_tol(dtype) * scale)


# ------------------------------------------------------------ identity with 2-class CE


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_two_class_ce_equals_bce_with_logits(backend, dtype, reduction):
    rng = np.random.default_rng(5)
    x = (3 * rng.standard_normal(9)).astype(dtype)
    y = rng.integers(0, 2, 9)
    logits = np.stack([np.zeros_like(x), x], axis=1)
    ce, gce = fastxent.cross_entropy_with_grad(logits, y, reduction=reduction, backend=backend)
    bl, gb = fastxent.binary_cross_entropy_with_logits_with_grad(x, y.astype(dtype), reduction=reduction, backend=backend)
    tol = O.loss_tol(dtype)
    np.testing.assert_allclose(np.asarray(ce, np.float64), np.asarray(bl, np.float64), rtol=2 * tol, atol=2 * tol)
    gtol = 2 * O.grad_tol(dtype) * float(np.max(np.abs(gb)))
    np.testing.assert_allclose(gce[:, 1], gb, rtol=0, atol=gtol)
    np.testing.assert_allclose(gce[:, 0], -gb, rtol=0, atol=gtol)
    # soft labels: P = [1 - y, y]
    ys = rng.uniform(0, 1, 9).astype(dtype)
    P = np.stack([1 - ys, ys], axis=1)
    ce, gce = fastxent.cross_entropy_with_grad(logits, P, reduction=reduction, backend=backend)
    bl, gb = fastxent.binary_cross_entropy_with_logits_with_grad(x, ys, reduction=reduction, backend=backend)
    np.testing.assert_allclose(np.asarray(ce, np.float64), np.asarray(bl, np.float64), rtol=4 * tol, atol=4 * tol)
    gtol = 4 * O.grad_tol(dtype) * float(np.max(np.abs(gb)))
    np.testing.assert_allclose(gce[:, 1], gb, rtol=0, atol=gtol)
    np.testing.assert_allclose(gce[:, 0], -gb, rtol=0, atol=gtol)


# ------------------------------------------------------------ errors


@pytest.mark.parametrize("bad", [-0.1, 1.0 + 1e-9, inf, -inf], ids=["neg", "above1", "inf", "-inf"])
def test_bce_p_outside_unit_interval(backend, bad):
    p = np.array([0.2, bad, 0.5])
    y = np.ones(3)
    with pytest.raises(ValueError):
        fastxent.binary_cross_entropy(p, y, backend=backend)
    with pytest.raises(ValueError):
        fastxent.binary_cross_entropy_with_grad(p, y, backend=backend)


def test_bce_shapes_not_broadcastable(backend):
    with pytest.raises(ValueError):
        fastxent.binary_cross_entropy(np.full((3, 4), 0.5), np.ones((4, 3)), backend=backend)
    with pytest.raises(ValueError):
        fastxent.binary_cross_entropy_with_logits(np.zeros((3, 4)), np.ones((3, 4)), weight=np.ones(3), backend=backend)
    with pytest.raises(ValueError):
        fastxent.binary_cross_entropy_with_logits(np.zeros((3, 4)), np.ones((3, 4)), pos_weight=np.ones(3), backend=backend)
    with pytest.raises(ValueError):
        fastxent.binary_cross_entropy_with_logits_with_grad(np.zeros((3, 4)), np.ones((3, 4)), out=np.empty((4, 3)), backend=backend)


@pytest.mark.parametrize("which", ["input", "target"])
def test_bce_non_floating(backend, which):
    a = np.array([[0, 1], [1, 0]])
    f = np.array([[0.2, 0.8], [0.5, 0.5]])
    args = (a, f) if which == "input" else (f, a)
    for fn in (fastxent.binary_cross_entropy, fastxent.binary_cross_entropy_with_logits):
        with pytest.raises(TypeError):
            fn(*args, backend=backend)
    with pytest.raises(TypeError):
        fastxent.binary_cross_entropy_with_logits(f.astype(complex), f, backend=backend)


def test_bce_bad_reduction(backend):
    with pytest.raises(ValueError):
        fastxent.binary_cross_entropy(np.full(3, 0.5), np.ones(3), reduction="avg", backend=backend)
    with pytest.raises(ValueError):
        fastxent.binary_cross_entropy_with_logits(np.zeros(3), np.ones(3), reduction="batchmean", backend=backend)


def test_bce_out_in_place_and_float16(backend):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 5)).astype(np.float32)
    y = rng.uniform(0, 1, (4, 5)).astype(np.float32)
    l_ref, g_ref = fastxent.binary_cross_entropy_with_logits_with_grad(x, y, backend=backend)
    xx = x.copy()
    l, g = fastxent.binary_cross_entropy_with_logits_with_grad(xx, y, out=xx, backend=backend)
    assert np.shares_memory(g, xx)
    np.testing.assert_array_equal(xx, g_ref)
    assert l == l_ref
    l16, g16 = fastxent.binary_cross_entropy_with_logits_with_grad(x.astype(np.float16), y.astype(np.float16), backend=backend)
    assert np.asarray(l16).dtype == np.float32 and g16.dtype == np.float32
    ro = np.empty((4, 5), np.float32)
    ro.setflags(write=False)
    with pytest.raises(ValueError):
        fastxent.binary_cross_entropy_with_logits_with_grad(x, y, out=ro, backend=backend)
    base = np.zeros((5, 5), np.float32)
    base[:4] = x
    with pytest.raises(ValueError):
        fastxent.binary_cross_entropy_with_logits_with_grad(base[:4], y, out=base[1:], backend=backend)


def test_bce_readonly_and_strided_inputs(backend):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 6))
    y = rng.uniform(0, 1, (4, 6))
    w = rng.uniform(0, 2, (4, 6))
    pw = rng.uniform(0.5, 2, 6)
    ref = fastxent.binary_cross_entropy_with_logits_with_grad(x, y, weight=w, pos_weight=pw, reduction="none", backend=backend)
    ref_p = fastxent.binary_cross_entropy_with_grad(1 / (1 + np.exp(-x)), y, weight=w, reduction="none", backend=backend)
    views = []
    for a in (x, y, w, pw):
        ro = a.copy()
        ro.setflags(write=False)
        views.append(ro)
    rx, ry, rw, rpw = views
    for args in [(rx, ry, rw, rpw), (np.asfortranarray(x), y.astype(">f8"), w[::-1].copy()[::-1], pw)]:
        got = fastxent.binary_cross_entropy_with_logits_with_grad(args[0], args[1], weight=args[2], pos_weight=args[3],
                                                                  reduction="none", backend=backend)
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_array_equal(got[1], ref[1])
        only = fastxent.binary_cross_entropy_with_logits(args[0], args[1], weight=args[2], pos_weight=args[3],
                                                         reduction="none", backend=backend)
        np.testing.assert_array_equal(only, ref[0])
    p = 1 / (1 + np.exp(-x))
    p.setflags(write=False)
    np.testing.assert_array_equal(fastxent.binary_cross_entropy(p, ry, weight=rw, reduction="none", backend=backend), ref_p[0])


def test_float32_element_loss_overflow_gives_inf_mean(backend):
    # found by the slow hypothesis run: w * l overflows float32 for the first
    # and last elements (1.99 * 2.33e38), so their float32 losses are inf and
    # so is the mean; Numba once let LLVM reassociate scale * (w * l) into
    # (scale * w) * l and returned a finite mean
    x = np.array([2.3303783e38, -1.4015664e38, 2.4842273e38], dtype=np.float32)
    y = np.zeros(3, np.float32)
    w = np.array([1.99199401, 1.52171934, 1.81847792])
    none = fastxent.binary_cross_entropy_with_logits(x, y, weight=w, reduction="none",
                                                     backend=backend)
    np.testing.assert_array_equal(none, np.float32([np.inf, 0.0, np.inf]))
    for red in ("mean", "sum"):
        assert fastxent.binary_cross_entropy_with_logits(
            x, y, weight=w, reduction=red, backend=backend) == np.inf


# A gradient factor (grad_output times the mean's 1/n) beyond float32's range:
# the kernels' float32 factor would be inf, d * inf NaN where d = 0 (x = 0 with
# y = 1/2; p = y) and inf where d * g is finite (x = 60 with y = 1: d ~ -9e-27).
# The gradient is formed in float64 and rounded once; the loss is the float32
# call's, unchanged.
@pytest.mark.parametrize("kind", ["logits", "prob"])
@pytest.mark.parametrize("how", ["scalar-sum", "scalar-mean", "array"])
def test_grad_output_beyond_float32_range(backend, kind, how):
    import _oracle as O

    if kind == "logits":
        x = np.array([0.0, 60.0, -30.0, 3.0, -0.5, 2.0], np.float32)
        y = np.array([0.5, 1.0, 0.0, 1.0, 0.0, 1.0], np.float32)
        fn, fg, oracle = (fastxent.binary_cross_entropy_with_logits,
                          fastxent.binary_cross_entropy_with_logits_with_grad, O.bce_logits)
    else:
        x = np.array([0.5, 0.25, 1.0, 0.0, 0.75, 1e-20], np.float32)
        y = np.array([0.5, 0.0, 1.0, 0.0, 1.0, 0.0], np.float32)
        fn, fg, oracle = fastxent.binary_cross_entropy, fastxent.binary_cross_entropy_with_grad, O.bce
    red = "none" if how == "array" else how.split("-")[1]
    g = {"scalar-sum": 1e39, "scalar-mean": 6e39,
         "array": np.array([1e39, 1e39, 1.0, 1e39, 2e38, 1e39])}[how]
    _, d = oracle(x, y)
    ref = d * g / (x.size if red == "mean" else 1)
    with np.errstate(over="ignore"):
        ref = ref.astype(np.float32)  # beyond float32's max is inf: the right answer
    loss, grad = fg(x, y, reduction=red, grad_output=g, backend=backend)
    assert grad.dtype == np.float32
    assert not np.any(np.isnan(grad)), grad
    np.testing.assert_array_equal(np.isinf(grad), np.isinf(ref))
    np.testing.assert_array_equal(grad[np.isinf(ref)], ref[np.isinf(ref)])
    fin = np.isfinite(ref)
    np.testing.assert_allclose(grad[fin], ref[fin], rtol=1e-5, atol=0)
    np.testing.assert_array_equal(loss, fn(x, y, reduction=red, backend=backend))
    out = np.empty_like(x)
    _, got = fg(x, y, reduction=red, grad_output=g, out=out, backend=backend)
    assert got is out
    np.testing.assert_array_equal(out, grad)
