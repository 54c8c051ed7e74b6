"""Threads: OpenMP / Numba really run in parallel, results do not depend on the thread count,
and concurrent calls from Python threads are safe."""

from __future__ import annotations

import concurrent.futures as cf
import importlib
import os

import numpy as np
import pytest

import fastxent
from conftest import skip_unless_available

MODULES = {"cython": "fastxent._kernels", "numba": "fastxent._numba"}
NCPU = len(os.sched_getaffinity(0))


@pytest.mark.parametrize("name", list(MODULES))
def test_threads_seen(name):
    skip_unless_available(name)
    if NCPU < 2:
        pytest.skip("needs 2 cores")
    mod = importlib.import_module(MODULES[name])
    if name == "cython":
        assert mod.openmp_enabled(), "extension built without OpenMP"
    assert mod.threads_seen(2) == 2
    assert mod.threads_seen(1) == 1


def test_openmp_reported_consistently():
    skip_unless_available("cython")
    import fastxent._kernels as k
    assert fastxent.backends()["cython"]["openmp"] == bool(k.openmp_enabled())


PIECES = 8  # pieces per thread of a parallel call (FX_PIECES, _numba._PIECES)


@pytest.mark.parametrize("name", list(MODULES))
def test_pieces_by_hand(name):
    """A lone thread takes its own pieces in order, then the others' from
    their fronts; a second thread starts at its own first piece."""
    skip_unless_available(name)
    mod = importlib.import_module(MODULES[name])
    takes = [p for _, p in mod.piece_takes(2, [0] * 17)]
    assert takes == list(range(16)) + [-1]
    takes = mod.piece_takes(3, [1, 0, 1, 2])
    assert takes == [(1, 8), (0, 0), (1, 9), (2, 16)]
    # thread 2 alone after its own: thread 0's pieces next, then thread 1's
    takes = [p for _, p in mod.piece_takes(3, [2] * 9 + [1] + [2] * 15)]
    assert takes[:9] == list(range(16, 24)) + [0]
    assert takes[9] == 8  # thread 1 still has its own first piece
    assert takes[10:] == list(range(1, 8)) + list(range(9, 16)) + [-1]


@pytest.mark.parametrize("name", list(MODULES))
@pytest.mark.parametrize("nt", [1, 2, 3, 5])
def test_every_piece_taken_once(name, nt):
    """Whatever the order the threads ask in (one much faster than the
    others, say), each piece goes to exactly one of them; a thread takes its
    own pieces in order, and another's only once its own are all taken."""
    skip_unless_available(name)
    mod = importlib.import_module(MODULES[name])
    rng = np.random.default_rng(nt)
    total = nt * PIECES
    for _ in range(30):
        p = rng.dirichlet(np.full(nt, 0.3))
        order = [int(k) for k in rng.choice(nt, size=total + nt, p=p)]
        takes = mod.piece_takes(nt, order)
        got = [c for _, c in takes if c >= 0]
        assert sorted(got) == list(range(total))
        assert all(c == -1 for _, c in takes[len(got):])  # none left, none again
        taken = set()
        for k, c in takes[:len(got)]:
            own = range(k * PIECES, (k + 1) * PIECES)
            if c not in own:
                assert set(own) <= taken, (k, c, "took another's piece before its own")
            owner = c // PIECES
            # each thread's pieces leave in order, whoever takes them
            assert all(q in taken for q in range(owner * PIECES, c))
            taken.add(c)


@pytest.mark.parametrize("name", list(MODULES))
def test_piece_starts(name):
    """The pieces tile [0, n) in order, start at multiples of align (the
    partial sums' groups), give each thread the units of an even split, and
    halve in size within a thread (1/2, 1/4, ..., 1/128, 1/128)."""
    skip_unless_available(name)
    mod = importlib.import_module(MODULES[name])
    assert mod.piece_starts(1024, 1, 1) == [0, 512, 768, 896, 960, 992, 1008, 1016, 1024]
    assert mod.piece_starts(4096, 2, 64) == [0, 1024, 1536, 1792, 1920, 1984, 1984, 1984,
                                             2048, 3072, 3584, 3840, 3968, 4032, 4032, 4032,
                                             4096]
    for n in (0, 1, 63, 64, 65, 1000, 4096, 4099, 262144, 10 ** 9 + 7):
        for nt in (1, 2, 3, 7, 64):
            for align in (1, 64):
                st = mod.piece_starts(n, nt, align)
                assert len(st) == nt * PIECES + 1 and st[0] == 0 and st[-1] == n
                assert all(a <= b for a, b in zip(st, st[1:]))
                assert all(a % align == 0 for a in st[:-1])
                for k in range(nt):  # thread k's own units: the even split
                    lo = n * k // nt // align * align
                    hi = n if k == nt - 1 else n * (k + 1) // nt // align * align
                    own = st[k * PIECES:(k + 1) * PIECES + 1]
                    assert own[0] == lo and own[-1] == hi
                    if align == 1 and hi - lo >= 2 ** 10:
                        sizes = np.diff(own)
                        np.testing.assert_allclose(
                            sizes / (hi - lo), [2.0 ** -j for j in range(1, PIECES)] + [2.0 ** -7],
                            atol=2.0 / (hi - lo))


