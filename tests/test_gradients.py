"""Fused gradients against 4th-order central finite differences of the public loss (float64).

For reduction="none" one class column is perturbed in every row at once (rows
are independent, so the per-row loss vector gives each row's partial
derivative; shifting a whole row would change no probability). For "mean" and
"sum" each logit is perturbed alone, since the reduced loss mixes the rows.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastxent
import _oracle as O

H = 1e-3
OPTIONS = {
    "plain": {},
    "weight": {"weight": np.array([0.5, 2.0, 1.0, 0.25, 1.5])},
    "ignore": {"ignore": True},
    "smoothing": {"label_smoothing": 0.15},
    "zloss": {"z_loss": 0.05},
    "softcap": {"softcap": 2.5},
    "smoothing+weight": {"label_smoothing": 0.3, "weight": np.array([0.5, 2.0, 1.0, 0.25, 1.5])},
    "all": {"ignore": True, "label_smoothing": 0.2, "z_loss": 0.02, "softcap": 3.0,
            "weight": np.array([0.5, 2.0, 0.0, 0.25, 1.5])},
}
LAYOUTS = {"NC": ((4, 5), -1), "NCd1": ((2, 5, 3), 1)}


def make(kind, opts, layout, seed):
    shape, axis = LAYOUTS[layout]
    rng = np.random.default_rng(seed)
    x = 1.5 * rng.standard_normal(shape)
    C = shape[axis]
    tshape = tuple(s for i, s in enumerate(shape) if i != axis % len(shape))
    kw = {k: v for k, v in opts.items() if k != "ignore"}
    kw["axis"] = axis
    if kind == "int":
        t = rng.integers(0, C, tshape)
        if opts.get("ignore"):
            t.flat[0] = -100
    else:
        P = rng.dirichlet(np.ones(C), size=int(np.prod(tshape)))
        t = np.moveaxis(P.reshape(tshape + (C,)), -1, axis % len(shape))
    return x, t, kw, rng


def _params():
    for kind in ("int", "soft"):
        for name, opts in OPTIONS.items():
            if kind == "soft" and opts.get("ignore"):
                opts = {k: v for k, v in opts.items() if k != "ignore"}
            for layout in LAYOUTS:
                yield pytest.param(kind, opts, layout, id="%s-%s-%s" % (kind, name, layout))


def fd_tol(grad):
    return 1e-8 * max(1.0, float(np.max(np.abs(grad))))


@pytest.mark.parametrize("kind,opts,layout", list(_params()))
def test_none_reduction_column_perturbation(backend, kind, opts, layout):
    x, t, kw, rng = make(kind, opts, layout, 1)
    axis = kw["axis"]
    row_shape = np.delete(np.array(x.shape), axis % x.ndim)
    g = rng.uniform(0.5, 2.0, size=tuple(row_shape))
    _, grad = fastxent.cross_entropy_with_grad(x, t, reduction="none", grad_output=g, backend=backend, **kw)
    C = x.shape[axis]
    for c in range(C):
        def f(col_shift, c=c):
            xx = x.copy()
            idx = [slice(None)] * x.ndim
            idx[axis] = c
            xx[tuple(idx)] += col_shift
            return np.asarray(fastxent.cross_entropy(xx, t, reduction="none", backend=backend, **kw), np.float64)
        fd = g * O.central_diff4(lambda s: f(s), 0.0, H)
        idx = [slice(None)] * x.ndim
        idx[axis] = c
        np.testing.assert_allclose(grad[tuple(idx)], fd, rtol=0, atol=fd_tol(grad),
                                   err_msg="class column %d" % c)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("kind,opts,layout", list(_params()))
def test_reduced_elementwise_perturbation(backend, kind, opts, layout, reduction):
    x, t, kw, _ = make(kind, opts, layout, 2)
    gout = 0.7
    _, grad = fastxent.cross_entropy_with_grad(x, t, reduction=reduction, grad_output=gout, backend=backend, **kw)
    fd = np.empty_like(x)
    for i in np.ndindex(x.shape):
        def f(s, i=i):
            xx = x.copy()
            xx[i] += s
            return float(fastxent.cross_entropy(xx, t, reduction=reduction, backend=backend, **kw))
        fd[i] = gout * O.central_diff4(f, 0.0, H)
    np.testing.assert_allclose(grad, fd, rtol=0, atol=fd_tol(grad))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_grad_only_equals_fused(backend, reduction):
    x, t, kw, _ = make("int", OPTIONS["all"], "NCd1", 3)
    _, g1 = fastxent.cross_entropy_with_grad(x, t, reduction=reduction, backend=backend, **kw)
    g2 = fastxent.cross_entropy_grad(x, t, reduction=reduction, backend=backend, **kw)
    np.testing.assert_array_equal(g1, g2)
    l1 = fastxent.cross_entropy(x, t, reduction=reduction, backend=backend, **kw)
    l2, _ = fastxent.cross_entropy_with_grad(x, t, reduction=reduction, backend=backend, **kw)
    if backend == "numba":  # see test_loss_only_equals_fused_loss
        np.testing.assert_allclose(l1, l2, rtol=4 * np.finfo(x.dtype).eps, atol=0)
    else:
        np.testing.assert_array_equal(l1, l2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("C", [7, 64, 100, 1000, 4099])
def test_loss_only_equals_fused_loss(backend, C, dtype):
    # the compiled kernels sum exps in float blocks with the target's block
    # exact; the loss-only call must sum alike (same rows, same order). In
    # Cython (and NumPy) that is the same loop with the store compiled out:
    # the same bits. Numba's loss alone is a specialisation of the exp-sum
    # without stores, whose reassociable block sums LLVM may vectorise in
    # another order (docs/performance.md): within a few ULP, and which
    # rows differ depends on the order the specialisations were compiled
    # in (this test alone, on an empty NUMBA_CACHE_DIR: 1 ULP in 1 row of
    # 40 at C = 1000, float64; bit for bit inside the whole suite).
    rng = np.random.default_rng(C)
    x = (3 * rng.standard_normal((40, C))).astype(dtype)
    x[0, :] = 0.0  # a uniform row
    x[1, 5 % C] = 40.0  # a confident row: p_y - 1 tiny at the target
    t = rng.integers(0, C, 40)
    t[1] = 5 % C
    l1 = fastxent.cross_entropy(x, t, reduction="none", backend=backend)
    l2, _ = fastxent.cross_entropy_with_grad(x, t, reduction="none", backend=backend)
    if backend == "numba":
        np.testing.assert_allclose(l1, l2, rtol=4 * np.finfo(dtype).eps, atol=0)
    else:
        np.testing.assert_array_equal(l1, l2)
    xi = x.copy()
    l4, _ = fastxent.cross_entropy_with_grad(xi, t, reduction="none", backend=backend, out=xi)
    np.testing.assert_array_equal(l2, l4)  # in place: the fused call's own bits


@pytest.mark.parametrize("C", [100, 4099, 32000])
def test_confident_rows_target_gradient_float32(backend, C):
    # p_y = 1 - d for d down to 1e-9: the target gradient -(S - e_y) / S must
    # keep its relative accuracy (SPEC: 2e-6 of the row's largest gradient,
    # which is |g_y| here) even though S is summed in float blocks
    gaps = np.array([1e-2, 1e-4, 1e-6, 1e-9])
    rows = []
    rng = np.random.default_rng(0)
    for d in gaps:
        r = rng.uniform(-3.0, 0.0, C)
        # choose x_y so that sum_{c != y} exp(x_c - x_y) = d
        rest = np.log(np.sum(np.exp(r[1:])))
        r[0] = rest - np.log(d)
        rows.append(r)
    x = np.array(rows, dtype=np.float32)
    t = np.zeros(len(gaps), dtype=np.int64)
    _, g = fastxent.cross_entropy_with_grad(x, t, reduction="sum", backend=backend)
    _, eg = O.cross_entropy(x, t, reduction="sum")
    O.assert_grad_close(g, eg, O.grad_tol(np.float32))


def test_grad_output_scales_linearly(backend):
    x, t, kw, _ = make("soft", OPTIONS["all"], "NC", 4)
    kw.pop("ignore", None)
    _, g1 = fastxent.cross_entropy_with_grad(x, t, grad_output=1.0, backend=backend, **kw)
    _, g3 = fastxent.cross_entropy_with_grad(x, t, grad_output=-3.0, backend=backend, **kw)
    np.testing.assert_allclose(g3, -3.0 * g1, rtol=1e-14, atol=1e-300)
