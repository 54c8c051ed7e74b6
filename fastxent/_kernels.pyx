# cython: language_level=3, boundscheck=False, wraparound=False
# cython: cdivision=True, initializedcheck=False
"""Cython + OpenMP kernels of fastxent (the ``"cython"`` backend).

Design
------
Same names, arguments and argument order as ``fastxent/_reference.py``, whose
module docstring is the kernel contract: C-contiguous validated inputs, outputs
passed in, nothing validated or allocated here, empty optional arrays mean
"absent", ``nthreads`` last.

Layers inside this file:

* the ``def`` kernels below take their arrays' data pointers through the
  NumPy C API (``_data``: dtype, dimensions, C-contiguity, alignment,
  writeability and every shape checked against the others, so that a misused
  kernel raises instead of reading out of bounds; a typed memoryview costs
  ~0.35 us per array, a fused ``def`` ~0.4 us more, measured) and run a thin
  ``prange`` of one iteration per thread over rows (cross-entropy, softmax
  family) or over ``BCE_BLOCK``-element blocks (binary cross-entropy), cut
  into ``FX_PIECES`` pieces per thread: each thread takes its own pieces,
  then what is left of the others' (``fx_piece``, _kernels_simd.h);
* each iteration calls one per-row C function from ``_kernels_simd.h``
  (templates ``_kernels_isa.h`` / ``_kernels_rows.h``), where the math is
  written so that gcc vectorises it: ``#pragma omp simd`` reductions and an
  inlined Cephes-style polynomial exp.  Those functions exist in a baseline
  and an AVX2+FMA build; the import picks one (``simd_isa()``).

Per row: pass 1 the max, pass 2 ``e = exp(x - max)`` written into the output
row while summing ``e`` in double, pass 3 rescales the row in place.  One exp
per element, one read of the logits and one write of the gradient (which may
be the logits themselves).  With ``softcap`` each thread gets one scratch row
of C doubles (allocated by its chunk function) holding ``s * tanh(x / s)``.
"""

cimport numpy as cnp
import os
from cython.parallel cimport prange
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc, calloc
from libc.string cimport memset

cdef extern from "_kernels_simd.h" nogil:
    ctypedef struct fx_ce_args:
        int64_t C
        const void *w
        double wsum
        double eps, z, softcap, ce_scale, z_scale

    void fx_ce_rows_f32(const fx_ce_args *, const float *, const int64_t *,
                        int64_t, const double *, double, double *, float *,
                        int64_t, int64_t, double *, float *)
    void fx_ce_rows_f64(const fx_ce_args *, const double *, const int64_t *,
                        int64_t, const double *, double, double *, double *,
                        int64_t, int64_t, double *, double *)
    void fx_softmax_rows_f32(const float *, float *, int64_t, int64_t,
                             int64_t, float *)
    void fx_softmax_rows_f64(const double *, double *, int64_t, int64_t,
                             int64_t, double *)
    void fx_log_softmax_rows_f32(const float *, float *, int64_t, int64_t,
                                 int64_t, float *)
    void fx_log_softmax_rows_f64(const double *, double *, int64_t, int64_t,
                                 int64_t, double *)
    double fx_soft_row_f32(const fx_ce_args *, const float *, const float *,
                           double, float *, double *)
    double fx_soft_row_f64(const fx_ce_args *, const double *, const double *,
                           double, double *, double *)
    double fx_lse_row_f32(const float *, int64_t, const float *)
    double fx_lse_row_f64(const double *, int64_t, const double *)
    double fx_bce_block_f32(const float *, const float *, const float *,
                            double, const double *, double, float *, float *,
                            int64_t)
    double fx_bce_block_f64(const double *, const double *, const double *,
                            double, const double *, double, double *,
                            double *, int64_t)
    double fx_bcel_block_f32(const float *, const float *, const float *,
                             const float *, int64_t, int64_t, double,
                             const double *, double, float *, float *,
                             int64_t, int)
    double fx_bcel_block_f64(const double *, const double *, const double *,
                             const double *, int64_t, int64_t, double,
                             const double *, double, double *, double *,
                             int64_t, int)
    double fx_sumexp_f32(const float *, float, float *, int64_t, int64_t,
                         const float *, double *)
    double fx_sumexp_f64(const double *, double, double *, int64_t, int64_t,
                         const double *, double *)
    float fx_expf_any(float)
    void fx_group_sums(const double *l, int64_t n, double *sp)
    double fx_exp_any(double)
    const char *fx_select(int level)
    const char *fx_isa()
    int fx_cpu_has_avx2()
    int fx_cpu_has_avx512()
    int fx_openmp()
    int fx_thread_num()
    ctypedef struct fx_slot:
        int64_t next
    enum:
        FX_PIECES
        FX_MAX_THREADS
    void fx_pieces_init(fx_slot *s, int nt)
    int64_t fx_piece(fx_slot *s, int nt, int k)
    int64_t fx_piece_start(int64_t n, int64_t c, int nt, int64_t align)


ctypedef fused floating:
    float
    double

