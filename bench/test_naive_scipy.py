"""The NumPy fallback beside the naive ``scipy.special`` composition of each work.

Issue #4 asks that the fallback be no slower than what a NumPy user would write
with ``scipy.special``. Each case here is that composition, in the same
pytest-benchmark group as the ``numpy`` runner of ``test_bench.py`` (same work,
shape and dtype, the same inputs), so ``pytest bench --benchmark-enable``
prints them side by side. Skipped without SciPy.
"""

import os

import numpy as np
import pytest

from fastxent import _bench

sp = pytest.importorskip("scipy.special")

GROUPS = sorted({(c.kernel, c.shape, c.dtype)
                 for c in _bench.cases(quick=not os.environ.get("FASTXENT_BENCH_FULL"),
                                       peers=False, backends=["numpy"])})


def _naive(kernel, x, t):
    """What the work is, written plainly with scipy.special (mean reductions)."""
    n = x.shape[0]
    rows = np.arange(n)
    if kernel == "ce_loss_grad":
        def run():
            loss = np.mean(sp.logsumexp(x, axis=1) - x[rows, t])
            g = sp.softmax(x, axis=1)
            g[rows, t] -= 1
            g /= n
            return loss, g
    elif kernel == "ce_loss":
        def run():
            return np.mean(sp.logsumexp(x, axis=1) - x[rows, t])
    elif kernel == "softmax":
        def run():
            return sp.softmax(x, axis=1)
    elif kernel == "log_softmax":
        def run():
            return sp.log_softmax(x, axis=1)
    elif kernel == "bce_logits_loss_grad":
        y = (t[:, None] % 2 == np.arange(x.shape[1]) % 2).astype(x.dtype)

        def run():
            loss = -np.mean(y * sp.log_expit(x) + (1 - y) * sp.log_expit(-x))
            return loss, (sp.expit(x) - y) / x.size
    else:
        raise ValueError(kernel)
    return run


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: "%s-%s-%s-scipy" % (
    g[0], "x".join(map(str, g[1])), g[2]))
def test_naive_scipy(benchmark, group):
    kernel, shape, dtype = group
    assert kernel in _bench.WORKS, kernel
    benchmark.group = "%s-%s-%s" % (kernel, "x".join(map(str, shape)), dtype)
    x, t = _bench._ce_inputs(shape, np.dtype(dtype), np.random.default_rng(0))
    run = _naive(kernel, x, t)
    _check(kernel, x, t, run())
    benchmark(run)


def _check(kernel, x, t, got):
    """The composition computes the work: against the fastxent NumPy path."""
    out = np.empty_like(x)
    want = _bench.WORKS[kernel].make("numpy", x, t, out)()
    if kernel in ("softmax", "log_softmax", "ce_loss"):  # one result, not (loss, grad)
        want, got = (want,), (got,)
    tol = 1e-4 if x.dtype == np.float32 else 1e-10
    for w, g in zip(want, got):
        np.testing.assert_allclose(np.asarray(g, np.float64), np.asarray(w, np.float64),
                                   rtol=tol, atol=tol * float(np.max(np.abs(w))))
