/* fastxent: vectorisable exp/tanh and the per-row kernels, for ONE instruction
 * set.  Template header: _kernels_simd.h includes it once per ISA with
 *
 *   FX_ISA      name suffix (base, avx2)
 *   FX_TARGET   function attribute selecting the ISA (empty for the baseline)
 *   FX_FMAF/FX_FMA(a, b, c)   a * b + c, fused where the ISA has FMA
 *
 * and it includes _kernels_rows.h once per dtype (float, double).  No include
 * guard on purpose.
 *
 * exp: Cephes-style.  n = round(x / ln2) by the 1.5 * 2**k "magic number"
 * trick (no float->int conversion, so NaN never reaches an undefined cast),
 * Cody-Waite reduction r = x - n ln2 with ln2 split into an exactly
 * representable high part and a correction, a polynomial for exp(r) on
 * |r| <= ln2/2, then 2**n built from exponent bits as 2**n1 * 2**n2 with
 * n1 = floor(n/2) so that gradual underflow (subnormal results) and overflow
 * to +inf are both exact.  The clamp of x keeps n in range; NaN passes the
 * clamp (comparisons are false) and poisons the polynomial, so NaN -> NaN,
 * -inf -> 0, +inf -> +inf.  Measured max error vs a correctly rounded
 * float64/mpmath-free reference: see the report in the commit log / README.
 */

#define FX_CAT3_(a, b, c) a##_##b##_##c
#define FX_CAT3(a, b, c) FX_CAT3_(a, b, c)
#define FX_CAT2_(a, b) a##_##b
#define FX_CAT2(a, b) FX_CAT2_(a, b)
#define FX_I(name) FX_CAT2(name, FX_ISA)

/* float32 exp: Cephes expf coefficients (degree-5 polynomial in r, times r^2,
 * plus 1 + r), about 1 ULP on the normal range. */
static inline __attribute__((always_inline)) FX_TARGET float
FX_I(fx_expf)(float x)
{
    float xc = x < -104.0f ? -104.0f : x;   /* exp(-104) < 2**-150: rounds to 0 */
    xc = xc > 89.5f ? 89.5f : xc;           /* exp(89.5) > FLT_MAX: inf */
    const float magic = 12582912.0f;         /* 1.5 * 2**23 */
    float t = FX_FMAF(xc, 1.44269504088896341f, magic);
    float n = t - magic;
    uint32_t ti;
    memcpy(&ti, &t, sizeof ti);
    /* n + 256 in [106, 385]: positive, so a logical shift is floor(n/2) */
    uint32_t u = ti - 0x4B400000u + 256u;
    uint32_t n1b = (u >> 1) - 128u + 127u;     /* biased exponent of 2**n1 */
    uint32_t n2b = u - (u >> 1) - 128u + 127u; /* biased exponent of 2**n2 */
    float r = FX_FMAF(n, -0.693359375f, xc);  /* exact: 9-bit constant */
    r = FX_FMAF(n, 2.12194440e-4f, r);
    float p = 1.9875691500E-4f;
    p = FX_FMAF(p, r, 1.3981999507E-3f);
    p = FX_FMAF(p, r, 8.3334519073E-3f);
    p = FX_FMAF(p, r, 4.1665795894E-2f);
    p = FX_FMAF(p, r, 1.6666665459E-1f);
    p = FX_FMAF(p, r, 5.0000001201E-1f);
    p = FX_FMAF(p, r * r, r);
    p = p + 1.0f;
    uint32_t b1 = n1b << 23, b2 = n2b << 23;
    float s1, s2;
    memcpy(&s1, &b1, sizeof s1);
    memcpy(&s2, &b2, sizeof s2);
    return (p * s1) * s2;
}

/* float64 exp: Cephes' split of ln2, exp(r) = 1 + r + r**2 q(r) on |r| <=
 * 0.347, q of degree 9 near-minimax (tools/fit_exp64.py: 1.6e-17 relative
 * with the rounded coefficients, a quarter of half an ULP; the degree-13
 * Taylor polynomial it replaces had two more multiply-adds per element). */
#define FX_E64_C2 0.50000000000000011
#define FX_E64_C3 0.16666666666666669
#define FX_E64_C4 0.041666666666624129
#define FX_E64_C5 0.0083333333333300615
#define FX_E64_C6 0.0013888888917213717
#define FX_E64_C7 0.00019841269863053618
#define FX_E64_C8 2.4801521295954376e-05
#define FX_E64_C9 2.7557268459997064e-06
#define FX_E64_C10 2.7620088445409746e-07
#define FX_E64_C11 2.510038549551032e-08
static inline __attribute__((always_inline)) FX_TARGET double
FX_I(fx_exp_poly)(double r) /* exp(r), |r| <= 0.347 */
{
    double p = FX_E64_C11;
    p = FX_FMA(p, r, FX_E64_C10);
    p = FX_FMA(p, r, FX_E64_C9);
    p = FX_FMA(p, r, FX_E64_C8);
    p = FX_FMA(p, r, FX_E64_C7);
    p = FX_FMA(p, r, FX_E64_C6);
    p = FX_FMA(p, r, FX_E64_C5);
    p = FX_FMA(p, r, FX_E64_C4);
    p = FX_FMA(p, r, FX_E64_C3);
    p = FX_FMA(p, r, FX_E64_C2);
    p = FX_FMA(p, r * r, r);
    return p + 1.0;
}

static inline __attribute__((always_inline)) FX_TARGET double
FX_I(fx_exp)(double x)
{
    double xc = x < -746.0 ? -746.0 : x;   /* exp(-746) < 2**-1075: 0 */
    xc = xc > 710.0 ? 710.0 : xc;          /* exp(710) > DBL_MAX: inf */
    const double magic = 6755399441055744.0; /* 1.5 * 2**52 */
    double t = FX_FMA(xc, 1.4426950408889634074, magic);
    double n = t - magic;
    uint64_t ti;
    memcpy(&ti, &t, sizeof ti);
    uint64_t u = ti - 0x4338000000000000ull + 2048u; /* n + 2048 > 0 */
    uint64_t n1b = (u >> 1) - 1024u + 1023u;
    uint64_t n2b = u - (u >> 1) - 1024u + 1023u;
    double r = FX_FMA(n, -6.93145751953125E-1, xc);  /* exact high part */
    r = FX_FMA(n, -1.42860682030941723212E-6, r);
    double p = FX_I(fx_exp_poly)(r);
    uint64_t b1 = n1b << 52, b2 = n2b << 52;
    double s1, s2;
    memcpy(&s1, &b1, sizeof s1);
    memcpy(&s2, &b2, sizeof s2);
    return (p * s1) * s2;
}

/* exp for arguments known to be <= 0, -inf or NaN (x - rowmax with the +inf
 * row handled by the caller): the hot exp of every row kernel.
 *
 * Cheaper than fx_expf, same accuracy: max 1.02 ULP over every float32 in
 * [-104, 0] (checked once exhaustively against float64 exp; tests/test_exp.py
 * checks a sample of 1.1e7 on both instruction sets), subnormal results within
 * 0.75 of 2**-149.  About 0.5 ns per element on 8 lanes here vs 0.8 before:
 * - one clamp (x >= -104; gcc makes it one vmaxps, NaN kept);
 * - 2**n in one step: n + 64 is a normal exponent for every n in [-150, 0],
 *   so s = 2**(n + 64) comes from shifting t's bits left by 23: the magic
 *   number 1.5 * 2**23 + 191 leaves n + 191 = (n + 64) + 127, between 41 and
 *   191, in t's low mantissa bits, which the shift moves into the exponent
 *   field (the high bits, and the 1.5 * 2**23, drop out; no integer add of
 *   the bias, and one constant fewer in the vector loops' registers); then
 *   e = ((1 + u) s) 2**-64 with u = exp(r) - 1 from the polynomial, and
 *   (1 + u) s as one multiply-add u s + s (s a power of two in the normal
 *   range: the same value as rounding 1 + u first, one operation and one
 *   constant fewer).  n itself is t - magic, as with 1.5 * 2**23 (the
 *   rounding to an integer is the same: x log2e is never a tie here).
 *   The rounding that matters is the final multiply, which also rounds
 *   subnormal results correctly (gradual underflow, as libm).  The shift
 *   with this magic number and the multiply-add give the same bits as the
 *   earlier bias add and 1 + u (every float in [-104, -0], vector and
 *   scalar, against the previous build); their time is in
 *   fx_sumexp_span_f32's measurement;
 * - a degree-6 polynomial with 1 + r fixed, near-minimax in relative error
 *   on |r| <= ln2/2 (3.1e-9; coefficients from tools/fit_expf.py), by
 *   Estrin's scheme. */
