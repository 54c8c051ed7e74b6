"""Parity with PyTorch's functions of the same names (values and autograd gradients), float64.

Skipped when torch is not importable: torch is a reference here, never a dependency.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastxent

torch = pytest.importorskip("torch")
F = torch.nn.functional

TOL = dict(rtol=1e-12, atol=1e-13)


def torch_ce(x, t, axis, **kw):
    """PyTorch cross_entropy with the class axis at 1 (its layout), with autograd."""
    xt = torch.tensor(np.moveaxis(x, axis, 1) if x.ndim > 1 else x, requires_grad=True)
    if np.issubdtype(t.dtype, np.floating):
        tt = torch.tensor(np.moveaxis(t, axis, 1) if t.ndim > 1 else t)
    else:
        tt = torch.tensor(t)
    if kw.get("weight") is not None:
        kw["weight"] = torch.tensor(kw["weight"])
    loss = F.cross_entropy(xt, tt, **kw)
    return loss, xt


CASES = {
    "plain": {},
    "weight": {"weight": np.array([1.0, 0.5, 2.0, 3.0, 0.25])},
    "ignore": {"ignore": True},
    "ignore_index=3": {"ignore_index": 3},
    "smoothing": {"label_smoothing": 0.1},
    "weight+ignore+smoothing": {"weight": np.array([1.0, 0.5, 2.0, 3.0, 0.25]), "ignore": True, "label_smoothing": 0.25},
}
LAYOUTS = {"NC": ((7, 5), -1), "NCd1-axis1": ((3, 5, 4), 1), "NCd1d2-axis1": ((2, 5, 3, 2), 1), "CN-axis0": ((5, 6), 0)}


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("kind", ["int", "soft"])
@pytest.mark.parametrize("case", list(CASES))
def test_cross_entropy_matches_torch(backend, case, kind, layout, reduction):
    opts = CASES[case]
    if kind == "soft" and ("ignore" in opts or "ignore_index" in opts):
        pytest.skip("ignore_index does not apply to soft targets")
    shape, axis = LAYOUTS[layout]
    rng = np.random.default_rng(hash((case, kind, layout, reduction)) % 2**32)
    x = 2 * rng.standard_normal(shape)
    C = shape[axis]
    tshape = tuple(s for i, s in enumerate(shape) if i != axis % len(shape))
    if kind == "int":
        t = rng.integers(0, C, tshape)
        if opts.get("ignore"):
            t.flat[0] = -100
            t.flat[2] = -100
    else:
        P = rng.dirichlet(np.ones(C), size=int(np.prod(tshape)))
        t = np.moveaxis(P.reshape(tshape + (C,)), -1, axis % len(shape))
    kw = {k: v for k, v in opts.items() if k != "ignore"}
    loss_t, xt = torch_ce(x, t, axis, reduction=reduction, **dict(kw))
    g = rng.uniform(0.5, 1.5, size=tuple(loss_t.shape)) if reduction == "none" else 0.6
    (loss_t * torch.tensor(g, dtype=torch.float64)).sum().backward()
    grad_t = np.moveaxis(xt.grad.numpy(), 1, axis) if x.ndim > 1 else xt.grad.numpy()

    loss, grad = fastxent.cross_entropy_with_grad(x, t, axis=axis, reduction=reduction, grad_output=g,
                                                  backend=backend, **kw)
    expected = loss_t.detach().numpy()
    if reduction == "none" and axis != 1 and x.ndim > 1:
        pass  # per-row losses are shaped like the integer target in both
    np.testing.assert_allclose(loss, expected, **TOL)
    np.testing.assert_allclose(grad, grad_t, **TOL)


def test_single_row_matches_torch(backend):
    x = np.array([2.0, 4.0, 0.5, -1.0])
    t = np.array(2)
    lt = F.cross_entropy(torch.tensor(x), torch.tensor(t), label_smoothing=0.1)
    assert abs(float(fastxent.cross_entropy(x, t, label_smoothing=0.1, backend=backend)) - lt.item()) < 1e-13


# ------------------------------------------------------------ binary


BCE_SHAPES = {"1d": (11,), "2d": (4, 6), "3d": (2, 3, 5)}


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", list(BCE_SHAPES))
@pytest.mark.parametrize("weighted", [False, True], ids=["noweight", "weight"])
def test_bce_matches_torch(backend, reduction, shape, weighted):
    rng = np.random.default_rng(5)
    s = BCE_SHAPES[shape]
    p = rng.uniform(0.01, 0.99, s)
    p.flat[0] = 0.0
    p.flat[1] = 1.0
    y = rng.uniform(0, 1, s)
    y.flat[0] = 1.0  # log(0) clamped at -100
    y.flat[1] = 1.0
    w = rng.uniform(0.5, 2, s[-1:]) if weighted else None
    pt = torch.tensor(p, requires_grad=True)
    lt = F.binary_cross_entropy(pt, torch.tensor(y), weight=None if w is None else torch.tensor(w), reduction=reduction)
    g = rng.uniform(0.5, 1.5, s) if reduction == "none" else 0.8
    (lt * torch.tensor(g, dtype=torch.float64)).sum().backward()
    loss, grad = fastxent.binary_cross_entropy_with_grad(p, y, weight=w, reduction=reduction, grad_output=g, backend=backend)
    np.testing.assert_allclose(loss, lt.detach().numpy(), **TOL)
    # PyTorch clamps p(1-p) at float32(1e-12) = 9.99999996e-13 (a float literal
    # in its kernel); SPEC says 1e-12. Clamped entries agree to 4e-9 only.
    clamped = np.broadcast_to(p * (1 - p) < 1e-12, grad.shape)
    np.testing.assert_allclose(grad[~clamped], pt.grad.numpy()[~clamped], rtol=1e-12, atol=0)
    np.testing.assert_allclose(grad[clamped], pt.grad.numpy()[clamped], rtol=1e-8, atol=0)
    np.testing.assert_allclose(fastxent.binary_cross_entropy(p, y, weight=w, reduction=reduction, backend=backend),
                               lt.detach().numpy(), **TOL)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", list(BCE_SHAPES))
@pytest.mark.parametrize("weights", ["none", "weight", "pos_weight", "both"])
def test_bce_with_logits_matches_torch(backend, reduction, shape, weights):
    rng = np.random.default_rng(6)
    s = BCE_SHAPES[shape]
    x = 4 * rng.standard_normal(s)
    x.flat[0] = 40.0
    x.flat[1] = -40.0
    y = rng.uniform(0, 1, s)
    y.flat[2] = 0.0
    y.flat[3] = 1.0
    w = rng.uniform(0.5, 2, (1,) * (len(s) - 1) + s[-1:]) if weights in ("weight", "both") else None
    pw = rng.uniform(0.5, 3, s[-1:]) if weights in ("pos_weight", "both") else None
    xt = torch.tensor(x, requires_grad=True)
    lt = F.binary_cross_entropy_with_logits(
        xt, torch.tensor(y), weight=None if w is None else torch.tensor(w),
        pos_weight=None if pw is None else torch.tensor(pw), reduction=reduction)
    g = rng.uniform(0.5, 1.5, s) if reduction == "none" else 0.8
    (lt * torch.tensor(g, dtype=torch.float64)).sum().backward()
    loss, grad = fastxent.binary_cross_entropy_with_logits_with_grad(
        x, y, weight=w, pos_weight=pw, reduction=reduction, grad_output=g, backend=backend)
    np.testing.assert_allclose(loss, lt.detach().numpy(), **TOL)
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(
        fastxent.binary_cross_entropy_with_logits(x, y, weight=w, pos_weight=pw, reduction=reduction, backend=backend),
        lt.detach().numpy(), **TOL)
