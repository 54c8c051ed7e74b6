"""fastxent: fast softmax-family functions and cross-entropy losses on the CPU.

Every function runs on one of three backends with the same kernels: a Cython
build with OpenMP, Numba parallel kernels, and the NumPy reference (the
fallback and the test oracle). ``backend=None`` picks the fastest available;
:func:`backends` says which are available here and why not.
"""

from ._api import (
    binary_cross_entropy,
    binary_cross_entropy_with_grad,
    binary_cross_entropy_with_logits,
    binary_cross_entropy_with_logits_with_grad,
    cross_entropy,
    cross_entropy_grad,
    cross_entropy_with_grad,
    log_softmax,
    logsumexp,
    softmax,
)
from ._dispatch import backends, get_num_threads, set_num_threads

__version__ = "0.1.0"

__all__ = [
    "softmax",
    "log_softmax",
    "logsumexp",
    "cross_entropy",
    "cross_entropy_with_grad",
    "cross_entropy_grad",
    "binary_cross_entropy",
    "binary_cross_entropy_with_grad",
    "binary_cross_entropy_with_logits",
    "binary_cross_entropy_with_logits_with_grad",
    "backends",
    "set_num_threads",
    "get_num_threads",
    "__version__",
]
