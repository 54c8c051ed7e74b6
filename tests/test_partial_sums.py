"""The cross-entropy kernels' partial sums (``partial``).

For ``reduction="mean"``/``"sum"`` the kernels split the rows into groups of
``CE_ROWS`` consecutive rows and, in each group, add the losses of the rows
``r`` with ``r % CE_LANES == j`` into lane ``j``, in row order, from 0.0; the
public layer sums those; the compiled kernels never write a per-row buffer
for it.
Oracle: the same backend's per-row losses (``loss_out``), grouped and added
here in plain Python floats.  Row counts are chosen to cross the thread split,
the kernels' scratch chunks (``_CE_LOSS_ROWS`` = 8192 rows) and the few-class
blocks, with a ragged last group, ignored rows and non-finite rows.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import fastxent
from fastxent import _dispatch
from fastxent._reference import CE_LANES, CE_ROWS


def _group_sums(loss):
    """The oracle, in plain Python floats: per group of ``CE_ROWS`` rows,
    ``CE_LANES`` sums, lane ``j`` of the rows ``r % CE_LANES == j``, left to
    right from 0.0 (a short last group's missing rows: nothing)."""
    out = []
    for g in range(0, len(loss), CE_ROWS):
        for j in range(CE_LANES):
            acc = 0.0
            for v in loss[g + j:g + CE_ROWS:CE_LANES].tolist():
                acc += v
            out.append(acc)
    return np.array(out, np.float64)


def _nparts(R):
    return -(-R // CE_ROWS) * CE_LANES


def _kernel(backend, name):
    _dispatch.resolve(backend)
    return getattr(_dispatch._loaded[backend], name)


def _inputs(rng, R, C, dt):
    X = rng.standard_normal((R, C)).astype(dt) * dt(3)
    t = rng.integers(0, C, R).astype(np.int64)
    t[5::97] = -100  # ignored rows
    X[7::1013, 1] = np.nan  # NaN rows
    X[11::2039, :] = -np.inf  # all -inf rows
    P = rng.random((R, C)).astype(dt)
    P /= P.sum(axis=1, keepdims=True)
    return X, t, P


def _run(backend, soft, grad, X, t, P, loss_out, partial, nthreads):
    R, C = X.shape
    w = np.empty(0, X.dtype)
    if soft:
        if grad:
            _kernel(backend, "ce_soft_loss_grad")(
                X, P, w, 0.1, 1e-3, 0.0, 1.0 / R, 1.0 / R, 1.0, np.empty(0),
                loss_out, partial, np.empty_like(X), nthreads)
        else:
            _kernel(backend, "ce_soft_loss")(
                X, P, w, 0.1, 1e-3, 0.0, 1.0 / R, 1.0 / R, loss_out, partial, nthreads)
    elif grad:
        _kernel(backend, "ce_loss_grad")(
            X, t, w, -100, 0.0, 1e-3, 0.0, 1.0 / R, 1.0 / R, 1.0, np.empty(0),
            loss_out, partial, np.empty_like(X), nthreads)
    else:
        _kernel(backend, "ce_loss")(
            X, t, w, -100, 0.0, 1e-3, 0.0, 1.0 / R, 1.0 / R, loss_out, partial, nthreads)


@pytest.mark.parametrize("R, C", [(2 * 8192 + 13, 10), (8192 + 8, 3), (1003, 70), (9, 1000),
                                  (64 * 40, 16)])
@pytest.mark.parametrize("soft", [False, True], ids=["int", "soft"])
@pytest.mark.parametrize("grad", [False, True], ids=["loss", "fused"])
def test_partial_sums_are_the_row_losses_grouped(backend, rng, R, C, soft, grad):
    X, t, P = _inputs(rng, R, C, np.float32)
    rows = np.full(R, -1.0)
    _run(backend, soft, grad, X, t, P, rows, np.empty(0), 1)
    want = _group_sums(rows)
    assert np.isnan(want).any() and not np.isnan(want).all()  # NaN groups stay NaN
    for nthreads in (1, 2):
        part = np.full(_nparts(R), -1.0)
        _run(backend, soft, grad, X, t, P, np.empty(0), part, nthreads)
        np.testing.assert_array_equal(part, want, err_msg="%d threads" % nthreads)


@pytest.mark.parametrize("soft", [False, True], ids=["int", "soft"])
def test_both_outputs_at_once(backend, rng, soft):
    """A kernel asked for both writes both, consistently (the public layer
    asks for one)."""
    R, C = 8192 + 21, 12
    X, t, P = _inputs(rng, R, C, np.float64)
    rows = np.full(R, -1.0)
    part = np.full(_nparts(R), -1.0)
    _run(backend, soft, True, X, t, P, rows, part, 2)
    np.testing.assert_array_equal(part, _group_sums(rows))


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_reduced_loss_is_the_sum_of_the_unreduced(backend, rng, reduction):
    """The public reduction, formed from the partial sums, against the
    unreduced losses summed exactly (``math.fsum``) and, for the mean, divided
    by the count of non-ignored rows."""
    R, C = 3 * 8192 + 5, 10
    X = rng.standard_normal((R, C)).astype(np.float32)
    t = rng.integers(0, C, R)
    t[::17] = -100
    rows = fastxent.cross_entropy(X, t, reduction="none", backend=backend).astype(np.float64)
    want = math.fsum(rows.tolist())
    if reduction == "mean":
        want /= np.count_nonzero(t != -100)
    for nthreads in (1, 2):
        fastxent.set_num_threads(nthreads)
        got = fastxent.cross_entropy(X, t, reduction=reduction, backend=backend)
        loss, _ = fastxent.cross_entropy_with_grad(X, t, reduction=reduction, backend=backend)
        np.testing.assert_allclose(float(got), want, rtol=2e-6)
        assert float(loss) == float(got)
