"""Numba kernels: the same names, arguments and semantics as ``_reference.py``.

Design
------
* The kernel contract is the module docstring of ``_reference.py``; each public
  function here is a thin Python wrapper (thread count, empty-input shortcut)
  around an ``@njit(parallel=True, cache=True)`` driver that cuts the rows
  into ``_PIECES`` pieces per thread and runs a serial chunk function on each
  piece: a ``prange`` of one iteration per thread, each taking its own pieces
  in order, then what is left of the others' (``_piece``).
* Fused rows: pass 1 takes the row max (``llvm.maxnum``, which skips NaN and
  vectorises without fast-math); pass 2 writes ``e = exp(x - shift)`` into the
  gradient row, then sums ``e`` in float64 in a second loop (with the float64
  sum in the exp loop LLVM vectorises it at 4 float32 lanes, not 8); pass 3
  scales the row by ``1 / S`` and subtracts at the target. One exp per
  element, one read of the logits and one write of the gradient. The loss
  alone writes ``e`` to a per-thread scratch row instead.
* Few classes (``C < _FLAT_C``, no softcap): blocks of rows copied
  transposed into a scratch block (class-major), so every per-row step (max,
  exp, sums, log S, loss and pass-3 coefficients) is a loop over the block's
  rows, which LLVM vectorises; a row's own loop is too short for a vector
  and Numba runs no SLP vectoriser (``_ce_int_flat``).  The transposes, in
  and out, go by square tiles of one AVX vector (8 float32, 4 float64)
  shuffled in registers (``_tile_t``, an LLVM IR intrinsic, as the Cython
  kernel), which also take the row max on the way in and apply the row
  factor on the way out; below one vector of classes, scalar loops.  ``log
  S`` is branch-free (libm's log is a scalar call, ~20 ns a row):
  ``_log_sum`` takes ``_log_ge1`` (fdlibm's form) for float64 rows and the
  shorter ``_log_ge1_f32`` for float32 ones.
* Hot loops index arrays with the loop variable of ``range(n)``: loops over
  ``range(b0, b1)`` or with ``b0 + c`` indices did not vectorise (measured
  4-8x slower). Everything is compiled with ``error_model="numpy"``: with
  Numba's default a float division checks for zero and stays scalar.
* Binary cross-entropy on logits computes per element in the input dtype
  (float32: the vectorised exp and the Cython kernels' ``log1p`` series,
  ``2 atanh(e / (2 + e))``, one ``exp(-|x|)`` shared by softplus and the
  sigmoids; without weights a loop that skips the multiplies by 1), the
  block's losses summed in float64 by a second loop.
* ``exp`` (of ``x <= 0``: every exp the kernels take) is the Cython kernels'
  ``fx_expf_le0``, operation for operation: Cody-Waite reduction, a degree-6
  polynomial, ``2**n`` applied as ``2**(n+64)`` then ``2**-64`` with integer
  ops, which LLVM vectorises to 8 float32 or 4 float64 lanes; libm's scalar
  exp is several times slower and Numba has no SVML here. 1.0 ULP in float32
  and float64 (tests/test_exp.py), subnormal results correctly rounded,
  ``-inf -> 0``, ``NaN -> NaN`` (a ``+inf`` row is handled before it).
* Fast-math is never global: the exp gets ``{'nsz', 'arcp', 'contract',
  'afn'}`` (no ``reassoc``, which would fold the range reduction away and cost
  4.5 ULP), loops that reduce get ``'reassoc'`` added so their float64 sums
  vectorise, and nothing gets ``nnan``/``ninf`` (NaN and inf follow the math).
* Softcap keeps ``xs = s * tanh(x / s)`` in a per-thread float64 scratch row
  (allocated once per chunk): later passes need both ``xs`` and ``e``, and a
  float32 ``xs`` would already cost ~1e-6 of loss accuracy at ``s = 30``.
* Numba is imported, and the kernels wrapped in ``njit`` (``_ensure``, ~25 ms
  after Numba's own ~0.5 s import), when this module is: ``fastxent`` imports
  it only once the Numba backend is used or reported, and the per-call
  wrappers need no "wrapped yet?" check. Each signature compiles on its
  first call, once, and is cached on disk (``cache=True``).
"""

from __future__ import annotations

import importlib.util
import math
import platform

import numpy as np

from ._reference import BCE_BLOCK, CE_ROWS

if importlib.util.find_spec("numba") is None:  # checked cheaply, without importing it
    raise ImportError("numba is not installed")

__all__ = [
    "logsumexp", "softmax", "log_softmax",
    "ce_loss", "ce_loss_grad", "ce_soft_loss", "ce_soft_loss_grad",
    "bce_loss", "bce_loss_grad", "bce_logits_loss", "bce_logits_loss_grad",
    "threads_seen", "piece_takes", "piece_starts",
]

# Fast-math flag sets (see the module docstring).
_FM_EXP = frozenset({"nsz", "arcp", "contract", "afn"})
_FM_ELT = frozenset({"nsz", "arcp", "contract"})
_FM_RED = frozenset({"reassoc", "nsz", "arcp", "contract"})

#: Rows with fewer classes than ``_FLAT_C`` (no softcap) go in blocks of about
#: ``_FLAT_ELEMENTS`` elements, transposed (see ``_ce_int_flat``).
_FLAT_C = 64
_FLAT_ELEMENTS = 2048

# Set by ``_ensure`` (Numba objects): intrinsics and Numba's prange.
_scale1p2n_f32 = _scale2n_f64 = _fmax = _prefetch = _prefetchw = _get_thread_id = None
_fetch_inc = None
_tile_t = _tile_tmax = _tile_tscale = _tile_w = None
_tileh_max = _tileh_t = _tileh_scale = None
_f64_bits = _bits_f64 = _lanes8 = _reg = None
prange = range

_NAN = float("nan")
_INF = float("inf")

# float32 exp of x <= 0, the Cython kernels' fx_expf_le0 (_kernels_isa.h):
# clamp at -104 (exp(-104) < 2**-150 rounds to 0), n = round(x / ln 2) by the
# 1.5 * 2**23 (+ 191) "magic number", Cody-Waite split of ln 2, exp(r) = 1 +
# u, u = r + r**2 q(r) with q of degree 4 fitted by tools/fit_expf.py, then
# (1 + u) * 2**(n + 64) * 2**-64 (n + 64 is a normal exponent for every n in
# [-150, 0]; the last multiply rounds subnormal results correctly).
_F32 = np.float32
_E32_LOG2E = _F32(1.44269504088896341)
# 1.5 * 2**23 + 191: adding it rounds to an integer n and leaves n + 191,
# the exponent field of 2**(n + 64), in the low bits (fx_expf_le0)
_E32_MAGIC = _F32(12583103.0)
_E32_C1 = _F32(0.693359375)
_E32_C2 = _F32(-2.12194440e-4)
_E32_P2 = _F32(0.4999999403953552)
_E32_P3 = _F32(0.1666652113199234)
_E32_P4 = _F32(0.04166838899254799)
_E32_P5 = _F32(0.008368710055947304)
_E32_P6 = _F32(0.001381461275741458)
_E32_ZERO = _F32(0.0)
_E32_LO = _F32(-104.0)

# float64 exp: Cephes' Cody-Waite split; 1 + r + r**2 q(r) on |r| <= ln(2)/2,
# q of degree 9 near-minimax (tools/fit_exp64.py: 1.6e-17 relative, a
# quarter of half an ULP; the Cython kernels use the same coefficients); the
# same 2**(n + 64) * 2**-64 scaling for n in [-1077, 0].
_E64_P2 = 0.50000000000000011
_E64_P3 = 0.16666666666666669
_E64_P4 = 0.041666666666624129
_E64_P5 = 0.0083333333333300615
_E64_P6 = 0.0013888888917213717
_E64_P7 = 0.00019841269863053618
_E64_P8 = 2.4801521295954376e-05
_E64_P9 = 2.7557268459997064e-06
_E64_P10 = 2.7620088445409746e-07
_E64_P11 = 2.510038549551032e-08
_E64_MAGIC = 6755399441055744.0  # 1.5 * 2**52
_E64_C1 = 6.93145751953125e-1
_E64_C2 = 1.42860682030941723212e-6
_E64_LO = -746.0  # exp(-746) < 2**-1075: rounds to 0


# float64 log of s >= 1: fdlibm's e_log.c made branch-free: s = 2**k m, m in
# [sqrt(.5), sqrt(2)), f = m - 1, log(1 + f) = f - (f**2 / 2 - q (f**2 / 2 +
# R(q**2))), q = f / (2 + f), R fdlibm's minimax polynomial (Lg1..Lg7); the
# ln 2 split has k ln2_hi exact.  Under 1 ULP.
_L64_LG1 = 6.666666666666735130e-01
_L64_LG2 = 3.999999999940941908e-01
_L64_LG3 = 2.857142874366239149e-01
_L64_LG4 = 2.222219843214978396e-01
_L64_LG5 = 1.818357216161805012e-01
_L64_LG6 = 1.531383769920937332e-01
_L64_LG7 = 1.479819860511658591e-01
_L64_LN2_HI = 6.93147180369123816490e-1
_L64_LN2_LO = 1.90821492927058770002e-10
_L64_MANT = 0x000FFFFFFFFFFFFF
_L64_ONE = 0x3FF0000000000000
_L64_KMAGIC = 0x4330000000000000  # bits of 2**52: k + these bits is 2**52 + k
_L64_TWO52 = 4503599627370496.0

# tanh for |u| < 0.625 (Cephes tanh.c rational P/Q); larger |u| use
# 1 - 2 / (exp(2|u|) + 1), which has no cancellation there.
_TH_P0 = -9.64399179425052238628e-1
_TH_P1 = -9.92877231001918586564e1
_TH_P2 = -1.61468768441708447952e3
_TH_Q0 = 1.12811678491632931402e2
_TH_Q1 = 2.23548839060100448583e3
_TH_Q2 = 4.84406305325125486048e3


# ================================================================ helpers
#
# Everything below is plain Python until ``_ensure`` wraps it in ``njit`` (the
# name tables at the end of the module say with which options); the kernels
# look their helpers up as module globals at compile time.


def _exp(x):
    """``exp`` of a float32 or float64 scalar ``x <= 0`` (or -inf, NaN): every
    exp the kernels take is of ``x - rowmax`` or of ``-|x|`` (an overload, see
    ``_ensure``)."""
    raise NotImplementedError


def _as(like, v):
    """``v`` converted to the dtype of ``like`` (an array or a scalar; an
    overload, see ``_ensure``)."""
    raise NotImplementedError


def _exp32(x):
    # the Cython kernels' fx_expf_le0, operation for operation (see
    # _kernels_isa.h): 1.0 ULP, subnormal results correctly rounded
    # the constants through _reg: kept in registers by a loop (see _jit_all)
    lo = _reg(_E32_LO)
    mg = _reg(_E32_MAGIC)
    xc = lo if x < lo else x  # NaN passes
    t = xc * _reg(_E32_LOG2E) + mg
    nf = t - mg  # round(x / ln 2): exact, 'reassoc' would fold it
    r = xc - nf * _reg(_E32_C1)
    r = r - nf * _reg(_E32_C2)
    r2 = r * r
    a = _reg(_E32_P3) * r + _reg(_E32_P2)
    b = _reg(_E32_P5) * r + _reg(_E32_P4)
    b = _reg(_E32_P6) * r2 + b
    q = b * r2 + a
    u = q * r2 + r  # exp(r) - 1
    return _scale1p2n_f32(u, t)


def _exp64(x):
    lo = _reg(_E64_LO)
    mg = _reg(_E64_MAGIC)
    one = _reg(1.0)
    xc = lo if x < lo else x
    t = xc * _reg(1.4426950408889634) + mg
    nf = t - mg
    r = xc - nf * _reg(_E64_C1)
    r = r - nf * _reg(_E64_C2)
    p = _reg(_E64_P11)
    p = p * r + _reg(_E64_P10)
    p = p * r + _reg(_E64_P9)
    p = p * r + _reg(_E64_P8)
    p = p * r + _reg(_E64_P7)
    p = p * r + _reg(_E64_P6)
    p = p * r + _reg(_E64_P5)
    p = p * r + _reg(_E64_P4)
    p = p * r + _reg(_E64_P3)
    p = p * r + _reg(_E64_P2)
    p = p * r + one
    p = p * r + one
    return _scale2n_f64(p, t)


def _log_split(s):
    """``(k, m)`` with ``s = 2**k m``, ``m`` in ``[sqrt(1/2), sqrt(2))``, both
    float64 and exact, for finite ``s >= 1``: the range reduction of
    ``_log_ge1`` and ``_log_ge1_f32``, branch-free."""
    b = _f64_bits(s)
    mant = b & _reg(_L64_MANT)
    big = mant > _reg(0x6A09E667F3BCD)  # mantissa of sqrt(2) (m > sqrt 2)
    ex = (b >> 52) - (1022 if big else 1023)
    m = _bits_f64(mant | _reg(_L64_ONE))
    m = m * 0.5 if big else m
    k = _bits_f64(ex + _reg(_L64_KMAGIC)) - _reg(_L64_TWO52)  # exact for 0 <= ex < 2**52
    return k, m


def _log_ge1(s):
    """``log(s)`` for finite float64 ``s >= 1`` (a row's sum of ``exp(x -
    max)``), branch-free so a loop over a block of sums vectorises (libm's
    log is a scalar call, ~20 ns); ``log(1) = 0`` exactly; under 1 ULP
    (tests/test_exp.py).  Other ``s`` give garbage: callers check first."""
    k, m = _log_split(s)
    f = m - 1.0
    hfsq = 0.5 * f * f
    q = f / (2.0 + f)
    z = q * q
    w = z * z
    t1 = w * (_L64_LG2 + w * (_L64_LG4 + w * _L64_LG6))
    t2 = z * (_L64_LG1 + w * (_L64_LG3 + w * (_L64_LG5 + w * _L64_LG7)))
    return k * _L64_LN2_HI - ((hfsq - (q * (hfsq + (t1 + t2)) + k * _L64_LN2_LO)) - f)


def _log_ge1_f32(s):
    """``_log_ge1`` for the sums of float32 rows (the Cython blocks'
    ``fx_v_log_ge1_avx2``): ``log m = 2 atanh(q)``, ``q = (m - 1) / (m + 1)``,
    by its series to ``q**11`` (Estrin), 1.8e-11 absolute at most against
    the float32 loss's 1e-6 (SPEC): four multiply-adds where fdlibm's form
    takes eleven."""
    k, m = _log_split(s)
    one = _reg(1.0)
    q = (m - one) / (m + one)
    z = q * q
    z2 = z * z
    p = (((z * _reg(1.0 / 9.0) + _reg(1.0 / 7.0)) + z2 * _reg(1.0 / 11.0)) * z2
         + (z * _reg(1.0 / 5.0) + _reg(1.0 / 3.0)))
    q2 = q + q
    return (k * _reg(_L64_LN2_HI) + q2) + (k * _reg(_L64_LN2_LO) + (q2 * z) * p)