#: Elements per partial sum of the binary cross-entropy kernels (all backends).
BCE_BLOCK = 16384
cdef int64_t _BCE_BLOCK = 16384
# Rows per group of the cross-entropy kernels' partial sums (_reference's
# CE_ROWS, with CE_LANES = 8 sums per group; see _group_sums); thread chunks
# start at multiples of it (``fx_piece_start``).
cdef int64_t _CE_ROWS = 64
# Rows whose losses one thread keeps in a scratch buffer at a time when it
# only forms the partial sums (a multiple of _CE_ROWS: 64 KiB, in L2)
cdef int64_t _CE_LOSS_ROWS = 8192

# Below this many elements per thread, extra threads cost more than they save
# (an OpenMP fork/join is a few microseconds, about 16K exps at 0.5 ns).
cdef int64_t _MIN_WORK_PER_THREAD = 16384

# Outputs at least this large are written with non-temporal stores (each row
# computed into a cache-resident scratch row, then streamed out: no
# read-for-ownership of the output).  Off by default: on the 2-core Zen 3
# machine these kernels are compute-bound and the extra copy measured slower
# (ce_loss_grad (4096, 32000): 240 vs 152 ms best-of-7; BCE 16M: equal).
# ``_set_stream_bytes(16 << 20)`` turns it on for measuring elsewhere.
cdef int64_t _STREAM_BYTES = <int64_t>1 << 62

# The instruction set: the highest the CPU has, unless FASTXENT_SIMD caps it
# ("baseline", "avx2", "avx512" or "best"): to compare them, or to keep
# 512-bit vectors off a CPU that lowers its clock for them.
_ISA_LEVELS = {"baseline": 0, "avx2": 1, "avx512": 2, "best": 2}
_simd_env = os.environ.get("FASTXENT_SIMD", "best").strip().lower() or "best"
if _simd_env not in _ISA_LEVELS:
    raise ValueError("FASTXENT_SIMD=%r is not one of %s"
                     % (os.environ["FASTXENT_SIMD"], ", ".join(sorted(_ISA_LEVELS))))
fx_select(_ISA_LEVELS[_simd_env])
cnp.import_array()


# ------------------------------------------------------------ introspection


cdef extern from *:
    # defined by the C file Cython generates: the Cython that built this module
    const long CYTHON_HEX_VERSION

#: Version of Cython this extension was compiled with ("3.0.11", ...).
CYTHON_VERSION = "%d.%d.%d" % ((CYTHON_HEX_VERSION >> 24) & 0xFF,
                               (CYTHON_HEX_VERSION >> 16) & 0xFF,
                               (CYTHON_HEX_VERSION >> 8) & 0xFF)


def openmp_enabled():
    """True when the extension was compiled with OpenMP (prange runs threads)."""
    return bool(fx_openmp())


def simd_isa():
    """The instruction set the kernels run on here: ``"avx512"``, ``"avx2+fma"``
    or the baseline (``"sse2"`` on x86-64)."""
    return fx_isa().decode()


def _simd_levels():
    """Testing aid: the names ``_set_simd_isa`` takes that this CPU runs as
    themselves (``"baseline"`` always, ``"avx2"``, ``"avx512"``)."""
    names = ["baseline"]
    if fx_cpu_has_avx2():
        names.append("avx2")
    if fx_cpu_has_avx512():
        names.append("avx512")
    return tuple(names)


def _set_simd_isa(name):
    """Testing aid: force ``"baseline"``, ``"avx2"`` or ``"avx512"`` (the
    highest the CPU has, up to that), or go back to ``"best"``; returns the ISA."""
    if name not in _ISA_LEVELS:
        raise ValueError("unknown ISA level %r; one of %s" % (name, sorted(_ISA_LEVELS)))
    return fx_select(_ISA_LEVELS[name]).decode()


def _set_stream_bytes(int64_t nbytes):
    """Testing aid: outputs of at least ``nbytes`` use non-temporal stores;
    returns the previous threshold."""
    global _STREAM_BYTES
    old = _STREAM_BYTES
    _STREAM_BYTES = nbytes
    return old


def _exp_f32(float x):
    """The kernels' float32 exp on one value (accuracy tests)."""
    return fx_expf_any(x)


def _exp_f64(double x):
    """The kernels' float64 exp on one value (accuracy tests)."""
    return fx_exp_any(x)


def _exp_le0(floating[::1] x):
    """The row kernels' exp (pass 2 with shift 0) on a 1-D array of values
    <= 0, -inf or NaN: ``(exp(x), float64 sum)`` (accuracy tests)."""
    import numpy as np
    out = np.empty(x.shape[0], dtype=np.float32 if floating is float else np.float64)
    cdef floating[::1] o = out
    cdef double s, rest
    if x.shape[0] == 0:
        return out, 0.0
    if floating is float:
        s = fx_sumexp_f32(&x[0], 0.0, &o[0], x.shape[0], -1, &x[0], &rest)
    else:
        s = fx_sumexp_f64(&x[0], 0.0, &o[0], x.shape[0], -1, &x[0], &rest)
    return out, s


cdef double _spin(Py_ssize_t i) noexcept nogil:
    cdef double acc = 0.0
    cdef int k
    for k in range(20000):
        acc = acc * 0.999999 + (i + k) * 1e-9
    return acc