#define FX_E32_MAGIC_LE0 12583103.0f /* 1.5 * 2**23 + 127 + 64 */
#define FX_E32_C2 0.4999999403953552f
#define FX_E32_C3 0.1666652113199234f
#define FX_E32_C4 0.04166838899254799f
#define FX_E32_C5 0.008368710055947304f
#define FX_E32_C6 0.001381461275741458f
static inline __attribute__((always_inline)) FX_TARGET float
FX_I(fx_expf_le0)(float x)
{
    float xc = -104.0f > x ? -104.0f : x;  /* vmaxps(-104, x): NaN -> x */
    const float magic = FX_E32_MAGIC_LE0;
    float t = FX_FMAF(xc, 1.44269504088896341f, magic);
    float n = t - magic;
    uint32_t ti;
    memcpy(&ti, &t, sizeof ti);
    uint32_t sb = ti << 23; /* 2**(n + 64): the exponent field n + 191 */
    float r = FX_FMAF(n, -0.693359375f, xc);  /* exact: 9-bit constant */
    r = FX_FMAF(n, 2.12194440e-4f, r);
    const float r2 = r * r;
    const float a = FX_FMAF(FX_E32_C3, r, FX_E32_C2);
    float b = FX_FMAF(FX_E32_C5, r, FX_E32_C4);
    b = FX_FMAF(FX_E32_C6, r2, b);
    const float q = FX_FMAF(b, r2, a);
    const float u = FX_FMAF(q, r2, r); /* exp(r) - 1 */
    float s;
    memcpy(&s, &sb, sizeof s);
    return FX_FMAF(u, s, s) * 5.42101086242752217e-20f; /* ((1 + u) s) 2**-64 */
}

/* float64, same scheme: n in [-1077, 0], s = 2**(n + 64) normal; Cephes'
 * split of ln2 and the polynomial of fx_exp (FX_E64_C2..C11) */
static inline __attribute__((always_inline)) FX_TARGET double
FX_I(fx_exp_le0)(double x)
{
    double xc = -746.0 > x ? -746.0 : x;
    const double magic = 6755399441055744.0;
    double t = FX_FMA(xc, 1.4426950408889634074, magic);
    double n = t - magic;
    uint64_t ti;
    memcpy(&ti, &t, sizeof ti);
    uint64_t sb = (ti << 52) + ((1023ull + 64ull) << 52);
    double r = FX_FMA(n, -6.93145751953125E-1, xc);
    r = FX_FMA(n, -1.42860682030941723212E-6, r);
    double p = FX_I(fx_exp_poly)(r);
    double s;
    memcpy(&s, &sb, sizeof s);
    return (p * s) * 5.42101086242752217e-20; /* 2**-64 */
}

/* float64 tanh = sign(u) (1 - 2 / (exp(2|u|) + 1)): absolute error ~1e-16,
 * which is what the softcap s * tanh(x / s) needs (its result is compared in
 * absolute terms against the row's lse); +-inf -> +-1, NaN -> NaN. */
static inline __attribute__((always_inline)) FX_TARGET double
FX_I(fx_tanh)(double u)
{
    double a = fabs(u);
    double e = FX_I(fx_exp)(2.0 * a);
    double t = 1.0 - 2.0 / (e + 1.0);
    return copysign(t, u);
}


#if FX_ISA_IS_AVX2
/* ---------------------------------- few classes: 8 rows at once (AVX2)
 *
 * Same math as fx_ce_row without label smoothing and softcap, for a block of
 * 8 rows: the 8 logs of S as one vector log (a scalar log per row costs more
 * than a 10-class row's exps, fx_ce_end8), the block's exps with full
 * vector lanes (class-major up to FX_CM_CMAX classes, staged above; see
 * fx_ce_run8_f32).  A block with an ignored row, an infinite row max, a
 * NaN or an inf gradient factor goes to the per-row code (nothing written
 * but losses, written again there). */
#define FX_SMALL_CMAX 64

#ifndef FX_SMALL_IDX_DEFINED /* once for all the ISA builds */
#define FX_SMALL_IDX_DEFINED
typedef struct {
    __m256i tail;                      /* lanes < C % 8 (all if C % 8 == 0) */
    __m256i vidx;                      /* r * C */
    int32_t tidx[FX_SMALL_CMAX][8];    /* flat 8k+j -> (c * 8 + r) */
    int32_t ridx[FX_SMALL_CMAX][8];    /* flat 8k+j -> r */
} fx_small_idx;
#endif

/* fx_expf_le0 on 8 lanes (the same operations, so the same results) */
static inline __attribute__((always_inline)) FX_TARGET __m256
FX_I(fx_v_expf_le0)(__m256 x)
{
    const __m256 xc = _mm256_max_ps(_mm256_set1_ps(-104.0f), x); /* NaN: x */
    const __m256 magic = _mm256_set1_ps(FX_E32_MAGIC_LE0);
    __m256 t = _mm256_fmadd_ps(xc, _mm256_set1_ps(1.44269504088896341f), magic);
    __m256 n = _mm256_sub_ps(t, magic);
#if !FX_ISA_IS_AVX512
    __m256 s = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(t), 23));
#endif
    __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(-0.693359375f), xc);
    r = _mm256_fmadd_ps(n, _mm256_set1_ps(2.12194440e-4f), r);
    const __m256 r2 = _mm256_mul_ps(r, r);
    const __m256 a = _mm256_fmadd_ps(_mm256_set1_ps(FX_E32_C3), r,
                                     _mm256_set1_ps(FX_E32_C2));
    __m256 b = _mm256_fmadd_ps(_mm256_set1_ps(FX_E32_C5), r,
                               _mm256_set1_ps(FX_E32_C4));
    b = _mm256_fmadd_ps(_mm256_set1_ps(FX_E32_C6), r2, b);
    const __m256 q = _mm256_fmadd_ps(b, r2, a);
    const __m256 u = _mm256_fmadd_ps(q, r2, r); /* exp(r) - 1 */
#if FX_ISA_IS_AVX512
    /* (1 + u) 2**n, rounded once: the same value */
    return _mm256_scalef_ps(_mm256_add_ps(u, _mm256_set1_ps(1.0f)), n);
#else
    return _mm256_mul_ps(_mm256_fmadd_ps(u, s, s), /* (1 + u) s, as fx_expf_le0 */
                         _mm256_set1_ps(5.42101086242752217e-20f));
#endif
}

#if FX_ISA_IS_AVX512
/* fx_v_expf_le0 on 16 lanes (the same operations, so the same results) */
static inline __attribute__((always_inline)) FX_TARGET __m512
fx_v16_expf_le0_avx512(__m512 x)
{
    const __m512 xc = _mm512_max_ps(_mm512_set1_ps(-104.0f), x); /* NaN: x */
    const __m512 magic = _mm512_set1_ps(FX_E32_MAGIC_LE0);
    const __m512 t = _mm512_fmadd_ps(xc, _mm512_set1_ps(1.44269504088896341f), magic);
    const __m512 n = _mm512_sub_ps(t, magic);
    __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(-0.693359375f), xc);
    r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), r);
    const __m512 r2 = _mm512_mul_ps(r, r);
    const __m512 a = _mm512_fmadd_ps(_mm512_set1_ps(FX_E32_C3), r, _mm512_set1_ps(FX_E32_C2));
    __m512 b = _mm512_fmadd_ps(_mm512_set1_ps(FX_E32_C5), r, _mm512_set1_ps(FX_E32_C4));
    b = _mm512_fmadd_ps(_mm512_set1_ps(FX_E32_C6), r2, b);
    const __m512 q = _mm512_fmadd_ps(b, r2, a);
    __m512 p = _mm512_fmadd_ps(q, r2, r);
    p = _mm512_add_ps(p, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}
#endif

/* S = sum exp(x_i - sh) over [a, b), e stored to out when HO.  Blocks of
 * FX_SUM_BIG elements while that many are left, then of 32: each lane adds
 * the block's exps in float, in 4 accumulators (one per vector of 8 of each
 * 32; a 32-element block is the pair sum (e0 + e1) + (e2 + e3)), and the
 * block's sum goes to the float64 sum: per lane 8 float additions into an
 * accumulator, then the tree of 4 (relative error <= ~10 * 2**-24 of the
 * block sum; the Numba kernels sum blocks of 256 as well).  Before, the
 * pairs of every 32 were converted and added to the float64 sums, which gcc
 * 12 kept on the stack (28 instructions per 8 elements).  Measured with the
 * exp's two savings (fx_expf_le0: no bias add, 1 + u in the last
 * multiply-add) on Zen 3, 1 thread: two builds of these kernels linked into
 * one C harness, called in turn on each group of 8 rows (the machine's
 * speed drifts by 1.3x; alternating this finely cancels it), new / old time
 * in 4 runs: a 32000-float row in L2, sums alone 0.75-0.82, exps stored too
 * 0.85-0.88; (2048, 32000) from memory, row max then sums (logsumexp)
 * 0.82-0.86, log_softmax 0.78-0.86.  4 accumulators against 2 (a01 += e0 +
 * e1, ...: 2 fewer registers) in the same harness: sums alone 3-11% faster,
 * log_softmax 5-8% slower; kept 4.  Tails go through one vector at a time
 * and then scalars, exactly summed. */