def _log_sum(like, s):
    """``log(s)`` for a row sum ``s >= 1`` of rows of ``like``'s dtype:
    ``_log_ge1_f32`` for float32, ``_log_ge1`` for float64 (an overload, see
    ``_ensure``)."""
    raise NotImplementedError


# ------------------------------------------------------------ row helpers
# ``v``, ``x``: IN rows; ``e``, ``g``: OUT (or IN/OUT) rows; float64 results.


def _row_max(v):
    """Largest element, NaN skipped (``llvm.maxnum``); NaN only if all NaN."""
    m = v[0]
    for c in range(1, v.shape[0]):
        m = _fmax(m, v[c])
    return m


def _row_below_sum(v, shift):
    """``sum_c (shift - v_c)`` in float64: the smoothing term, formed after the
    shift so that it neither cancels nor meets ``inf - inf`` for huge logits."""
    s = 0.0
    for c in range(v.shape[0]):
        s += shift - np.float64(v[c])
    return s


def _row_below_wsum(v, w, shift):
    """``sum_c w_c (shift - v_c)``, terms with ``w_c == 0`` exactly 0."""
    s = 0.0
    for c in range(v.shape[0]):
        wc = np.float64(w[c])
        s += wc * (shift - np.float64(v[c])) if wc != 0.0 else 0.0
    return s


# Pass 2 stores ``e = exp(v - shift)`` and prefetches ``vn``, the row read
# next (``v`` itself when there is none), one cache line per 64 bytes after
# every block of _PF_BLOCK exps: its max pass then finds it in cache instead
# of waiting on memory.  ``llvm.prefetch`` inside the exp loop would stop LLVM
# vectorising it (as does a max of ``vn`` taken in the same loop), hence the
# blocks; the block loops run over slices, which vectorise like whole-row
# loops.  The elements after the last whole block (and their prefetches)
# go one by one; _row_expsum's blocks are _SUM_BLOCK long, so that at most
# 63 elements take its slower element-wise loop (blocks of _PF_BLOCK left 232
# of a 1000-class row there: (8192, 1000) float32 on 1 thread, fused call,
# 7-10% faster in an A/B in one process).  Soft targets sum the stored row
# in float64 (_row_sum64); the rest sum in the exp loop (_row_expsum).
_PF_BLOCK = 256
#: Elements per float32 partial sum of S (see _row_expsum).
_SUM_BLOCK = 64
#: ... and of the blocks before the row's last 255 elements (see _row_expsum).
_SUM_BIG = 256
#: Rows whose losses a thread keeps in a scratch row when it forms only the
#: partial sums (_ce_int_chunk; a multiple of CE_ROWS, 64 KiB).
_CE_LOSS_ROWS = 8192


def _row_expstore(v, shift, e, vn):
    """``e_c = exp(v_c - shift)`` in ``e``'s dtype; prefetches ``vn``."""
    n = v.shape[0]
    nb = n - n % _PF_BLOCK
    step = 64 // vn.itemsize
    for b in range(0, nb, _PF_BLOCK):
        vb = v[b:b + _PF_BLOCK]
        eb = e[b:b + _PF_BLOCK]
        for c in range(_PF_BLOCK):
            eb[c] = _exp(_as(eb, vb[c] - shift))
        _pf_read(vn, b, b + _PF_BLOCK, step)
    _pf_read(vn, nb, n, step)
    for c in range(np.uint64(nb), np.uint64(n)):  # unsigned: see _row_expsum
        e[c] = _exp(_as(e, v[c] - shift))


def _row_expstore_inplace(g, shift, vn):
    """``g_c = exp(g_c - shift)`` in place (two distinct row arguments that
    alias defeat LLVM's vectoriser: its runtime overlap check fails)."""
    n = g.shape[0]
    nb = n - n % _PF_BLOCK
    step = 64 // vn.itemsize
    for b in range(0, nb, _PF_BLOCK):
        gb = g[b:b + _PF_BLOCK]
        for c in range(_PF_BLOCK):
            gb[c] = _exp(gb[c] - shift)
        _pf_read(vn, b, b + _PF_BLOCK, step)
    _pf_read(vn, nb, n, step)
    for c in range(np.uint64(nb), np.uint64(n)):  # unsigned: see _row_expsum
        g[c] = _exp(g[c] - shift)


def _row_expsum(v, shift, e, vn, y):
    """``e_c = exp(v_c - shift)`` in ``e``'s dtype (``e`` must not alias
    ``v``); returns ``(S, R)`` in float64: ``S = sum e`` and ``R`` the sum of
    the ``e_c``, ``c != y`` (``y`` the target, ``-1`` for none: ``R = S``),
    from which ``p_y - 1 = -R / S`` is formed without cancelling (``S - e_y``
    loses R to the rounding of S when ``p_y ~ 1``).  As the Cython kernels,
    blocks of exps are added in ``e``'s dtype first (in the exp loop, which
    LLVM vectorises: each lane adds a few exps in turn, then a tree across
    the lanes; the largest relative loss error against the float64 NumPy
    path, 2048 rows of 3 x N(0, 1) float32 logits at C = 1000, 1255 and
    32000, is 6.5e-8 against 6.1e-8 with blocks of 64), then in float64;
    faster than converting every exp (the loss at (4096, 32000) float32 on 2
    threads: 1.2x).  The blocks are _SUM_BIG exps long while
    that many are left, then _SUM_BLOCK: each block ends in a horizontal
    reduction of the accumulators, a fifth of the function's samples with
    64-element blocks at (8192, 1000) float32 (perf, cpu-clock).  Fused call
    there, 2 threads, 5 alternating runs of separate processes, median of 41
    calls, ms, blocks of 64 -> 256 then 64: 2.67-3.19 -> 2.72-2.79 (the former
    bimodal across processes, the latter not); 1 thread level (5.17-6.24 vs
    5.80-5.86, 4 runs); (4096, 32000) level (fused 29.2-38.2 vs 30.1-30.3,
    loss 26.7-28.3 vs 28.0 ms).  The same blocks through a helper function
    of their own: slower (1 thread 5.7-6.5 ms).  The blocks index the row
    itself with unsigned loop indices: a slice per block took a reference
    count and dropped it (two NRT_decref calls a block, NRT_decref and
    NRT_incref 16% and 2% of that call's samples on 1 thread), and a signed
    index does not vectorise (the negative-index wraparound; 2.1x slower).
    Against slices, 2 alternating runs, median of 41 calls, ms: fused 1
    thread 5.82-6.04 -> 5.28-5.29, 2 threads 2.71-2.74 -> 2.53-2.57, the
    loss 2.22 -> 2.05-2.07; (4096, 32000) level in 3 runs (fused 35.7-37.0
    vs 34.9-35.7).  In the binary cross-entropy's exp loop the same change
    measured slower (2 threads 9.1-9.6 vs 8.6-9.0 ms): it keeps its slices.
    The elements after the last whole block are indexed unsigned too: with
    signed indices LLVM vectorised that loop with gathers and scatters
    (vscatterqps, microcoded on this AMD core), which took ~7% of this
    function's samples at C = 1000 for 40 of the 1000 elements; unsigned,
    1 thread, 2 alternating runs, median of 41 calls, ms: fused (8192,
    1000) 5.03-5.13 -> 4.74-4.96, loss 4.13-4.18 -> 3.80, log_softmax
    4.81-5.08 -> 4.23-4.24 (the same change in _row_expstore's tails, and
    the prefetch loops as while loops, see _pf_read).  The block holding
    ``y`` and the elements after the last whole block sum
    the same way, ``e_y`` left out by a select, so that those loops vectorise
    too (summed element by element in float64 they took ~280 ns of a
    1000-class row's ~1100 in ``_row_expsum``; the fused call at (8192, 1000)
    float32 is 20-28% faster with the select, same-process A/B, 1 and 2
    threads).  With a 2-D ``e`` (an empty one) the exps are summed and not
    stored: ``e.ndim`` is a compile-time constant, so that specialisation's
    loops have no stores (the loss alone and logsumexp).  They used to store
    into a scratch row so that a loss equalled the fused call's bit for bit
    (LLVM may vectorise the sum without the store in another order: up to
    ~1e-7 relative apart); without it, (4096, 32000) float32, 1 thread, 3
    alternating runs of separate processes, median of 9 calls, ms: the loss
    54.4-71.7 -> 40.1-44.4, logsumexp 53.9-68.0 -> 41.8-43.6 (Cython's
    about 40 and 40).  Prefetches ``vn``, a few lines per block."""
    n = v.shape[0]
    step = 64 // vn.itemsize
    r = 0.0
    zero = _as(e, 0.0)
    st = e.ndim == 1  # a 2-D e: the sums alone (a compile-time constant)
    b = 0
    while n - b >= _SUM_BLOCK:
        L = _SUM_BIG if n - b >= _SUM_BIG else _SUM_BLOCK
        t = zero
        # the select only where the target is: in every block's loop it
        # made the loss at (4096, 32000) 5-12% slower (same-process A/B)
        if b <= y < b + L:
            yu = np.uint64(y)
            for c in range(np.uint64(b), np.uint64(b + L)):
                ec = _exp(_as(e, v[c] - shift))
                if st:
                    e[c] = ec
                t += ec if c != yu else zero
        else:
            for c in range(np.uint64(b), np.uint64(b + L)):
                ec = _exp(_as(e, v[c] - shift))
                if st:
                    e[c] = ec
                t += ec
        r += np.float64(t)
        # the next row's lines at this block's offsets, a few per block:
        # in bursts of 16 every 4th block (as _row_expstore) the fused call
        # at (4096, 32000) float32 took 32-44 ms against 35.0-35.5 ms this
        # way (2 threads, 4 alternating pairs of processes; the loss alone
        # 28.6-31.8 against 27.3-29.0; one thread 56.6-59.4 against
        # 53.8-54.3 ms)
        _pf_read(vn, b, b + L, step)
        b += L
    nb = b
    _pf_read(vn, nb, n, step)
    t = zero
    yu = np.uint64(y)  # y = -1 (no target) matches no index
    for c in range(np.uint64(nb), np.uint64(n)):
        ec = _exp(_as(e, v[c] - shift))
        if st:
            e[c] = ec
        t += ec if c != yu else zero
    r += np.float64(t)
    if 0 <= y < n:
        return r + np.float64(_exp(_as(e, v[y] - shift))), r
    return r, r


def _row_copy(dst, src):
    for c in range(src.shape[0]):
        dst[c] = src[c]


def _row_sum64(e):
    """``sum e`` in float64 element by element (soft targets: their gradient
    ``p_c sum(q) - q_c`` cancels at any class, not one known target)."""
    s = 0.0
    for c in range(e.shape[0]):
        s += np.float64(e[c])
    return s


def _row_scale(g, k):
    for c in range(g.shape[0]):
        g[c] = g[c] * k


def _row_scale_sub(g, k, b):
    for c in range(g.shape[0]):
        g[c] = g[c] * k - b


def _row_scale_subw(g, k, b, w):
    for c in range(g.shape[0]):
        g[c] = g[c] * k - b * w[c]


def _wide(g, k):
    """Whether the gradient factor ``k`` (float64) is finite but beyond
    ``g``'s dtype (float32 with z_loss at logits near its max, or with a
    large grad_output): in that dtype it is inf, and ``e_c k`` would come out
    inf where it is finite and NaN where ``e_c = 0``."""
    return np.isinf(_as(g, k)) and np.isfinite(k)


def _row_scale_wide(g, k, b, w, has_w):
    """``g_c = e_c k - b w_c`` in float64, rounded once (a ``_wide`` factor)."""
    for c in range(g.shape[0]):
        wc = np.float64(w[c]) if has_w else 1.0
        g[c] = np.float64(g[c]) * k - b * wc


def _row_softcap(x, s, xs):
    """``xs_c = s tanh(x_c / s)`` in float64, ``-inf`` kept masked.

    tanh inline and branch-free (one division) so that the loop vectorises:
    the Cephes rational for ``|u| < 0.625``, else ``(1 - e) / (1 + e)`` with
    ``e = exp(-2|u|)``, which neither overflows nor cancels there.
    """
    inv = 1.0 / s
    for c in range(x.shape[0]):
        xc = np.float64(x[c])
        u = xc * inv
        a = abs(u)
        # both candidates are finite for any u (the rational on u clamped to
        # +-0.625), so an arithmetic blend picks one without branches
        uc = -_fmax(-_fmax(u, -0.625), -0.625)
        z = uc * uc
        q = ((z + _TH_Q0) * z + _TH_Q1) * z + _TH_Q2
        p = ((_TH_P0 * z + _TH_P1) * z + _TH_P2) * z
        e = _exp64(-2.0 * a)
        sgn = 2.0 * np.float64(u >= 0.0) - 1.0
        m = np.float64(a < 0.625)
        num = m * (uc * (q + p)) + (1.0 - m) * (sgn * (1.0 - e))
        den = m * q + (1.0 - m) * (1.0 + e)
        v = s * (num / den)
        xs[c] = v if xc != -_INF else -_INF


def _row_capslope(g, xs, s):
    """``g_c *= 1 - (xs_c / s)**2`` (tanh'), 0 where masked (``xs_c = -inf``)."""
    for c in range(g.shape[0]):
        t = xs[c] / s
        d = 1.0 - t * t
        d = d if d > 0.0 else 0.0
        g[c] = np.float64(g[c]) * d


def _row_soft_sums(v, shift, P, w, has_w, eps, C):
    """``(Q, T)``: ``Q = sum wq``, ``T = sum_{wq != 0} wq (v - shift)`` with
    ``wq_c = w_c ((1 - eps) P_c + eps / C)``, all in float64."""
    q = 0.0
    t = 0.0
    keep = 1.0 - eps
    add = eps / C
    sh = np.float64(shift)
    if has_w:
        for c in range(v.shape[0]):
            wq = np.float64(w[c]) * (keep * np.float64(P[c]) + add)
            q += wq
            t += wq * (np.float64(v[c]) - sh) if wq != 0.0 else 0.0
    else:
        for c in range(v.shape[0]):
            wq = keep * np.float64(P[c]) + add
            q += wq
            t += wq * (np.float64(v[c]) - sh) if wq != 0.0 else 0.0
    return q, t


