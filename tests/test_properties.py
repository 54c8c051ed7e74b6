"""Hypothesis properties of the softmax family and the cross-entropy, every backend."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastxent

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
TOL = {np.float32: 2e-6, np.float64: 1e-12}


@st.composite
def logits(draw, dtype=None, min_classes=1, max_classes=12, bound=30.0):
    dtype = dtype or draw(st.sampled_from([np.float32, np.float64]))
    n = draw(st.integers(1, 6))
    c = draw(st.integers(min_classes, max_classes))
    elems = st.floats(-bound, bound, allow_nan=False, allow_infinity=False, width=32 if dtype == np.float32 else 64)
    return draw(hnp.arrays(dtype, (n, c), elements=elems))


@SETTINGS
@given(x=logits())
def test_softmax_rows_sum_to_one(backend, x):
    s = fastxent.softmax(x, backend=backend)
    assert np.all(s >= 0) and np.all(s <= 1)
    tol = TOL[x.dtype.type] * x.shape[1]
    np.testing.assert_allclose(s.sum(axis=1, dtype=np.float64), 1.0, rtol=0, atol=tol)


@SETTINGS
@given(x=logits(), shift=st.floats(-20, 20))
def test_shift_invariance(backend, x, shift):
    shift = x.dtype.type(shift)
    y = x + shift
    # only where the shift is exact in this precision, so both see the same math
    if not np.array_equal(y - shift, x):
        return
    tol = TOL[x.dtype.type]
    s1, s2 = fastxent.softmax(x, backend=backend), fastxent.softmax(y, backend=backend)
    np.testing.assert_allclose(s1, s2, rtol=0, atol=tol * 2)
    t = np.zeros(x.shape[0], np.int64)
    l1 = fastxent.cross_entropy(x, t, reduction="none", backend=backend)
    l2 = fastxent.cross_entropy(y, t, reduction="none", backend=backend)
    np.testing.assert_allclose(l1, l2, rtol=2 * tol, atol=2 * tol)
    lse1, lse2 = fastxent.logsumexp(x, backend=backend), fastxent.logsumexp(y, backend=backend)
    err = np.abs((lse2.astype(np.float64) - float(shift)) - lse1)
    assert np.all(err <= 4 * tol * (1 + np.abs(lse1) + abs(float(shift)))), (lse1, lse2, shift)


@SETTINGS
@given(x=logits(bound=1e4))
def test_log_softmax_is_log_of_softmax(backend, x):
    ls = fastxent.log_softmax(x, backend=backend).astype(np.float64)
    s = fastxent.softmax(x, backend=backend).astype(np.float64)
    tol = TOL[x.dtype.type]
    assert np.all(ls <= tol)
    ok = s > 1e-30  # where softmax has not underflowed, and its log is well-conditioned
    with np.errstate(divide="ignore"):
        np.testing.assert_allclose(ls[ok], np.log(s[ok]), rtol=4 * tol, atol=4 * tol)
    # and where it has underflowed, log_softmax is very negative, not -inf or NaN
    assert np.all(np.isfinite(ls))


@SETTINGS
@given(x=logits(), data=st.data(),
       eps=st.sampled_from([0.0, 0.1, 1.0]), softcap=st.sampled_from([None, 1.0, 10.0]),
       weighted=st.booleans())
def test_loss_non_negative_without_zloss(backend, x, data, eps, softcap, weighted):
    C = x.shape[1]
    t = data.draw(hnp.arrays(np.int64, x.shape[0], elements=st.integers(0, C - 1)))
    w = data.draw(hnp.arrays(x.dtype, C, elements=st.floats(0, 4, width=32))) if weighted else None
    loss = fastxent.cross_entropy(x, t, label_smoothing=eps, softcap=softcap, weight=w, reduction="none", backend=backend)
    assert np.all(loss >= 0), loss
    P = fastxent.softmax(x[::-1], backend=backend)  # any distribution works as a soft target
    soft = fastxent.cross_entropy(x, P, label_smoothing=eps, softcap=softcap, weight=w, reduction="none", backend=backend)
    assert np.all(soft >= 0), soft


@SETTINGS
@given(x=logits(), data=st.data(), z=st.sampled_from([1e-3, 0.5]), soft=st.booleans())
def test_gradient_rows_sum_to_zero(backend, x, data, z, soft):
    # Without weights or smoothing, sum_c dL/dx_c = sum_c (p_c - y_c) = 0.
    # The z-loss adds 2 z lse to each row sum (sum_c p_c = 1): checked too.
    C = x.shape[1]
    if soft:
        t = data.draw(hnp.arrays(np.float64, x.shape, elements=st.floats(0, 1)))
        t[:, 0] += 1e-3  # no all-zero row
        t = (t / t.sum(axis=1, keepdims=True)).astype(x.dtype)
    else:
        t = data.draw(hnp.arrays(np.int64, x.shape[0], elements=st.integers(0, C - 1)))
    _, g = fastxent.cross_entropy_with_grad(x, t, reduction="sum", backend=backend)
    tol = TOL[x.dtype.type] * C
    np.testing.assert_allclose(g.sum(axis=1, dtype=np.float64), 0.0, rtol=0, atol=tol)
    # with z-loss, the row sum is exactly 2 z lse (sum_c p_c = 1)
    _, gz = fastxent.cross_entropy_with_grad(x, t, reduction="sum", z_loss=z, backend=backend)
    lse = fastxent.logsumexp(x.astype(np.float64), backend="numpy")
    err = np.abs(gz.sum(axis=1, dtype=np.float64) - 2 * z * lse)
    assert np.all(err <= tol * (1 + 2 * z * np.abs(lse))), (err, lse)


@SETTINGS
@given(x=logits())
def test_backend_agrees_with_numpy_backend(backend, x):
    t = np.arange(x.shape[0]) % x.shape[1]
    l1, g1 = fastxent.cross_entropy_with_grad(x, t, reduction="none", label_smoothing=0.1, backend=backend)
    l2, g2 = fastxent.cross_entropy_with_grad(x, t, reduction="none", label_smoothing=0.1, backend="numpy")
    tol = TOL[x.dtype.type]
    np.testing.assert_allclose(l1, l2, rtol=tol, atol=tol)
    np.testing.assert_allclose(g1, g2, rtol=0, atol=2 * tol)