#define FX_SUM_BIG 256
static inline __attribute__((always_inline)) FX_TARGET double
FX_I(fx_sumexp_span_f32)(const float *x, float sh, float *out, int64_t a,
                        int64_t b, const float *pf, const int HO)
{
    const __m256 vs = _mm256_set1_ps(sh);
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    int64_t i = a;
    while (b - i >= 32) {
        const int64_t end = i + (b - i >= FX_SUM_BIG ? FX_SUM_BIG : 32);
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (; i < end; i += 32) {
            _mm_prefetch((const char *)(pf + i), _MM_HINT_T0);
            _mm_prefetch((const char *)(pf + i + 16), _MM_HINT_T0);
#if FX_ISA_IS_AVX512
            /* 16 lanes per exp; the same sums in the same order as below */
            const __m512 vs16 = _mm512_set1_ps(sh);
            const __m512 e01 = fx_v16_expf_le0_avx512(_mm512_sub_ps(_mm512_loadu_ps(x + i), vs16));
            const __m512 e23 = fx_v16_expf_le0_avx512(_mm512_sub_ps(_mm512_loadu_ps(x + i + 16), vs16));
            if (HO) { /* out may be x: every element is read before it is written */
                _mm512_storeu_ps(out + i, e01);
                _mm512_storeu_ps(out + i + 16, e23);
            }
            const __m256 e0 = _mm512_castps512_ps256(e01), e1 = _mm512_extractf32x8_ps(e01, 1);
            const __m256 e2 = _mm512_castps512_ps256(e23), e3 = _mm512_extractf32x8_ps(e23, 1);
#else
            const __m256 e0 = FX_I(fx_v_expf_le0)(_mm256_sub_ps(_mm256_loadu_ps(x + i), vs));
            const __m256 e1 = FX_I(fx_v_expf_le0)(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8), vs));
            const __m256 e2 = FX_I(fx_v_expf_le0)(_mm256_sub_ps(_mm256_loadu_ps(x + i + 16), vs));
            const __m256 e3 = FX_I(fx_v_expf_le0)(_mm256_sub_ps(_mm256_loadu_ps(x + i + 24), vs));
            if (HO) { /* out may be x: every element is read before it is written */
                _mm256_storeu_ps(out + i, e0);
                _mm256_storeu_ps(out + i + 8, e1);
                _mm256_storeu_ps(out + i + 16, e2);
                _mm256_storeu_ps(out + i + 24, e3);
            }
#endif
            a0 = _mm256_add_ps(a0, e0);
            a1 = _mm256_add_ps(a1, e1);
            a2 = _mm256_add_ps(a2, e2);
            a3 = _mm256_add_ps(a3, e3);
        }
        const __m256 bs = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
        s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(bs)));
        s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(bs, 1)));
    }
    for (; i + 8 <= b; i += 8) {
        __m256 e = FX_I(fx_v_expf_le0)(_mm256_sub_ps(_mm256_loadu_ps(x + i), vs));
        if (HO)
            _mm256_storeu_ps(out + i, e);
        s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
        s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
    }
    __m256d sv = _mm256_add_pd(s0, s1);
    __m128d h = _mm_add_pd(_mm256_castpd256_pd128(sv), _mm256_extractf128_pd(sv, 1));
    double s = _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
    for (; i < b; i++) {
        float e = FX_I(fx_expf_le0)(x[i] - sh);
        if (HO)
            out[i] = e;
        s += (double)e;
    }
    return s;
}

/* fx_exp_le0 on 4 lanes (the same operations, so the same results) */
static inline __attribute__((always_inline)) FX_TARGET __m256d
FX_I(fx_v_exp_le0)(__m256d x)
{
    const __m256d xc = _mm256_max_pd(_mm256_set1_pd(-746.0), x); /* NaN: x */
    const __m256d magic = _mm256_set1_pd(6755399441055744.0);
    const __m256d t = _mm256_fmadd_pd(xc, _mm256_set1_pd(1.4426950408889634074), magic);
    const __m256d n = _mm256_sub_pd(t, magic);
#if !FX_ISA_IS_AVX512
    const __m256d s = _mm256_castsi256_pd(_mm256_add_epi64(
        _mm256_slli_epi64(_mm256_castpd_si256(t), 52),
        _mm256_set1_epi64x((long long)((1023ull + 64ull) << 52))));
#endif
    __m256d r = _mm256_fmadd_pd(n, _mm256_set1_pd(-6.93145751953125E-1), xc);
    r = _mm256_fmadd_pd(n, _mm256_set1_pd(-1.42860682030941723212E-6), r);
    __m256d p = _mm256_set1_pd(FX_E64_C11);
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(FX_E64_C10));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(FX_E64_C9));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(FX_E64_C8));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(FX_E64_C7));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(FX_E64_C6));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(FX_E64_C5));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(FX_E64_C4));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(FX_E64_C3));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(FX_E64_C2));
    p = _mm256_fmadd_pd(p, _mm256_mul_pd(r, r), r);
    p = _mm256_add_pd(p, _mm256_set1_pd(1.0));
#if FX_ISA_IS_AVX512
    return _mm256_scalef_pd(p, n);
#else
    return _mm256_mul_pd(_mm256_mul_pd(p, s), _mm256_set1_pd(5.42101086242752217e-20));
#endif
}

/* The float64 span: two vectors per step, two sums, the next row's line
 * prefetched each step (the float32 span's prefetch, which the generic loop
 * lacked: its rows came from memory in the max pass while the exps ran on
 * cached data).  Tails one vector, then scalars. */
static inline __attribute__((always_inline)) FX_TARGET double
FX_I(fx_sumexp_span_f64)(const double *x, double sh, double *out, int64_t a,
                        int64_t b, const double *pf, const int HO)
{
    const __m256d vs = _mm256_set1_pd(sh);
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    int64_t i = a;
    for (; i + 8 <= b; i += 8) {
        _mm_prefetch((const char *)(pf + i), _MM_HINT_T0);
        __m256d e0 = FX_I(fx_v_exp_le0)(_mm256_sub_pd(_mm256_loadu_pd(x + i), vs));
        __m256d e1 = FX_I(fx_v_exp_le0)(_mm256_sub_pd(_mm256_loadu_pd(x + i + 4), vs));
        if (HO) { /* out may be x: every element is read before it is written */
            _mm256_storeu_pd(out + i, e0);
            _mm256_storeu_pd(out + i + 4, e1);
        }
        s0 = _mm256_add_pd(s0, e0);
        s1 = _mm256_add_pd(s1, e1);
    }
    for (; i + 4 <= b; i += 4) {
        __m256d e = FX_I(fx_v_exp_le0)(_mm256_sub_pd(_mm256_loadu_pd(x + i), vs));
        if (HO)
            _mm256_storeu_pd(out + i, e);
        s0 = _mm256_add_pd(s0, e);
    }
    const __m256d sv = _mm256_add_pd(s0, s1);
    const __m128d h = _mm_add_pd(_mm256_castpd256_pd128(sv), _mm256_extractf128_pd(sv, 1));
    double s = _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
    for (; i < b; i++) {
        double e = FX_I(fx_exp_le0)(x[i] - sh);
        if (HO)
            out[i] = e;
        s += e;
    }
    return s;
}

/* fx_sumexp for float32 / float64 rows (AVX2): the spans on either side of
 * the target y (y >= 0), e_y alone; returns S = R + e_y and R, the sum of
 * the e_c, c != y, from which p_y - 1 = -R / S is formed without cancelling
 * (S - e_y would lose R to the rounding of S when p_y ~ 1).  pf: n elements
 * to prefetch into cache meanwhile (the next row, so that its max pass finds
 * it there; x itself when there is none). */
#define FX_SUMEXP_VDEF(NAME, T, SPAN, EXP1)                                  \
    static FX_TARGET double NAME(const T *x, T sh, T *out, int64_t n,         \
                                 int64_t y, const T *pf, double *rest)        \
    {                                                                         \
        if (y < 0 || y >= n)                                                  \
            return *rest = out ? SPAN(x, sh, out, 0, n, pf, 1)                \
                               : SPAN(x, sh, out, 0, n, pf, 0);               \
        const double R = out ? SPAN(x, sh, out, 0, y, pf, 1)                  \
                                   + SPAN(x, sh, out, y + 1, n, pf, 1)        \
                             : SPAN(x, sh, out, 0, y, pf, 0)                  \
                                   + SPAN(x, sh, out, y + 1, n, pf, 0);       \
        const T ey = EXP1(x[y] - sh);                                         \
        if (out)                                                              \
            out[y] = ey;                                                      \
        *rest = R;                                                            \
        return R + (double)ey;                                                \
    }
FX_SUMEXP_VDEF(FX_I(fx_sumexp_f32v), float, FX_I(fx_sumexp_span_f32), FX_I(fx_expf_le0))
FX_SUMEXP_VDEF(FX_I(fx_sumexp_f64v), double, FX_I(fx_sumexp_span_f64), FX_I(fx_exp_le0))
#undef FX_SUMEXP_VDEF

/* log(s) for finite 1 <= s < 2**1000 (the float64 sums of few-class float32
 * rows): s = 2**k m, m in [sqrt(1/2), sqrt(2)), f = m - 1, log m = 2
 * atanh(q), q = f / (m + 1) (|q| < 0.172), by its series to q**11: the rest
 * is below 2e-11, against the float32 loss's 1e-6 (SPEC); it was to q**23.
 * With inv (a compile-time NULL or not), 1 / s too, by its own division
 * (one shared division, d = 1 / (s (m + 1)), q = f s d, 1 / s = (m + 1) d,
 * measured slower: its chain is longer). */