def piece_starts(int64_t n, int nthreads, int64_t align):
    """Where each of the ``nthreads * FX_PIECES`` pieces of ``n`` units
    starts, and ``n`` (``fx_piece_start``; a test hook)."""
    if not 1 <= nthreads <= FX_MAX_THREADS or n < 0 or align < 1:
        raise ValueError("need 1 <= nthreads <= %d, n >= 0, align >= 1" % FX_MAX_THREADS)
    return [fx_piece_start(n, c, nthreads, align) for c in range(nthreads * FX_PIECES + 1)]


def piece_takes(int nthreads, order):
    """The pieces ``fx_piece`` hands out when threads ask in ``order``
    (thread indices in ``range(nthreads)``, one at a time): a list of ``(k,
    piece)``, piece -1 when none was left (a test hook)."""
    cdef fx_slot sl[FX_MAX_THREADS]
    if not 1 <= nthreads <= FX_MAX_THREADS:
        raise ValueError("nthreads must be in [1, %d]" % FX_MAX_THREADS)
    fx_pieces_init(sl, nthreads)
    out = []
    for k in order:
        if not 0 <= k < nthreads:
            raise ValueError("thread index %r out of range" % (k,))
        out.append((k, fx_piece(sl, nthreads, k)))
    return out


def threads_seen(int nthreads):
    """Run a prange with ``nthreads`` threads; return how many distinct
    OpenMP threads actually did work (1 without OpenMP)."""
    cdef int n = nthreads if nthreads > 0 else 1
    cdef int *seen = <int *>calloc(n, sizeof(int))
    cdef Py_ssize_t i, iters = 16 * n
    cdef int tid, count = 0
    cdef double acc = 0.0
    if seen == NULL:
        raise MemoryError()
    with nogil:
        for i in prange(iters, schedule='static', chunksize=1, num_threads=n):
            tid = fx_thread_num()
            if tid < n:
                seen[tid] = 1
            acc += _spin(i)
    for i in range(n):
        count += seen[i]
    free(seen)
    return count


# ------------------------------------------------------------------ helpers


cdef inline int _threads(int nthreads, int64_t work) noexcept nogil:
    """Threads to use: at most ``nthreads``, at least 1, and no more than one
    per ``_MIN_WORK_PER_THREAD`` elements."""
    cdef int64_t cap = work // _MIN_WORK_PER_THREAD
    if nthreads < 1:
        nthreads = 1
    if cap < 1:
        cap = 1
    if cap > FX_MAX_THREADS:  # (fx_piece's counters, one per thread)
        cap = FX_MAX_THREADS
    return <int>(nthreads if nthreads < cap else cap)


cdef int _F32 = cnp.NPY_FLOAT
cdef int _F64 = cnp.NPY_DOUBLE
cdef int _I64 = cnp.NPY_INT64


cdef int _ftype(object X) except -1:
    """``_F32`` or ``_F64``: the dtype of the kernel's main array ``X``."""
    cdef int tn
    if isinstance(X, cnp.ndarray):
        tn = cnp.PyArray_TYPE(<cnp.ndarray>X)
        if tn == _F32 or tn == _F64:
            return tn
        raise TypeError("fastxent kernel: expected float32 or float64 data, got %s"
                        % (<cnp.ndarray>X).dtype)
    raise TypeError("fastxent kernel: expected a numpy.ndarray, got %s"
                    % type(X).__name__)


cdef void *_data(object a, int typenum, int ndim, Py_ssize_t n0, Py_ssize_t n1,
                 bint write, bint optional, str name) except? NULL:
    """The data pointer of the kernel argument ``a`` (called ``name``).

    Checked first: an ndarray of ``typenum`` in native byte order, ``ndim``
    dimensions of lengths ``n0`` (and ``n1``; -1 means any), C-contiguous,
    aligned, writeable when ``write``.  With ``optional``, ``None`` or a
    size-0 array means "absent" and gives NULL.  Anything else raises: these
    checks are what stands between a misused kernel and an out-of-bounds
    read, and they cost ~30 ns.
    """
    cdef cnp.ndarray arr
    cdef cnp.npy_intp *d
    if optional and a is None:
        return NULL
    if not isinstance(a, cnp.ndarray):
        raise TypeError("fastxent kernel: %s must be a numpy.ndarray, got %s"
                        % (name, type(a).__name__))
    arr = <cnp.ndarray>a
    if optional and cnp.PyArray_SIZE(arr) == 0:
        return NULL
    if cnp.PyArray_TYPE(arr) != typenum or not cnp.PyArray_ISNOTSWAPPED(arr):
        raise TypeError("fastxent kernel: %s has dtype %s, expected %s"
                        % (name, a.dtype, cnp.PyArray_DescrFromType(typenum)))
    d = cnp.PyArray_DIMS(arr)
    if (cnp.PyArray_NDIM(arr) != ndim or (n0 >= 0 and d[0] != n0)
            or (ndim == 2 and n1 >= 0 and d[1] != n1)):
        raise ValueError("fastxent kernel: %s has shape %s, expected %s"
                         % (name, a.shape,
                            (n0, n1)[:ndim] if n0 >= 0 else "%d-D" % ndim))
    if not cnp.PyArray_ISCARRAY_RO(arr):
        raise ValueError("fastxent kernel: %s must be C-contiguous and aligned" % name)
    if write and not cnp.PyArray_ISWRITEABLE(arr):
        raise ValueError("fastxent kernel: %s is read-only" % name)
    return cnp.PyArray_DATA(arr)


