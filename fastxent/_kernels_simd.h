/* fastxent: C side of the Cython kernels (fastxent/_kernels.pyx).
 *
 * The per-row math lives here as plain C so that gcc vectorises it
 * (`#pragma omp simd` reductions, an inlined polynomial exp).  It is compiled
 * three times from the same templates (_kernels_isa.h -> _kernels_rows.h): a
 * baseline build (x86-64: SSE2) and, on x86 with GCC/Clang, an
 * `__attribute__((target("avx2,fma")))` build and an AVX-512 (F, VL, DQ, BW)
 * one, which adds 16-row few-class blocks (_kernels_avx512.h) and a vscalef
 * in the vector exps: the same float32 results as the AVX2 build bit for bit
 * (float64 rows' compiler-vectorised sums may differ in the last bits).
 * fx_select() picks one at import with __builtin_cpu_supports (which also
 * asks the OS, by xgetbv, whether it saves the vector state) and fills the
 * function-pointer table fx_k; the names the .pyx calls (fx_ce_row_f32, ...)
 * are macros over that table.  No -march=native: the extension runs on any
 * x86-64 and uses AVX2+FMA or AVX-512 where the CPU (and OS) support them.
 */
#ifndef FASTXENT_KERNELS_SIMD_H
#define FASTXENT_KERNELS_SIMD_H

#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define FX_HAVE_AVX2_BUILD 1
#else
#define FX_HAVE_AVX2_BUILD 0
#endif
#if FX_HAVE_AVX2_BUILD
#include <immintrin.h>
#endif

/* arguments shared by the rows of one cross-entropy call */
typedef struct {
    int64_t C;
    const void *w;  /* class weights (row dtype), NULL = all ones */
    double wsum;    /* sum of the weights (C when w is NULL) */
    double eps, z, softcap, ce_scale, z_scale;
} fx_ce_args;

/* order this thread's non-temporal stores before what follows */
static inline void fx_sfence(void)
{
#if FX_HAVE_AVX2_BUILD
    _mm_sfence();
#endif
}

/* ---- baseline build */
#define FX_ISA base
#define FX_ISA_IS_AVX2 0
#define FX_ISA_IS_AVX512 0
#define FX_TARGET
#define FX_FMAF(a, b, c) ((a) * (b) + (c))
#define FX_FMA(a, b, c) ((a) * (b) + (c))
#define FX_STREAM_ALIGN 16
#define FX_STREAM_W 4
#define FX_STREAM_STORE(d, s) _mm_stream_ps((d), _mm_loadu_ps(s))
#define FX_STREAM_STORE_PD(d, s) _mm_stream_pd((d), _mm_loadu_pd(s))
#include "_kernels_isa.h"
#undef FX_STREAM_ALIGN
#undef FX_STREAM_W
#undef FX_STREAM_STORE
#undef FX_STREAM_STORE_PD
#undef FX_ISA
#undef FX_ISA_IS_AVX2
#undef FX_ISA_IS_AVX512
#undef FX_TARGET
#undef FX_FMAF
#undef FX_FMA

/* ---- AVX2 + FMA build, then the AVX-512 build (the AVX2 code EVEX encoded,
 * and the 16-row blocks); what differs between the two is the ISA macros */
#if FX_HAVE_AVX2_BUILD
#define FX_FMAF(a, b, c) __builtin_fmaf((a), (b), (c))
#define FX_FMA(a, b, c) __builtin_fma((a), (b), (c))
#define FX_STREAM_ALIGN 32
#define FX_STREAM_W 8
#define FX_STREAM_STORE(d, s) _mm256_stream_ps((d), _mm256_loadu_ps(s))
#define FX_STREAM_STORE_PD(d, s) _mm256_stream_pd((d), _mm256_loadu_pd(s))

#define FX_ISA avx2
#define FX_ISA_IS_AVX2 1
#define FX_ISA_IS_AVX512 0
#define FX_TARGET __attribute__((target("avx2,fma")))
#include "_kernels_isa.h"
#undef FX_ISA
#undef FX_ISA_IS_AVX2
#undef FX_ISA_IS_AVX512
#undef FX_TARGET

#define FX_ISA avx512
#define FX_ISA_IS_AVX2 1
#define FX_ISA_IS_AVX512 1
#define FX_TARGET __attribute__((target("avx2,fma,avx512f,avx512vl,avx512dq,avx512bw")))
#include "_kernels_isa.h"
#undef FX_ISA
#undef FX_ISA_IS_AVX2
#undef FX_ISA_IS_AVX512
#undef FX_TARGET

#undef FX_STREAM_ALIGN
#undef FX_STREAM_W
#undef FX_STREAM_STORE
#undef FX_STREAM_STORE_PD
#undef FX_FMAF
#undef FX_FMA
#endif