static inline __attribute__((always_inline)) FX_TARGET __m256d
FX_I(fx_v_log_ge1)(__m256d s, __m256d *inv)
{
    __m256i b = _mm256_castpd_si256(s);
    __m256i ex = _mm256_sub_epi64(_mm256_srli_epi64(b, 52), _mm256_set1_epi64x(1023));
    __m256d m = _mm256_castsi256_pd(_mm256_or_si256(
        _mm256_and_si256(b, _mm256_set1_epi64x(0x000FFFFFFFFFFFFFll)),
        _mm256_set1_epi64x(0x3FF0000000000000ll)));
    __m256d big = _mm256_cmp_pd(m, _mm256_set1_pd(1.4142135623730951), _CMP_GT_OQ);
    m = _mm256_blendv_pd(m, _mm256_mul_pd(m, _mm256_set1_pd(0.5)), big);
    ex = _mm256_sub_epi64(ex, _mm256_castpd_si256(big)); /* big = -1 */
    __m256d k = _mm256_sub_pd(
        _mm256_castsi256_pd(_mm256_add_epi64(ex, _mm256_set1_epi64x(0x4330000000000000ll))),
        _mm256_set1_pd(4503599627370496.0));
    const __m256d one = _mm256_set1_pd(1.0);
    const __m256d q = _mm256_div_pd(_mm256_sub_pd(m, one), _mm256_add_pd(m, one));
    if (inv)
        *inv = _mm256_div_pd(one, s);
    __m256d z = _mm256_mul_pd(q, q), z2 = _mm256_mul_pd(z, z);
    /* p = 1/3 + z/5 + z**2/7 + z**3/9 + z**4/11 (Estrin) */
    __m256d pa = _mm256_fmadd_pd(z, _mm256_set1_pd(1.0 / 5.0), _mm256_set1_pd(1.0 / 3.0));
    __m256d pb = _mm256_fmadd_pd(z, _mm256_set1_pd(1.0 / 9.0), _mm256_set1_pd(1.0 / 7.0));
    pb = _mm256_fmadd_pd(z2, _mm256_set1_pd(1.0 / 11.0), pb);
    __m256d p = _mm256_fmadd_pd(pb, z2, pa);
    __m256d q2 = _mm256_add_pd(q, q);
    __m256d lo = _mm256_fmadd_pd(k, _mm256_set1_pd(1.9082149292705877000E-10),
                                 _mm256_mul_pd(_mm256_mul_pd(q2, z), p));
    return _mm256_add_pd(_mm256_fmadd_pd(k, _mm256_set1_pd(6.93147180369123816490E-1), q2), lo);
}

static FX_TARGET void FX_I(fx_small_idx_init)(fx_small_idx *T, int64_t C)
{
    const int tl = (int)(C % 8);
    T->tail = _mm256_cmpgt_epi32(_mm256_set1_epi32(tl),
                                 _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    T->vidx = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                 _mm256_set1_epi32((int)C));
    int32_t r = 0, c = 0; /* flat f = r C + c */
    for (int64_t f = 0; f < 8 * C; f++) {
        T->tidx[f / 8][f % 8] = c * 8 + r;
        T->ridx[f / 8][f % 8] = r;
        if (++c == C) {
            c = 0;
            r++;
        }
    }
}

static inline __attribute__((always_inline)) FX_TARGET __m256
FX_I(fx_cvt2)(__m256d lo, __m256d hi)
{
    return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm256_cvtpd_ps(lo)),
                                _mm256_cvtpd_ps(hi), 1);
}


/* horizontal max / float64 sum of a vector */
static inline __attribute__((always_inline)) FX_TARGET float
FX_I(fx_hmax)(__m256 v)
{
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
}

static inline __attribute__((always_inline)) FX_TARGET double
FX_I(fx_hsum_pd)(__m256d v)
{
    __m128d h = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
}

/* 8 targets as int32 lanes (lane r = row r; 0 <= t < C, so the low 32 bits
 * are the value); 0 if one of them is ign (the block goes to per-row code) */
static inline __attribute__((always_inline)) FX_TARGET int
FX_I(fx_y32)(const int64_t *t, int64_t ign, __m256i *y32)
{
    const __m256i t0 = _mm256_loadu_si256((const __m256i *)t);
    const __m256i t1 = _mm256_loadu_si256((const __m256i *)(t + 4));
    const __m256i ig = _mm256_set1_epi64x(ign);
    if (_mm256_movemask_epi8(_mm256_or_si256(_mm256_cmpeq_epi64(t0, ig),
                                             _mm256_cmpeq_epi64(t1, ig))))
        return 0;
    const __m256i lo32 = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
    *y32 = _mm256_permute2x128_si256(_mm256_permutevar8x32_epi32(t0, lo32),
                                     _mm256_permutevar8x32_epi32(t1, lo32), 0x20);
    return 1;
}

/* The end of 8 rows of few classes in float64, rows 0-3 and 4-7 as halves
 * h = 0, 1 (S finite, >= 1; R = S - e_y summed apart; sh the shifts; xy =
 * x_y - sh): the vector log of S (a scalar log per row costs more than a
 * 10-class row's exps), the losses to lp (when not NULL) and, when HG, the
 * gradient's factor (a w_y + k2) / S of every e, returned in float, and the
 * target entries e_y k2 / S - a w_y R / S to dy, as fx_ce_row.  A factor
 * beyond FLT_MAX is inf here (see FX_I(fx_any_inf8)). */
static inline __attribute__((always_inline)) FX_TARGET __m256
FX_I(fx_ce_end8)(const fx_ce_args *A, const __m256d *S, const __m256d *R,
                const __m256d *ey, const __m256d *sh, const __m256d *xy,
                __m256i y32, const double *gp, double gscalar, double *lp,
                const int HG, __m256d *dy)
{
    const __m256d zero = _mm256_setzero_pd();
    const __m256d cs = _mm256_set1_pd(A->ce_scale);
    const int hz = A->z > 0.0;
    __m256d wy[2] = {_mm256_set1_pd(1.0), _mm256_set1_pd(1.0)}, ks[2];
    if (A->w) {
        const __m256 wyf = _mm256_i32gather_ps((const float *)A->w, y32, 4);
        wy[0] = _mm256_cvtps_pd(_mm256_castps256_ps128(wyf));
        wy[1] = _mm256_cvtps_pd(_mm256_extractf128_ps(wyf, 1));
    }
    for (int h = 0; h < 2; h++) {
        __m256d iS;
        const __m256d L = FX_I(fx_v_log_ge1)(S[h], HG ? &iS : NULL);
        const __m256d lse = _mm256_add_pd(sh[h], L);
        /* ce = w_y (log S - xy), exactly 0 where w_y == 0 */
        __m256d ce = _mm256_mul_pd(wy[h], _mm256_sub_pd(L, xy[h]));
        ce = _mm256_blendv_pd(ce, zero, _mm256_cmp_pd(wy[h], zero, _CMP_EQ_OQ));
        __m256d l = _mm256_mul_pd(cs, ce);
        if (hz) {
            const __m256d zz = _mm256_set1_pd(A->z_scale * A->z);
            l = _mm256_add_pd(l, _mm256_mul_pd(_mm256_mul_pd(zz, lse), lse));
        }
        if (lp)
            _mm256_storeu_pd(lp + 4 * h, l);
        if (!HG)
            continue;
        const __m256d gn = gp ? _mm256_loadu_pd(gp + 4 * h) : _mm256_set1_pd(gscalar);
        const __m256d aw = _mm256_mul_pd(_mm256_mul_pd(gn, cs), wy[h]);
        __m256d k2 = zero;
        if (hz) /* ((gn z_scale) 2 z) lse, as fx_ce_row */
            k2 = _mm256_mul_pd(_mm256_mul_pd(_mm256_mul_pd(gn, _mm256_set1_pd(A->z_scale)),
                                             _mm256_set1_pd(2.0 * A->z)), lse);
        ks[h] = _mm256_mul_pd(_mm256_add_pd(aw, k2), iS);
        dy[h] = _mm256_mul_pd(_mm256_sub_pd(_mm256_mul_pd(ey[h], k2),
                                            _mm256_mul_pd(aw, R[h])), iS);
    }
    return HG ? FX_I(fx_cvt2)(ks[0], ks[1]) : _mm256_setzero_ps();
}

/* Whether a block's float gradient factors hold an inf: a row whose factor
 * is beyond FLT_MAX (z_loss at logits near float32's max, or a large
 * grad_output), where e_c times it would be inf where e_c k is finite and
 * NaN where e_c = 0.  Such a block goes per row, where fx_ce_row scales the
 * row in double (losses already written are written again, the same). */
static inline __attribute__((always_inline)) FX_TARGET int
FX_I(fx_any_inf8)(__m256 k)
{
    const __m256 a = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), k);
    return _mm256_movemask_ps(_mm256_cmp_ps(a, _mm256_set1_ps(INFINITY), _CMP_EQ_OQ)) != 0;
}

/* 8 rows at x (C = A->C <= FX_SMALL_CMAX): 1 if done, 0 if the caller must
 * do them per row (an ignored row, a row with an infinite max or a NaN, an
 * inf gradient factor; nothing written then but losses).
 *
 * In stages, each over the 8 rows (independent chains for the core to
 * overlap): row maxima (C / 8 full vectors and one masked load per row:
 * masked loads never touch memory past the row's end); e = exp(x - max)
 * over the whole block (8 C contiguous floats: C full vectors, with each
 * row's shift spread into a scratch block) into a scratch copy of the block;
 * S per row in double (masked lanes add 0); then fx_ce_end8; and the
 * gradient block written as C full vectors, each lane scaled by its row's
 * factor (no masked stores: they are microcoded and slow on AMD). */