def _row_soft_grad(g, k, a, P, w, has_w, eps, C):
    """``g_c = e_c k - a wq_c`` in float64 (``g`` holds ``e`` on entry)."""
    keep = 1.0 - eps
    add = eps / C
    if has_w:
        for c in range(g.shape[0]):
            wq = np.float64(w[c]) * (keep * np.float64(P[c]) + add)
            g[c] = np.float64(g[c]) * k - a * wq
    else:
        for c in range(g.shape[0]):
            wq = keep * np.float64(P[c]) + add
            g[c] = np.float64(g[c]) * k - a * wq


def _shift_of(m):
    """The row max when finite, else 0 (all ``-inf``, a ``+inf`` or all NaN)."""
    return m if np.isfinite(m) else _as(m, 0.0)


def _row_sub_into(o, x, sh, logs):
    for c in range(x.shape[0]):
        o[c] = (x[c] - sh) - logs


def _row_sub_inplace(o, sh, logs):
    for c in range(o.shape[0]):
        o[c] = (o[c] - sh) - logs


def _fill(o, v):
    for c in range(o.shape[0]):
        o[c] = v


#: Pieces per thread of a parallel call (the Cython kernels' FX_PIECES).
_PIECES = 8
#: int64 slots per counter of ``_pieces``: one counter per 64-byte line.
_SLOT = 8


def _pieces(nt):
    """The counters of a parallel call's pieces: thread ``k`` starts at its
    own first piece, ``k * _PIECES`` (see ``_piece``)."""
    slots = np.zeros(nt * _SLOT, np.int64)
    for k in range(nt):
        slots[k * _SLOT] = k * _PIECES
    return slots


def _piece_start(n, c, nt, align):
    """Where piece ``c`` of ``n`` units (rows, or blocks of binary
    cross-entropy) starts, ``align`` dividing every start but ``n`` (the
    partial sums' groups of ``CE_ROWS`` rows): thread ``k``'s own units are
    those of an even split, ``[a, b)``, and its ``_PIECES`` pieces halve in
    size, 1/2, 1/4, ..., 1/128 and 1/128 of them, so that the pieces still
    left when a thread runs out of its own are small: with even pieces (1/16
    of the work each on two threads) the last piece one thread takes could
    leave the other idle for that long.  The Cython kernels'
    ``fx_piece_start``."""
    k = c // _PIECES
    j = c - k * _PIECES
    if k >= nt:
        return n
    a = n * k // nt // align * align
    b = n if k + 1 >= nt else n * (k + 1) // nt // align * align
    m = b - a
    return a + (m - (m >> j)) // align * align


def _piece(slots, nt, k):
    """The next piece for the ``k``-th of ``nt`` threads, or -1 when none is
    left: its own pieces ``k * _PIECES, ...`` in order (the rows a static
    split would give it), then what is left of the others', each from the
    front, so that a thread slowed by another process on its core no longer
    makes the whole call wait for its share.  Each take is an atomic
    increment of that thread's counter (``_fetch_inc``): every piece is
    taken exactly once, whoever takes it; the Cython kernels' ``fx_piece``."""
    for j in range(nt):
        o = k + j if k + j < nt else k + j - nt
        c = _fetch_inc(slots, o * _SLOT)
        if c < (o + 1) * _PIECES:
            return c
    return -1


# ====================================================== softmax family rows


def _next_row(X, r, r1):
    """Row ``r + 1`` when it is in ``r0:r1``, else row ``r``: what pass 2
    prefetches (see ``_row_expstore``)."""
    return X[r + 1] if r + 1 < r1 else X[r]


def _logsumexp_rows(X, out, r0, r1):
    nost = np.empty((0, 0), X.dtype)  # _row_expsum: the sums alone
    for r in range(r0, r1):
        x = X[r]
        m = _row_max(x)
        if m == _INF:  # _exp takes no +inf: lse is +inf, or NaN with a NaN
            out[r] = _INF if not np.isnan(x).any() else _NAN
            continue
        sh = _shift_of(m)
        s, _ = _row_expsum(x, sh, nost, _next_row(X, r, r1), -1)
        out[r] = np.float64(sh) + np.log(s)


def _softmax_rows(X, out, r0, r1):
    if X.shape[1] < _FLAT_C:
        _softmax_flat(X, out, False, r0, r1)
        return
    inplace = X.ctypes.data == out.ctypes.data
    buf = np.empty(X.shape[1] if inplace else 0, X.dtype)  # row copy (scratch)
    for r in range(r0, r1):
        x = X[r]
        o = out[r]
        sh = _shift_of(_row_max(x))
        if inplace:  # _row_expsum's rows must not alias
            _row_copy(buf, x)
            x = buf
        s, _ = _row_expsum(x, sh, o, _next_row(X, r, r1), -1)
        if np.isfinite(np.float64(sh) + np.log(s)):
            _row_scale(o, _as(o, 1.0 / s))
        else:
            _fill(o, _as(o, _NAN))


def _log_softmax_rows(X, out, r0, r1):
    if X.shape[1] < _FLAT_C:
        _softmax_flat(X, out, True, r0, r1)
        return
    inplace = X.ctypes.data == out.ctypes.data
    buf = np.empty(X.shape[1] if inplace else 0, X.dtype)  # exp row (scratch)
    for r in range(r0, r1):
        x = X[r]
        o = out[r]
        sh = _shift_of(_row_max(x))
        # the exps go into the output row unless it is x (then to buf), to
        # be overwritten below: its lines come in while the exps compute
        # (as the Cython kernels' fx_log_softmax_row; the same sums)
        s, _ = _row_expsum(x, sh, buf if inplace else o, _next_row(X, r, r1), -1)
        logs = np.log(s)
        # (x - shift) - logs: exact where |shift| dwarfs logs
        if not np.isfinite(np.float64(sh) + logs):
            _fill(o, _as(o, _NAN))
        elif inplace:
            _row_sub_inplace(o, sh, _as(o, logs))
        else:
            _row_sub_into(o, x, sh, _as(o, logs))


# ================================================ cross-entropy, int targets


def _ce_row_loss(shift, xy, logs, sx, wy, eps, z, wsum, C, ce_scale, z_scale):
    """One row's loss from its shift, ``x_y``, ``log S`` and smoothing sum
    ``sx = sum_c w_c (shift - x_c)``: ``-logp_y = logs + (shift - x_y)``,
    ``-sum_c w_c logp_c = wsum logs + sx``; a zero coefficient adds exactly 0.
    Selects, no branches: a loop over rows that inlines it vectorises."""
    lse = shift + logs
    cn = (1.0 - eps) * wy
    ce = cn * ((shift - xy) + logs)
    ce = ce if cn != 0.0 else 0.0
    cs = ce + eps / C * (wsum * logs + sx)
    ce = cs if eps > 0.0 else ce
    loss = ce_scale * ce
    lz = loss + z_scale * (z * lse * lse)
    return lz if z > 0.0 else loss


def _ce_row_coefs(gn, wy, eps, z, wsum, C, ce_scale, z_scale, lse):
    """``(A, B, k2)`` of pass 3: ``d_c = e_c (A + k2) / S - B w_c``, and
    ``-A`` more at the target, with ``A = a (1-eps) w_y``, ``B = a eps / C``,
    ``k2 = B wsum + 2 b z lse`` (``a``, ``b``: the grad_output scales).
    ``B`` is 0 without smoothing, as in the Cython kernels (not ``a 0 / C``,
    NaN for an infinite grad_output), and ``eps / C`` is loop-invariant: a
    loop over rows hoists its division.  Selects, no branches (see
    ``_ce_row_loss``)."""
    a = gn * ce_scale
    A = a * (1.0 - eps) * wy
    B = a * (eps / C)
    B = B if eps > 0.0 else 0.0
    k2 = B * wsum
    kz = k2 + 2.0 * (gn * z_scale) * z * lse
    return A, B, (kz if z > 0.0 else k2)


def _ce_int_rows(X, target, weight, ignore_index, eps, z, softcap,
                 ce_scale, z_scale, gscalar, gout, loss_out, grad_out,
                 do_grad, r0, r1, l0):
    """Rows ``r0:r1`` of ``_ce_int`` (reference); ``grad_out`` unused unless
    ``do_grad``; row ``r``'s loss goes to ``loss_out[r - l0]``. IN: X,
    target, weight, gout. OUT: loss_out, grad_out."""
    C = X.shape[1]
    has_w = weight.shape[0] > 0
    has_g = gout.shape[0] > 0
    inplace = do_grad and X.ctypes.data == grad_out.ctypes.data
    capped = softcap != 0.0
    smooth = eps > 0.0
    wsum = 0.0
    if has_w:
        for c in range(C):
            wsum += np.float64(weight[c])
    else:
        wsum = np.float64(C)
    if not capped and C < _FLAT_C:
        _ce_int_flat(X, target, weight, ignore_index, eps, z, ce_scale,
                     z_scale, gscalar, gout, loss_out, grad_out, wsum,
                     do_grad, r0, r1, l0)
        return
    xs = np.empty(C if capped else 0, np.float64)  # softcapped row (scratch)
    buf = np.empty(C if inplace else 0, X.dtype)  # the row, copied in place
    nost = np.empty((0, 0), X.dtype)  # the loss alone: sums, no exps stored
    for r in range(r0, r1):
        y = target[r]
        if y == ignore_index:
            loss_out[r - l0] = 0.0
            if do_grad:
                _fill(grad_out[r], _as(grad_out, 0.0))
            continue
        x = X[r]
        wy = np.float64(weight[y]) if has_w else 1.0
        # pass 1 (max, and sum_c w_c x_c for the smoothing term); pass 2
        # e = exp(x - shift) into the gradient row, S = sum e
        sx = 0.0
        if capped:
            _row_softcap(x, softcap, xs)
            m64 = _row_max(xs)
            shift = m64 if np.isfinite(m64) else 0.0
            if smooth and has_w:
                sx = _row_below_wsum(xs, weight, shift)
            elif smooth:
                sx = _row_below_sum(xs, shift)
            xy = xs[y]
            if do_grad:
                s, rest = _row_expsum(xs, shift, grad_out[r], xs, y)
            else:
                s, rest = _row_expsum(xs, shift, nost, xs, y)
        else:
            m = _row_max(x)
            sh = _shift_of(m)
            shift = np.float64(sh)
            if smooth and has_w:  # before an in-place pass 2 overwrites x
                sx = _row_below_wsum(x, weight, shift)
            elif smooth:
                sx = _row_below_sum(x, shift)
            xy = np.float64(x[y])  # read before an in-place pass 2
            if inplace:  # _row_expsum's rows must not alias
                _row_copy(buf, x)
                x = buf
            if do_grad:
                s, rest = _row_expsum(x, sh, grad_out[r], _next_row(X, r, r1), y)
            else:
                s, rest = _row_expsum(x, sh, nost, _next_row(X, r, r1), y)
        logs = np.log(s)
        lse = shift + logs
        if not np.isfinite(lse):
            loss_out[r - l0] = _NAN
            if do_grad:
                _fill(grad_out[r], _as(grad_out, _NAN))
            continue
        loss_out[r - l0] = _ce_row_loss(shift, xy, logs, sx, wy, eps, z, wsum, C,
                                   ce_scale, z_scale)
        if not do_grad:
            continue
        g = grad_out[r]
        A, B, k2 = _ce_row_coefs(gout[r] if has_g else gscalar, wy, eps, z,
                                 wsum, C, ce_scale, z_scale, lse)
        k = (A + k2) / s
        ey = np.float64(g[y])
        if _wide(g, k):
            _row_scale_wide(g, k, B, weight, has_w)
        elif B == 0.0:
            _row_scale(g, _as(g, k))
        elif has_w:
            _row_scale_subw(g, _as(g, k), _as(g, B), weight)
        else:
            _row_scale_sub(g, _as(g, k), _as(g, B))
        # the target in float64, with p_y - 1 = -R / S (R = sum_{c != y} e_c
        # summed apart): no cancellation when p_y is close to 1
        dy = ey * (k2 / s) - A * (rest / s) - B * (wy if has_w else 1.0)
        if capped:
            _row_capslope(g, xs, softcap)
            t = xs[y] / softcap
            slope = 1.0 - t * t
            dy = dy * (slope if slope > 0.0 else 0.0)  # NaN dy stays NaN
        g[y] = dy