cdef inline int64_t _dim(object a, int k) noexcept:
    """Length of axis ``k`` of an array ``_data`` has checked."""
    return cnp.PyArray_DIMS(<cnp.ndarray>a)[k]


# ------------------------------------------------------------ softmax family


# Every driver below cuts its rows (blocks, for binary cross-entropy) into
# FX_PIECES pieces per thread and runs a chunk function on each piece: a
# prange of one iteration per thread, in which thread k takes its own pieces
# (the rows a static split would give it) and then what is left of the
# others' (fx_piece, _kernels_simd.h), so that a thread slowed by another
# process on its core hands its rows over instead of making the call wait.
# With one thread it calls the chunk function directly: an OpenMP region of
# one thread still costs ~1.5 us (measured on a (8, 10) cross-entropy call:
# 2.5 -> 0.8 us in the kernel).


cdef void _lse_chunk(const floating *x, int64_t R, int64_t C, double *p64,
                     float *p32, int64_t r0, int64_t r1) noexcept nogil:
    cdef int64_t i
    cdef double v
    for i in range(r0, r1):
        if floating is float:
            v = fx_lse_row_f32(x + i * C, C, x + (i + 1 if i + 1 < R else i) * C)
        else:
            v = fx_lse_row_f64(x + i * C, C, x + (i + 1 if i + 1 < R else i) * C)
        if p64 != NULL:
            p64[i] = v
        else:
            p32[i] = <float>v


def logsumexp(X, out, int nthreads=1):
    """``out[n] = log(sum_c exp(X[n, c]))`` (out: float32 or float64)."""
    cdef int tn = _ftype(X)
    cdef const void *x = _data(X, tn, 2, -1, -1, 0, 0, "X")
    cdef int64_t R = _dim(X, 0), C = _dim(X, 1)
    cdef int otn = _ftype(out)
    cdef void *o = _data(out, otn, 1, R, -1, 1, 0, "out")
    cdef int nt = _threads(nthreads, R * C)
    if R == 0:
        return
    with nogil:
        if tn == _F32:
            _lse_par(<const float *>x, R, C, <double *>o if otn == _F64 else NULL,
                     <float *>o if otn == _F32 else NULL, nt)
        else:
            _lse_par(<const double *>x, R, C, <double *>o if otn == _F64 else NULL,
                     <float *>o if otn == _F32 else NULL, nt)


cdef void _lse_par(const floating *x, int64_t R, int64_t C, double *p64,
                   float *p32, int nt) noexcept nogil:
    cdef Py_ssize_t k
    cdef int64_t c
    cdef fx_slot sl[FX_MAX_THREADS]
    if nt == 1:
        _lse_chunk(x, R, C, p64, p32, 0, R)
        return
    fx_pieces_init(sl, nt)
    for k in prange(nt, schedule='static', chunksize=1, num_threads=nt):
        c = fx_piece(sl, nt, k)
        while c >= 0:
            _lse_chunk(x, R, C, p64, p32, fx_piece_start(R, c, nt, _CE_ROWS),
                       fx_piece_start(R, c + 1, nt, _CE_ROWS))
            c = fx_piece(sl, nt, k)


cdef void _softmax_par(const floating *x, floating *o, int64_t R, int64_t C,
                       int nt, bint log) noexcept nogil:
    cdef Py_ssize_t k
    cdef int64_t c
    cdef fx_slot sl[FX_MAX_THREADS]
    cdef bint st = _stream(R, C, sizeof(floating))
    if nt == 1:
        _softmax_chunk(x, o, C, 0, R, st, log)
        return
    fx_pieces_init(sl, nt)
    for k in prange(nt, schedule='static', chunksize=1, num_threads=nt):
        c = fx_piece(sl, nt, k)
        while c >= 0:
            _softmax_chunk(x, o, C, fx_piece_start(R, c, nt, _CE_ROWS),
                           fx_piece_start(R, c + 1, nt, _CE_ROWS), st, log)
            c = fx_piece(sl, nt, k)


cdef int _softmax_family(X, out, int nthreads, bint log) except -1:
    cdef int tn = _ftype(X)
    cdef const void *x = _data(X, tn, 2, -1, -1, 0, 0, "X")
    cdef int64_t R = _dim(X, 0), C = _dim(X, 1)
    cdef void *o = _data(out, tn, 2, R, C, 1, 0, "out")
    cdef int nt = _threads(nthreads, R * C)
    if R == 0 or C == 0:
        return 0
    with nogil:
        if tn == _F32:
            _softmax_par(<const float *>x, <float *>o, R, C, nt, log)
        else:
            _softmax_par(<const double *>x, <double *>o, R, C, nt, log)
    return 0


def softmax(X, out, int nthreads=1):
    """``out[n, c] = exp(X[n, c] - logsumexp(X[n]))``; out may be X."""
    _softmax_family(X, out, nthreads, 0)


def log_softmax(X, out, int nthreads=1):
    """``out[n, c] = X[n, c] - logsumexp(X[n])``; out may be X."""
    _softmax_family(X, out, nthreads, 1)


# ------------------------------------------------ cross-entropy, int targets