static FX_TARGET int
FX_I(fx_ce_small8_f32)(const fx_ce_args *A, const fx_small_idx *T,
                      const float *x, const int64_t *t, int64_t ign,
                      const double *gp, double gscalar, double *lp, float *g)
{
    const int64_t C = A->C, nf = C & ~(int64_t)7;
    const int tl = (int)(C & 7);
    const __m256i tm = T->tail;
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    double S[8], Rs[8], sh[8], xy[8], ey[8];
    float mf[8];
    float eb[8 * FX_SMALL_CMAX + 8], shb[8 * FX_SMALL_CMAX + 8];
    __m256i y32;
    if (!FX_I(fx_y32)(t, ign, &y32))
        return 0;
    /* stage 1: row maxima (8 independent chains) */
    for (int r = 0; r < 8; r++) {
        const float *xr = x + r * C;
        __m256 mx = ninf;
        for (int64_t c = 0; c < nf; c += 8)
            mx = _mm256_max_ps(_mm256_loadu_ps(xr + c), mx); /* NaN skipped */
        if (tl)
            mx = _mm256_max_ps(_mm256_blendv_ps(ninf, _mm256_maskload_ps(xr + nf, tm),
                                                _mm256_castsi256_ps(tm)), mx);
        mf[r] = FX_I(fx_hmax)(mx);
        if (!isfinite(mf[r]))
            return 0;
    }
    /* stage 2: each row's shift spread over its elements of the block (a
     * row's last store spills into the next row's start, then overwritten) */
    for (int r = 0; r < 8; r++) {
        sh[r] = (double)mf[r];
        xy[r] = (double)x[r * C + t[r]] - sh[r]; /* before g (maybe x) is written */
        const __m256 vs = _mm256_set1_ps(mf[r]);
        for (int64_t c = 0; c < C; c += 8)
            _mm256_storeu_ps(shb + r * C + c, vs);
    }
    /* stage 3: e = exp(x - shift) over the block as C full vectors */
    for (int64_t k = 0; k < C; k++)
        _mm256_storeu_ps(eb + 8 * k, FX_I(fx_v_expf_le0)(
            _mm256_sub_ps(_mm256_loadu_ps(x + 8 * k), _mm256_loadu_ps(shb + 8 * k))));
    /* stage 4: R = sum of e_c, c != y, per row in double (e_y masked out:
     * p_y - 1 = -R / S, where S - e_y would cancel when p_y ~ 1; a mask, as
     * zeroing e_y in place would stall the loads on the store) */
    const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int r = 0; r < 8; r++) {
        const float *er = eb + r * C;
        const __m256i yv = _mm256_set1_epi32((int)t[r]);
        ey[r] = (double)er[t[r]];
        __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
        for (int64_t c = 0; c < nf; c += 8) {
            __m256 isy = _mm256_castsi256_ps(_mm256_cmpeq_epi32(
                _mm256_add_epi32(iota, _mm256_set1_epi32((int)c)), yv));
            __m256 e = _mm256_andnot_ps(isy, _mm256_loadu_ps(er + c));
            s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
            s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
        }
        if (tl) {
            __m256 isy = _mm256_castsi256_ps(_mm256_cmpeq_epi32(
                _mm256_add_epi32(iota, _mm256_set1_epi32((int)nf)), yv));
            __m256 e = _mm256_and_ps(_mm256_andnot_ps(isy, _mm256_loadu_ps(er + nf)),
                                     _mm256_castsi256_ps(tm));
            s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
            s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
        }
        Rs[r] = FX_I(fx_hsum_pd)(_mm256_add_pd(s0, s1));
        S[r] = Rs[r] + ey[r];
        if (isnan(S[r]))
            return 0;
    }
    const __m256d Sv[2] = {_mm256_loadu_pd(S), _mm256_loadu_pd(S + 4)};
    const __m256d Rv[2] = {_mm256_loadu_pd(Rs), _mm256_loadu_pd(Rs + 4)};
    const __m256d eyv[2] = {_mm256_loadu_pd(ey), _mm256_loadu_pd(ey + 4)};
    const __m256d shv[2] = {_mm256_loadu_pd(sh), _mm256_loadu_pd(sh + 4)};
    const __m256d xyv[2] = {_mm256_loadu_pd(xy), _mm256_loadu_pd(xy + 4)};
    __m256d dy[2];
    const __m256 ksT = FX_I(fx_ce_end8)(A, Sv, Rv, eyv, shv, xyv, y32, gp, gscalar, lp,
                                       g != NULL, dy);
    if (!g)
        return 1;
    if (FX_I(fx_any_inf8)(ksT))
        return 0;
    float dyf[8];
    _mm256_storeu_ps(dyf, FX_I(fx_cvt2)(dy[0], dy[1]));
    for (int64_t k = 0; k < C; k++) {
        __m256i ri = _mm256_loadu_si256((const __m256i *)T->ridx[k]);
        _mm256_storeu_ps(g + 8 * k, _mm256_mul_ps(_mm256_loadu_ps(eb + 8 * k),
                                                  _mm256_permutevar8x32_ps(ksT, ri)));
    }
    for (int r = 0; r < 8; r++)
        g[r * C + t[r]] = dyf[r];
    return 1;
}

/* 4 x 4 transposes in each 128-bit lane of v[0..3] (in place): with v[r]
 * = [row r | row r + 4] of 4 columns, v[c] becomes [column c of rows 0-3 |
 * of rows 4-7], and back. */
static inline __attribute__((always_inline)) FX_TARGET void
FX_I(fx_tr4x2)(__m256 *v)
{
    const __m256 t0 = _mm256_unpacklo_ps(v[0], v[1]), t1 = _mm256_unpackhi_ps(v[0], v[1]);
    const __m256 t2 = _mm256_unpacklo_ps(v[2], v[3]), t3 = _mm256_unpackhi_ps(v[2], v[3]);
    v[0] = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
    v[1] = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
    v[2] = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
    v[3] = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
}

/* [4 floats at lo | 4 floats at hi] */
static inline __attribute__((always_inline)) FX_TARGET __m256
FX_I(fx_ld2)(const float *lo, const float *hi)
{
    return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(lo)),
                                _mm_loadu_ps(hi), 1);
}

/* the two halves of v to 4 floats at lo and 4 at hi */
static inline __attribute__((always_inline)) FX_TARGET void
FX_I(fx_st2)(float *lo, float *hi, __m256 v)
{
    _mm_storeu_ps(lo, _mm256_castps256_ps128(v));
    _mm_storeu_ps(hi, _mm256_extractf128_ps(v, 1));
}

/* The same for 2 <= C <= FX_CM_CMAX classes, class-major: xb[c] holds
 * class c of the block's 8 rows (lane r = row r), so that max, exp, the
 * sums, e_y and x_y are one vector operation per class for all 8 rows and
 * nothing goes through a scratch block (the staged version's stores and
 * reloads at row offsets cost store-forwarding stalls).  From C = 4 the
 * block comes in by 4 x 4 transposes of 128-bit loads (columns c0..c0+7 of
 * the 8 rows as 8 vectors) and the gradient goes back the same way; columns
 * past C % 8 of rows 0-6 read into the next row of the block and row 7's are
 * masked loads; storing rows in order, each row's last 8 floats run into the
 * next row's start, which that row's own stores (later) overwrite, and row
 * 7's tail is written exactly: nothing outside the block is read or written.
 * Below 4 classes those reads would run past the block: gathers with stride
 * C instead, and the gradient gathered back from the class-major e.  C is a
 * compile-time constant in each copy (fx_ce_run8_f32), so that the
 * class loops unroll.  Measured (C harness, 1 thread, 2.6M elements,
 * medians of 15 interleaved, ns per element, vs staged): C = 10 1.41 vs
 * 1.77; C = 4 2.1 vs 3.0; C = 16 1.8 vs 2.1; the gathers at C = 4: 4.0. */
#define FX_CM_CMAX 16

/* 8 rows of C floats at x into xb[c] (lane r = row r), their maxima to mx
 * (NaN skipped, as fx_rowmax); 0 if a row's max is +-inf (a non-finite row:
 * the caller's per-row code makes it NaN, or all -inf). */
