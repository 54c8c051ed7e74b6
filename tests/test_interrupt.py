"""Ctrl-C: a loop of long calls can be interrupted with SIGINT without killing the process.

A subprocess runs ``cross_entropy_with_grad`` on a (rows, 32000) float32 array
in a loop; the parent sends SIGINT mid-loop. The child must end with a
``KeyboardInterrupt``, which it catches, checks that the library still works,
and exits with status 3; dying of the signal (status -2) would mean the
interrupt killed the process. (An *uncaught* KeyboardInterrupt also ends in
status -2: CPython re-raises SIGINT on itself to tell the parent, so the child
catches it to make the outcome unambiguous.) The kernels run without the GIL and do not poll for
signals, so Python raises ``KeyboardInterrupt`` when the running call returns:
the latency is at most one call (printed with ``-s``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import fastxent

from conftest import skip_unless_available


CHILD = r"""
import sys, time
import numpy as np
import fastxent
rows, backend = int(sys.argv[1]), sys.argv[2]
rng = np.random.default_rng(0)
x = rng.standard_normal((rows, 32000), dtype=np.float32)
t = rng.integers(0, 32000, rows)
out = np.empty_like(x)
t0 = time.perf_counter()
fastxent.cross_entropy_with_grad(x, t, out=out, backend=backend)
print("ready %.3f" % (time.perf_counter() - t0), flush=True)
try:
    while True:
        fastxent.cross_entropy_with_grad(x, t, out=out, backend=backend)
except KeyboardInterrupt:
    # the process is intact: the library still works after the interrupt
    l, g = fastxent.cross_entropy_with_grad(x[:4], t[:4], backend=backend)
    ref = fastxent.cross_entropy(x[:4], t[:4], backend="numpy")
    assert abs(float(l) - float(ref)) <= 1e-5 * abs(float(ref)), (l, ref)
    print("KeyboardInterrupt caught", flush=True)
    sys.exit(3)
"""


def _interrupt(backend, rows):
    skip_unless_available(backend)
    # the child imports the fastxent this test process imported (an installed
    # package in CI, the source tree with an in-place build in development)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(fastxent.__file__)))
    env = dict(os.environ, PYTHONPATH=pkg_parent + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(rows), backend], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env,
                         cwd=pkg_parent)  # python -c puts the cwd first on sys.path
    try:
        line = p.stdout.readline()
        assert line.startswith("ready"), (line, p.stderr.read() if p.poll() is not None else "")
        per_call = float(line.split()[1])
        time.sleep(max(0.3, 1.5 * per_call))  # inside a call, most likely
        t0 = time.perf_counter()
        p.send_signal(signal.SIGINT)
        rest, err = p.communicate(timeout=120)
        latency = time.perf_counter() - t0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    print("\n%s (%d, 32000): one call %.3f s, SIGINT -> exit %.3f s, status %d"
          % (backend, rows, per_call, latency, p.returncode))
    assert p.returncode == 3, "child ended with status %d (negative: killed by signal)\n%s" % (
        p.returncode, err[-2000:])
    assert "KeyboardInterrupt caught" in rest, rest
    assert latency < 10 * per_call + 5.0
    return latency


@pytest.mark.parametrize("backend", ["cython", "numba", "numpy"])
def test_sigint_during_long_calls_raises_keyboard_interrupt(backend):
    _interrupt(backend, 1024)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["cython", "numba"])
def test_sigint_during_4096_x_32000(backend):
    _interrupt(backend, 4096)
