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

/* float64 exp: Cephes' split of ln2, degree-13 Taylor polynomial of exp(r)
 * on |r| <= 0.347 (truncation 4e-18 relative, below half an ULP). */
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
    double p = 1.0 / 6227020800.0;                      /* 1/13! */
    p = FX_FMA(p, r, 1.0 / 479001600.0);
    p = FX_FMA(p, r, 1.0 / 39916800.0);
    p = FX_FMA(p, r, 1.0 / 3628800.0);
    p = FX_FMA(p, r, 1.0 / 362880.0);
    p = FX_FMA(p, r, 1.0 / 40320.0);
    p = FX_FMA(p, r, 1.0 / 5040.0);
    p = FX_FMA(p, r, 1.0 / 720.0);
    p = FX_FMA(p, r, 1.0 / 120.0);
    p = FX_FMA(p, r, 1.0 / 24.0);
    p = FX_FMA(p, r, 1.0 / 6.0);
    p = FX_FMA(p, r, 0.5);
    p = FX_FMA(p, r * r, r);
    p = p + 1.0;
    uint64_t b1 = n1b << 52, b2 = n2b << 52;
    double s1, s2;
    memcpy(&s1, &b1, sizeof s1);
    memcpy(&s2, &b2, sizeof s2);
    return (p * s1) * s2;
}

/* exp for arguments known to be <= 0, -inf or NaN (x - rowmax with the +inf
 * row handled by the caller): only the lower clamp, which gcc turns into one
 * vmaxps (NaN kept). */
static inline __attribute__((always_inline)) FX_TARGET float
FX_I(fx_expf_le0)(float x)
{
    float xc = x < -104.0f ? -104.0f : x;
    const float magic = 12582912.0f;
    float t = FX_FMAF(xc, 1.44269504088896341f, magic);
    float n = t - magic;
    uint32_t ti;
    memcpy(&ti, &t, sizeof ti);
    uint32_t u = ti - 0x4B400000u + 256u;
    uint32_t n1b = (u >> 1) - 128u + 127u;
    uint32_t n2b = u - (u >> 1) - 128u + 127u;
    float r = FX_FMAF(n, -0.693359375f, xc);
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

static inline __attribute__((always_inline)) FX_TARGET double
FX_I(fx_exp_le0)(double x)
{
    double xc = x < -746.0 ? -746.0 : x;
    const double magic = 6755399441055744.0;
    double t = FX_FMA(xc, 1.4426950408889634074, magic);
    double n = t - magic;
    uint64_t ti;
    memcpy(&ti, &t, sizeof ti);
    uint64_t u = ti - 0x4338000000000000ull + 2048u;
    uint64_t n1b = (u >> 1) - 1024u + 1023u;
    uint64_t n2b = u - (u >> 1) - 1024u + 1023u;
    double r = FX_FMA(n, -6.93145751953125E-1, xc);
    r = FX_FMA(n, -1.42860682030941723212E-6, r);
    double p = 1.0 / 6227020800.0;
    p = FX_FMA(p, r, 1.0 / 479001600.0);
    p = FX_FMA(p, r, 1.0 / 39916800.0);
    p = FX_FMA(p, r, 1.0 / 3628800.0);
    p = FX_FMA(p, r, 1.0 / 362880.0);
    p = FX_FMA(p, r, 1.0 / 40320.0);
    p = FX_FMA(p, r, 1.0 / 5040.0);
    p = FX_FMA(p, r, 1.0 / 720.0);
    p = FX_FMA(p, r, 1.0 / 120.0);
    p = FX_FMA(p, r, 1.0 / 24.0);
    p = FX_FMA(p, r, 1.0 / 6.0);
    p = FX_FMA(p, r, 0.5);
    p = FX_FMA(p, r * r, r);
    p = p + 1.0;
    uint64_t b1 = n1b << 52, b2 = n2b << 52;
    double s1, s2;
    memcpy(&s1, &b1, sizeof s1);
    memcpy(&s2, &b2, sizeof s2);
    return (p * s1) * s2;
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

#define FX_T float
#define FX_TS f32
#define FX_EXPT FX_I(fx_expf_le0)
#define FX_FMAT FX_FMAF
#include "_kernels_rows.h"
#undef FX_T
#undef FX_TS
#undef FX_EXPT
#undef FX_FMAT

#define FX_T double
#define FX_TS f64
#define FX_EXPT FX_I(fx_exp_le0)
#define FX_FMAT FX_FMA
#include "_kernels_rows.h"
#undef FX_T
#undef FX_TS
#undef FX_EXPT
#undef FX_FMAT

#undef FX_I