static inline __attribute__((always_inline)) FX_TARGET int
FX_I(fx_cm8_in_f32)(const fx_small_idx *T, const float *x, __m256 *xb,
                   __m256 *mx, const int64_t C)
{
    const int64_t nf = C & ~(int64_t)7;
    const int tl = (int)(C & 7);
    const int GA = C < 4; /* gathers */
    for (int64_t c = 0; GA && c < C; c++)
        xb[c] = _mm256_i32gather_ps(x + c, T->vidx, 4);
    for (int64_t c0 = 0; !GA && c0 < nf; c0 += 8) {
        __m256 *v = xb + c0;
        for (int r = 0; r < 4; r++) {
            v[r] = FX_I(fx_ld2)(x + r * C + c0, x + (r + 4) * C + c0);
            v[4 + r] = FX_I(fx_ld2)(x + r * C + c0 + 4, x + (r + 4) * C + c0 + 4);
        }
        FX_I(fx_tr4x2)(v);
        FX_I(fx_tr4x2)(v + 4);
    }
    if (!GA && tl) {
        __m256 *v = xb + nf;
        const float *x7 = x + 7 * C + nf;
        for (int r = 0; r < 3; r++)
            v[r] = FX_I(fx_ld2)(x + r * C + nf, x + (r + 4) * C + nf);
        v[3] = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(x + 3 * C + nf)),
                                    _mm_maskload_ps(x7, _mm256_castsi256_si128(T->tail)), 1);
        FX_I(fx_tr4x2)(v);
        if (tl > 4) {
            for (int r = 0; r < 3; r++)
                v[4 + r] = FX_I(fx_ld2)(x + r * C + nf + 4, x + (r + 4) * C + nf + 4);
            v[7] = _mm256_insertf128_ps(
                _mm256_castps128_ps256(_mm_loadu_ps(x + 3 * C + nf + 4)),
                _mm_maskload_ps(x7 + 4, _mm256_extractf128_si256(T->tail, 1)), 1);
            FX_I(fx_tr4x2)(v + 4);
        }
    }
    __m256 m = _mm256_set1_ps(-INFINITY);
    for (int64_t c = 0; c < C; c++)
        m = _mm256_max_ps(xb[c], m); /* NaN skipped, as fx_rowmax */
    *mx = m;
    const __m256 am = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), m);
    return !_mm256_movemask_ps(_mm256_cmp_ps(am, _mm256_set1_ps(INFINITY), _CMP_EQ_OQ));
}

/* eb[c] (lane r = row r, c < C) out to the 8 rows of C floats at g, the
 * reverse of fx_cm8_in_f32 (eb is clobbered): rows stored in order,
 * each row's tail first (its last 8 floats run into the next row's start,
 * which that row's own stores overwrite later), row 7's tail exactly. */
static inline __attribute__((always_inline)) FX_TARGET void
FX_I(fx_cm8_out_f32)(const fx_small_idx *T, __m256 *eb, float *g, const int64_t C)
{
    const int64_t nf = C & ~(int64_t)7;
    const int tl = (int)(C & 7);
    if (C < 4) { /* gathers */
        for (int64_t k = 0; k < C; k++) {
            __m256i ti = _mm256_loadu_si256((const __m256i *)T->tidx[k]);
            _mm256_storeu_ps(g + 8 * k, _mm256_i32gather_ps((const float *)eb, ti, 4));
        }
        return;
    }
    for (int64_t c = C; tl && c < nf + 8; c++)
        eb[c] = _mm256_setzero_ps(); /* transposed into lanes never kept */
    if (tl) {
        /* rows in order: 0-3 (low halves), 4-6 (high halves), 7 exactly */
        __m256 *v = eb + nf;
        float tb[8];
        FX_I(fx_tr4x2)(v);
        if (tl > 4)
            FX_I(fx_tr4x2)(v + 4);
        for (int r = 0; r < 4; r++) {
            _mm_storeu_ps(g + r * C + nf, _mm256_castps256_ps128(v[r]));
            if (tl > 4)
                _mm_storeu_ps(g + r * C + nf + 4, _mm256_castps256_ps128(v[4 + r]));
        }
        for (int r = 0; r < 3; r++) {
            _mm_storeu_ps(g + (r + 4) * C + nf, _mm256_extractf128_ps(v[r], 1));
            if (tl > 4)
                _mm_storeu_ps(g + (r + 4) * C + nf + 4, _mm256_extractf128_ps(v[4 + r], 1));
        }
        _mm_storeu_ps(tb, _mm256_extractf128_ps(v[3], 1));
        if (tl > 4)
            _mm_storeu_ps(tb + 4, _mm256_extractf128_ps(v[7], 1));
        for (int j = 0; j < tl; j++)
            g[7 * C + nf + j] = tb[j];
    }
    for (int64_t c0 = 0; c0 < nf; c0 += 8) {
        __m256 *v = eb + c0;
        FX_I(fx_tr4x2)(v);
        FX_I(fx_tr4x2)(v + 4);
        for (int r = 0; r < 4; r++) {
            FX_I(fx_st2)(g + r * C + c0, g + (r + 4) * C + c0, v[r]);
            FX_I(fx_st2)(g + r * C + c0 + 4, g + (r + 4) * C + c0 + 4, v[4 + r]);
        }
    }
}

/* A class-major block between its two halves: the exps (class c of the 8
 * rows in eb[c]) and the per-row values fx_ce_end8 takes. */
#ifndef FX_CM8_STATE_DEFINED
#define FX_CM8_STATE_DEFINED
typedef struct {
    __m256 eb[FX_CM_CMAX + 8];
    __m256d S[2], R[2], ey[2], sh[2], xy[2];
    __m256i y32;
} fx_cm8_state;
#endif

/* The first half of 8 rows of 2 <= C <= FX_CM_CMAX classes: the block in,
 * row maxima, e = exp(x - max), R = sum of e_c, c != y (pairs of classes
 * added in float: one rounding, then float64), e_y and x_y picked per lane,
 * all into st.  1 if done, 0 if the rows must go per row (an ignored row, a
 * row with an infinite max or a NaN); reads the block, writes nothing. */
static inline __attribute__((always_inline)) FX_TARGET int
FX_I(fx_ce_cm8_front_f32)(const fx_small_idx *T, const float *x, const int64_t *t,
                         int64_t ign, fx_cm8_state *st, const int64_t C)
{
    __m256 xb[FX_CM_CMAX + 8], mx;
    __m256i y32;
    if (!FX_I(fx_y32)(t, ign, &y32))
        return 0;
    if (!FX_I(fx_cm8_in_f32)(T, x, xb, &mx, C))
        return 0;
    __m256d R[2] = {_mm256_setzero_pd(), _mm256_setzero_pd()};
    __m256 ey = _mm256_setzero_ps(), xyf = _mm256_setzero_ps();
    for (int64_t c = 0; c < C; c += 2) {
        __m256 eo = _mm256_setzero_ps();
        for (int64_t k = c; k < c + 2 && k < C; k++) {
            const __m256 e = FX_I(fx_v_expf_le0)(_mm256_sub_ps(xb[k], mx));
            const __m256 isy = _mm256_castsi256_ps(
                _mm256_cmpeq_epi32(y32, _mm256_set1_epi32((int)k)));
            st->eb[k] = e;
            ey = _mm256_blendv_ps(ey, e, isy);
            xyf = _mm256_blendv_ps(xyf, xb[k], isy);
            eo = _mm256_add_ps(eo, _mm256_andnot_ps(isy, e));
        }
        R[0] = _mm256_add_pd(R[0], _mm256_cvtps_pd(_mm256_castps256_ps128(eo)));
        R[1] = _mm256_add_pd(R[1], _mm256_cvtps_pd(_mm256_extractf128_ps(eo, 1)));
    }
    st->ey[0] = _mm256_cvtps_pd(_mm256_castps256_ps128(ey));
    st->ey[1] = _mm256_cvtps_pd(_mm256_extractf128_ps(ey, 1));
    st->S[0] = _mm256_add_pd(R[0], st->ey[0]);
    st->S[1] = _mm256_add_pd(R[1], st->ey[1]);
    /* NaN in a row: S is NaN (S >= 1 otherwise, finite as C e <= C) */
    if (_mm256_movemask_pd(_mm256_cmp_pd(st->S[0], st->S[1], _CMP_UNORD_Q)))
        return 0;
    st->R[0] = R[0];
    st->R[1] = R[1];
    st->sh[0] = _mm256_cvtps_pd(_mm256_castps256_ps128(mx));
    st->sh[1] = _mm256_cvtps_pd(_mm256_extractf128_ps(mx, 1));
    st->xy[0] = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(xyf)), st->sh[0]);
    st->xy[1] = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(xyf, 1)), st->sh[1]);
    st->y32 = y32;
    return 1;
}

/* The second half: fx_ce_end8 (losses to lp), and with g the gradient
 * block (e times its row's factor) out, the targets' entries last; 0 (and
 * no gradient written) if the block must go per row (FX_I(fx_any_inf8)). */
static inline __attribute__((always_inline)) FX_TARGET int
FX_I(fx_ce_cm8_back_f32)(const fx_ce_args *A, const fx_small_idx *T,
                        const fx_cm8_state *st, const int64_t *t, const double *gp,
                        double gscalar, double *lp, float *g, const int64_t C)
{
    __m256d dy[2];
    const __m256 ksT = FX_I(fx_ce_end8)(A, st->S, st->R, st->ey, st->sh, st->xy, st->y32,
                                       gp, gscalar, lp, g != NULL, dy);
    if (!g)
        return 1;
    if (FX_I(fx_any_inf8)(ksT))
        return 0;
    float dyf[8];
    _mm256_storeu_ps(dyf, FX_I(fx_cvt2)(dy[0], dy[1]));
    __m256 eb[FX_CM_CMAX + 8];
    for (int64_t c = 0; c < C; c++)
        eb[c] = _mm256_mul_ps(st->eb[c], ksT);
    FX_I(fx_cm8_out_f32)(T, eb, g, C);
    for (int r = 0; r < 8; r++)
        g[r * C + t[r]] = dyf[r];
    return 1;
}

