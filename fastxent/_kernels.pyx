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

* the ``def`` kernels below unpack memoryviews into raw pointers and run a thin
  ``prange(schedule='static')`` over rows (cross-entropy, softmax family) or
  over ``BCE_BLOCK``-element blocks (binary cross-entropy);
* each iteration calls one per-row C function from ``_kernels_simd.h``
  (templates ``_kernels_isa.h`` / ``_kernels_rows.h``), where the math is
  written so that gcc vectorises it: ``#pragma omp simd`` reductions and an
  inlined Cephes-style polynomial exp.  Those functions exist in a baseline
  and an AVX2+FMA build; the import picks one (``simd_isa()``).

Per row: pass 1 the max, pass 2 ``e = exp(x - max)`` written into the output
row while summing ``e`` in double, pass 3 rescales the row in place.  One exp
per element, one read of the logits and one write of the gradient (which may
be the logits themselves).  With ``softcap`` each thread gets one scratch row
of C doubles (allocated inside ``parallel()``) holding ``s * tanh(x / s)``.
"""

from cython.parallel cimport parallel, prange
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
    double fx_exp_any(double)
    const char *fx_select(int want_avx2)
    const char *fx_isa()
    int fx_cpu_has_avx2()
    int fx_openmp()
    int fx_thread_num()


ctypedef fused floating:
    float
    double

#: Elements per partial sum of the binary cross-entropy kernels (all backends).
BCE_BLOCK = 16384
cdef int64_t _BCE_BLOCK = 16384

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

fx_select(1)


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
    """The instruction set the kernels run on here: ``"avx2+fma"`` or ``"sse2"``."""
    return fx_isa().decode()


def _set_simd_isa(name):
    """Testing aid: force ``"baseline"`` or go back to ``"best"``; returns the ISA."""
    return fx_select(0 if name == "baseline" else 1).decode()


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
    return <int>(nthreads if nthreads < cap else cap)


cdef inline bint _absent(a):
    return a is None or a.size == 0


# ------------------------------------------------------------ softmax family


def logsumexp(const floating[:, ::1] X, out, int nthreads=1):
    """``out[n] = log(sum_c exp(X[n, c]))`` (out: float32 or float64)."""
    cdef Py_ssize_t R = X.shape[0], i
    cdef int64_t C = X.shape[1]
    cdef double[::1] o64
    cdef float[::1] o32
    cdef double *p64 = NULL
    cdef float *p32 = NULL
    cdef int nt = _threads(nthreads, R * C)
    if R == 0:
        return
    if out.dtype.itemsize == 8:
        o64 = out
        p64 = &o64[0]
    else:
        o32 = out
        p32 = &o32[0]
    cdef const floating *x = &X[0, 0]
    cdef double v
    with nogil:
        for i in prange(R, schedule='static', num_threads=nt):
            if floating is float:
                v = fx_lse_row_f32(x + i * C, C, x + (i + 1 if i + 1 < R else i) * C)
            else:
                v = fx_lse_row_f64(x + i * C, C, x + (i + 1 if i + 1 < R else i) * C)
            if p64 != NULL:
                p64[i] = v
            else:
                p32[i] = <float>v


def softmax(const floating[:, ::1] X, floating[:, ::1] out, int nthreads=1):
    """``out[n, c] = exp(X[n, c] - logsumexp(X[n]))``; out may be X."""
    cdef Py_ssize_t R = X.shape[0], i
    cdef int64_t C = X.shape[1]
    cdef int nt = _threads(nthreads, R * C)
    if R == 0 or C == 0:
        return
    cdef const floating *x = &X[0, 0]
    cdef floating *o = &out[0, 0]
    cdef bint st = _stream(R, C, sizeof(floating))
    with nogil:
        for i in prange(nt, schedule='static', chunksize=1, num_threads=nt):
            _softmax_chunk(x, o, C, _split(R, i, nt), _split(R, i + 1, nt),
                           st, 0)


def log_softmax(const floating[:, ::1] X, floating[:, ::1] out, int nthreads=1):
    """``out[n, c] = X[n, c] - logsumexp(X[n])``; out may be X."""
    cdef Py_ssize_t R = X.shape[0], i
    cdef int64_t C = X.shape[1]
    cdef int nt = _threads(nthreads, R * C)
    if R == 0 or C == 0:
        return
    cdef const floating *x = &X[0, 0]
    cdef floating *o = &out[0, 0]
    cdef bint st = _stream(R, C, sizeof(floating))
    with nogil:
        for i in prange(nt, schedule='static', chunksize=1, num_threads=nt):
            _softmax_chunk(x, o, C, _split(R, i, nt), _split(R, i + 1, nt),
                           st, 1)


# ------------------------------------------------ cross-entropy, int targets


cdef inline int64_t _split(int64_t R, int64_t k, int nt) noexcept nogil:
    """Row where thread chunk ``k`` of ``nt`` starts (a multiple of 8)."""
    if k >= nt:
        return R
    return (R * k // nt) // 8 * 8


cdef inline bint _stream(int64_t R, int64_t C, size_t item) noexcept nogil:
    """Stream (non-temporal stores) an R x C output: far larger than the
    caches, rows long enough for a scratch row to pay off."""
    return C >= 64 and R * C * <int64_t>item >= _STREAM_BYTES


cdef int _ce_chunk(const fx_ce_args *A, const floating *x, const int64_t *t,
                   int64_t ign, const double *gp, double gscalar, double *lp,
                   floating *g, int64_t r0, int64_t r1,
                   bint stream) noexcept nogil:
    """Rows [r0, r1) on one thread; 1 if the softcap scratch row failed."""
    cdef double *scratch = NULL
    cdef floating *gs = NULL
    cdef int bad = 0
    if A.softcap != 0.0:
        scratch = <double *>malloc(A.C * sizeof(double))
        bad = scratch == NULL
    if stream and g != NULL:
        gs = <floating *>malloc(A.C * sizeof(floating))
    if floating is float:
        fx_ce_rows_f32(A, x, t, ign, gp, gscalar, lp, g, r0, r1, scratch, gs)
    else:
        fx_ce_rows_f64(A, x, t, ign, gp, gscalar, lp, g, r0, r1, scratch, gs)
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


cdef int _ce_int(const floating[:, ::1] X, const int64_t[::1] target,
                 weight, int64_t ignore_index, double eps, double z,
                 double softcap, double ce_scale, double z_scale,
                 double gscalar, gout, loss_out, floating *g,
                 int nthreads) except -1:
    cdef Py_ssize_t R = X.shape[0], i
    cdef int64_t C = X.shape[1]
    cdef fx_ce_args A
    cdef const floating[::1] wv
    cdef const double[::1] gv
    cdef double[::1] lv
    cdef const double *gp = NULL
    cdef double *lp = NULL
    cdef const floating *x
    cdef const int64_t *t = NULL
    cdef double *scratch = NULL
    cdef int failed = 0
    cdef int64_t c
    cdef Py_ssize_t k
    cdef int nt = _threads(nthreads, R * C)
    if R == 0 or C == 0:
        return 0
    A.C = C
    A.w = NULL
    A.wsum = <double>C
    A.eps = eps
    A.z = z
    A.softcap = softcap
    A.ce_scale = ce_scale
    A.z_scale = z_scale
    if not _absent(weight):
        wv = weight
        A.w = &wv[0]
        A.wsum = 0.0
        for c in range(C):
            A.wsum += wv[c]
    if not _absent(gout):
        gv = gout
        gp = &gv[0]
    if not _absent(loss_out):
        lv = loss_out
        lp = &lv[0]
    x = &X[0, 0]
    t = &target[0]
    with nogil:
        for k in prange(nt, schedule='static', chunksize=1, num_threads=nt):
            failed += _ce_chunk(&A, x, t, ignore_index, gp, gscalar, lp, g,
                                _split(R, k, nt), _split(R, k + 1, nt),
                                _stream(R, C, sizeof(floating)))
    if failed:
        raise MemoryError("fastxent: no memory for the softcap scratch rows")
    return 0


def ce_loss(const floating[:, ::1] X, const int64_t[::1] target, weight,
            int64_t ignore_index, double eps, double z, double softcap,
            double ce_scale, double z_scale, loss_out, int nthreads=1):
    """Per-row cross-entropy with integer targets (see the module docstring)."""
    _ce_int(X, target, weight, ignore_index, eps, z, softcap, ce_scale,
            z_scale, 0.0, None, loss_out, <floating *>NULL, nthreads)


def ce_loss_grad(const floating[:, ::1] X, const int64_t[::1] target, weight,
                 int64_t ignore_index, double eps, double z, double softcap,
                 double ce_scale, double z_scale, double gscalar, gout,
                 loss_out, floating[:, ::1] grad_out, int nthreads=1):
    """Per-row cross-entropy with integer targets and its gradient
    (``grad_out`` may be ``X``)."""
    cdef floating *g = NULL
    if grad_out.shape[0] > 0 and grad_out.shape[1] > 0:
        g = &grad_out[0, 0]
    _ce_int(X, target, weight, ignore_index, eps, z, softcap, ce_scale,
            z_scale, gscalar, gout, loss_out, g, nthreads)


# ----------------------------------------------- cross-entropy, soft targets


cdef int _ce_soft(const floating[:, ::1] X, const floating[:, ::1] P,
                  weight, double eps, double z, double softcap,
                  double ce_scale, double z_scale, double gscalar, gout,
                  loss_out, floating *g, int nthreads) except -1:
    cdef Py_ssize_t R = X.shape[0], i
    cdef int64_t C = X.shape[1]
    cdef fx_ce_args A
    cdef const floating[::1] wv
    cdef const double[::1] gv
    cdef double[::1] lv
    cdef const double *gp = NULL
    cdef double *lp = NULL
    cdef const floating *x
    cdef const floating *p
    cdef double *scratch = NULL
    cdef int failed = 0
    cdef int *pfailed = &failed
    cdef double loss, gn
    cdef int nt = _threads(nthreads, R * C)
    if R == 0 or C == 0:
        return 0
    A.C = C
    A.w = NULL
    A.wsum = <double>C
    A.eps = eps
    A.z = z
    A.softcap = softcap
    A.ce_scale = ce_scale
    A.z_scale = z_scale
    if not _absent(weight):
        wv = weight
        A.w = &wv[0]
    if not _absent(gout):
        gv = gout
        gp = &gv[0]
    if not _absent(loss_out):
        lv = loss_out
        lp = &lv[0]
    x = &X[0, 0]
    p = &P[0, 0]
    with nogil, parallel(num_threads=nt):
        scratch = NULL
        if softcap != 0.0:
            scratch = <double *>malloc(C * sizeof(double))
            if scratch == NULL:
                pfailed[0] = 1
        for i in prange(R, schedule='static'):
            if softcap != 0.0 and scratch == NULL:
                loss = 0.0
            else:
                gn = gp[i] if gp != NULL else gscalar
                if floating is float:
                    loss = fx_soft_row_f32(&A, x + i * C, p + i * C, gn,
                                           g + i * C if g != NULL else NULL,
                                           scratch)
                else:
                    loss = fx_soft_row_f64(&A, x + i * C, p + i * C, gn,
                                           g + i * C if g != NULL else NULL,
                                           scratch)
            if lp != NULL:
                lp[i] = loss
        free(scratch)
    if failed:
        raise MemoryError("fastxent: no memory for the softcap scratch rows")
    return 0


def ce_soft_loss(const floating[:, ::1] X, const floating[:, ::1] P, weight,
                 double eps, double z, double softcap, double ce_scale,
                 double z_scale, loss_out, int nthreads=1):
    """Per-row cross-entropy with probability targets."""
    _ce_soft(X, P, weight, eps, z, softcap, ce_scale, z_scale, 0.0, None,
             loss_out, <floating *>NULL, nthreads)


def ce_soft_loss_grad(const floating[:, ::1] X, const floating[:, ::1] P,
                      weight, double eps, double z, double softcap,
                      double ce_scale, double z_scale, double gscalar, gout,
                      loss_out, floating[:, ::1] grad_out, int nthreads=1):
    """Per-row cross-entropy with probability targets and its gradient."""
    cdef floating *g = NULL
    if grad_out.shape[0] > 0 and grad_out.shape[1] > 0:
        g = &grad_out[0, 0]
    _ce_soft(X, P, weight, eps, z, softcap, ce_scale, z_scale, gscalar, gout,
             loss_out, g, nthreads)


# ------------------------------------------------------ binary cross-entropy


cdef int _bce(bint logits, const floating[::1] A, const floating[::1] Y, W,
              PW, double scale, double gscalar, gout, loss_out, partial,
              floating *g, int nthreads) except -1:
    """Shared driver: one prange iteration per BCE_BLOCK elements."""
    cdef int64_t n = A.shape[0], L = 0, nb, i0, m
    cdef Py_ssize_t b
    cdef const floating[::1] wv
    cdef const floating[::1] pwv
    cdef const double[::1] gv
    cdef floating[::1] lv
    cdef double[::1] sv
    cdef const floating *wp = NULL
    cdef const floating *pwp = NULL
    cdef const double *gp = NULL
    cdef floating *lp = NULL
    cdef double *sp = NULL
    cdef const floating *a
    cdef const floating *y
    cdef double s
    cdef int nt = _threads(nthreads, n)
    # non-temporal gradient stores when the gradient is far larger than L2
    cdef int stream = n * <int64_t>sizeof(floating) >= _STREAM_BYTES
    if n == 0:
        return 0
    if not _absent(W):
        wv = W
        wp = &wv[0]
    if logits and not _absent(PW):
        pwv = PW
        pwp = &pwv[0]
        L = pwv.shape[0]
    if not _absent(gout):
        gv = gout
        gp = &gv[0]
    if not _absent(loss_out):
        lv = loss_out
        lp = &lv[0]
    if not _absent(partial):
        sv = partial
        sp = &sv[0]
    a = &A[0]
    y = &Y[0]
    nb = (n + _BCE_BLOCK - 1) // _BCE_BLOCK
    if nt > nb:
        nt = <int>nb
    with nogil:
        for b in prange(nb, schedule='static', num_threads=nt):
            i0 = b * _BCE_BLOCK
            m = n - i0
            if m > _BCE_BLOCK:
                m = _BCE_BLOCK
            if floating is float:
                if logits:
                    s = fx_bcel_block_f32(
                        a + i0, y + i0, wp + i0 if wp != NULL else NULL, pwp,
                        L, i0, scale, gp + i0 if gp != NULL else NULL,
                        gscalar, lp + i0 if lp != NULL else NULL,
                        g + i0 if g != NULL else NULL, m, stream)
                else:
                    s = fx_bce_block_f32(
                        a + i0, y + i0, wp + i0 if wp != NULL else NULL,
                        scale, gp + i0 if gp != NULL else NULL, gscalar,
                        lp + i0 if lp != NULL else NULL,
                        g + i0 if g != NULL else NULL, m)
            else:
                if logits:
                    s = fx_bcel_block_f64(
                        a + i0, y + i0, wp + i0 if wp != NULL else NULL, pwp,
                        L, i0, scale, gp + i0 if gp != NULL else NULL,
                        gscalar, lp + i0 if lp != NULL else NULL,
                        g + i0 if g != NULL else NULL, m, stream)
                else:
                    s = fx_bce_block_f64(
                        a + i0, y + i0, wp + i0 if wp != NULL else NULL,
                        scale, gp + i0 if gp != NULL else NULL, gscalar,
                        lp + i0 if lp != NULL else NULL,
                        g + i0 if g != NULL else NULL, m)
            if sp != NULL:
                sp[b] = s
    return 0


def bce_loss(const floating[::1] P, const floating[::1] Y, W, double scale,
             loss_out, partial, int nthreads=1):
    """``l = -w (y max(log p, -100) + (1-y) max(log(1-p), -100))``."""
    _bce(False, P, Y, W, None, scale, 0.0, None, loss_out, partial,
         <floating *>NULL, nthreads)


def bce_loss_grad(const floating[::1] P, const floating[::1] Y, W,
                  double scale, double gscalar, gout, loss_out, partial,
                  floating[::1] grad_out, int nthreads=1):
    """Binary cross-entropy on probabilities and its (PyTorch) gradient."""
    cdef floating *g = NULL
    if grad_out.shape[0] > 0:
        g = &grad_out[0]
    _bce(False, P, Y, W, None, scale, gscalar, gout, loss_out, partial, g,
         nthreads)


def bce_logits_loss(const floating[::1] X, const floating[::1] Y, W, PW,
                    double scale, loss_out, partial, int nthreads=1):
    """Binary cross-entropy on logits, ``pos_weight`` along the last axis."""
    _bce(True, X, Y, W, PW, scale, 0.0, None, loss_out, partial,
         <floating *>NULL, nthreads)


def bce_logits_loss_grad(const floating[::1] X, const floating[::1] Y, W, PW,
                         double scale, double gscalar, gout, loss_out,
                         partial, floating[::1] grad_out, int nthreads=1):
    """Binary cross-entropy on logits and its gradient."""
    cdef floating *g = NULL
    if grad_out.shape[0] > 0:
        g = &grad_out[0]
    _bce(True, X, Y, W, PW, scale, gscalar, gout, loss_out, partial, g,
         nthreads)