cdef inline void _group_sums(const double *l, int64_t n, double *sp) noexcept nogil:
    """The partial sums of the ``n`` losses at ``l`` (``l[0]`` at a group's
    start): ``sp[8 (i // 64) + i % 8]`` = the sum of the ``l[i]`` with that
    group and lane, added in row order from 0.0 (_CE_ROWS = 64 rows,
    CE_LANES = 8 lanes; a group's missing rows add nothing).  Lanes rather
    than runs of consecutive rows so that the sums are 8 independent chains
    that vectorise (fx_group_sums, compiled per instruction set: one 8-wide
    add per 8 rows with AVX-512).  Summed per run of 8 rows, the adds cost
    what NumPy's pass over all the losses did (measured)."""
    fx_group_sums(l, n, sp)


cdef inline bint _stream(int64_t R, int64_t C, size_t item) noexcept nogil:
    """Stream (non-temporal stores) an R x C output: far larger than the
    caches, rows long enough for a scratch row to pay off."""
    return C >= 64 and R * C * <int64_t>item >= _STREAM_BYTES


cdef int _ce_chunk(const fx_ce_args *A, const floating *x, const int64_t *t,
                   int64_t ign, const double *gp, double gscalar, double *lp,
                   double *sp, floating *g, int64_t r0, int64_t r1,
                   bint stream) noexcept nogil:
    """Rows [r0, r1) on one thread (r0 a multiple of _CE_ROWS); 1 if a
    scratch buffer failed.  With ``sp`` (partial sums) and no ``lp``, the
    rows go _CE_LOSS_ROWS at a time with their losses in a scratch buffer,
    summed from there: no per-row buffer of R losses written and read back
    (at (262144, 10) float32 that buffer and NumPy's sum of it cost ~60 us
    of a ~1.1 ms call on 2 threads).  A short chunk's losses go to the
    stack (no malloc and free for a call of a few rows)."""
    cdef double *scratch = NULL
    cdef floating *gs = NULL
    cdef double *lb = NULL
    cdef double lsmall[256]
    cdef int64_t a, b, C = A.C
    cdef int bad = 0
    if A.softcap != 0.0:
        scratch = <double *>malloc(C * sizeof(double))
        bad = scratch == NULL
    if stream and g != NULL:
        gs = <floating *>malloc(C * sizeof(floating))
    if sp == NULL or lp != NULL:
        if floating is float:
            fx_ce_rows_f32(A, x, t, ign, gp, gscalar, lp, g, r0, r1, scratch, gs)
        else:
            fx_ce_rows_f64(A, x, t, ign, gp, gscalar, lp, g, r0, r1, scratch, gs)
        if sp != NULL:
            _group_sums(lp + r0, r1 - r0, sp + r0 // 8)
    else:
        if r1 - r0 <= 256:
            lb = lsmall
        else:
            lb = <double *>malloc(_CE_LOSS_ROWS * sizeof(double))
            bad = lb == NULL
        a = r0
        while lb != NULL and a < r1:
            b = a + _CE_LOSS_ROWS if a + _CE_LOSS_ROWS < r1 else r1
            # rows [a, b) as rows [0, b - a) of arrays that start at row a
            if floating is float:
                fx_ce_rows_f32(A, x + a * C, t + a, ign,
                               gp + a if gp != NULL else NULL, gscalar, lb,
                               g + a * C if g != NULL else NULL, 0, b - a,
                               scratch, gs)
            else:
                fx_ce_rows_f64(A, x + a * C, t + a, ign,
                               gp + a if gp != NULL else NULL, gscalar, lb,
                               g + a * C if g != NULL else NULL, 0, b - a,
                               scratch, gs)
            _group_sums(lb, b - a, sp + a // 8)
            a = b
        if lb != lsmall:
            free(lb)
    free(scratch)
    free(gs)
    return bad


cdef void _softmax_chunk(const floating *x, floating *o, int64_t C,
                         int64_t r0, int64_t r1, bint stream,
                         bint log) noexcept nogil:
    """softmax / log_softmax rows [r0, r1) on one thread."""
    cdef floating *gs = NULL
    if stream:
        gs = <floating *>malloc(C * sizeof(floating))  # NULL: plain stores
    if floating is float:
        if log:
            fx_log_softmax_rows_f32(x, o, C, r0, r1, gs)
        else:
            fx_softmax_rows_f32(x, o, C, r0, r1, gs)
    else:
        if log:
            fx_log_softmax_rows_f64(x, o, C, r0, r1, gs)
        else:
            fx_softmax_rows_f64(x, o, C, r0, r1, gs)
    free(gs)


ctypedef struct _ce_ops:
    int tn              # _F32 or _F64
    int64_t R, C
    const void *x
    const void *w       # NULL: no weights
    const double *gp    # NULL: gscalar for every row
    double *lp          # NULL: no per-row losses
    double *sp          # NULL: no partial sums (per _CE_ROWS rows)
    void *g             # NULL: no gradient


cdef int _ce_operands(X, weight, gout, loss_out, partial, grad_out,
                      _ce_ops *o) except -1:
    """The operands both cross-entropy kernels take, checked (see ``_data``)."""
    o.tn = _ftype(X)
    o.x = _data(X, o.tn, 2, -1, -1, 0, 0, "X")
    o.R = _dim(X, 0)
    o.C = _dim(X, 1)
    o.w = _data(weight, o.tn, 1, o.C, -1, 0, 1, "weight")
    o.gp = <const double *>_data(gout, _F64, 1, o.R, -1, 0, 1, "gout")
    o.lp = <double *>_data(loss_out, _F64, 1, o.R, -1, 1, 1, "loss_out")
    o.sp = <double *>_data(partial, _F64, 1, (o.R + _CE_ROWS - 1) // _CE_ROWS * 8,
                           -1, 1, 1, "partial")
    o.g = NULL
    if grad_out is not None:
        o.g = _data(grad_out, o.tn, 2, o.R, o.C, 1, 0, "grad_out")
    return 0


cdef void _ce_args_set(fx_ce_args *A, int64_t C, const void *w, double eps,
                       double z, double softcap, double ce_scale,
                       double z_scale) noexcept nogil:
    """The row kernels' options; ``wsum = C`` (integer targets sum the
    weights into it when there are some)."""
    A.C = C
    A.w = w
    A.wsum = <double>C
    A.eps = eps
    A.z = z
    A.softcap = softcap
    A.ce_scale = ce_scale
    A.z_scale = z_scale


cdef void _ce_int(const floating *x, int64_t R, int64_t C, const int64_t *t,
                  const floating *w, int64_t ignore_index, double eps,
                  double z, double softcap, double ce_scale, double z_scale,
                  double gscalar, const double *gp, double *lp, double *sp,
                  floating *g, int nthreads, int *failed) noexcept nogil:
    cdef fx_ce_args A
    cdef int64_t c
    cdef Py_ssize_t k
    cdef int nt = _threads(nthreads, R * C)
    cdef int bad = 0
    cdef fx_slot sl[FX_MAX_THREADS]
    _ce_args_set(&A, C, w, eps, z, softcap, ce_scale, z_scale)
    if w != NULL:
        A.wsum = 0.0
        for c in range(C):
            A.wsum += w[c]
    if nt == 1:
        failed[0] = _ce_chunk(&A, x, t, ignore_index, gp, gscalar, lp, sp, g,
                              0, R, _stream(R, C, sizeof(floating)))
        return
    fx_pieces_init(sl, nt)
    for k in prange(nt, schedule='static', chunksize=1, num_threads=nt):
        c = fx_piece(sl, nt, k)
        while c >= 0:
            bad += _ce_chunk(&A, x, t, ignore_index, gp, gscalar, lp, sp, g,
                             fx_piece_start(R, c, nt, _CE_ROWS),
                             fx_piece_start(R, c + 1, nt, _CE_ROWS),
                             _stream(R, C, sizeof(floating)))
            c = fx_piece(sl, nt, k)
    failed[0] = bad


cdef int _ce_int_call(X, target, weight, int64_t ignore_index, double eps,
                      double z, double softcap, double ce_scale,
                      double z_scale, double gscalar, gout, loss_out,
                      partial, grad_out, int nthreads) except -1:
    cdef _ce_ops o
    cdef int failed = 0
    _ce_operands(X, weight, gout, loss_out, partial, grad_out, &o)
    cdef const int64_t *t = <const int64_t *>_data(target, _I64, 1, o.R, -1, 0, 0, "target")
    if o.R == 0 or o.C == 0:
        return 0
    with nogil:
        if o.tn == _F32:
            _ce_int(<const float *>o.x, o.R, o.C, t, <const float *>o.w,
                    ignore_index, eps, z, softcap, ce_scale, z_scale, gscalar,
                    o.gp, o.lp, o.sp, <float *>o.g, nthreads, &failed)
        else:
            _ce_int(<const double *>o.x, o.R, o.C, t, <const double *>o.w,
                    ignore_index, eps, z, softcap, ce_scale, z_scale, gscalar,
                    o.gp, o.lp, o.sp, <double *>o.g, nthreads, &failed)
    if failed:
        raise MemoryError("fastxent: no memory for the kernel's scratch rows")
    return 0


def ce_loss(X, target, weight, int64_t ignore_index, double eps, double z,
            double softcap, double ce_scale, double z_scale, loss_out, partial,
            int nthreads=1):
    """Per-row cross-entropy with integer targets (see the module docstring)."""
    _ce_int_call(X, target, weight, ignore_index, eps, z, softcap, ce_scale,
                 z_scale, 0.0, None, loss_out, partial, None, nthreads)


def ce_loss_grad(X, target, weight, int64_t ignore_index, double eps,
                 double z, double softcap, double ce_scale, double z_scale,
                 double gscalar, gout, loss_out, partial, grad_out,
                 int nthreads=1):
    """Per-row cross-entropy with integer targets and its gradient
    (``grad_out`` may be ``X``)."""
    _ce_int_call(X, target, weight, ignore_index, eps, z, softcap, ce_scale,
                 z_scale, gscalar, gout, loss_out, partial, grad_out, nthreads)


# ----------------------------------------------- cross-entropy, soft targets


cdef int _soft_chunk(const fx_ce_args *A, const floating *x, const floating *p,
                     const double *gp, double gscalar, double *lp, double *sp,
                     floating *g, int64_t r0, int64_t r1) noexcept nogil:
    """Rows [r0, r1) on one thread (r0 a multiple of _CE_ROWS); 1 if the
    softcap scratch row failed."""
    cdef int64_t i, C = A.C
    cdef double *scratch = NULL
    cdef double loss, gn
    if A.softcap != 0.0:
        scratch = <double *>malloc(C * sizeof(double))
        if scratch == NULL:
            return 1
    for i in range(r0, r1):
        gn = gp[i] if gp != NULL else gscalar
        if floating is float:
            loss = fx_soft_row_f32(A, x + i * C, p + i * C, gn,
                                   g + i * C if g != NULL else NULL, scratch)
        else:
            loss = fx_soft_row_f64(A, x + i * C, p + i * C, gn,
                                   g + i * C if g != NULL else NULL, scratch)
        if lp != NULL:
            lp[i] = loss
        if sp != NULL:  # as _group_sums: by lane, in row order from 0.0
            if i % _CE_ROWS == 0:
                memset(&sp[i // 8], 0, 8 * sizeof(double))
            sp[i // _CE_ROWS * 8 + i % 8] += loss
    free(scratch)
    return 0


cdef void _ce_soft(const floating *x, const floating *p, int64_t R, int64_t C,
                   const floating *w, double eps, double z, double softcap,
                   double ce_scale, double z_scale, double gscalar,
                   const double *gp, double *lp, double *sp, floating *g,
                   int nthreads, int *failed) noexcept nogil:
    cdef fx_ce_args A
    cdef Py_ssize_t k
    cdef int64_t c
    cdef int nt = _threads(nthreads, R * C)
    cdef int bad = 0
    cdef fx_slot sl[FX_MAX_THREADS]
    _ce_args_set(&A, C, w, eps, z, softcap, ce_scale, z_scale)
    if nt == 1:
        failed[0] = _soft_chunk(&A, x, p, gp, gscalar, lp, sp, g, 0, R)
        return
    fx_pieces_init(sl, nt)
    for k in prange(nt, schedule='static', chunksize=1, num_threads=nt):
        c = fx_piece(sl, nt, k)
        while c >= 0:
            bad += _soft_chunk(&A, x, p, gp, gscalar, lp, sp, g,
                               fx_piece_start(R, c, nt, _CE_ROWS),
                               fx_piece_start(R, c + 1, nt, _CE_ROWS))
            c = fx_piece(sl, nt, k)
    failed[0] = bad


cdef int _ce_soft_call(X, P, weight, double eps, double z, double softcap,
                       double ce_scale, double z_scale, double gscalar, gout,
                       loss_out, partial, grad_out, int nthreads) except -1:
    cdef _ce_ops o
    cdef int failed = 0
    _ce_operands(X, weight, gout, loss_out, partial, grad_out, &o)
    cdef const void *p = _data(P, o.tn, 2, o.R, o.C, 0, 0, "P")
    if o.R == 0 or o.C == 0:
        return 0
    with nogil:
        if o.tn == _F32:
            _ce_soft(<const float *>o.x, <const float *>p, o.R, o.C,
                     <const float *>o.w, eps, z, softcap, ce_scale, z_scale,
                     gscalar, o.gp, o.lp, o.sp, <float *>o.g, nthreads, &failed)
        else:
            _ce_soft(<const double *>o.x, <const double *>p, o.R, o.C,
                     <const double *>o.w, eps, z, softcap, ce_scale, z_scale,
                     gscalar, o.gp, o.lp, o.sp, <double *>o.g, nthreads, &failed)
    if failed:
        raise MemoryError("fastxent: no memory for the softcap scratch rows")
    return 0


def ce_soft_loss(X, P, weight, double eps, double z, double softcap,
                 double ce_scale, double z_scale, loss_out, partial,
                 int nthreads=1):
    """Per-row cross-entropy with probability targets."""
    _ce_soft_call(X, P, weight, eps, z, softcap, ce_scale, z_scale, 0.0, None,
                  loss_out, partial, None, nthreads)


def ce_soft_loss_grad(X, P, weight, double eps, double z, double softcap,
                      double ce_scale, double z_scale, double gscalar, gout,
                      loss_out, partial, grad_out, int nthreads=1):
    """Per-row cross-entropy with probability targets and its gradient."""
    _ce_soft_call(X, P, weight, eps, z, softcap, ce_scale, z_scale, gscalar,
                  gout, loss_out, partial, grad_out, nthreads)


# ------------------------------------------------------ binary cross-entropy


cdef void _bce_chunk(bint logits, const floating *a, const floating *y,
                     const floating *wp, const floating *pwp, int64_t L,
                     int64_t n, double scale, double gscalar, const double *gp,
                     floating *lp, double *sp, floating *g, int stream,
                     int64_t b0, int64_t b1) noexcept nogil:
    """Blocks [b0, b1) of BCE_BLOCK elements on one thread."""
    cdef int64_t b, i0, m
    cdef double s
    cdef const floating *wb
    cdef const double *gb
    cdef floating *lb
    cdef floating *db
    for b in range(b0, b1):
        i0 = b * _BCE_BLOCK
        m = n - i0
        if m > _BCE_BLOCK:
            m = _BCE_BLOCK
        # this block's part of each optional operand (NULL: absent)
        wb = wp + i0 if wp != NULL else NULL
        gb = gp + i0 if gp != NULL else NULL
        lb = lp + i0 if lp != NULL else NULL
        db = g + i0 if g != NULL else NULL
        if floating is float:
            if logits:
                s = fx_bcel_block_f32(a + i0, y + i0, wb, pwp, L, i0, scale,
                                      gb, gscalar, lb, db, m, stream)
            else:
                s = fx_bce_block_f32(a + i0, y + i0, wb, scale, gb, gscalar,
                                     lb, db, m)
        else:
            if logits:
                s = fx_bcel_block_f64(a + i0, y + i0, wb, pwp, L, i0, scale,
                                      gb, gscalar, lb, db, m, stream)
            else:
                s = fx_bce_block_f64(a + i0, y + i0, wb, scale, gb, gscalar,
                                     lb, db, m)
        if sp != NULL:
            sp[b] = s


cdef void _bce(bint logits, const floating *a, const floating *y,
               const floating *wp, const floating *pwp, int64_t L, int64_t n,
               double scale, double gscalar, const double *gp, floating *lp,
               double *sp, floating *g, int nthreads) noexcept nogil:
    cdef int64_t nb = (n + _BCE_BLOCK - 1) // _BCE_BLOCK
    cdef Py_ssize_t k
    cdef int64_t c
    cdef int nt = _threads(nthreads, n)
    cdef fx_slot sl[FX_MAX_THREADS]
    # non-temporal gradient stores when the gradient is far larger than L2
    cdef int stream = n * <int64_t>sizeof(floating) >= _STREAM_BYTES
    if nt > nb:
        nt = <int>nb
    if nt == 1:
        _bce_chunk(logits, a, y, wp, pwp, L, n, scale, gscalar, gp, lp, sp, g,
                   stream, 0, nb)
        return
    fx_pieces_init(sl, nt)
    for k in prange(nt, schedule='static', chunksize=1, num_threads=nt):
        c = fx_piece(sl, nt, k)
        while c >= 0:
            _bce_chunk(logits, a, y, wp, pwp, L, n, scale, gscalar, gp, lp, sp, g,
                       stream, fx_piece_start(nb, c, nt, 1),
                       fx_piece_start(nb, c + 1, nt, 1))
            c = fx_piece(sl, nt, k)


cdef int _bce_call(bint logits, A, Y, W, PW, double scale, double gscalar,
                   gout, loss_out, partial, grad_out, int nthreads) except -1:
    cdef int tn = _ftype(A)
    cdef const void *a = _data(A, tn, 1, -1, -1, 0, 0, "X" if logits else "P")
    cdef int64_t n = _dim(A, 0), L = 0
    cdef const void *y = _data(Y, tn, 1, n, -1, 0, 0, "Y")
    cdef const void *wp = _data(W, tn, 1, n, -1, 0, 1, "W")
    cdef const void *pwp = NULL
    cdef const double *gp = <const double *>_data(gout, _F64, 1, n, -1, 0, 1, "gout")
    cdef void *lp = _data(loss_out, tn, 1, n, -1, 1, 1, "loss_out")
    cdef double *sp = <double *>_data(partial, _F64, 1,
                                      (n + _BCE_BLOCK - 1) // _BCE_BLOCK, -1,
                                      1, 1, "partial")
    cdef void *g = NULL
    if logits:
        pwp = _data(PW, tn, 1, -1, -1, 0, 1, "PW")
        if pwp != NULL:
            L = _dim(PW, 0)
    if grad_out is not None:
        g = _data(grad_out, tn, 1, n, -1, 1, 0, "grad_out")
    if n == 0:
        return 0
    with nogil:
        if tn == _F32:
            _bce(logits, <const float *>a, <const float *>y,
                 <const float *>wp, <const float *>pwp, L, n, scale, gscalar,
                 gp, <float *>lp, sp, <float *>g, nthreads)
        else:
            _bce(logits, <const double *>a, <const double *>y,
                 <const double *>wp, <const double *>pwp, L, n, scale,
                 gscalar, gp, <double *>lp, sp, <double *>g, nthreads)
    return 0


def bce_loss(P, Y, W, double scale, loss_out, partial, int nthreads=1):
    """``l = -w (y max(log p, -100) + (1-y) max(log(1-p), -100))``."""
    _bce_call(False, P, Y, W, None, scale, 0.0, None, loss_out, partial, None,
              nthreads)


def bce_loss_grad(P, Y, W, double scale, double gscalar, gout, loss_out,
                  partial, grad_out, int nthreads=1):
    """Binary cross-entropy on probabilities and its (PyTorch) gradient."""
    _bce_call(False, P, Y, W, None, scale, gscalar, gout, loss_out, partial,
              grad_out, nthreads)


def bce_logits_loss(X, Y, W, PW, double scale, loss_out, partial,
                    int nthreads=1):
    """Binary cross-entropy on logits, ``pos_weight`` along the last axis."""
    _bce_call(True, X, Y, W, PW, scale, 0.0, None, loss_out, partial, None,
              nthreads)


def bce_logits_loss_grad(X, Y, W, PW, double scale, double gscalar, gout,
                         loss_out, partial, grad_out, int nthreads=1):
    """Binary cross-entropy on logits and its gradient."""
    _bce_call(True, X, Y, W, PW, scale, gscalar, gout, loss_out, partial,
              grad_out, nthreads)