/* Blocks of 8 rows from row i to r1 (r1 - i a multiple of 8), software
 * pipelined: block k's second half runs after block k + 1's first half, so
 * that the end's long dependency chain (the float64 log and divisions, then
 * the factors, the transposes out) overlaps the next block's loads and exps
 * instead of stalling the core: a block is ~800 instructions, more than the
 * reorder window, so block by block the two did not overlap (C harness, 1
 * thread, (262144, C), medians of 11, ns per element, before -> after: C =
 * 10 1.35 -> 1.16, loss only 1.05 -> 0.97; C = 4 1.80 -> 1.70; C = 16 1.17
 * -> 1.08; C = 3 3.5 -> 3.1; the same results bit for bit).  Reading block
 * k + 1 before block k is written is safe in place: each half touches only
 * its own block's rows.  Returns the first block that must go per row (the
 * blocks before it are done), or r1. */
static inline __attribute__((always_inline)) FX_TARGET int64_t
FX_I(fx_ce_cm8_run_f32)(const fx_ce_args *A, const fx_small_idx *T,
                       const float *x, const int64_t *t, int64_t ign,
                       const double *gp, double gscalar, double *lp, float *g,
                       int64_t i, int64_t r1, const int64_t C)
{
    fx_cm8_state st[2];
    int cur = 0;
    int64_t pend = -1; /* the block whose second half is due, in st[cur ^ 1] */
    for (;; i += 8) { /* at r1, no front: the last pending back, then return */
        const int ok = i < r1
                       && FX_I(fx_ce_cm8_front_f32)(T, x + i * C, t + i, ign, &st[cur], C);
        if (pend >= 0
            && !FX_I(fx_ce_cm8_back_f32)(A, T, &st[cur ^ 1], t + pend, gp ? gp + pend : NULL,
                                         gscalar, lp ? lp + pend : NULL,
                                         g ? g + pend * C : NULL, C))
            return pend; /* (block i's front wrote nothing) */
        if (!ok)
            return i;
        pend = i;
        cur ^= 1;
    }
}

/* softmax (LOG = 0) or log_softmax (LOG = 1) of 8 rows of 2 <= C <=
 * FX_CM_CMAX floats, class-major as fx_ce_cm8_front_f32: 1 if done, 0 if the
 * caller must do them per row (a row with an infinite max or a NaN; nothing
 * written).  The rows' math is fx_softmax_row's and fx_log_softmax_row's: S
 * in float64 (pairs of classes added in float first, as the cross-entropy
 * block), out = e (float)(1 / S), or (x - max) - (float)log S with one
 * vector log for the 8 sums (a scalar log per row cost more than the row). */
static inline __attribute__((always_inline)) FX_TARGET int
FX_I(fx_sm_cm8_f32)(const fx_small_idx *T, const float *x, float *o,
                   const int LOG, const int64_t C)
{
    __m256 xb[FX_CM_CMAX + 8], eb[FX_CM_CMAX + 8], mx;
    if (!FX_I(fx_cm8_in_f32)(T, x, xb, &mx, C))
        return 0;
    __m256d S[2] = {_mm256_setzero_pd(), _mm256_setzero_pd()};
    for (int64_t c = 0; c < C; c += 2) {
        __m256 es = _mm256_setzero_ps();
        for (int64_t k = c; k < c + 2 && k < C; k++) {
            eb[k] = FX_I(fx_v_expf_le0)(_mm256_sub_ps(xb[k], mx));
            es = _mm256_add_ps(es, eb[k]);
        }
        S[0] = _mm256_add_pd(S[0], _mm256_cvtps_pd(_mm256_castps256_ps128(es)));
        S[1] = _mm256_add_pd(S[1], _mm256_cvtps_pd(_mm256_extractf128_ps(es, 1)));
    }
    /* NaN in a row: S is NaN (S >= 1 otherwise, finite as C e <= C) */
    if (_mm256_movemask_pd(_mm256_cmp_pd(S[0], S[1], _CMP_UNORD_Q)))
        return 0;
    if (LOG) {
        const __m256 L = FX_I(fx_cvt2)(FX_I(fx_v_log_ge1)(S[0], NULL), FX_I(fx_v_log_ge1)(S[1], NULL));
        for (int64_t c = 0; c < C; c++)
            eb[c] = _mm256_sub_ps(_mm256_sub_ps(xb[c], mx), L);
    } else {
        const __m256d one = _mm256_set1_pd(1.0);
        const __m256 f = FX_I(fx_cvt2)(_mm256_div_pd(one, S[0]), _mm256_div_pd(one, S[1]));
        for (int64_t c = 0; c < C; c++)
            eb[c] = _mm256_mul_ps(eb[c], f);
    }
    FX_I(fx_cm8_out_f32)(T, eb, o, C);
    return 1;
}

/* 8 rows of softmax / log_softmax (LOG): 1 if done, 0 if the caller must do
 * them per row (or C is not one of the compiled class counts) */
static FX_TARGET int
FX_I(fx_sm_block8_f32)(const fx_small_idx *T, const float *x, float *o,
                      int64_t C, int LOG)
{
    switch (C) {
#define FX_SM8(n)                                                            \
    case n:                                                                  \
        return LOG ? FX_I(fx_sm_cm8_f32)(T, x, o, 1, n)                       \
                   : FX_I(fx_sm_cm8_f32)(T, x, o, 0, n);
    FX_SM8(2) FX_SM8(3) FX_SM8(4) FX_SM8(5) FX_SM8(6) FX_SM8(7) FX_SM8(8)
    FX_SM8(9) FX_SM8(10) FX_SM8(11) FX_SM8(12) FX_SM8(13) FX_SM8(14)
    FX_SM8(15) FX_SM8(16)
#undef FX_SM8
    default:
        return 0;
    }
}

/* Blocks of 8 rows of few classes (C <= FX_SMALL_CMAX) from row i to r1
 * (r1 - i a multiple of 8): returns the first block the caller must do per
 * row (those before it are done), or r1.  The class-major version, one copy
 * per class count up to FX_CM_CMAX; the staged one beyond (C harness, ns per
 * element, class-major with C as a variable vs staged: C = 20 1.40 vs 1.40,
 * C = 32 1.37 vs 1.17, C = 50 2.1 vs 1.3). */
static FX_TARGET int64_t
FX_I(fx_ce_run8_f32)(const fx_ce_args *A, const fx_small_idx *T,
                    const float *x, const int64_t *t, int64_t ign,
                    const double *gp, double gscalar, double *lp, float *g,
                    int64_t i, int64_t r1)
{
    const int64_t C = A->C;
    switch (C) {
#define FX_CM8(n)                                                            \
    case n:                                                                  \
        return FX_I(fx_ce_cm8_run_f32)(A, T, x, t, ign, gp, gscalar, lp, g, i, r1, n);
    FX_CM8(2) FX_CM8(3) FX_CM8(4) FX_CM8(5) FX_CM8(6) FX_CM8(7) FX_CM8(8)
    FX_CM8(9) FX_CM8(10) FX_CM8(11) FX_CM8(12) FX_CM8(13) FX_CM8(14)
    FX_CM8(15) FX_CM8(16)
#undef FX_CM8
    default:
        for (; i < r1; i += 8)
            if (!FX_I(fx_ce_small8_f32)(A, T, x + i * C, t + i, ign, gp ? gp + i : NULL,
                                       gscalar, lp ? lp + i : NULL, g ? g + i * C : NULL))
                return i;
        return i;
    }
}
#if FX_ISA_IS_AVX512
#include "_kernels_avx512.h"
#endif
#endif /* FX_ISA_IS_AVX2 */

/* ------------------------------------------ binary cross-entropy, float32
 *
 * float32 per element (as the NumPy reference in float32), float64 block sum.
 * One exp per element: e = exp(-|x|), u = 1 + e, q = 1 / u; softplus(+-x) =
 * max(+-x, 0) + log1p(e) with log1p(e) = log(u) + (e - (u - 1)) q (the
 * rounding error of 1 + e restored; Cephes logf polynomial, ~1 ULP), and
 * sigmoid(|x|) = q, sigmoid(-|x|) = e q.  Optional operands are compile-time
 * flags (HW weight, HP pos_weight, HG grad_output array, HL loss out, HD
 * grad out) so every combination is a branch-free vector loop. */

static inline __attribute__((always_inline)) FX_TARGET float
FX_I(fx_logf_1_2)(float u)  /* log(u), u in [1, 2] or NaN */
{
    const int big = u > 1.41421356237f;
    const float m = big ? 0.5f * u : u;     /* [sqrt(1/2), sqrt(2)) */
    const float k = big ? 1.0f : 0.0f;
    const float f = m - 1.0f;               /* exact */
    const float z = f * f;
    float p = 7.0376836292E-2f;
    p = FX_FMAF(p, f, -1.1514610310E-1f);
    p = FX_FMAF(p, f, 1.1676998740E-1f);
    p = FX_FMAF(p, f, -1.2420140846E-1f);
    p = FX_FMAF(p, f, 1.4249322787E-1f);
    p = FX_FMAF(p, f, -1.6668057665E-1f);
    p = FX_FMAF(p, f, 2.0000714765E-1f);
    p = FX_FMAF(p, f, -2.4999993993E-1f);
    p = FX_FMAF(p, f, 3.3333331174E-1f);
    float y = f * z * p;
    y = FX_FMAF(k, -2.12194440e-4f, y);
    y = FX_FMAF(-0.5f, z, y);
    float r = f + y;
    return FX_FMAF(k, 0.693359375f, r);
}

