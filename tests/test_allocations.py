"""Allocation bounds of the fused calls, measured with tracemalloc.

With ``out=``, the compiled backends allocate nothing of size N x C (only
per-row vectors); the NumPy fallback keeps at most two N x C temporaries
(the binary cross-entropy none: it goes by fixed-size spans).
"""

import tracemalloc

import numpy as np
import pytest

import fastxent
from fastxent import _reference

N, C = 512, 2000
#: Per-thread scratch of a fixed size, independent of N x C (the Numba BCE
#: kernels keep a few BCE_BLOCK-long buffers per thread: ~400 KB measured).
SCRATCH = 512 * 1024

OPTIONS = [
    {},
    {"label_smoothing": 0.1},
    {"weight": np.linspace(0.5, 2, C).astype(np.float32), "label_smoothing": 0.1},
    {"z_loss": 1e-4},
    {"softcap": 30.0},
]


def _peak(fn):
    fn()  # warm-up: first calls may compile or cache
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "+".join(o) or "plain")
@pytest.mark.parametrize("soft", [False, True], ids=["int", "soft"])
def test_fused_call_allocation(backend, opts, soft):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C)).astype(np.float32)
    if soft:
        t = rng.random((N, C)).astype(np.float32)
        t /= t.sum(axis=1, keepdims=True)
    else:
        t = rng.integers(0, C, N)
    out = np.empty_like(x)
    peak = _peak(lambda: fastxent.cross_entropy_with_grad(x, t, out=out, backend=backend, **opts))
    if backend == "numpy":
        # two N x C float32 temporaries, plus a boolean mask for softcap
        limit = 2.3 * x.nbytes
    else:
        limit = 0.05 * x.nbytes + SCRATCH  # per-row vectors and fixed scratch only
    assert peak <= limit, "peak %d bytes > %d (N x C = %d)" % (peak, limit, x.nbytes)


def test_fused_bce_allocation(backend):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C)).astype(np.float32)
    y = (rng.random((N, C)) < 0.5).astype(np.float32)
    out = np.empty_like(x)
    peak = _peak(lambda: fastxent.binary_cross_entropy_with_logits_with_grad(
        x, y, out=out, backend=backend))
    limit = 0.05 * x.nbytes + SCRATCH
    if backend == "numpy":
        # elementwise temporaries of one span at a time (~10 measured), not
        # of the N x C input: a fixed size
        limit = 0.05 * x.nbytes + 12 * _reference._BCE_SPAN * x.itemsize
    assert peak <= limit, "peak %d bytes > %d (N x C = %d)" % (peak, limit, x.nbytes)
