"""Memory: many calls with ``out=`` leave the process flat; failing calls leak nothing.

Measured two ways: ``tracemalloc`` (Python and NumPy allocations) and the
resident set size from ``/proc/self/statm`` (also C ``malloc`` in the
kernels, OpenMP and Numba runtimes). The fast set makes 10**4 calls per
function and backend; the ``slow`` set 10**5.
"""

from __future__ import annotations

import gc
import os
import tracemalloc

import numpy as np
import pytest

import fastxent

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def _small(dtype=np.float32):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 5)).astype(dtype)
    x[1, 2] = np.nan
    t = rng.integers(0, 5, 8)
    t[3] = -100
    P = rng.dirichlet(np.ones(5), 8).astype(dtype)
    p = rng.random((8, 5)).astype(dtype)
    y = (rng.random((8, 5)) < 0.5).astype(dtype)
    w = np.linspace(0.5, 2, 5).astype(dtype)
    return x, t, P, p, y, w


def _calls():
    """name -> (callable(backend) making one call with out= where the function has it)."""
    x, t, P, p, y, w = _small()
    o_x = np.empty_like(x)
    o_r = np.empty(8, np.float32)
    kw = dict(weight=w, label_smoothing=0.1, z_loss=1e-3, softcap=10.0)
    return {
        "softmax": lambda b: fastxent.softmax(x, out=o_x, backend=b),
        "log_softmax": lambda b: fastxent.log_softmax(x, out=o_x, backend=b),
        "logsumexp": lambda b: fastxent.logsumexp(x, out=o_r, backend=b),
        "cross_entropy": lambda b: fastxent.cross_entropy(x, t, backend=b, **kw),
        "cross_entropy_with_grad": lambda b: fastxent.cross_entropy_with_grad(x, t, out=o_x, backend=b, **kw),
        "cross_entropy_grad": lambda b: fastxent.cross_entropy_grad(x, P, out=o_x, reduction="sum", backend=b),
        "binary_cross_entropy": lambda b: fastxent.binary_cross_entropy(p, y, backend=b),
        "binary_cross_entropy_with_grad":
            lambda b: fastxent.binary_cross_entropy_with_grad(p, y, weight=w, out=o_x, backend=b),
        "binary_cross_entropy_with_logits":
            lambda b: fastxent.binary_cross_entropy_with_logits(x, y, pos_weight=w, reduction="none", backend=b),
        "binary_cross_entropy_with_logits_with_grad":
            lambda b: fastxent.binary_cross_entropy_with_logits_with_grad(x, y, pos_weight=w, out=o_x, backend=b),
    }


FUNCS = list(_calls())