#define FX_BCE_CHUNK 1024

/* log1p(e) for e in [0, 1] (or NaN): 2 atanh(s), s = e / (2 + e) in
 * [0, 1/3], as 2 s + 2 s z P(z), z = s**2 in [0, 1/9], P of degree 3 fitted
 * by tools/fit_log1pf.py (4.5e-9 relative; ~2 ULP evaluated in float32, as
 * the series to s**15 before it, with 4 multiply-adds fewer: the element
 * loop of BCE on logits is bound by them); no range reduction */
static inline __attribute__((always_inline)) FX_TARGET float
FX_I(fx_log1pf01)(float e)
{
    const float s = e / (2.0f + e);
    const float z = s * s;
    const float z2 = z * z;
    const float p01 = FX_FMAF(z, 0.200108498f, 0.333332062f);
    const float p23 = FX_FMAF(z, 0.140122309f, 0.139995694f);
    const float p = FX_FMAF(z2, p23, p01); /* Estrin */
    const float s2 = s + s;
    return FX_FMAF(s2 * z, p, s2);
}

/* Two loops per chunk (exp into a buffer, then the rest): shorter
 * per-iteration dependency chains let the core overlap more iterations. */
static inline __attribute__((always_inline)) FX_TARGET double
FX_I(fx_bcel32_impl)(const float *x, const float *y, const float *w,
                     const float *pw, float scale, const double *gout,
                     double gscalar, double dscale, float *lossp,
                     float *grad, int64_t n, const int HW, const int HP,
                     const int HG, const int HL, const int HD)
{
    double acc = 0.0;
    const float gs = (float)(gscalar * dscale);
    float eb[FX_BCE_CHUNK] __attribute__((aligned(64)));
#pragma omp simd
    for (int64_t i = 0; i < n; i++)
        eb[i] = FX_I(fx_expf_le0)(-fabsf(x[i]));
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < n; i++) {
        const float xi = x[i], yi = y[i];
        const float e = eb[i];
        const float t = FX_I(fx_log1pf01)(e);
        const float cpos = HP ? pw[i] * yi : yi;
        const float cneg = 1.0f - yi;
        const float spn = (-xi > 0.0f ? -xi : 0.0f) + t; /* softplus(-x) */
        const float spp = (xi > 0.0f ? xi : 0.0f) + t;   /* softplus(x) */
        float l = (cpos == 0.0f ? 0.0f : cpos * spn)
                  + (cneg == 0.0f ? 0.0f : cneg * spp);
        if (HW)
            l = l * w[i];
        l = l * scale;
        if (HL)
            lossp[i] = l;
        acc += (double)l;
        if (HD) {
            const float q = 1.0f / (1.0f + e);
            const float eq = e * q;
            const int pos = xi >= 0.0f;
            const float sg = pos ? q : eq, sgn = pos ? eq : q;
            float d = cneg * sg - cpos * sgn;
            if (HW)
                d = d * w[i];
            grad[i] = d * (HG ? (float)(gout[i] * dscale) : gs);
        }
    }
    return acc;
}


/* dst[0:n] = src[0:n] with non-temporal stores for the aligned body (the
 * caller issues fx_sfence() before its results are used elsewhere) */
#define FX_STREAM_COPY(NAME, T, VW, STORE)                                   \
    static FX_TARGET void FX_I(NAME)(T *dst, const T *src, int64_t n)        \
    {                                                                        \
        int64_t i = 0;                                                       \
        while (i < n && ((uintptr_t)(dst + i) & (FX_STREAM_ALIGN - 1)))      \
            dst[i] = src[i], i++;                                            \
        for (; i + (VW) <= n; i += (VW))                                     \
            STORE(dst + i, src + i);                                         \
        for (; i < n; i++)                                                   \
            dst[i] = src[i];                                                 \
    }
#if FX_HAVE_AVX2_BUILD
FX_STREAM_COPY(fx_stream_f32, float, FX_STREAM_W, FX_STREAM_STORE)
FX_STREAM_COPY(fx_stream_f64, double, FX_STREAM_W / 2, FX_STREAM_STORE_PD)
#else
static void FX_I(fx_stream_f32)(float *dst, const float *src, int64_t n)
{
    memcpy(dst, src, (size_t)n * sizeof(float));
}
static void FX_I(fx_stream_f64)(double *dst, const double *src, int64_t n)
{
    memcpy(dst, src, (size_t)n * sizeof(double));
}
#endif
#undef FX_STREAM_COPY

/* The cross-entropy partial sums of the n losses at l (l[0] at a group's
 * start; see _group_sums in _kernels.pyx): sp[8 (i / 64) + i % 8] = the sum
 * of the l[i] of that group and lane, in row order from 0.0.  Compiled per
 * instruction set: the lanes' adds are one vector add per 8 rows where the
 * vectors hold 8 doubles (4 or 2 elsewhere); in the baseline build the same
 * loops took ~45 us over 262144 losses on one thread. */
static FX_TARGET void FX_I(fx_group_sums)(const double *l, int64_t n, double *sp)
{
    for (int64_t b = 0; b < n; b += 64, sp += 8) {
        double acc[8] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
        if (n - b >= 64) {
            for (int i = 0; i < 8; i++)
                for (int j = 0; j < 8; j++)
                    acc[j] += l[b + 8 * i + j];
        } else {
            for (int64_t i = b; i < n; i++)
                acc[(i - b) & 7] += l[i];
        }
        for (int j = 0; j < 8; j++)
            sp[j] = acc[j];
    }
}

static FX_TARGET double
FX_I(fx_bcel_block_f32v)(const float *x, const float *y, const float *w,
                         const float *pw, int64_t L, int64_t i0, double scale,
                         const double *gout, double gscalar, float *lossp,
                         float *grad, int64_t n, int stream)
{
    double acc = 0.0;
    float buf[FX_BCE_CHUNK] __attribute__((aligned(64)));
    const float sc = (float)scale;
    int64_t j = L > 0 ? i0 % L : 0;
    for (int64_t i = 0; i < n;) {
        int64_t m = n - i < FX_BCE_CHUNK ? n - i : FX_BCE_CHUNK;
        if (pw && m > L - j)
            m = L - j;
        float *gd = grad ? (stream ? buf : grad + i) : NULL;
#define FX_B(HW, HP, HG, HL, HD)                                             \
    FX_I(fx_bcel32_impl)(x + i, y + i, w ? w + i : NULL, pw ? pw + j : NULL, \
                         sc, gout ? gout + i : NULL, gscalar, scale,         \
                         lossp ? lossp + i : NULL, gd, m, HW, HP, HG, HL, HD)
#define FX_B3(HW, HP)                                                        \
    (gout ? (lossp ? (gd ? FX_B(HW, HP, 1, 1, 1) : FX_B(HW, HP, 1, 1, 0))    \
                   : (gd ? FX_B(HW, HP, 1, 0, 1) : FX_B(HW, HP, 1, 0, 0)))   \
          : (lossp ? (gd ? FX_B(HW, HP, 0, 1, 1) : FX_B(HW, HP, 0, 1, 0))    \
                   : (gd ? FX_B(HW, HP, 0, 0, 1) : FX_B(HW, HP, 0, 0, 0))))
        acc += w ? (pw ? FX_B3(1, 1) : FX_B3(1, 0))
                 : (pw ? FX_B3(0, 1) : FX_B3(0, 0));
#undef FX_B3
#undef FX_B
        if (grad && stream)
            FX_I(fx_stream_f32)(grad + i, buf, m);
        i += m;
        if (pw && (j += m) == L)
            j = 0;
    }
    if (grad && stream)
        fx_sfence();
    return acc;
}

#define FX_T float
#define FX_TS f32
#define FX_EXPT FX_I(fx_expf_le0)
#define FX_FMAT FX_FMAF
#if FX_ISA_IS_AVX512
#define FX_SMALL8 fx_ce_run16_f32_avx512
#define FX_SM16 fx_sm_block16_f32_avx512
#elif FX_ISA_IS_AVX2
#define FX_SMALL8 FX_I(fx_ce_run8_f32)
#endif
#if FX_ISA_IS_AVX2
#define FX_SM8 FX_I(fx_sm_block8_f32)
#define FX_SUMEXP_V FX_I(fx_sumexp_f32v)
#endif
#define FX_STREAMT FX_I(fx_stream_f32)
#include "_kernels_rows.h"
#undef FX_STREAMT
#undef FX_SMALL8
#undef FX_SM8
#undef FX_SM16
#undef FX_SUMEXP_V
#undef FX_T
#undef FX_TS
#undef FX_EXPT
#undef FX_FMAT

#define FX_T double
#define FX_TS f64
#define FX_EXPT FX_I(fx_exp_le0)
#define FX_FMAT FX_FMA
#define FX_STREAMT FX_I(fx_stream_f64)
#if FX_ISA_IS_AVX2
#define FX_SUMEXP_V FX_I(fx_sumexp_f64v)
#endif
#include "_kernels_rows.h"
#undef FX_SUMEXP_V
#undef FX_STREAMT
#undef FX_T
#undef FX_TS
#undef FX_EXPT
#undef FX_FMAT

#undef FX_I
