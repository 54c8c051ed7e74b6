"""Shared fixtures: the ``backend`` parametrisation and thread-count hygiene."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))  # for ``import _oracle``

import fastxent  # noqa: E402

BACKENDS = ("cython", "numba", "numpy")
COMPILED = ("cython", "numba")


def _availability():
    try:
        return fastxent.backends()
    except Exception as exc:  # noqa: BLE001 - report, don't hide, in the test itself
        return {b: {"available": False, "reason": "backends() raised %r" % (exc,)} for b in BACKENDS}


def skip_unless_available(name):
    info = _availability().get(name, {})
    if not info.get("available", False):
        pytest.skip("backend %s unavailable: %s" % (name, info.get("reason")))


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request):
    """Each backend by name; skipped (not failed) where it is unavailable.

    ``test_backends.py::test_all_backends_available_in_ci`` turns an
    unavailable backend into a failure when ``FASTXENT_REQUIRE_ALL_BACKENDS=1``.
    """
    skip_unless_available(request.param)
    return request.param


@pytest.fixture(scope="session", params=COMPILED)
def compiled_backend(request):
    skip_unless_available(request.param)
    return request.param


@pytest.fixture(autouse=True)
def _restore_threads():
    """Tests that change the thread count leave it as they found it."""
    n = fastxent.get_num_threads()
    yield
    fastxent.set_num_threads(n)


@pytest.fixture
def rng():
    return np.random.default_rng(20240611)


# ------------------------------------------------------------ hypothesis example counts

import collections  # noqa: E402

#: ``(function, backend, "ok" | "raised") -> examples run`` (filled by test_adversarial.py)
HYPOTHESIS_COUNTS = collections.Counter()


def pytest_terminal_summary(terminalreporter):
    """Print how many hypothesis examples ran per public function (for the issue's closing note)."""
    if not HYPOTHESIS_COUNTS:
        return
    per_fn = collections.defaultdict(lambda: collections.Counter())
    for (fn, be, res), n in HYPOTHESIS_COUNTS.items():
        per_fn[fn][be] += n
        per_fn[fn][res] += n
    tr = terminalreporter
    tr.section("hypothesis examples per function (test_adversarial.py)")
    for fn in sorted(per_fn):
        c = per_fn[fn]
        tr.write_line("%-45s total %4d  (cython %d, numba %d, numpy %d; agreed %d, both raised %d)" % (
            fn, c["cython"] + c["numba"] + c["numpy"], c["cython"], c["numba"], c["numpy"],
            c["ok"], c["raised"]))