def _flat(fn, n, rss_tol, trace_calls, trace_tol):
    """``n`` calls grow RSS by at most ``rss_tol``; ``trace_calls`` calls grow tracemalloc by at most ``trace_tol``.

    Each is measured over two consecutive windows and the smaller growth is
    checked: a real leak grows in both, while one-off effects (a malloc arena
    extended once, NumPy's first ``__array_interface__`` under tracemalloc,
    ~940 KiB once) show in one window only.
    """
    for _ in range(200):  # warm-up: compile, caches, first-touch pages
        fn()
    growth = []
    for _ in range(2):
        gc.collect()
        r0 = rss()
        for _ in range(n // 2):
            fn()
        gc.collect()
        growth.append(rss() - r0)
    assert min(growth) <= rss_tol, "RSS grew %s KiB per %d calls" % ([g // 1024 for g in growth], n // 2)
    tracemalloc.start()
    try:
        tgrowth = []
        for _ in range(3):  # the first window absorbs one-off allocations
            gc.collect()
            t0 = tracemalloc.get_traced_memory()[0]
            for _ in range(trace_calls // 2):
                fn()
            gc.collect()
            tgrowth.append(tracemalloc.get_traced_memory()[0] - t0)
    finally:
        tracemalloc.stop()
    assert min(tgrowth[1:]) <= trace_tol, "tracemalloc grew %s bytes per %d calls" % (tgrowth, trace_calls // 2)


@pytest.mark.parametrize("fname", FUNCS)
def test_memory_flat_fast(backend, fname):
    fn = _calls()[fname]
    # fast set: 2000 calls per window (500 on the ~10x slower NumPy fallback);
    # a leak of 512 bytes per call shows as 1 MiB of RSS, and of 8 bytes per
    # call as 4 KiB in tracemalloc. The slow set below runs 10^5 calls.
    _flat(lambda: fn(backend), 1_000 if backend == "numpy" else 4_000, 1024 * 1024, 1000, 4 * 1024)


@pytest.mark.parametrize("fname", FUNCS)
def test_kernel_name_is_the_same_object_every_call(monkeypatch, backend, fname):
    """The kernel name passed to dispatch is one constant string, not built per call.

    A string made per call and looked up as an attribute is kept by CPython's
    type-attribute cache in a slot chosen by its address, so fresh names pile
    up there (up to the cache's 4096 slots): the flatness check above saw it as
    ~7-12 KiB per 500 calls on one CI run. The names are kept alive here so two
    fresh strings cannot share an address.
    """
    from fastxent import _dispatch

    seen = []
    real = _dispatch.call
    monkeypatch.setattr(_dispatch, "call", lambda name, *a, **k: (seen.append(name), real(name, *a, **k))[1])
    fn = _calls()[fname]
    fn(backend)
    fn(backend)
    assert len(seen) == 2 and seen[0] == seen[1]
    assert seen[0] is seen[1], "kernel name %r is a new string each call" % seen[0]


@pytest.mark.slow
@pytest.mark.parametrize("fname", FUNCS)
def test_memory_flat_1e5_calls(backend, fname):
    fn = _calls()[fname]
    _flat(lambda: fn(backend), 100_000, 2048 * 1024, 20_000, 4 * 1024)


# ------------------------------------------------------------ failing halfway


def _failing():
    """name -> (callable(backend, out) that must raise, exception type)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 7)).astype(np.float32)
    t = rng.integers(0, 7, 64)
    t[40] = 7  # a bad target two thirds of the way in
    t_neg = t.copy()
    t_neg[40] = -3
    p = rng.random((64, 7)).astype(np.float32)
    p[50, 3] = 1.25  # a probability out of range late in the array
    y = (rng.random((64, 7)) < 0.5).astype(np.float32)
    return {
        "ce_with_grad_ge_C": (lambda b, o: fastxent.cross_entropy_with_grad(x, t, out=o, backend=b), IndexError),
        "ce_grad_negative": (lambda b, o: fastxent.cross_entropy_grad(x, t_neg, out=o, reduction="none",
                                                                      backend=b), IndexError),
        "ce_in_place": (lambda b, o: fastxent.cross_entropy_with_grad(o, t, out=o, backend=b), IndexError),
        "bce_with_grad_p_outside": (lambda b, o: fastxent.binary_cross_entropy_with_grad(p, y, out=o, backend=b),
                                    ValueError),
        "softmax_bad_axis": (lambda b, o: fastxent.softmax(x, axis=2, out=o, backend=b), ValueError),
    }


@pytest.mark.parametrize("case", list(_failing()))
def test_failure_halfway_leaves_out_untouched_and_leaks_nothing(backend, case):
    fn, exc = _failing()[case]
    out = np.full((64, 7), 12345.0, np.float32)
    out[3, 3] = np.nan
    before = out.tobytes()
    with pytest.raises(exc):
        fn(backend, out)
    assert out.tobytes() == before, "out= written by a call that failed"

    def call():
        try:
            fn(backend, out)
        except exc:
            pass
    _flat(call, 2000, 1024 * 1024, 600, 4 * 1024)
    assert out.tobytes() == before