/* ---- run-time dispatch */
#define FX_TABLE(T, TS)                                                      \
    void (*ce_rows_##TS)(const fx_ce_args *, const T *, const int64_t *,     \
                         int64_t, const double *, double, double *, T *,     \
                         int64_t, int64_t, double *, T *);                   \
    void (*softmax_rows_##TS)(const T *, T *, int64_t, int64_t, int64_t, T *); \
    void (*log_softmax_rows_##TS)(const T *, T *, int64_t, int64_t, int64_t,  \
                                  T *);                                      \
    double (*soft_row_##TS)(const fx_ce_args *, const T *, const T *,        \
                            double, T *, double *);                          \
    double (*lse_row_##TS)(const T *, int64_t, const T *);                   \
    double (*bce_block_##TS)(const T *, const T *, const T *, double,        \
                             const double *, double, T *, T *, int64_t);     \
    double (*bcel_block_##TS)(const T *, const T *, const T *, const T *,    \
                              int64_t, int64_t, double, const double *,      \
                              double, T *, T *, int64_t, int);               \
    double (*sumexp_##TS)(const T *, T, T *, int64_t, int64_t, const T *,   \
                          double *);                                         \
    float (*expf_##TS)(float);                                               \
    double (*exp_##TS)(double);

typedef struct {
    FX_TABLE(float, f32)
    FX_TABLE(double, f64)
    void (*group_sums)(const double *, int64_t, double *);
    const char *isa;
} fx_table;

/* out-of-line exp for the accuracy tests (expf/exp are always_inline) */
#define FX_EXP_WRAPPERS(ISA)                                                 \
    static float fx_expf_call_##ISA(float x) { return fx_expf_##ISA(x); }    \
    static double fx_exp_call_##ISA(double x) { return fx_exp_##ISA(x); }
FX_EXP_WRAPPERS(base)
#if FX_HAVE_AVX2_BUILD
__attribute__((target("avx2,fma"))) static float fx_expf_call_avx2(float x)
{
    return fx_expf_avx2(x);
}
__attribute__((target("avx2,fma"))) static double fx_exp_call_avx2(double x)
{
    return fx_exp_avx2(x);
}
FX_Z_TARGET static float fx_expf_call_avx512(float x) { return fx_expf_avx512(x); }
FX_Z_TARGET static double fx_exp_call_avx512(double x) { return fx_exp_avx512(x); }
#endif

#define FX_FILL(tab, TS, ISA)                                                \
    (tab).ce_rows_##TS = fx_ce_rows_##TS##_##ISA;                            \
    (tab).softmax_rows_##TS = fx_softmax_rows_##TS##_##ISA;                  \
    (tab).log_softmax_rows_##TS = fx_log_softmax_rows_##TS##_##ISA;          \
    (tab).soft_row_##TS = fx_soft_row_##TS##_##ISA;                          \
    (tab).lse_row_##TS = fx_lse_row_##TS##_##ISA;                            \
    (tab).bce_block_##TS = fx_bce_block_##TS##_##ISA;                        \
    (tab).bcel_block_##TS = FX_BCEL_##TS(ISA);                               \
    (tab).sumexp_##TS = fx_sumexp_##TS##_##ISA;                              \
    (tab).expf_##TS = fx_expf_call_##ISA;                                    \
    (tab).exp_##TS = fx_exp_call_##ISA;

#define FX_BCEL_f32(ISA) fx_bcel_block_f32v_##ISA
#define FX_BCEL_f64(ISA) fx_bcel_block_f64_##ISA

static fx_table fx_k;

#if defined(__x86_64__)
#define FX_BASE_NAME "sse2"
#elif defined(__aarch64__)
#define FX_BASE_NAME "neon"
#else
#define FX_BASE_NAME "generic"
#endif

static int fx_cpu_has_avx2(void)
{
#if FX_HAVE_AVX2_BUILD
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

static int fx_cpu_has_avx512(void)
{
#if FX_HAVE_AVX2_BUILD
    __builtin_cpu_init();
    return fx_cpu_has_avx2() && __builtin_cpu_supports("avx512f")
           && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")
           && __builtin_cpu_supports("avx512bw");
#else
    return 0;
#endif
}

/* Select the kernels: level 0 baseline, 1 AVX2+FMA, 2 AVX-512, each only
 * if the CPU has it (else the next one down).  Returns the ISA name in use. */
static const char *fx_select(int level)
{
#if FX_HAVE_AVX2_BUILD
    if (level >= 2 && fx_cpu_has_avx512()) {
        FX_FILL(fx_k, f32, avx512)
        FX_FILL(fx_k, f64, avx512)
        fx_k.group_sums = fx_group_sums_avx512;
        fx_k.isa = "avx512";
        return fx_k.isa;
    }
    if (level >= 1 && fx_cpu_has_avx2()) {
        FX_FILL(fx_k, f32, avx2)
        FX_FILL(fx_k, f64, avx2)
        fx_k.group_sums = fx_group_sums_avx2;
        fx_k.isa = "avx2+fma";
        return fx_k.isa;
    }
#endif
    (void)level;
    FX_FILL(fx_k, f32, base)
    FX_FILL(fx_k, f64, base)
    fx_k.group_sums = fx_group_sums_base;
    fx_k.isa = FX_BASE_NAME;
    return fx_k.isa;
}

static const char *fx_isa(void) { return fx_k.isa; }

#define fx_ce_rows_f32 (fx_k.ce_rows_f32)
#define fx_ce_rows_f64 (fx_k.ce_rows_f64)
#define fx_softmax_rows_f32 (fx_k.softmax_rows_f32)
#define fx_softmax_rows_f64 (fx_k.softmax_rows_f64)
#define fx_log_softmax_rows_f32 (fx_k.log_softmax_rows_f32)
#define fx_log_softmax_rows_f64 (fx_k.log_softmax_rows_f64)
#define fx_soft_row_f32 (fx_k.soft_row_f32)
#define fx_soft_row_f64 (fx_k.soft_row_f64)
#define fx_lse_row_f32 (fx_k.lse_row_f32)
#define fx_lse_row_f64 (fx_k.lse_row_f64)
#define fx_bce_block_f32 (fx_k.bce_block_f32)
#define fx_bce_block_f64 (fx_k.bce_block_f64)
#define fx_bcel_block_f32 (fx_k.bcel_block_f32)
#define fx_bcel_block_f64 (fx_k.bcel_block_f64)
#define fx_sumexp_f32 (fx_k.sumexp_f32)
#define fx_sumexp_f64 (fx_k.sumexp_f64)
#define fx_group_sums (fx_k.group_sums)
#define fx_expf_any (fx_k.expf_f32)
#define fx_exp_any (fx_k.exp_f64)

/* ---- OpenMP introspection */
static int fx_openmp(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

static int fx_thread_num(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* ---- parallel pieces ("affinity" scheduling)
 *
 * A parallel call cuts its rows into FX_PIECES pieces per thread
 * (fx_piece_start).  Thread k takes its own pieces k * FX_PIECES, ... in
 * order (the rows a static split would give it, so a repeated call finds its
 * rows in the same core's caches), and when those are done it takes what is
 * left of the others', each from the front: a thread slowed by another
 * process on its core (a shared machine) or by a slower stretch of rows no
 * longer makes the whole call wait for its share.  One counter per thread, each on its own cache
 * line; fx_piece returns the next piece for thread k, or -1 when none is
 * left.  Every piece is taken exactly once (an atomic fetch-and-add per
 * take; a counter past its end only grows), so the results do not depend on
 * who took what: the row kernels and the partial sums' groups are per row.
 * Relaxed order suffices: the pieces are disjoint, and the parallel region's
 * closing barrier orders their results before the caller reads them. */
#define FX_PIECES 8
#define FX_MAX_THREADS 256
typedef struct {
    int64_t next;
    char pad[64 - sizeof(int64_t)];
} fx_slot;

static inline void fx_pieces_init(fx_slot *s, int nt)
{
    for (int k = 0; k < nt; k++)
        s[k].next = (int64_t)k * FX_PIECES;
}

/* Where piece c of n units (rows, or blocks of binary cross-entropy) starts,
 * align dividing every start but n (the partial sums' groups of 64 rows):
 * thread k's own units are those of an even split, [a, b), and its
 * FX_PIECES pieces halve in size, 1/2, 1/4, ..., 1/128 and 1/128 of them,
 * so that the pieces still left when a thread runs out of its own are
 * small: with even pieces (1/16 of the work each on two threads) the last
 * piece one thread takes could leave the other idle for that long */
static inline int64_t fx_piece_start(int64_t n, int64_t c, int nt, int64_t align)
{
    const int64_t k = c / FX_PIECES, j = c % FX_PIECES;
    if (k >= nt)
        return n;
    const int64_t a = n * k / nt / align * align;
    const int64_t b = k + 1 >= nt ? n : n * (k + 1) / nt / align * align;
    const int64_t m = b - a;
    return a + (m - (m >> j)) / align * align;
}

static inline int64_t fx_piece(fx_slot *s, int nt, int k)
{
    for (int j = 0; j < nt; j++) {
        const int o = k + j < nt ? k + j : k + j - nt;
        const int64_t c = __atomic_fetch_add(&s[o].next, 1, __ATOMIC_RELAXED);
        if (c < (int64_t)(o + 1) * FX_PIECES)
            return c;
    }
    return -1;
}

#endif /* FASTXENT_KERNELS_SIMD_H */
