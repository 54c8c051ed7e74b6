"""Dispatch: one registry of kernels, the backends that implement them, threads.

Every kernel name in :data:`KERNELS` exists with the same signature in the
three backend modules (``fastxent._kernels`` built from Cython,
``fastxent._numba``, ``fastxent._reference``). The public layer, the tests and
the benchmarks all look kernels up here, so none of them can name one function
and run another.

Backends are imported lazily, on first use: ``import fastxent`` stays fast and
does not import Numba or compile anything.
"""

from __future__ import annotations

import importlib
import os
import threading
from typing import Any, Callable, Dict, Optional


#: Kernel names shared by every backend module (see ``_reference.py``).
KERNELS = (
    "logsumexp",
    "softmax",
    "log_softmax",
    "ce_loss",
    "ce_loss_grad",
    "ce_soft_loss",
    "ce_soft_loss_grad",
    "bce_loss",
    "bce_loss_grad",
    "bce_logits_loss",
    "bce_logits_loss_grad",
)

#: Backends in order of preference for ``backend=None`` / ``"auto"``: the
#: Cython build needs no JIT warm-up, Numba compiles on first use, NumPy is the
#: always-available fallback.
BACKENDS = ("cython", "numba", "numpy")

_MODULES = {
    "cython": "fastxent._kernels",
    "numba": "fastxent._numba",
    "numpy": "fastxent._reference",
}

#: Below this many elements of work a call runs on one thread: starting an
#: OpenMP / Numba parallel region costs a few microseconds, about what one core
#: needs for ~2**15 elements of softmax work.
PARALLEL_MIN_ELEMENTS = 1 << 15

_lock = threading.Lock()
_loaded: Dict[str, Any] = {}
_reasons: Dict[str, Optional[str]] = {}


def _load(name: str):
    """Import a backend module once; remember why it failed if it did."""
    if name in _loaded or name in _reasons:
        return _loaded.get(name)
    with _lock:
        if name in _loaded or name in _reasons:
            return _loaded.get(name)
        try:
            mod = importlib.import_module(_MODULES[name])
            missing = [k for k in KERNELS if not hasattr(mod, k)]
            if missing:
                raise ImportError("%s lacks kernels %s" % (_MODULES[name], missing))
        except Exception as exc:  # noqa: BLE001 - any failure makes it unavailable
            _reasons[name] = "%s: %s" % (type(exc).__name__, exc)
            return None
        _loaded[name] = mod
        return mod


def _unavailable_reason(name: str) -> Optional[str]:
    _load(name)
    return _reasons.get(name)


def resolve(backend: Optional[str]) -> str:
    """The backend name to run for a ``backend=`` argument.

    ``None`` or ``"auto"`` take ``FASTXENT_BACKEND`` if set, else the first
    available of :data:`BACKENDS`. An unknown name is a ``ValueError``; a known
    one that cannot load here is a ``RuntimeError`` saying why.
    """
    if type(backend) is str and backend in _loaded:  # named and loaded already
        return backend
    if backend is None or backend == "auto":
        backend = os.environ.get("FASTXENT_BACKEND") or "auto"
        if backend == "auto":
            for name in BACKENDS:
                if _load(name) is not None:
                    return name
            raise RuntimeError("no fastxent backend is available")  # numpy always is
    if not isinstance(backend, str) or backend not in _MODULES:
        raise ValueError(
            "unknown backend %r; expected one of %s, 'auto' or None"
            % (backend, ", ".join(repr(b) for b in BACKENDS))
        )
    if _load(backend) is None:
        raise RuntimeError(
            "fastxent backend %r is not available here: %s" % (backend, _reasons[backend])
        )
    return backend


def kernel(name: str, backend: str) -> Callable:
    """The kernel ``name`` of an already-resolved backend."""
    return getattr(_loaded[backend], name)


# ------------------------------------------------------------------ threads


def _default_threads() -> int:
    env = os.environ.get("FASTXENT_NUM_THREADS")
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError("FASTXENT_NUM_THREADS must be a positive integer, got %r" % env)
        if n < 1:
            raise ValueError("FASTXENT_NUM_THREADS must be a positive integer, got %r" % env)
        return n
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


_num_threads = _default_threads()


def set_num_threads(n: int) -> None:
    """Set the thread count of both compiled backends (a positive integer)."""
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, int) and not hasattr(n, "__index__"):
        raise TypeError("set_num_threads expects an integer, got %r" % (n,))
    n = int(n)
    if n < 1:
        raise ValueError("set_num_threads expects n >= 1, got %d" % n)
    _num_threads = n


def get_num_threads() -> int:
    """The thread count used by the compiled backends for large enough work."""
    return _num_threads


def threads_for(backend: str, work: int) -> int:
    """Threads for ``work`` elements: one below :data:`PARALLEL_MIN_ELEMENTS`
    (the Numba backend also caps it at ``numba.config.NUMBA_NUM_THREADS``,
    the Cython one at 256, its count of per-thread piece counters)."""
    if work < PARALLEL_MIN_ELEMENTS or backend == "numpy":
        return 1
    return _num_threads


def call(name: str, backend: str, *args, work: int) -> None:
    """Run kernel ``name`` of ``backend`` with the thread count ``work`` deserves."""
    getattr(_loaded[backend], name)(*args, threads_for(backend, work))


# ---------------------------------------------------------------- reporting


def backends() -> Dict[str, Dict[str, Any]]:
    """What each backend is, whether it loads here, and why not if it does not.

    Returns a dict keyed ``"cython"``, ``"numba"``, ``"numpy"``; each value has
    ``"available"`` (bool), ``"reason"`` (None, or why it is unavailable) and
    ``"version"``; cython adds ``"openmp"`` (compiled with OpenMP) and
    ``"isa"`` (the instruction set its kernels run on this CPU).
    """
    import numpy

    out: Dict[str, Dict[str, Any]] = {}
    for name in BACKENDS:
        mod = _load(name)
        info: Dict[str, Any] = {"available": mod is not None, "reason": _reasons.get(name)}
        if name == "cython":
            # the Cython that compiled the extension (None when it did not load)
            info["version"] = getattr(mod, "CYTHON_VERSION", None)
            info["openmp"] = bool(mod.openmp_enabled()) if mod is not None else False
            info["isa"] = mod.simd_isa() if mod is not None else None
        elif name == "numba":
            if mod is not None:
                import numba

                info["version"] = numba.__version__
                info["max_threads"] = numba.config.NUMBA_NUM_THREADS
            else:
                info["version"] = None
        else:
            info["version"] = numpy.__version__
        out[name] = info
    return out