def _all_results(backend, x, t, P, xb, yb):
    out = {}
    out["ce"] = fastxent.cross_entropy_with_grad(x, t, label_smoothing=0.1, z_loss=1e-3, backend=backend)
    out["ce_none"] = fastxent.cross_entropy_with_grad(x, t, reduction="none", backend=backend)
    out["ce_sum"] = fastxent.cross_entropy(x, t, reduction="sum", softcap=10.0, backend=backend)
    out["soft"] = fastxent.cross_entropy_with_grad(x, P, backend=backend)
    out["softmax"] = fastxent.softmax(x, backend=backend)
    out["log_softmax"] = fastxent.log_softmax(x, backend=backend)
    out["lse"] = fastxent.logsumexp(x, backend=backend)
    out["bcel"] = fastxent.binary_cross_entropy_with_logits_with_grad(xb, yb, backend=backend)
    out["bce"] = fastxent.binary_cross_entropy_with_grad(1 / (1 + np.exp(-xb)), yb, reduction="sum", backend=backend)
    return out


def _assert_identical(a, b):
    for k in a:
        va = a[k] if isinstance(a[k], tuple) else (a[k],)
        vb = b[k] if isinstance(b[k], tuple) else (b[k],)
        for u, v in zip(va, vb):
            np.testing.assert_array_equal(np.asarray(u), np.asarray(v), err_msg=k)
            assert np.asarray(u).dtype == np.asarray(v).dtype


@pytest.fixture(scope="module")
def big_inputs():
    rng = np.random.default_rng(12)
    x = (3 * rng.standard_normal((4099, 67))).astype(np.float32)
    t = rng.integers(0, 67, 4099)
    t[::11] = -100
    P = rng.dirichlet(np.ones(67), 4099).astype(np.float32)
    xb = rng.standard_normal(70_001).astype(np.float32)
    yb = (rng.random(70_001) < 0.5).astype(np.float32)
    return x, t, P, xb, yb


def test_thread_count_does_not_change_results(backend, big_inputs):
    fastxent.set_num_threads(1)
    one = _all_results(backend, *big_inputs)
    fastxent.set_num_threads(2)
    two = _all_results(backend, *big_inputs)
    _assert_identical(one, two)
    # and the same again (no state left behind)
    fastxent.set_num_threads(1)
    _assert_identical(one, _all_results(backend, *big_inputs))


def test_backends_agree_on_large_input(compiled_backend, big_inputs):
    x, t, P, xb, yb = big_inputs
    import _oracle as O
    l, g = fastxent.cross_entropy_with_grad(x, t, reduction="none", backend=compiled_backend)
    ref_l, ref_g = O.cross_entropy(x, t, reduction="none")
    O.assert_rowloss_close(l, ref_l, 1e-6)
    O.assert_grad_close(g, ref_g, 2e-6)


def test_concurrent_python_threads(backend, big_inputs):
    fastxent.set_num_threads(2)
    expected = _all_results(backend, *big_inputs)
    with cf.ThreadPoolExecutor(4) as ex:
        futures = [ex.submit(_all_results, backend, *big_inputs) for _ in range(6)]
        for f in futures:
            _assert_identical(expected, f.result())


def test_concurrent_calls_with_different_shapes(backend):
    rng = np.random.default_rng(13)
    jobs = []
    for i in range(12):
        n, c = 50 + 37 * i, 3 + 5 * i
        x = rng.standard_normal((n, c))
        t = rng.integers(0, c, n)
        jobs.append((x, t, fastxent.cross_entropy_with_grad(x, t, backend=backend)))
    with cf.ThreadPoolExecutor(4) as ex:
        results = list(ex.map(lambda j: fastxent.cross_entropy_with_grad(j[0], j[1], backend=backend), jobs))
    for (x, t, (l, g)), (l2, g2) in zip(jobs, results):
        assert l == l2
        np.testing.assert_array_equal(g, g2)
