"""The Cython kernels' own argument checks.

The public layer validates everything before a kernel runs; the Cython
kernels take raw data pointers, so they check structure themselves as a last
line of defence: dtype, dimensions, every shape against ``X``'s, contiguity,
alignment and writeability.  A misused kernel must raise, not read or write
out of bounds.  (NumPy kernels index with bounds checks; Numba kernels, as
Numba compiles by default, do not: the public layer's checks protect them.)
"""

from __future__ import annotations

import numpy as np
import pytest

from fastxent import _dispatch

pytestmark = pytest.mark.skipif(
    _dispatch._unavailable_reason("cython") is not None, reason="cython backend not built"
)

R, C = 6, 5
F32, F64 = np.float32, np.float64


def _k():
    return _dispatch._load("cython")


def _ce_args(dt=F32):
    """Good arguments of ce_loss_grad, by name (a fresh set each call)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((R, C)).astype(dt)
    return dict(
        X=X, target=np.arange(R, dtype=np.int64) % C, weight=np.ones(C, dt),
        ignore_index=-100, eps=0.0, z=0.0, softcap=0.0, ce_scale=1.0,
        z_scale=1.0, gscalar=1.0, gout=np.ones(R), loss_out=np.empty(R),
        partial=np.empty(0), grad_out=np.empty_like(X),
    )


def _call_ce(**over):
    a = _ce_args()
    a.update(over)
    _k().ce_loss_grad(*a.values(), 1)
    return a


def test_good_arguments_run():
    a = _call_ce()
    assert np.all(np.isfinite(a["loss_out"])) and np.all(np.isfinite(a["grad_out"]))


@pytest.mark.parametrize("name, bad, exc, words", [
    ("target", np.zeros(R - 1, np.int64), ValueError, "target has shape"),
    ("target", np.zeros(R, np.int32), TypeError, "target has dtype int32"),
    ("target", np.zeros((R, 1), np.int64), ValueError, "target has shape"),
    ("weight", np.ones(C + 1, F32), ValueError, "weight has shape"),
    ("weight", np.ones(C, F64), TypeError, "weight has dtype float64"),
    ("gout", np.ones(R + 3), ValueError, "gout has shape"),
    ("loss_out", np.empty(R - 1), ValueError, "loss_out has shape"),
    ("loss_out", np.empty(R, F32), TypeError, "loss_out has dtype float32"),
    ("partial", np.empty(2), ValueError, "partial has shape"),
    ("partial", np.empty(1, F32), TypeError, "partial has dtype float32"),
    ("grad_out", np.empty((R, C + 1), F32), ValueError, "grad_out has shape"),
    ("grad_out", np.empty((R, C), F64), TypeError, "grad_out has dtype float64"),
    ("grad_out", np.empty((C, R), F32).T, ValueError, "C-contiguous"),
    ("grad_out", [[0.0] * C] * R, TypeError, "must be a numpy.ndarray"),
    ("X", np.zeros((R, C), np.float16), TypeError, "float32 or float64"),
    ("X", np.zeros((R, C), ">f4"), TypeError, "X has dtype"),
    ("X", np.zeros(R * C, F32), ValueError, "X has shape"),
])
def test_ce_refuses_misshaped(name, bad, exc, words):
    with pytest.raises(exc, match=words):
        _call_ce(**{name: bad})


def test_read_only_output_refused():
    g = np.empty((R, C), F32)
    g.flags.writeable = False
    with pytest.raises(ValueError, match="grad_out is read-only"):
        _call_ce(grad_out=g)


def test_misaligned_refused():
    raw = np.zeros(R * C * 4 + 1, np.uint8)
    X = raw[1:].view(F32).reshape(R, C)
    assert not X.flags.aligned
    with pytest.raises(ValueError, match="aligned"):
        _call_ce(X=X)


def test_absent_optionals_are_empty_or_none():
    base = _call_ce()
    a = _call_ce(weight=np.empty(0, F32), gout=np.empty(0))
    np.testing.assert_array_equal(a["loss_out"], base["loss_out"])  # all weights 1
    np.testing.assert_array_equal(a["grad_out"], base["grad_out"])


def test_softmax_family_and_soft_targets_check_shapes():
    k = _k()
    X = np.zeros((R, C), F32)
    with pytest.raises(ValueError, match="out has shape"):
        k.softmax(X, np.empty((R, C - 1), F32), 1)
    with pytest.raises(TypeError, match="out has dtype"):
        k.log_softmax(X, np.empty((R, C), F64), 1)
    with pytest.raises(ValueError, match="out has shape"):
        k.logsumexp(X, np.empty(R + 1), 1)
    with pytest.raises(ValueError, match="P has shape"):
        k.ce_soft_loss(X, np.zeros((R + 1, C), F32), np.empty(0, F32), 0.0, 0.0,
                       0.0, 1.0, 1.0, np.empty(R), np.empty(0), 1)
    with pytest.raises(ValueError, match="partial has shape"):
        k.ce_soft_loss(X, np.zeros((R, C), F32), np.empty(0, F32), 0.0, 0.0,
                       0.0, 1.0, 1.0, np.empty(0), np.empty(2), 1)


def test_bce_checks_lengths():
    k = _k()
    n = 40000  # three BCE blocks
    x = np.zeros(n, F32)
    y = np.zeros(n, F32)
    none = np.empty(0, F32)
    with pytest.raises(ValueError, match="Y has shape"):
        k.bce_logits_loss(x, y[:-1], none, none, 1.0, none, np.empty(3), 1)
    with pytest.raises(ValueError, match="partial has shape"):
        k.bce_logits_loss(x, y, none, none, 1.0, none, np.empty(2), 1)
    with pytest.raises(ValueError, match="W has shape"):
        k.bce_loss(x, y, np.ones(n - 1, F32), 1.0, none, np.empty(3), 1)
    with pytest.raises(ValueError, match="grad_out has shape"):
        k.bce_logits_loss_grad(x, y, none, none, 1.0, 1.0, np.empty(0), none,
                               np.empty(3), np.empty(n - 1, F32), 1)
    part = np.empty(3)
    k.bce_logits_loss(x, y, none, np.ones(7, F32), 1.0, none, part, 2)
    np.testing.assert_allclose(part.sum(), n * np.log(2.0), rtol=1e-6)
