"""Concurrency: 8 Python threads with their own inputs, thread counts changed mid-flight,
and bit-identical results for 1, 2 and 3 kernel threads (extends test_threads.py)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import adversarial as A
import fastxent

N_PY_THREADS = 8


def _inputs(seed):
    """Inputs big enough for the parallel path (> 2**15 elements), with odd sizes and special values."""
    rng = np.random.default_rng(seed)
    n, c = 500 + 37 * seed, 67 + seed
    x = (3 * rng.standard_normal((n, c))).astype(np.float32 if seed % 2 else np.float64)
    x[5, 3] = np.nan
    x[7, :] = -np.inf
    x[9, 1] = -np.inf
    t = rng.integers(0, c, n)
    t[::13] = -100
    P = rng.dirichlet(np.ones(c), n).astype(x.dtype)
    w = rng.uniform(0.1, 2.0, c)
    xb = A.fill(rng, (n, c), x.dtype, "nonfinite")
    yb = (rng.random((n, c)) < 0.5).astype(x.dtype)
    pb = rng.random((n, c)).astype(x.dtype)
    return x, t, P, w, xb, yb, pb


def _all(backend, x, t, P, w, xb, yb, pb):
    """Every public function once; returns a flat list of arrays."""
    res = [
        fastxent.softmax(x, backend=backend),
        fastxent.log_softmax(x, backend=backend),
        fastxent.logsumexp(x, backend=backend),
        fastxent.cross_entropy(x, t, weight=w, label_smoothing=0.1, z_loss=1e-3, backend=backend),
        *fastxent.cross_entropy_with_grad(x, t, reduction="none", softcap=20.0, backend=backend),
        fastxent.cross_entropy_grad(x, P, reduction="sum", backend=backend),
        fastxent.binary_cross_entropy(pb, yb, backend=backend),
        *fastxent.binary_cross_entropy_with_grad(pb, yb, reduction="none", backend=backend),
        fastxent.binary_cross_entropy_with_logits(xb, yb, pos_weight=np.linspace(0.5, 2.0, xb.shape[-1]).astype(x.dtype), backend=backend),
        *fastxent.binary_cross_entropy_with_logits_with_grad(xb, yb, reduction="sum", backend=backend),
    ]
    return [np.asarray(r) for r in res]


def _identical(a, b, what=""):
    assert len(a) == len(b)
    for i, (u, v) in enumerate(zip(a, b)):
        assert u.dtype == v.dtype and u.shape == v.shape, (what, i)
        # bit-identical, NaN payloads aside: compare bytes where not NaN, NaN positions equal
        np.testing.assert_array_equal(np.isnan(u), np.isnan(v), err_msg="%s result %d" % (what, i))
        u0 = np.atleast_1d(np.where(np.isnan(u), 0, u)).astype(u.dtype)
        v0 = np.atleast_1d(np.where(np.isnan(v), 0, v)).astype(v.dtype)
        assert u0.tobytes() == v0.tobytes(), "%s result %d differs" % (what, i)


@pytest.fixture(scope="module")
def inputs():
    return [_inputs(s) for s in range(N_PY_THREADS)]


def _run_threads(target, n):
    errors = []
    results = [None] * n
    barrier = threading.Barrier(n)

    def work(i):
        try:
            barrier.wait()
            results[i] = target(i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append((i, exc))

    ts = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for th in ts:
        th.start()
    for th in ts:
        th.join(120)
    assert not any(th.is_alive() for th in ts), "a thread hung"
    assert not errors, errors
    return results


def test_eight_python_threads_own_inputs(backend, inputs):
    fastxent.set_num_threads(2)
    expected = [_all(backend, *inp) for inp in inputs]
    for _ in range(2):
        got = _run_threads(lambda i: _all(backend, *inputs[i]), N_PY_THREADS)
        for i in range(N_PY_THREADS):
            _identical(got[i], expected[i], "python thread %d" % i)


def test_set_num_threads_while_computing(backend, inputs):
    """One thread flips the thread count 1..3 while seven compute; nothing crashes, nothing changes."""
    fastxent.set_num_threads(1)
    expected = [_all(backend, *inp) for inp in inputs[:N_PY_THREADS - 1]]
    stop = threading.Event()

    def job(i):
        if i == N_PY_THREADS - 1:
            k = 0
            while not stop.is_set():
                fastxent.set_num_threads(1 + k % 3)
                k += 1
            return k
        try:
            return [_all(backend, *inputs[i]) for _ in range(2)]
        finally:
            if i == 0:
                stop.set()

    # thread 0 sets ``stop`` when done; the others finish on their own
    got = _run_threads(job, N_PY_THREADS)
    stop.set()
    assert got[-1] > 0
    for i in range(N_PY_THREADS - 1):
        for rep in got[i]:
            _identical(rep, expected[i], "thread %d while set_num_threads changes" % i)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_bit_identical_for_1_2_3_threads(compiled_backend, dtype):
    rng = np.random.default_rng(99)
    inp = list(_inputs(3 if dtype == np.float32 else 4))
    # big enough that three threads each get several row blocks and BCE blocks
    x = (3 * rng.standard_normal((3001, 129))).astype(dtype)
    t = rng.integers(0, 129, 3001)
    t[::17] = -100
    inp[0], inp[1] = x, t
    inp[2] = rng.dirichlet(np.ones(129), 3001).astype(dtype)
    inp[3] = rng.uniform(0.1, 2, 129)
    ref = None
    for n in (1, 2, 3):
        fastxent.set_num_threads(n)
        got = _all(compiled_backend, *inp)
        if ref is None:
            ref = got
        else:
            _identical(got, ref, "%d threads vs 1" % n)