def _flat_rows(C, n):
    """Rows per transposed block for ``n`` rows of ``C`` classes: about
    _FLAT_ELEMENTS elements, a multiple of 16 when there are that many rows
    (so that the loops over a block's rows, vectorised 16 float32 lanes
    wide, leave no remainder for a scalar epilogue: 192 rows, not 200, at C
    = 10; (262144, 10) float32, 1 thread, alternating runs of separate
    processes, median of 41 calls, ms, 200 -> 192 rows: softmax 2.32-2.52
    -> 2.04-2.22, fused 3.86-4.64 -> 3.74-4.30, loss and log_softmax
    level), no more than the rows need (a small call allocates and fills no
    more; a multiple of 8, the widest tile), at least 8."""
    return max(8, min((_FLAT_ELEMENTS // C) & -16, (n + 7) & -8))


def _flat_share(n, C, step):
    """A class's share of ``n`` elements to prefetch over ``C`` classes: a
    whole number of ``step``-element lines, at least ``n / C`` elements.

    The few-class kernels prefetch the next block's rows (read) and this
    block's output rows (write) a C-th at a time in their exp loop's class
    loop (``_flat_part``), spreading them over the time the exps take.  Why:
    the transposes in and out of the class-major scratch (``_flat_in``,
    ``_flat_out``) only load or store, so a block's rows used to come from
    memory while nothing else ran (perf, cpu-clock samples, float32 (262144,
    10) fused, 1 thread: the two transposes held 53% of the kernel's samples
    from memory, 28% with 8192 rows in cache).  Measured (3 alternating runs
    of separate processes, min of 25 calls, ms, without -> with): fused 1
    thread 4.75-5.28 -> 3.97-4.13, 2 threads 2.19-2.48 -> 2.16-2.34;
    log_softmax 1 thread 3.02-3.46 -> 2.64-2.68, 2 threads level; softmax
    (too little work per block to hide them) 2 threads 1.07-1.09 ->
    1.29-1.48, so it does not prefetch.  Issued all at once after a block's
    transpose in, the same prefetches gained nothing.  They were first a
    function of the array, called per class: a call that Numba did not
    inline, with a reference count taken and dropped on the array and two
    integer divisions each time (that function 8.4% of the kernel's samples,
    NRT_incref/decref 3.4%); written in the class loops, with the bounds
    from these two integer helpers, the fused call took 1.83-1.99 against
    2.05-2.14 ms on 2 threads, the loss alone 1.26-1.37 against 1.40-1.55
    (3 alternating runs, median of 41 calls); log_softmax 1.19-1.25 against
    1.36-1.41.  Those loops are now ``_flat_prefetch``, which Numba inlines
    itself (``_INLINE``): against the loops written out in both kernels,
    level (fused 2 threads 1.77-2.62 vs 1.83-2.15 ms, log_softmax 1.22-1.23
    vs 1.20-1.27, 3 and 2 alternating runs)."""
    return ((n + C - 1) // C + step - 1) // step * step


def _flat_part(a, e, share, c):
    """Class ``c``'s part ``lo:hi`` of the elements ``a:e`` to prefetch."""
    lo = a + c * share
    return lo, min(e, lo + share)


def _pf_read(A, lo, hi, step):
    """Prefetch ``A``'s elements ``lo:hi`` (flat, from its first element;
    the caller keeps them inside ``A``), one every ``step`` (> 0, a cache
    line); inlined at Numba's level (see ``_INLINE``).  A while loop, not
    ``range(lo, hi, step)``: with a step Numba cannot see is nonzero (an
    array's itemsize is a runtime field) range() checks it and may raise,
    and a function with a raising exit keeps the reference counts of its
    array arguments (an NRT_incref and NRT_decref per array per call)."""
    i = lo
    while i < hi:
        _prefetch(A, i)
        i += step


def _pf_write(A, lo, hi, step):
    """``_pf_read`` with the hint that the lines will be written."""
    i = lo
    while i < hi:
        _prefetchw(A, i)
        i += step


def _flat_prefetch(X, xa, xe, xs, O, oa, oe, os_, c, step):
    """Class ``c``'s part of the prefetches: of ``X``'s elements ``xa:xe``
    (read) and ``O``'s ``oa:oe`` (write), shares ``xs`` and ``os_``
    (``_flat_share``); inlined at Numba's level (see ``_INLINE``)."""
    lo, hi = _flat_part(xa, xe, xs, c)
    _pf_read(X, lo, hi, step)
    lo, hi = _flat_part(oa, oe, os_, c)
    _pf_write(O, lo, hi, step)


def _tile_plan(C, W):
    """The class tiles of a block of ``C`` classes with ``W``-wide tiles
    (``_tile_w``): ``(cw, h0, t1, half)``, whole tiles at ``0, W, ... < cw``,
    then a half tile (4 classes, float32 only: W = 8) at ``h0`` if ``h0 >=
    0``, then at ``t1`` (if ``>= 0``) a half tile if ``half`` else a whole
    one.  The last tile overlaps the one before rather than read past the
    row: at C = 10 whole 0-7 and half 6-9, at C = 13 whole 0-7 and 5-12, at
    C = 6 halves 0-3 and 2-5."""
    cw = C - C % W
    rest = C - cw
    hw = 4 if W == 8 else W  # the narrowest tile
    if rest == 0:
        return cw, -1, -1, False
    if hw < W and cw == 0 and rest > hw:
        return cw, 0, C - 4, True
    if hw < W and rest <= hw:
        return cw, -1, C - 4, True
    return cw, -1, C - W, False


def _tile_in(Xb, j, c, T, shb, half):
    """One tile of ``_flat_in``: rows ``j`` on, classes ``c`` on, a half tile
    (4 classes) if ``half``; inlined at Numba's level (see ``_INLINE``)."""
    if half:
        _tileh_max(Xb, j, c, T, c, j, shb)
    else:
        _tile_tmax(Xb, j, c, T, c, j, shb)


def _tile_out(T, c, j, Ob, kb, half, scale):
    """One tile of ``_flat_out`` (the reverse of ``_tile_in``), times the
    row factors ``kb`` if ``scale``; inlined at Numba's level."""
    if half and scale:
        _tileh_scale(T, c, j, Ob, j, c, kb)
    elif half:
        _tileh_t(T, c, j, Ob, j, c, kb)
    elif scale:
        _tile_tscale(T, c, j, Ob, j, c, kb)
    else:
        _tile_t(T, c, j, Ob, j, c, kb)


def _flat_in(Xb, T, shb):
    """``T[c, j] = Xb[j, c]`` (the block of rows transposed, class-major) and
    ``shb[j]`` the max of row ``j`` (NaN skipped); returns whether ``W x W``
    tiles did it (``_tile_w``; else scalar loops).  The tiles are transposed
    in registers; the last tile of a row range overlaps the one before when
    the rows are not a multiple of W, and so does the last tile of the
    classes when C is not a multiple of W: the same values written twice, no
    read past ``Xb``; they also take the row max (NaN skipped, as maxnum:
    ``max_into``).  In float32, 1 to
    4 classes past the whole tiles go by a half tile (``_tileh_max``: 4
    classes of the 8 rows) instead of a whole overlapping one: at C = 10, 12
    classes' work instead of 16; and 4 to 7 classes go by half tiles alone
    (``_tile_plan``)."""
    nr, C = Xb.shape
    W = _tile_w(T)  # 8 (float32) or 4 (float64), a compile-time constant
    tiled = W > 0 and nr >= W and C >= (4 if W == 8 else W)
    if tiled:
        ninf = _as(T, -_INF)
        for j in range(nr):
            shb[j] = ninf
        cw, h0, t1, half = _tile_plan(C, W)
        for j0 in range(0, nr, W):
            j = min(j0, nr - W)
            for c0 in range(0, cw, W):
                _tile_in(Xb, j, c0, T, shb, False)
            if h0 >= 0:
                _tile_in(Xb, j, h0, T, shb, True)
            if t1 >= 0:
                _tile_in(Xb, j, t1, T, shb, half)
    else:
        for j in range(nr):
            m = Xb[j, 0]
            T[0, j] = m
            for c in range(1, C):
                v = Xb[j, c]
                T[c, j] = v
                m = _fmax(m, v)
            shb[j] = m
    return tiled


def _flat_out(T, Ob, kb, scale, tiled):
    """``Ob[j, c] = T[c, j]``, times ``kb[j]`` with ``scale``: the block back,
    by the tiles of ``_flat_in`` when it tiled (overlapping and half tiles
    alike), else by scalar loops."""
    nr, C = Ob.shape
    if tiled:
        W = _tile_w(T)
        cw, h0, t1, half = _tile_plan(C, W)
        for j0 in range(0, nr, W):
            j = min(j0, nr - W)
            for c0 in range(0, cw, W):
                _tile_out(T, c0, j, Ob, kb, False, scale)
            if h0 >= 0:
                _tile_out(T, h0, j, Ob, kb, True, scale)
            if t1 >= 0:
                _tile_out(T, t1, j, Ob, kb, half, scale)
    elif scale:
        for j in range(nr):
            k = kb[j]
            for c in range(C):
                Ob[j, c] = T[c, j] * k
    else:
        for j in range(nr):
            for c in range(C):
                Ob[j, c] = T[c, j]


def _sum_classes(T, nr, acc):
    """``acc[j] += T[0, j] + T[1, j] + ... + T[C - 1, j]`` for ``j < nr``, in
    float64, added in class order (so the same value as one class at a time,
    and as the per-row loop and the Cython kernels add a short row), four
    classes per pass over ``acc``: one load and store of ``acc`` per four
    classes' adds; inlined at Numba's level (see ``_INLINE``)."""
    C = T.shape[0]
    c4 = C - C % 4
    for c in range(0, c4, 4):
        for j in range(nr):
            acc[j] = (((acc[j] + np.float64(T[c, j])) + np.float64(T[c + 1, j]))
                      + np.float64(T[c + 2, j])) + np.float64(T[c + 3, j])
    for c in range(c4, C):
        for j in range(nr):
            acc[j] += np.float64(T[c, j])


def _softmax_flat(X, out, log, r0, r1):
    """``_softmax_rows`` (``_log_softmax_rows`` with ``log``) for few classes,
    as ``_ce_int_flat``: blocks of rows transposed into a class-major scratch
    (``_flat_in``), so that the exps, the float64 sums (in class order, as the
    per-row loop adds a short row: the same S), ``1 / S`` or ``log S``
    (``_log_sum``, branch-free) and ``(x - shift) - log S`` are loops over
    rows that LLVM vectorises; the block goes back by tiles that apply the
    row factor (softmax).  A row with a NaN, all ``-inf`` or a ``+inf`` has no
    ``S >= 1`` and comes out NaN, as per row.  All reads of ``X`` come before
    the block's writes (in-place safe)."""
    C = X.shape[1]
    RB = _flat_rows(C, r1 - r0)
    T = np.empty((C, RB), X.dtype)  # the block, transposed: x (then e)
    E = np.empty((C, RB), X.dtype) if log else T  # e (log_softmax keeps x)
    fx = np.empty((3, RB), X.dtype)
    mxb = fx[0]  # row max
    # the shift: the max where finite, else 0, into an array of its own
    # (in place, `shb[j] = m if np.isfinite(m) else zero` stores only where
    # m is not finite, and LLVM made that a masked store, slow on AMD cores)
    shb = fx[2]
    kb = fx[1]  # 1 / S (softmax) or log S (log_softmax), NaN for a NaN row
    sb = np.empty(RB, np.float64)  # S
    zero = _as(T, 0.0)
    nan = _as(T, _NAN)
    pf = log and r1 - r0 > RB  # see _ce_int_flat
    step = 64 // X.itemsize
    for q0 in range(r0, r1, RB):
        nr = min(r1, q0 + RB) - q0
        Ob = out[q0:q0 + nr]
        tiled = _flat_in(X[q0:q0 + nr], T, mxb)
        for j in range(nr):
            m = mxb[j]
            shb[j] = m if np.isfinite(m) else zero
            sb[j] = _NAN if m == _INF else 0.0  # a +inf row: NaN
        q1 = min(r1, q0 + nr + RB)  # the next block's rows
        xa, xe = (q0 + nr) * C, q1 * C
        oa, oe = q0 * C, (q0 + nr) * C
        xs = _flat_share(xe - xa, C, step)
        os_ = _flat_share(oe - oa, C, step)
        for c in range(C):
            for j in range(nr):
                E[c, j] = _exp(T[c, j] - shb[j])
            if pf:  # as _ce_int_flat; softmax measured slower with it
                _flat_prefetch(X, xa, xe, xs, out, oa, oe, os_, c, step)
        _sum_classes(E, nr, sb)
        # S >= 1, else NaN (a NaN or +inf row) or 0 (all -inf): a NaN row
        if log:
            for j in range(nr):
                s = sb[j]
                good = s >= 1.0
                k = _as(T, _log_sum(T, s if good else 1.0))
                kb[j] = k if good else nan
            # (x - shift) - log S: exact where |shift| dwarfs log S
            for c in range(C):
                for j in range(nr):
                    T[c, j] = (T[c, j] - shb[j]) - kb[j]
        else:
            for j in range(nr):
                s = sb[j]
                k = _as(T, 1.0 / s)
                kb[j] = k if s >= 1.0 else nan
        _flat_out(T, Ob, kb, not log, tiled)


def _ce_int_flat(X, target, weight, ignore_index, eps, z, ce_scale, z_scale,
                 gscalar, gout, loss_out, grad_out, wsum, do_grad, r0, r1,
                 l0):
    """``_ce_int_rows`` for few classes, no softcap: blocks of ``nr`` rows
    copied transposed into a scratch ``T[c, j]`` (class-major), so that every
    per-row step is a loop over the block's rows that LLVM vectorises (a
    loop over a row's few classes is too short for a vector, and Numba runs
    no SLP vectoriser): row maxima, ``e = exp(x - shift)`` in place, ``R =
    sum_{c != y} e_c`` in float64, ``log S`` (``_log_sum``), the loss and
    pass-3 coefficients per row, then the gradient rows written back from
    ``T``.  All reads of ``X`` come before the block's writes (in-place safe);
    the loss-only call runs the same steps (equal losses, bit for bit).
    From ``C >= W`` (``_tile_w``: 8 float32, 4 float64) both transposes go
    by ``W x W`` tiles shuffled in registers (``_tile_t``), the last tile
    of the classes (rows) overlapping the one before it, so that no read or
    write leaves the block (in float32 up to 4 classes past the whole tiles
    go by a half tile, ``_tileh_*``, see ``_flat_in``); the row max comes with the tiles in (NaN
    skipped: the same shift as the scalar running max) and ``e_c k`` with the tiles out
    (without smoothing; with it ``e_c k - b w_c`` is formed class-major
    first).  Results are the scalar loops' bit for bit.  Measured (float32
    (262144, C), medians of 31 (15) alternations in one process, ms, tiles
    vs scalar transposes, Cython): C = 10, 1 thread 6.50 vs 7.17 (4.02), 2
    threads 4.50 vs 5.19 (2.82); C = 16 9.5 vs 10.3; C = 33 19.5 vs 21.9;
    float64 C = 10 the same (13.4 vs 13.3).  Those figures predate the
    AVX-512 Cython build and the prefetches (``_flat_share``): in the
    benchmark of 2026-11-27 (2 threads) this kernel took 1.87-1.92x
    Cython's time at (262144, 10) at 49e7c0e, and 1.50-1.75x once its
    prefetch loops were written inline (four runs at 60c14c0); the other
    passes over ``T`` (exp, sums, per-row float64 end) remain (merging the
    loss and pass-3 loops measured slower; so did the target's exp and the
    sum of the others in one select loop, 2x: its float64 adds halve the
    exps' vector width).  ``x_y`` and ``e_y`` are taken by selects in the
    exp loop (``tb`` as int32, compared with the class), which also zeroes
    ``e_y`` in ``T``, instead of two scalar per-row loops that read
    ``X[j, y]`` and ``T[y, j]`` by index: (262144, 10) float32, 3
    alternating runs of separate processes, min over 5 rounds of the
    median of 21 calls, ms: fused 2 threads 1.72-1.79 -> 1.55-1.65, loss
    1.21-1.29 -> 1.00-1.16, fused 1 thread 3.10-3.81 -> 2.99-3.08; the
    same bits (C = 2..33, both dtypes, with ignored, NaN, inf rows)."""
    C = X.shape[1]
    has_w = weight.shape[0] > 0
    has_g = gout.shape[0] > 0
    smooth = eps > 0.0
    RB = _flat_rows(C, r1 - r0)
    T = np.empty((C, RB), X.dtype)  # the block, transposed: x, then e
    # per-row scratch, one allocation per dtype (each costs ~0.1 us, which
    # is what a call of a few rows spends)
    fx = np.empty((6, RB), X.dtype)
    mxb = fx[0]  # row max
    shb = fx[5]  # the shift (see _softmax_flat)
    kb = fx[1]  # pass 3: d_c = e_c k - b w_c
    bb = fx[2]
    xyf = fx[3]  # x_y, taken in the exp loop
    eyf = fx[4]  # e_y, likewise
    tb = np.empty(RB, np.int32)  # target, -1 if ignored (matches no class)
    f64 = np.empty((11, RB), np.float64)
    sxb = f64[0]  # sum_c w_c (shift - x_c) (smoothing)
    xyb = f64[1]  # x_y
    eyb = f64[2]  # e_y
    rb = f64[3]  # R = sum_{c != y} e_c, p_y - 1 = -R / S
    sb = f64[4]  # S, 1 where not S >= 1 (a NaN row)
    lb = f64[5]  # lse, NaN for a NaN row
    dyb = f64[6]  # the target's entry
    wyb = f64[7]  # w_y (1 without weights)
    wyb[:] = 1.0
    gsb = f64[8]  # grad_output per row without gout
    gsb[:] = gscalar
    kwb = f64[9]  # a _wide factor (0 in the other rows), and its row's B
    bwb = f64[10]
    if not smooth:
        sxb[:] = 0.0
    zero = _as(T, 0.0)
    nan = _as(T, _NAN)
    pf = r1 - r0 > RB  # more than one block (see below)
    step = 64 // X.itemsize
    for q0 in range(r0, r1, RB):
        nr = min(r1, q0 + RB) - q0
        Xb = X[q0:q0 + nr]
        tgt = target[q0:q0 + nr]
        tiled = _flat_in(Xb, T, mxb)
        # memory: the next block's rows and this block's gradient rows,
        # prefetched a C-th at a time during the exps (see _flat_share);
        # not in a call of one block (its rows are in cache, if anywhere,
        # and the calls cost the (8, 10) call ~0.45 us of its ~7)
        q1 = min(r1, q0 + nr + RB)
        nw = nr if do_grad else 0
        xa, xe = (q0 + nr) * C, q1 * C  # X's elements to prefetch ...
        ga, ge = q0 * C, (q0 + nw) * C  # ... and grad_out's
        xs = _flat_share(xe - xa, C, step)  # a class's share of them
        gs = _flat_share(ge - ga, C, step)
        if pf:  # the next block's targets, at once: the
            # first per-row loop below waited on them (perf: 5% of this
            # function's samples on one load's use); fused (262144, 10)
            # float32, 1 thread, 6 alternating runs, ms: 3.92-4.19 ->
            # 3.69-4.03, the loss alone 2.46-2.60 -> 2.41-2.60
            _pf_read(target, q0 + nr, q1, 64 // target.itemsize)
        for j in range(nr):
            m = mxb[j]
            shb[j] = m if np.isfinite(m) else zero
            y = tgt[j]
            tb[j] = np.int32(y) if y != ignore_index else np.int32(-1)
            xyf[j] = zero
            eyf[j] = zero
        gnb = gout[q0:q0 + nr] if has_g else gsb
        if has_w:
            for j in range(nr):
                y = tb[j]
                wyb[j] = np.float64(weight[y if y >= 0 else 0])
        if smooth:  # formed after the shift (no inf - inf)
            for j in range(nr):
                sxb[j] = 0.0
            for c in range(C):
                wc = np.float64(weight[c]) if has_w else 1.0
                if wc != 0.0:
                    for j in range(nr):
                        sxb[j] += wc * (np.float64(shb[j]) - np.float64(T[c, j]))
        # e = exp(x - shift) in place; x_y and e_y taken by selects, and e_y
        # zeroed in T: R = sum_{c != y} e_c by a plain sum below (the
        # gradient's target entry is written last, from e_y).  x_y and e_y
        # are added to their zeros (the one matching class adds itself, the
        # others 0: the same values): written as `xyf[j] = v if isy else
        # xyf[j]`, LLVM stored them with masked stores (vmaskmovps), slow on
        # this AMD core; (262144, 10) float32 fused, 2 threads, 4.0-5.4 ->
        # 2.8-3.6 ms (separate processes alternated, min of 5 medians of 31)
        for c in range(C):
            c32 = np.int32(c)
            for j in range(nr):
                v = T[c, j]
                e = _exp(v - shb[j])
                isy = tb[j] == c32
                xyf[j] += v if isy else zero
                eyf[j] += e if isy else zero
                T[c, j] = zero if isy else e
            if pf:
                _flat_prefetch(X, xa, xe, xs, grad_out, ga, ge, gs, c, step)
        # (an ignored row, tb = -1, matches no class: its x_y, e_y stay 0
        # and its e_c all count in R; its loss and gradient are zeros below)
        for j in range(nr):
            xyb[j] = np.float64(xyf[j])
            eyb[j] = np.float64(eyf[j])
            rb[j] = 0.0
        _sum_classes(T, nr, rb)
        # S is NaN, 0 (an all -inf row) or in [1, C]: only S >= 1 goes to
        # the log; the others give NaN rows
        for j in range(nr):
            s = rb[j] + eyb[j]
            sb[j] = s if s >= 1.0 else 1.0
        # per row, branch-free (vectorised): log S, loss, pass-3 coefficients
        lob = loss_out[q0 - l0:q0 - l0 + nr]
        for j in range(nr):
            y = tb[j]
            s = rb[j] + eyb[j]
            sg = sb[j]
            shift = np.float64(shb[j])
            logs = _log_sum(T, sg)
            logs = logs if s >= 1.0 else _NAN
            lse = shift + logs
            good = np.isfinite(lse)
            wy = wyb[j]
            loss = _ce_row_loss(shift, xyb[j], logs, sxb[j], wy,
                                eps, z, wsum, C, ce_scale, z_scale)
            loss = loss if good else _NAN
            lob[j] = loss if y >= 0 else 0.0
            lb[j] = lse if good else _NAN
        if not do_grad:
            continue
        nwide = 0
        for j in range(nr):
            lse = lb[j]
            wy = wyb[j]
            A, B, k2 = _ce_row_coefs(gnb[j], wy, eps, z, wsum, C, ce_scale,
                                     z_scale, lse)
            inv = 1.0 / sb[j]  # one division (vector divides are slow)
            good = lse == lse  # not a NaN row
            k64 = (A + k2) * inv
            # a _wide factor: the row goes out as e (factor 1, B 0) and is
            # scaled in float64 after the block (rare)
            wide = _wide(T, k64)
            nwide += wide
            kwb[j] = k64 if wide else 0.0
            bwb[j] = B
            k = _as(T, 1.0 if wide else k64)
            kb[j] = k if good else nan
            bb[j] = _as(T, 0.0 if wide else B)
            dy = eyb[j] * (k2 * inv) - A * (rb[j] * inv) - B * wy
            dyb[j] = dy if good else _NAN
        Gb = grad_out[q0:q0 + nr]
        # the block back (times the row factors); with smoothing those
        # applied first, class-major
        if smooth and has_w:
            for c in range(C):
                wc = weight[c]
                for j in range(nr):
                    T[c, j] = T[c, j] * kb[j] - bb[j] * wc
        elif smooth:
            for c in range(C):
                for j in range(nr):
                    T[c, j] = T[c, j] * kb[j] - bb[j]
        _flat_out(T, Gb, kb, not smooth, tiled)
        if nwide > 0:  # (the target's entry is written below)
            for j in range(nr):
                if kwb[j] != 0.0:
                    _row_scale_wide(Gb[j], kwb[j], bwb[j], weight, has_w)
        for j in range(nr):
            y = tb[j]
            if y >= 0:
                Gb[j, y] = dyb[j]
            else:
                for c in range(C):
                    Gb[j, c] = zero


# ============================================== cross-entropy, soft targets


def _ce_soft_rows(X, P, weight, eps, z, softcap, ce_scale, z_scale,
                  gscalar, gout, loss_out, grad_out, do_grad, r0, r1, l0):
    """Rows ``r0:r1`` of ``_ce_soft`` (reference), row ``r``'s loss to
    ``loss_out[r - l0]``. IN: X, P, weight, gout. OUT: loss_out, grad_out
    (unused unless ``do_grad``)."""
    C = X.shape[1]
    has_w = weight.shape[0] > 0
    has_g = gout.shape[0] > 0
    inplace = do_grad and X.ctypes.data == grad_out.ctypes.data
    capped = softcap != 0.0
    xs = np.empty(C if capped else 0, np.float64)
    buf = np.empty(X.shape[1], X.dtype)  # exp row (scratch)
    for r in range(r0, r1):
        x = X[r]
        p = P[r]
        if capped:
            _row_softcap(x, softcap, xs)
            m64 = _row_max(xs)
            shift = m64 if np.isfinite(m64) else 0.0
            q, t = _row_soft_sums(xs, shift, p, weight, has_w, eps, C)
            e = grad_out[r] if do_grad else buf
            _row_expstore(xs, shift, e, xs)
            s = _row_sum64(e)
        else:
            sh = _shift_of(_row_max(x))
            shift = np.float64(sh)
            q, t = _row_soft_sums(x, sh, p, weight, has_w, eps, C)
            xn = _next_row(X, r, r1)
            e = grad_out[r] if do_grad else buf
            if inplace:
                _row_expstore_inplace(e, sh, xn)
            else:
                _row_expstore(x, sh, e, xn)
            s = _row_sum64(e)
        logs = np.log(s)
        lse = shift + logs
        if not np.isfinite(lse):
            loss_out[r - l0] = _NAN
            if do_grad:
                _fill(grad_out[r], _as(grad_out, _NAN))
            continue
        # -sum_c wq_c (xs_c - lse) = Q log S - sum_c wq_c (xs_c - shift)
        loss = ce_scale * (q * logs - t)
        if z > 0.0:
            loss += z_scale * (z * lse * lse)
        loss_out[r - l0] = loss
        if not do_grad:
            continue
        # d_c = a (p_c Q - wq_c) + 2 b z lse p_c = e_c K - a wq_c
        g = grad_out[r]
        gn = gout[r] if has_g else gscalar
        a = gn * ce_scale
        k = a * q
        if z > 0.0:
            k += 2.0 * (gn * z_scale) * z * lse
        _row_soft_grad(g, k / s, a, p, weight, has_w, eps, C)
        if capped:
            _row_capslope(g, xs, softcap)


# ====================================================== binary cross-entropy


def _bce_prob_blocks(P, Y, W, scale, gscalar, gout, loss_out, partial,
                     grad_out, do_grad, b0, b1):
    """Blocks ``b0:b1`` (of ``BCE_BLOCK`` elements) of ``_bce_prob``."""
    n = P.shape[0]
    has_w = W.shape[0] > 0
    has_g = gout.shape[0] > 0
    has_l = loss_out.shape[0] > 0
    has_p = partial.shape[0] > 0
    for blk in range(b0, b1):
        i0 = blk * BCE_BLOCK
        i1 = min(n, i0 + BCE_BLOCK)
        acc = 0.0
        for i in range(i0, i1):
            p = np.float64(P[i])
            y = np.float64(Y[i])
            w = np.float64(W[i]) if has_w else 1.0
            # PyTorch clamps each log at -100 (NaN stays NaN)
            lp = math.log(p)
            if lp < -100.0:
                lp = -100.0
            l1p = math.log1p(-p)
            if l1p < -100.0:
                l1p = -100.0
            li = scale * (-w * (y * lp + (1.0 - y) * l1p))
            acc += li
            if has_l:
                loss_out[i] = li
            if do_grad:
                gi = (gout[i] if has_g else gscalar) * scale
                den = p * (1.0 - p)
                if den < 1e-12:
                    den = 1e-12
                grad_out[i] = gi * w * (p - y) / den
        if has_p:
            partial[blk] = acc


def _log1p32(e):
    """``log1p(e)`` for float32 ``e`` in ``[0, 1]`` (or NaN), the Cython
    kernels' fx_log1pf01: ``2 atanh(s)``, ``s = e / (2 + e)`` in ``[0, 1/3]``,
    as ``2 s + 2 s z P(z)``, ``z = s**2``, P of degree 3 fitted by
    tools/fit_log1pf.py (4.5e-9 relative), Estrin; no range reduction."""
    s = e / (_reg(_F32(2.0)) + e)
    z = s * s
    z2 = z * z
    p01 = z * _reg(_F32(0.200108498)) + _reg(_F32(0.333332062))
    p23 = z * _reg(_F32(0.140122309)) + _reg(_F32(0.139995694))
    p = z2 * p23 + p01
    s2 = s + s
    return (s2 * z) * p + s2


def _log1p01(e):
    """``log1p(e)`` for ``e`` in ``[0, 1]`` (an overload, see ``_ensure``)."""
    raise NotImplementedError


def _bcel_elem(x, y, cpos, e, one, zero):
    """One element of binary cross-entropy on logits: the loss ``cpos
    softplus(-x) + (1 - y) softplus(x)`` and its derivative ``(1 - y)
    sigmoid(x) - cpos sigmoid(-x)``, both from one ``e = exp(-|x|)`` (no
    overflow); a term with a zero coefficient is exactly 0, even at x = +-inf."""
    cneg = one - y
    u = one + e
    inv = one / u
    lg = _log1p01(e)
    sp_pos = (x if x > zero else zero) + lg     # softplus(x)
    sp_neg = (-x if x < zero else zero) + lg    # softplus(-x)
    if x != x:
        sp_pos = x
        sp_neg = x
    lpos = cpos * sp_neg if cpos != zero else zero
    lneg = cneg * sp_pos if cneg != zero else zero
    ei = e * inv
    sx = inv if x >= zero else ei
    smx = ei if x >= zero else inv
    return lpos + lneg, cneg * sx - cpos * smx


def _bce_logits_blocks(X, Y, W, PW, scale, gscalar, gout, loss_out, partial,
                       grad_out, do_grad, b0, b1):
    """Blocks ``b0:b1`` (of ``BCE_BLOCK`` elements) of ``_bce_logits``.

    Elementwise in ``X``'s dtype (float32: the vectorised exp and ``log1p``,
    8 lanes; float64: libm's ``log1p``), one ``e = exp(-|x|)`` shared by
    softplus and the sigmoids; the block's losses go to a scratch row and are
    summed in float64 by ``_row_sum64`` (a float64 sum in the element loop
    would halve its vector width).  No ``reassoc`` here, only in that sum: it
    let LLVM form ``(scale * w) * l`` for ``scale * (w * l)``, a finite mean
    where the other backends' float32 element loss overflows to inf."""
    n = X.shape[0]
    L = PW.shape[0]
    has_w = W.shape[0] > 0
    has_pw = L > 0
    has_g = gout.shape[0] > 0
    has_l = loss_out.shape[0] > 0
    has_p = partial.shape[0] > 0
    one = _as(X, 1.0)
    zero = _as(X, 0.0)
    sc = _as(X, scale)
    gsc = _as(X, scale if has_g else gscalar * scale)  # gout[i] applied below
    lb = np.empty(BCE_BLOCK, X.dtype)  # scaled losses of a block
    sy = 64 // Y.itemsize  # elements per cache line
    sw = 64 // W.itemsize
    sg = 64 // grad_out.itemsize
    eb = np.empty(BCE_BLOCK, X.dtype)  # exp(-|x|) of a block
    # pos_weight[i % L] of a block (all ones without pos_weight); ones for a
    # missing weight; a scratch gradient for the loss alone: the element loop
    # loads and stores unconditionally (conditional ones, or a gradient row
    # that aliases X, keep it scalar)
    cb = np.ones(BCE_BLOCK, X.dtype)
    ob = np.ones(0 if has_w else BCE_BLOCK, X.dtype)
    sb = np.empty(0 if do_grad else BCE_BLOCK, X.dtype)
    for blk in range(b0, b1):
        i0 = blk * BCE_BLOCK
        i1 = min(n, i0 + BCE_BLOCK)
        m = i1 - i0
        xb = X[i0:i1]
        yb = Y[i0:i1]
        wb = W[i0:i1] if has_w else ob[:m]
        gb = grad_out[i0:i1] if do_grad else sb[:m]
        if has_pw:
            j = i0 % L
            for k in range(m):
                cb[k] = PW[j]
                j += 1
                if j == L:
                    j = 0
        # the exps in a loop of their own (as the Cython kernel): 23-29% less
        # time than inside the element loop (16M float32 elements, 1 thread;
        # sub-blocks of 1024 for an L1-sized eb measured slower)
        # ... and after each _PF_BLOCK of them, the same span of the block's
        # other streams is prefetched (y, w, and the gradient for writing), so
        # that the element loop finds them in cache: the exp loop otherwise
        # reads x alone from memory and the element loop waits on y (perf,
        # cpu-clock: 26% of the kernel's samples on the element loop's loads;
        # the same call on 1M elements in cache ran as fast as Cython's).
        # 16M float32 elements, 3 alternating runs of separate processes,
        # median of 15 calls, ms, without -> with: 1 thread 21.1-21.7 ->
        # 18.4-19.6, 2 threads 10.9-11.4 -> 9.6-10.3.  Prefetching y alone
        # was level; also the next block's x, in this loop: the gain lost (2
        # threads 10.9-11.4 vs 10.7-11.3 without any prefetch); the next
        # block's x in an element loop cut into _PF_BLOCK slices: slower (2
        # threads 11.5-11.8 vs 9.6-10.1).  The prefetch loops inlined (by
        # Numba, _pf_read / _pf_write) rather than in a helper called with
        # the array (a reference count per call): 1 thread 18.3-19.1 ->
        # 17.3-17.8 ms, 2 threads level (3 alternating runs).
        mb = m - m % _PF_BLOCK
        for b in range(0, mb, _PF_BLOCK):
            xs = xb[b:b + _PF_BLOCK]
            es = eb[b:b + _PF_BLOCK]
            for k in range(_PF_BLOCK):
                es[k] = _exp(-abs(xs[k]))
            a = i0 + b
            _pf_read(Y, a, a + _PF_BLOCK, sy)
            if has_w:
                _pf_read(W, a, a + _PF_BLOCK, sw)
            if do_grad:
                _pf_write(grad_out, a, a + _PF_BLOCK, sg)
        for k in range(np.uint64(mb), np.uint64(m)):  # unsigned: see _row_expsum
            eb[k] = _exp(-abs(xb[k]))
        if has_w or has_pw:
            for k in range(m):
                x = xb[k]
                w = _as(x, wb[k])
                y = _as(x, yb[k])
                l, d = _bcel_elem(x, y, _as(x, cb[k]) * y, eb[k], one, zero)
                lb[k] = sc * (w * l)
                gb[k] = gsc * (w * d)
        else:  # the same values (w = pw = 1 multiply exactly), less work
            for k in range(m):
                x = xb[k]
                y = _as(x, yb[k])
                l, d = _bcel_elem(x, y, y, eb[k], one, zero)
                lb[k] = sc * l
                gb[k] = gsc * d
        if do_grad and has_g:
            gg = gout[i0:i1]
            for k in range(m):
                gb[k] = _as(gb, gg[k] * np.float64(gb[k]))
        acc = _row_sum64(lb[:m])
        if has_l:
            lo = loss_out[i0:i1]
            for k in range(m):
                lo[k] = lb[k]
        if has_p:
            partial[blk] = acc


# ================================================================ drivers
# One prange iteration per thread, each taking pieces of the rows (or blocks)
# by ``_piece``; a single thread runs without a parallel region.


def _logsumexp_par(X, out, nchunks):
    R = X.shape[0]
    if nchunks <= 1:
        _logsumexp_rows(X, out, 0, R)
        return
    slots = _pieces(nchunks)
    for k in prange(nchunks):
        c = _piece(slots, nchunks, k)
        while c >= 0:
            _logsumexp_rows(X, out, _piece_start(R, c, nchunks, CE_ROWS),
                            _piece_start(R, c + 1, nchunks, CE_ROWS))
            c = _piece(slots, nchunks, k)


def _softmax_par(X, out, nchunks):
    R = X.shape[0]
    if nchunks <= 1:
        _softmax_rows(X, out, 0, R)
        return
    slots = _pieces(nchunks)
    for k in prange(nchunks):
        c = _piece(slots, nchunks, k)
        while c >= 0:
            _softmax_rows(X, out, _piece_start(R, c, nchunks, CE_ROWS),
                          _piece_start(R, c + 1, nchunks, CE_ROWS))
            c = _piece(slots, nchunks, k)


def _log_softmax_par(X, out, nchunks):
    R = X.shape[0]
    if nchunks <= 1:
        _log_softmax_rows(X, out, 0, R)
        return
    slots = _pieces(nchunks)
    for k in prange(nchunks):
        c = _piece(slots, nchunks, k)
        while c >= 0:
            _log_softmax_rows(X, out, _piece_start(R, c, nchunks, CE_ROWS),
                              _piece_start(R, c + 1, nchunks, CE_ROWS))
            c = _piece(slots, nchunks, k)


def _group_sums(l, n, partial, p0):
    """The partial sums of ``l[:n]`` (``l[0]`` at a group's start) to
    ``partial[p0:]``: ``partial[p0 + 8 (i // 64) + i % 8]`` = the sum of the
    ``l[i]`` of that group and lane, added in row order from 0.0 (CE_ROWS =
    64 rows, CE_LANES = 8 lanes; a group's missing rows add nothing).  A
    whole group is one 8-wide add per 8 rows (``_lanes8``; Numba's LLVM
    runs no SLP vectoriser, so the same adds written as 8 scalar chains
    would stay scalar)."""
    for b in range(0, n, 64):
        q = p0 + b // 8
        if n - b >= 64:
            _lanes8(l, b, partial, q)
        else:
            for j in range(8):
                partial[q + j] = 0.0
            for i in range(b, n):
                partial[q + (i - b) % 8] += l[i]


def _ce_int_chunk(X, target, weight, ignore_index, eps, z, softcap, ce_scale,
                  z_scale, gscalar, gout, loss_out, partial, grad_out,
                  do_grad, r0, r1):
    """Rows ``r0:r1`` (``r0`` a multiple of ``CE_ROWS``) on one thread: the
    row losses to ``loss_out`` and/or their partial sums to ``partial``;
    without ``loss_out``, _CE_LOSS_ROWS rows at a time with their losses in
    a scratch row (no per-row buffer of R losses written out and read back;
    see the Cython kernels' ``_ce_chunk``)."""
    if loss_out.shape[0] > 0 or partial.shape[0] == 0:
        _ce_int_rows(X, target, weight, ignore_index, eps, z, softcap,
                     ce_scale, z_scale, gscalar, gout, loss_out, grad_out,
                     do_grad, r0, r1, 0)
        if partial.shape[0] > 0:
            _group_sums(loss_out[r0:r1], r1 - r0, partial, r0 // 8)
        return
    lb = np.empty(min(_CE_LOSS_ROWS, r1 - r0), np.float64)
    for a in range(r0, r1, _CE_LOSS_ROWS):
        b = min(r1, a + _CE_LOSS_ROWS)
        _ce_int_rows(X, target, weight, ignore_index, eps, z, softcap,
                     ce_scale, z_scale, gscalar, gout, lb, grad_out,
                     do_grad, a, b, a)
        _group_sums(lb, b - a, partial, a // 8)


def _ce_soft_chunk(X, P, weight, eps, z, softcap, ce_scale, z_scale,
                   gscalar, gout, loss_out, partial, grad_out, do_grad, r0,
                   r1):
    """``_ce_int_chunk`` for probability targets."""
    if loss_out.shape[0] > 0 or partial.shape[0] == 0:
        _ce_soft_rows(X, P, weight, eps, z, softcap, ce_scale, z_scale,
                      gscalar, gout, loss_out, grad_out, do_grad, r0, r1, 0)
        if partial.shape[0] > 0:
            _group_sums(loss_out[r0:r1], r1 - r0, partial, r0 // 8)
        return
    lb = np.empty(min(_CE_LOSS_ROWS, r1 - r0), np.float64)
    for a in range(r0, r1, _CE_LOSS_ROWS):
        b = min(r1, a + _CE_LOSS_ROWS)
        _ce_soft_rows(X, P, weight, eps, z, softcap, ce_scale, z_scale,
                      gscalar, gout, lb, grad_out, do_grad, a, b, a)
        _group_sums(lb, b - a, partial, a // 8)


def _ce_int_par(X, target, weight, ignore_index, eps, z, softcap, ce_scale,
                z_scale, gscalar, gout, loss_out, partial, grad_out, do_grad,
                nchunks):
    R = X.shape[0]
    if nchunks <= 1:
        _ce_int_chunk(X, target, weight, ignore_index, eps, z, softcap,
                      ce_scale, z_scale, gscalar, gout, loss_out, partial,
                      grad_out, do_grad, 0, R)
        return
    slots = _pieces(nchunks)
    for k in prange(nchunks):
        c = _piece(slots, nchunks, k)
        while c >= 0:
            _ce_int_chunk(X, target, weight, ignore_index, eps, z, softcap,
                          ce_scale, z_scale, gscalar, gout, loss_out, partial,
                          grad_out, do_grad, _piece_start(R, c, nchunks, CE_ROWS),
                          _piece_start(R, c + 1, nchunks, CE_ROWS))
            c = _piece(slots, nchunks, k)


def _ce_soft_par(X, P, weight, eps, z, softcap, ce_scale, z_scale, gscalar,
                 gout, loss_out, partial, grad_out, do_grad, nchunks):
    R = X.shape[0]
    if nchunks <= 1:
        _ce_soft_chunk(X, P, weight, eps, z, softcap, ce_scale, z_scale,
                       gscalar, gout, loss_out, partial, grad_out, do_grad, 0,
                       R)
        return
    slots = _pieces(nchunks)
    for k in prange(nchunks):
        c = _piece(slots, nchunks, k)
        while c >= 0:
            _ce_soft_chunk(X, P, weight, eps, z, softcap, ce_scale, z_scale,
                           gscalar, gout, loss_out, partial, grad_out, do_grad,
                           _piece_start(R, c, nchunks, CE_ROWS),
                           _piece_start(R, c + 1, nchunks, CE_ROWS))
            c = _piece(slots, nchunks, k)


def _bce_prob_par(P, Y, W, scale, gscalar, gout, loss_out, partial, grad_out,
                  do_grad, nchunks):
    nb = (P.shape[0] + BCE_BLOCK - 1) // BCE_BLOCK
    if nchunks <= 1:
        _bce_prob_blocks(P, Y, W, scale, gscalar, gout, loss_out, partial,
                         grad_out, do_grad, 0, nb)
        return
    slots = _pieces(nchunks)
    for k in prange(nchunks):
        c = _piece(slots, nchunks, k)
        while c >= 0:
            _bce_prob_blocks(P, Y, W, scale, gscalar, gout, loss_out, partial,
                             grad_out, do_grad, _piece_start(nb, c, nchunks, 1),
                             _piece_start(nb, c + 1, nchunks, 1))
            c = _piece(slots, nchunks, k)


def _bce_logits_par(X, Y, W, PW, scale, gscalar, gout, loss_out, partial,
                    grad_out, do_grad, nchunks):
    nb = (X.shape[0] + BCE_BLOCK - 1) // BCE_BLOCK
    if nchunks <= 1:
        _bce_logits_blocks(X, Y, W, PW, scale, gscalar, gout, loss_out,
                           partial, grad_out, do_grad, 0, nb)
        return
    slots = _pieces(nchunks)
    for k in prange(nchunks):
        c = _piece(slots, nchunks, k)
        while c >= 0:
            _bce_logits_blocks(X, Y, W, PW, scale, gscalar, gout, loss_out,
                               partial, grad_out, do_grad,
                               _piece_start(nb, c, nchunks, 1),
                               _piece_start(nb, c + 1, nchunks, 1))
            c = _piece(slots, nchunks, k)


def _threads_seen_par(n, nslots):
    seen = np.zeros(nslots, np.int64)
    for k in prange(n):
        acc = 0.0
        for i in range(3_000_000):  # a few ms each, so no thread takes all
            acc += math.sqrt(i + k)
        seen[_get_thread_id()] += 1 if acc >= 0.0 else 2
    return np.count_nonzero(seen)


# ================================================================ jitting

# name -> fastmath flags (None: none) of the serial helpers
_SERIAL = {
    "_exp32": _FM_EXP, "_exp64": _FM_EXP, "_log1p32": _FM_EXP,
    "_log_split": _FM_ELT, "_log_ge1": _FM_ELT, "_log_ge1_f32": _FM_ELT,
    "_row_max": None, "_next_row": None, "_ce_row_loss": None,
    "_ce_row_coefs": None, "_row_below_sum": _FM_RED, "_row_below_wsum": _FM_RED,
    "_row_expstore": _FM_ELT, "_row_expstore_inplace": _FM_ELT,
    "_row_expsum": _FM_RED, "_row_copy": None, "_row_sum64": _FM_RED,
    "_row_scale": _FM_ELT, "_row_scale_sub": _FM_ELT,
    "_row_scale_subw": _FM_ELT, "_wide": None, "_row_scale_wide": None,
    "_row_softcap": _FM_ELT,
    "_row_capslope": _FM_ELT, "_row_soft_sums": _FM_RED,
    "_row_soft_grad": _FM_ELT, "_shift_of": None,
    "_row_sub_into": _FM_ELT, "_row_sub_inplace": _FM_ELT, "_fill": None,
    "_pieces": None, "_piece": None, "_piece_start": None,
    "_logsumexp_rows": None, "_softmax_rows": None, "_log_softmax_rows": None,
    "_ce_int_rows": None, "_ce_int_flat": None, "_ce_int_chunk": None,
    "_ce_soft_chunk": None, "_group_sums": None, "_flat_in": None, "_flat_rows": None, "_tile_plan": None,
    "_tile_in": None, "_tile_out": None,
    "_flat_share": None, "_flat_part": None,
    "_flat_prefetch": None, "_pf_read": None, "_pf_write": None,
    "_flat_out": None, "_softmax_flat": None, "_sum_classes": None,
    "_ce_soft_rows": None,
    "_bce_prob_blocks": _FM_RED, "_bce_logits_blocks": _FM_ELT,
    "_bcel_elem": _FM_ELT,
}
#: Inlined into their callers by Numba itself: an array argument of a
#: call LLVM does not inline costs a reference count each time.
_INLINE = frozenset({"_flat_prefetch", "_pf_read", "_pf_write", "_tile_in", "_tile_out",
                     "_sum_classes"})
_PARALLEL = (
    "_logsumexp_par", "_softmax_par", "_log_softmax_par", "_ce_int_par",
    "_ce_soft_par", "_bce_prob_par", "_bce_logits_par", "_threads_seen_par",
)

_nb = None  # the numba module once _ensure has run


def _ensure():
    """Import Numba and wrap the kernels in ``njit`` (compiles nothing); run
    once, at the end of this module's import."""
    global _nb
    if _nb is None:
        _nb = _jit_all()
    return _nb


def _jit_all():
    import numba
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic, overload

    g = globals()

    x86 = platform.machine().lower() in ("x86_64", "amd64")

    def opaque(builder, v):
        # v through an empty inline asm (no side effects, no memory): the
        # same value, but not a constant to LLVM, so a loop that uses it
        # broadcasts it once before the loop and keeps it in a register.
        # A constant instead is folded into every use as a load from the
        # constant pool, and under Numba's large code model each such
        # address takes a 64-bit immediate (movabs) that LLVM re-issues in
        # the loop when it runs short of general registers: in the
        # few-class exp loop 11 of 37 instructions per 16 elements (30
        # with _reg, AVX-512).  Callgrind, Numba for haswell (AVX2), fused
        # (16384, 10) float32, 1 thread: 187.8 instructions a row, 171.6
        # with _reg in the exps, 169.0 also in the float64 logs (the
        # difference of 1002 and 2 calls); the same bits in the few-class
        # kernels, and within a few ULP (reassociated sums) elsewhere.
        # Timed on the AVX-512 machine: level to a few % (noise).
        if not x86:
            return v
        fn = ir.InlineAsm(ir.FunctionType(v.type, [v.type]), "",
                          "=x,0" if isinstance(v.type, (ir.FloatType, ir.DoubleType)) else "=r,0",
                          side_effect=False)
        return builder.call(fn, [v], attrs=("nounwind", "readnone"))

    @intrinsic
    def _reg(typingctx, v):
        sig = v(v)

        def codegen(context, builder, sig, args):
            return opaque(builder, args[0])

        return sig, codegen

    g["_reg"] = _reg

    @intrinsic
    def _scale2n_f64(typingctx, p, t):
        # (p * 2**(n + 64)) * 2**-64 for _exp64, n encoded as the low bits of
        # t = y + MAGIC: shifting t's bits left by the mantissa width (52)
        # keeps only n (two's complement), adding (1023 + 64) << 52 makes the
        # exponent field of 2**(n + 64).  Plain fmuls (no fast-math flags: no
        # refolding of the two products).
        sig = types.float64(types.float64, types.float64)

        def codegen(context, builder, sig, args):
            p, t = args
            i64 = ir.IntType(64)
            f64 = ir.DoubleType()
            e = builder.add(builder.shl(builder.bitcast(t, i64), ir.Constant(i64, 52)),
                            opaque(builder, ir.Constant(i64, (1023 + 64) << 52)))
            ps = builder.fmul(p, builder.bitcast(e, f64))
            return builder.fmul(ps, opaque(builder, ir.Constant(f64, 2.0 ** -64)))

        return sig, codegen

    g["_scale2n_f64"] = _scale2n_f64

    @intrinsic
    def _scale1p2n_f32(typingctx, u, t):
        # ((1 + u) 2**(n + 64)) 2**-64 as fx_expf_le0: t = y + _E32_MAGIC
        # holds n + 191 in its low bits, so t's bits shifted left by 23 are
        # s = 2**(n + 64) (no bias to add); (1 + u) s is u s + s, the same
        # value as rounding 1 + u first (s a normal power of two, so u s is
        # exact wherever it matters): llvm.fmuladd, one multiply-add where
        # the CPU has FMA, a multiply and an add (not a libm fmaf call)
        # where it does not
        sig = types.float32(types.float32, types.float32)

        def codegen(context, builder, sig, args):
            u, t = args
            i32 = ir.IntType(32)
            f32 = ir.FloatType()
            s = builder.bitcast(builder.shl(builder.bitcast(t, i32), ir.Constant(i32, 23)), f32)
            fmuladd = builder.module.declare_intrinsic(
                "llvm.fmuladd", [f32], ir.FunctionType(f32, [f32] * 3))
            us = builder.call(fmuladd, [u, s, s])
            return builder.fmul(us, opaque(builder, ir.Constant(f32, 2.0 ** -64)))

        return sig, codegen

    g["_scale1p2n_f32"] = _scale1p2n_f32

    @intrinsic
    def _fmax(typingctx, a, b):
        # llvm.maxnum: the non-NaN operand; vectorises as a reduction without
        # fast-math flags (a compare-and-select max does not)
        sig = a(a, b)

        def codegen(context, builder, sig, args):
            ty = args[0].type
            fn = builder.module.declare_intrinsic("llvm.maxnum", [ty], ir.FunctionType(ty, [ty, ty]))
            return builder.call(fn, args)

        return sig, codegen

    g["_fmax"] = _fmax

    def prefetch(rw):
        # llvm.prefetch(&arr[idx], rw (0 read, 1 write), high locality, data
        # cache): a hint, never a fault, and only ever given indices inside
        # arr (a flat index from its first element for a 2-D C array)
        @intrinsic
        def impl(typingctx, arr, idx):
            sig = types.void(arr, idx)

            def codegen(context, builder, sig, args):
                ary = context.make_array(sig.args[0])(context, builder, args[0])
                i8p = ir.IntType(8).as_pointer()
                i32 = ir.IntType(32)
                fn = builder.module.declare_intrinsic(
                    "llvm.prefetch", [i8p], ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]))
                ptr = builder.bitcast(builder.gep(ary.data, [args[1]]), i8p)
                builder.call(fn, [ptr, ir.Constant(i32, rw), ir.Constant(i32, 3), ir.Constant(i32, 1)])
                return context.get_dummy_value()

            return sig, codegen

        return impl

    g["_prefetch"] = prefetch(0)
    g["_prefetchw"] = prefetch(1)

    @intrinsic
    def _fetch_inc(typingctx, arr, idx):
        # arr[idx] += 1 as one atomic read-modify-write (monotonic: the
        # pieces it hands out are disjoint, and the parallel region's end
        # orders their results), returning the value before; only given an
        # index inside arr (a 1-D int64 array)
        sig = types.int64(arr, idx)

        def codegen(context, builder, sig, args):
            ary = context.make_array(sig.args[0])(context, builder, args[0])
            i = context.cast(builder, args[1], sig.args[1], types.intp)
            ptr = builder.gep(ary.data, [i])
            return builder.atomic_rmw("add", ptr, ir.Constant(ir.IntType(64), 1), "monotonic")

        return sig, codegen

    g["_fetch_inc"] = _fetch_inc

    def tile_width(ty):
        # the transposed tile's side: 8 float32 or 4 float64 (one AVX vector)
        # for C-contiguous 2-D arrays, else 0 (no tiles: the scalar loops)
        if not (isinstance(ty, types.Array) and ty.ndim == 2 and ty.layout == "C"):
            return 0
        return {types.float32: 8, types.float64: 4}.get(ty.dtype, 0)

    @intrinsic
    def _tile_w(typingctx, arr):
        # tile_width(arr) as a compile-time constant (the dead branches fold)
        w = tile_width(arr)
        sig = types.intp(arr)

        def codegen(context, builder, sig, args):
            return context.get_constant(types.intp, w)

        return sig, codegen

    g["_tile_w"] = _tile_w

    def tile_ops(context, builder, sig, args):
        # what the tile intrinsics' codegen shares: the arrays (src, dst,
        # vec), the four indices as intp, the element type, and builders
        # for &ary[i, j] (a pointer to n elements: the row by its stride),
        # &vec[j], i + k and a shufflevector
        from numba.core import cgutils
        sa, da, va = [context.make_array(sig.args[k])(context, builder, args[k])
                      for k in (0, 3, 6)]
        idx = [context.cast(builder, args[k], sig.args[k], types.intp) for k in (1, 2, 4, 5)]
        fty = sa.data.type.pointee
        i8p = ir.IntType(8).as_pointer()

        def ptr(ary, i, j, n):
            s0 = cgutils.unpack_tuple(builder, ary.strides, 2)[0]
            row = builder.gep(builder.bitcast(ary.data, i8p), [builder.mul(i, s0)])
            el = builder.gep(builder.bitcast(row, fty.as_pointer()), [j])
            return builder.bitcast(el, ir.VectorType(fty, n).as_pointer())

        def vptr(j, n):  # &vec[j] (1-D, contiguous)
            el = builder.gep(va.data, [j])
            return builder.bitcast(el, ir.VectorType(fty, n).as_pointer())

        def add(i, k):
            return builder.add(i, ir.Constant(i.type, k))

        def shuf(a, b, mask):
            mask = list(mask)
            return builder.shuffle_vector(
                a, b, ir.Constant(ir.VectorType(ir.IntType(32), len(mask)), mask))

        return (sa, da, va), idx, fty, ptr, vptr, add, shuf

    def max_into(builder, p, vs, al):
        # *p = the lane-wise max of *p and the vectors vs, NaN skipped as
        # maxnum skips it (*p holds no NaN: the row maxima start at -inf):
        # m = o > m ? o : m for each o in turn, one vmaxps(o, m) each (its
        # second operand when either is NaN), where llvm.maxnum takes a
        # max, an unordered compare and a blend.  Maxima are exact, so the
        # order changes no value.
        m = builder.load(p, align=al)
        for o in vs:
            m = builder.select(builder.fcmp_ordered(">", o, m), o, m)
        builder.store(m, p, align=al)

    def tile_t(op):
        # dst[di + a, dj + b] = src[si + b, sj + a] for a, b < w (w =
        # tile_width, all arrays of one dtype; the caller keeps the tile in
        # bounds), as the Cython kernels' fx_ce_cm8_f32_avx2: vectors [h
        # elements of src row r | h of row r + h] (h = w/2, half-vector
        # loads), an in-lane transpose (unpacks, shuffles) of each group of
        # h, which leaves dst's rows, stored whole.  (Whole loads and
        # half-vector stores measured the same.)  op "max": also v[dj:dj +
        # w] = maxnum(v[dj:dj + w], the w dst rows) (the row max on the way
        # in); op "scale": src[si + b, sj + a] * v[sj + a] transposed (the
        # factors on the way out; plain fmuls).  Without a width (w = 0) it
        # does nothing: it is only reached behind ``_tile_w``.
        @intrinsic
        def impl(typingctx, src, si, sj, dst, di, dj, vec):
            ok = src == dst and isinstance(vec, types.Array) and vec.dtype == src.dtype
            w = tile_width(src) if ok else 0
            sig = types.void(src, si, sj, dst, di, dj, vec)

            def codegen(context, builder, sig, args):
                if w == 0:
                    return context.get_dummy_value()
                (sa, da, va), (si_, sj_, di_, dj_), fty, ptr, vptr, add, shuf = tile_ops(
                    context, builder, sig, args)
                h = w // 2
                al = 4 if w == 8 else 8

                def tr(q):  # in-lane transpose of h vectors
                    if w == 4:  # 2 x 2 in each 128-bit lane
                        return [shuf(q[0], q[1], (0, 4, 2, 6)), shuf(q[0], q[1], (1, 5, 3, 7))]
                    t0 = shuf(q[0], q[1], (0, 8, 1, 9, 4, 12, 5, 13))
                    t1 = shuf(q[0], q[1], (2, 10, 3, 11, 6, 14, 7, 15))
                    t2 = shuf(q[2], q[3], (0, 8, 1, 9, 4, 12, 5, 13))
                    t3 = shuf(q[2], q[3], (2, 10, 3, 11, 6, 14, 7, 15))
                    lo, hi = (0, 1, 8, 9, 4, 5, 12, 13), (2, 3, 10, 11, 6, 7, 14, 15)
                    return [shuf(t0, t2, lo), shuf(t0, t2, hi), shuf(t1, t3, lo), shuf(t1, t3, hi)]

                v = []
                for g0 in (0, h):  # columns g0..g0+h-1 of src
                    if op == "scale":
                        k = builder.load(vptr(add(sj_, g0), h), align=al)
                        k = shuf(k, k, list(range(h)) * 2)
                    for r in range(h):
                        x = shuf(builder.load(ptr(sa, add(si_, r), add(sj_, g0), h), align=al),
                                 builder.load(ptr(sa, add(si_, r + h), add(sj_, g0), h), align=al),
                                 range(w))
                        v.append(builder.fmul(x, k) if op == "scale" else x)
                out = tr(v[:h]) + tr(v[h:])
                for a in range(w):
                    builder.store(out[a], ptr(da, add(di_, a), dj_, w), align=al)
                if op == "max":
                    max_into(builder, vptr(dj_, w), out, al)
                return context.get_dummy_value()

            return sig, codegen

        return impl

    @intrinsic
    def _lanes8(typingctx, src, si, dst, di):
        # dst[di + j] = (((0.0 + src[si + j]) + src[si + 8 + j]) + ...) +
        # src[si + 56 + j] for j < 8: one <8 x double> load and add per 8
        # rows (plain fadds, in that order); 1-D contiguous float64 arrays,
        # the caller keeps both ranges in bounds
        ok = all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C"
                 and a.dtype == types.float64 for a in (src, dst))
        if not ok:
            return None
        sig = types.void(src, si, dst, di)

        def codegen(context, builder, sig, args):
            sa, da = [context.make_array(sig.args[k])(context, builder, args[k]) for k in (0, 2)]
            si_, di_ = [context.cast(builder, args[k], sig.args[k], types.intp) for k in (1, 3)]
            vty = ir.VectorType(ir.DoubleType(), 8)
            acc = ir.Constant(vty, None)  # zeroinitializer: +0.0
            for i in range(8):
                el = builder.gep(sa.data, [builder.add(si_, ir.Constant(si_.type, 8 * i))])
                acc = builder.fadd(acc, builder.load(builder.bitcast(el, vty.as_pointer()), align=8))
            builder.store(acc, builder.bitcast(builder.gep(da.data, [di_]), vty.as_pointer()), align=8)
            return context.get_dummy_value()

        return sig, codegen

    g["_lanes8"] = _lanes8

    def tile_half(op):
        # tile_t's half tile, float32 only (else it does nothing: it is only
        # reached behind ``_tile_w(T) == 8``): 4 classes of 8 rows.  op "max"
        # (into the class-major block): dst[di + a, dj + b] = src[si + b,
        # sj + a] for a < 4, b < 8, and v[dj:dj + 8] = maxnum(v[dj:dj + 8],
        # the 4 dst rows); "" and "scale" (back out): dst[di + a, dj + b] =
        # src[si + b, sj + a] (times v[sj + a]) for a < 8, b < 4.  Two 4 x 4
        # transposes of 4-element vectors (unpacks, then 64-bit shuffles).
        @intrinsic
        def impl(typingctx, src, si, sj, dst, di, dj, vec):
            ok = src == dst and isinstance(vec, types.Array) and vec.dtype == src.dtype
            on = ok and tile_width(src) == 8
            sig = types.void(src, si, sj, dst, di, dj, vec)

            def codegen(context, builder, sig, args):
                if not on:
                    return context.get_dummy_value()
                (sa, da, va), (si_, sj_, di_, dj_), fty, ptr, vptr, add, shuf = tile_ops(
                    context, builder, sig, args)

                def tr4(q):  # 4 x 4: out[a][b] = q[b][a]
                    t0 = shuf(q[0], q[1], (0, 4, 1, 5))
                    t1 = shuf(q[0], q[1], (2, 6, 3, 7))
                    t2 = shuf(q[2], q[3], (0, 4, 1, 5))
                    t3 = shuf(q[2], q[3], (2, 6, 3, 7))
                    lo, hi = (0, 1, 4, 5), (2, 3, 6, 7)
                    return [shuf(t0, t2, lo), shuf(t0, t2, hi), shuf(t1, t3, lo), shuf(t1, t3, hi)]

                if op == "max":
                    q = [builder.load(ptr(sa, add(si_, b), sj_, 4), align=4) for b in range(8)]
                    o, p = tr4(q[:4]), tr4(q[4:])
                    out = [shuf(o[a], p[a], range(8)) for a in range(4)]
                    for a in range(4):
                        builder.store(out[a], ptr(da, add(di_, a), dj_, 8), align=4)
                    max_into(builder, vptr(dj_, 8), out, 4)
                else:
                    for g0 in (0, 4):  # dst rows g0..g0+3: src columns sj+g0..
                        q = [builder.load(ptr(sa, add(si_, b), add(sj_, g0), 4), align=4)
                             for b in range(4)]
                        if op == "scale":
                            k = builder.load(vptr(add(sj_, g0), 4), align=4)
                            q = [builder.fmul(x, k) for x in q]
                        out = tr4(q)
                        for a in range(4):
                            builder.store(out[a], ptr(da, add(di_, g0 + a), dj_, 4), align=4)
                return context.get_dummy_value()

            return sig, codegen

        return impl

    g["_tileh_max"] = tile_half("max")
    g["_tileh_t"] = tile_half("")
    g["_tileh_scale"] = tile_half("scale")

    g["_tile_t"] = tile_t("")
    g["_tile_tmax"] = tile_t("max")
    g["_tile_tscale"] = tile_t("scale")

    def bitcast(src, dst, dst_ir):
        @intrinsic
        def impl(typingctx, v):
            sig = dst(src)

            def codegen(context, builder, sig, args):
                return builder.bitcast(args[0], dst_ir)

            return sig, codegen

        return impl

    g["_f64_bits"] = bitcast(types.float64, types.int64, ir.IntType(64))
    g["_bits_f64"] = bitcast(types.int64, types.float64, ir.DoubleType())

    @overload(_exp)
    def _exp_ol(x):
        if x == types.float32:
            return lambda x: _exp32(x)
        if x == types.float64:
            return lambda x: _exp64(x)
        return None

    @overload(_log1p01)
    def _log1p01_ol(e):
        if e == types.float32:
            return lambda e: _log1p32(e)
        return lambda e: math.log1p(e)

    @overload(_log_sum)
    def _log_sum_ol(like, s):
        dt = like.dtype if isinstance(like, types.Array) else like
        if dt == types.float32:
            return lambda like, s: _log_ge1_f32(s)
        return lambda like, s: _log_ge1(s)

    @overload(_as)
    def _as_ol(like, v):
        dt = like.dtype if isinstance(like, types.Array) else like
        if dt == types.float32:
            return lambda like, v: np.float32(v)
        return lambda like, v: np.float64(v)

    g["prange"] = numba.prange
    g["_get_thread_id"] = numba.get_thread_id
    for name, fm in _SERIAL.items():
        # error_model="numpy": a float division is a plain (vectorisable)
        # divide, not a zero check that raises
        opts = {"cache": True, "error_model": "numpy"}
        if fm:
            opts["fastmath"] = set(fm)
        if name in _INLINE:
            opts["inline"] = "always"

        g[name] = numba.njit(**opts)(g[name])
    for name in _PARALLEL:
        g[name] = numba.njit(cache=True, parallel=True, error_model="numpy")(g[name])
    return numba


def _nchunks(n, nthreads):
    """Chunks (= threads) for ``n`` rows or blocks, ``nthreads > 1`` asked
    (the wrappers take 1 without calling); sets Numba's thread count."""
    k = min(int(nthreads), _nb.config.NUMBA_NUM_THREADS, n)
    if k > 1:
        _nb.set_num_threads(k)  # thread-local in Numba
    return max(k, 1)


_EMPTY_F64 = np.empty(0, np.float64)


def _writeable(*arrays):
    """The arrays, read-only ones copied: Numba would compile a separate
    specialisation for a read-only array (seconds long, and not always bit
    for bit the same code)."""
    return tuple(a if a.flags.writeable else np.array(a) for a in arrays)


# ========================================================== public kernels
#
# Thin: a call of a few rows spends most of its time in Python (these
# wrappers' lines are measurable against the kernel's ~0.5 us), so each one
# tests its input arrays' flags inline (read-only ones copied by
# ``_writeable``) and passes its scalars as they come: the public layer
# gives Python floats and ints (tests/test_backends.py checks it;
# another type would compile, and compute in, another specialisation).


def logsumexp(X, out, nthreads=1):
    """``out[n] = log(sum_c exp(X[n, c]))``."""
    R = X.shape[0]
    if R == 0:
        return
    if not X.flags.writeable:
        (X,) = _writeable(X)
    _logsumexp_par(X, out, 1 if nthreads <= 1 else _nchunks(R, nthreads))


def softmax(X, out, nthreads=1):
    """``out[n, c] = exp(X[n, c] - logsumexp(X[n]))``; non-finite lse -> NaN row."""
    R = X.shape[0]
    if R == 0:
        return
    if not X.flags.writeable:
        (X,) = _writeable(X)
    _softmax_par(X, out, 1 if nthreads <= 1 else _nchunks(R, nthreads))


def log_softmax(X, out, nthreads=1):
    """``out[n, c] = X[n, c] - logsumexp(X[n])``; non-finite lse -> NaN row."""
    R = X.shape[0]
    if R == 0:
        return
    if not X.flags.writeable:
        (X,) = _writeable(X)
    _log_softmax_par(X, out, 1 if nthreads <= 1 else _nchunks(R, nthreads))


def ce_loss(X, target, weight, ignore_index, eps, z, softcap,
            ce_scale, z_scale, loss_out, partial, nthreads=1):
    """Per-row cross-entropy with integer targets (see ``_reference``)."""
    R = X.shape[0]
    if R == 0:
        return
    if not (X.flags.writeable and target.flags.writeable
            and weight.flags.writeable):
        X, target, weight = _writeable(X, target, weight)
    _ce_int_par(X, target, weight, ignore_index, eps, z, softcap, ce_scale,
                z_scale, 0.0, _EMPTY_F64, loss_out, partial,
                np.empty((0, X.shape[1]), X.dtype), False,
                1 if nthreads <= 1 else _nchunks(R, nthreads))


def ce_loss_grad(X, target, weight, ignore_index, eps, z, softcap,
                 ce_scale, z_scale, gscalar, gout, loss_out, partial, grad_out,
                 nthreads=1):
    """Per-row cross-entropy with integer targets and its gradient."""
    R = X.shape[0]
    if R == 0:
        return
    if not (X.flags.writeable and target.flags.writeable
            and weight.flags.writeable and gout.flags.writeable):
        X, target, weight, gout = _writeable(X, target, weight, gout)
    _ce_int_par(X, target, weight, ignore_index, eps, z, softcap, ce_scale,
                z_scale, gscalar, gout, loss_out, partial, grad_out, True,
                1 if nthreads <= 1 else _nchunks(R, nthreads))


def ce_soft_loss(X, P, weight, eps, z, softcap, ce_scale, z_scale,
                 loss_out, partial, nthreads=1):
    """Per-row cross-entropy with probability targets."""
    R = X.shape[0]
    if R == 0:
        return
    if not (X.flags.writeable and P.flags.writeable and weight.flags.writeable):
        X, P, weight = _writeable(X, P, weight)
    _ce_soft_par(X, P, weight, eps, z, softcap, ce_scale, z_scale, 0.0,
                 _EMPTY_F64, loss_out, partial, np.empty((0, X.shape[1]), X.dtype),
                 False, 1 if nthreads <= 1 else _nchunks(R, nthreads))


def ce_soft_loss_grad(X, P, weight, eps, z, softcap, ce_scale, z_scale,
                      gscalar, gout, loss_out, partial, grad_out, nthreads=1):
    """Per-row cross-entropy with probability targets and its gradient."""
    R = X.shape[0]
    if R == 0:
        return
    if not (X.flags.writeable and P.flags.writeable
            and weight.flags.writeable and gout.flags.writeable):
        X, P, weight, gout = _writeable(X, P, weight, gout)
    _ce_soft_par(X, P, weight, eps, z, softcap, ce_scale, z_scale, gscalar,
                 gout, loss_out, partial, grad_out, True,
                 1 if nthreads <= 1 else _nchunks(R, nthreads))


def _blocks(n):
    return (n + BCE_BLOCK - 1) // BCE_BLOCK


def bce_loss(P, Y, W, scale, loss_out, partial, nthreads=1):
    """``l = -w (y max(log p, -100) + (1-y) max(log(1-p), -100))``."""
    if P.shape[0] == 0:
        return
    if not (P.flags.writeable and Y.flags.writeable and W.flags.writeable):
        P, Y, W = _writeable(P, Y, W)
    _bce_prob_par(P, Y, W, scale, 0.0, _EMPTY_F64, loss_out, partial,
                  np.empty(0, P.dtype), False,
                  1 if nthreads <= 1 else _nchunks(_blocks(P.shape[0]), nthreads))


def bce_loss_grad(P, Y, W, scale, gscalar, gout, loss_out, partial, grad_out,
                  nthreads=1):
    """Binary cross-entropy on probabilities and its (PyTorch) gradient."""
    if P.shape[0] == 0:
        return
    if not (P.flags.writeable and Y.flags.writeable and W.flags.writeable
            and gout.flags.writeable):
        P, Y, W, gout = _writeable(P, Y, W, gout)
    _bce_prob_par(P, Y, W, scale, gscalar, gout, loss_out, partial, grad_out,
                  True,
                  1 if nthreads <= 1 else _nchunks(_blocks(P.shape[0]), nthreads))


def bce_logits_loss(X, Y, W, PW, scale, loss_out, partial, nthreads=1):
    """Binary cross-entropy on logits, ``pos_weight`` along the last axis."""
    if X.shape[0] == 0:
        return
    if not (X.flags.writeable and Y.flags.writeable and W.flags.writeable
            and PW.flags.writeable):
        X, Y, W, PW = _writeable(X, Y, W, PW)
    _bce_logits_par(X, Y, W, PW, scale, 0.0, _EMPTY_F64, loss_out, partial,
                    np.empty(0, X.dtype), False,
                    1 if nthreads <= 1 else _nchunks(_blocks(X.shape[0]), nthreads))


def bce_logits_loss_grad(X, Y, W, PW, scale, gscalar, gout, loss_out, partial,
                         grad_out, nthreads=1):
    """Binary cross-entropy on logits and its gradient."""
    if X.shape[0] == 0:
        return
    if not (X.flags.writeable and Y.flags.writeable and W.flags.writeable
            and PW.flags.writeable and gout.flags.writeable):
        X, Y, W, PW, gout = _writeable(X, Y, W, PW, gout)
    _bce_logits_par(X, Y, W, PW, scale, gscalar, gout, loss_out, partial,
                    grad_out, True,
                    1 if nthreads <= 1 else _nchunks(_blocks(X.shape[0]), nthreads))


def threads_seen(nthreads):
    """How many distinct Numba threads did work in a ``prange`` of
    ``nthreads`` iterations run with ``nthreads`` threads (a test hook)."""
    nb = _ensure()
    n = max(1, min(int(nthreads), nb.config.NUMBA_NUM_THREADS))
    nb.set_num_threads(n)
    return int(_threads_seen_par(n, nb.config.NUMBA_NUM_THREADS + 1))


def piece_starts(n, nthreads, align):
    """Where each of the ``nthreads * _PIECES`` pieces of ``n`` units starts,
    and ``n`` (``_piece_start``; a test hook)."""
    _ensure()
    nt = int(nthreads)
    return [int(_piece_start(int(n), c, nt, int(align))) for c in range(nt * _PIECES + 1)]


def piece_takes(nthreads, order):
    """The pieces ``_piece`` hands out when threads ask in ``order`` (thread
    indices in ``range(nthreads)``, one at a time): a list of ``(k, piece)``,
    piece -1 when none was left (a test hook; the Cython kernels' has the
    same name and result)."""
    _ensure()
    nt = int(nthreads)
    slots = _pieces(nt)
    return [(int(k), int(_piece(slots, nt, int(k)))) for k in order]


_ensure()  # the wrappers above call the njit-wrapped kernels
