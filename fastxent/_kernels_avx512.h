/* fastxent: few-class rows 16 at a time in 512-bit vectors (AVX-512 F, VL,
 * DQ, BW).  Included by _kernels_isa.h in its AVX-512 build only, after the
 * 8-row AVX2 blocks, which that build also has (compiled with EVEX encoding:
 * 32 vector registers, and exps whose 2**n is one vscalef).
 *
 * The same class-major scheme as fx_ce_cm8_front_f32 / fx_ce_cm8_back_f32 and
 * the same operations lane by lane, so the same results bit for bit: block
 * in by 4 x 4 transposes inside each 128-bit lane (rows r, r + 4, r + 8, r +
 * 12 of 4 columns in one vector), then xb[c] holds class c of the 16 rows;
 * max, exp, the sums, e_y and x_y one vector operation per class; the end
 * in float64 as two halves of 8 rows; gradient back the same way.  Every
 * load and store of a row's columns is masked to the row (a masked AVX-512
 * load or store touches no memory outside its mask), so nothing outside the
 * block is read or written at any C, and no gathers below 4 classes.
 *
 * Why: on a 2-core AMD EPYC (Zen 4: 512-bit operations take two passes
 * through 256-bit units, so the arithmetic per element is what it was) the
 * 8-row blocks took ~250 cycles each, well over what their arithmetic needs
 * at 2 vector multiply-adds a cycle: most likely they were bound by the
 * out-of-order window (a block is ~800 instructions; no performance
 * counters in that VM to confirm it), and a 512-bit operation does 16 lanes
 * for one instruction, so twice the rows fit in the window.  C harness, 1
 * thread, (262144, C) float32 fused loss and gradient, medians of 21, ns
 * per element, 8-row AVX2 -> 16-row AVX-512: C = 3 2.62 ->
 * 1.30; C = 4 1.30 -> 1.03; C = 7 1.15 -> 0.83; C = 10 0.94 -> 0.74; C = 16
 * 0.86 -> 0.84; loss only at C = 10 0.80 -> 0.57.  Masked 128-bit loads and
 * stores measured faster than plain ones where the mask is full (C = 10
 * 0.75 vs 0.83), so all of them are masked.
 */

#define FX_Z_TARGET __attribute__((target("avx2,fma,avx512f,avx512vl,avx512dq,avx512bw")))
#define FX_ZI static inline __attribute__((always_inline)) FX_Z_TARGET

/* fx_v_log_ge1 on 8 lanes (the same operations, so the same results) */
FX_ZI __m512d fx_v8_log_ge1_avx512(__m512d s, __m512d *inv)
{
    const __m512i b = _mm512_castpd_si512(s);
    __m512i ex = _mm512_sub_epi64(_mm512_srli_epi64(b, 52), _mm512_set1_epi64(1023));
    __m512d m = _mm512_castsi512_pd(_mm512_or_si512(
        _mm512_and_si512(b, _mm512_set1_epi64(0x000FFFFFFFFFFFFFll)),
        _mm512_set1_epi64(0x3FF0000000000000ll)));
    const __mmask8 big = _mm512_cmp_pd_mask(m, _mm512_set1_pd(1.4142135623730951), _CMP_GT_OQ);
    m = _mm512_mask_mul_pd(m, big, m, _mm512_set1_pd(0.5));
    ex = _mm512_mask_add_epi64(ex, big, ex, _mm512_set1_epi64(1));
    const __m512d k = _mm512_cvtepi64_pd(ex); /* exact: |ex| < 2**11 */
    const __m512d one = _mm512_set1_pd(1.0);
    const __m512d q = _mm512_div_pd(_mm512_sub_pd(m, one), _mm512_add_pd(m, one));
    if (inv)
        *inv = _mm512_div_pd(one, s);
    const __m512d z = _mm512_mul_pd(q, q), z2 = _mm512_mul_pd(z, z);
    const __m512d pa = _mm512_fmadd_pd(z, _mm512_set1_pd(1.0 / 5.0), _mm512_set1_pd(1.0 / 3.0));
    __m512d pb = _mm512_fmadd_pd(z, _mm512_set1_pd(1.0 / 9.0), _mm512_set1_pd(1.0 / 7.0));
    pb = _mm512_fmadd_pd(z2, _mm512_set1_pd(1.0 / 11.0), pb);
    const __m512d p = _mm512_fmadd_pd(pb, z2, pa);
    const __m512d q2 = _mm512_add_pd(q, q);
    const __m512d lo = _mm512_fmadd_pd(k, _mm512_set1_pd(1.9082149292705877000E-10),
                                       _mm512_mul_pd(_mm512_mul_pd(q2, z), p));
    return _mm512_add_pd(_mm512_fmadd_pd(k, _mm512_set1_pd(6.93147180369123816490E-1), q2), lo);
}

/* 4 x 4 transposes in each 128-bit lane of v[0..3] (in place): with v[r] =
 * [row r | row r + 4 | row r + 8 | row r + 12] of 4 columns, v[c] becomes
 * column c of rows 0-15 in order, and back */
FX_ZI void fx_tr4x4_avx512(__m512 *v)
{
    const __m512 t0 = _mm512_unpacklo_ps(v[0], v[1]), t1 = _mm512_unpackhi_ps(v[0], v[1]);
    const __m512 t2 = _mm512_unpacklo_ps(v[2], v[3]), t3 = _mm512_unpackhi_ps(v[2], v[3]);
    v[0] = _mm512_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
    v[1] = _mm512_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
    v[2] = _mm512_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
    v[3] = _mm512_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
}

/* the columns k (a mask of 4) at p, p + s, p + 2 s, p + 3 s as the four
 * 128-bit lanes (masked-off columns read as 0 and are not touched) */
FX_ZI __m512 fx_ld4_avx512(const float *p, int64_t s, __mmask8 k)
{
    __m512 v = _mm512_castps128_ps512(_mm_maskz_loadu_ps(k, p));
    v = _mm512_insertf32x4(v, _mm_maskz_loadu_ps(k, p + s), 1);
    v = _mm512_insertf32x4(v, _mm_maskz_loadu_ps(k, p + 2 * s), 2);
    return _mm512_insertf32x4(v, _mm_maskz_loadu_ps(k, p + 3 * s), 3);
}

/* the reverse: the four 128-bit lanes of v to p, p + s, ..., columns k only */
FX_ZI void fx_st4_avx512(float *p, int64_t s, __mmask8 k, __m512 v)
{
    _mm_mask_storeu_ps(p, k, _mm512_castps512_ps128(v));
    _mm_mask_storeu_ps(p + s, k, _mm512_extractf32x4_ps(v, 1));
    _mm_mask_storeu_ps(p + 2 * s, k, _mm512_extractf32x4_ps(v, 2));
    _mm_mask_storeu_ps(p + 3 * s, k, _mm512_extractf32x4_ps(v, 3));
}

/* the columns of group c0 (4 columns, fewer at the row's end) */
#define FX_COLS4(C, c0) ((C) - (c0) >= 4 ? (__mmask8)0xF : (__mmask8)((1u << ((C) - (c0))) - 1))

/* 16 rows of C <= FX_CM_CMAX floats at x into xb[c] (lane r = row r), their
 * maxima to mx (NaN skipped); 0 if a row's max is +-inf */
FX_ZI int fx_cm16_in_f32_avx512(const float *x, __m512 *xb, __m512 *mx, const int64_t C)
{
    for (int64_t c0 = 0; c0 < C; c0 += 4) {
        __m512 *v = xb + c0;
        for (int r = 0; r < 4; r++)
            v[r] = fx_ld4_avx512(x + r * C + c0, 4 * C, FX_COLS4(C, c0));
        fx_tr4x4_avx512(v);
    }
    __m512 m = _mm512_set1_ps(-INFINITY);
    for (int64_t c = 0; c < C; c++)
        m = _mm512_max_ps(xb[c], m); /* NaN skipped, as fx_rowmax */
    *mx = m;
    return !_mm512_cmp_ps_mask(_mm512_abs_ps(m), _mm512_set1_ps(INFINITY), _CMP_EQ_OQ);
}

/* eb[c] (lane r = row r) out to the 16 rows of C floats at g (eb clobbered) */
FX_ZI void fx_cm16_out_f32_avx512(__m512 *eb, float *g, const int64_t C)
{
    for (int64_t c = C; c < ((C + 3) & ~(int64_t)3); c++)
        eb[c] = _mm512_setzero_ps(); /* transposed into lanes never stored */
    for (int64_t c0 = 0; c0 < C; c0 += 4) {
        __m512 *v = eb + c0;
        fx_tr4x4_avx512(v);
        for (int r = 0; r < 4; r++)
            fx_st4_avx512(g + r * C + c0, 4 * C, FX_COLS4(C, c0), v[r]);
    }
}

FX_ZI __m512d fx_lo8_pd_avx512(__m512 v)
{
    return _mm512_cvtps_pd(_mm512_castps512_ps256(v));
}

FX_ZI __m512d fx_hi8_pd_avx512(__m512 v)
{
    return _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1));
}

FX_ZI __m512 fx_cvt16_avx512(__m512d lo, __m512d hi)
{
    return _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(lo)),
                              _mm512_cvtpd_ps(hi), 1);
}

/* fx_cm8_state for 16 rows (halves: rows 0-7 and 8-15) */
typedef struct {
    __m512 eb[FX_CM_CMAX + 4];
    __m512d S[2], R[2], ey[2], sh[2], xy[2];
    __m512i y32;
} fx_cm16_state;

/* fx_ce_cm8_front_f32 for 16 rows */
FX_ZI int fx_ce_cm16_front_f32_avx512(const float *x, const int64_t *t, int64_t ign,
                                      fx_cm16_state *st, const int64_t C)
{
    const __m512i t0 = _mm512_loadu_si512(t), t1 = _mm512_loadu_si512(t + 8);
    const __m512i ig = _mm512_set1_epi64(ign);
    if (_mm512_cmpeq_epi64_mask(t0, ig) | _mm512_cmpeq_epi64_mask(t1, ig))
        return 0;
    /* 0 <= t < C: the low 32 bits are the value */
    const __m512i y32 = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(t0)),
                                           _mm512_cvtepi64_epi32(t1), 1);
    __m512 xb[FX_CM_CMAX + 4], mx;
    if (!fx_cm16_in_f32_avx512(x, xb, &mx, C))
        return 0;
    __m512d R[2] = {_mm512_setzero_pd(), _mm512_setzero_pd()};
    __m512 ey = _mm512_setzero_ps(), xyf = _mm512_setzero_ps();
    for (int64_t c = 0; c < C; c += 2) {
        __m512 eo = _mm512_setzero_ps();
        for (int64_t k = c; k < c + 2 && k < C; k++) {
            const __m512 e = fx_v16_expf_le0_avx512(_mm512_sub_ps(xb[k], mx));
            const __mmask16 isy = _mm512_cmpeq_epi32_mask(y32, _mm512_set1_epi32((int)k));
            st->eb[k] = e;
            ey = _mm512_mask_mov_ps(ey, isy, e);
            xyf = _mm512_mask_mov_ps(xyf, isy, xb[k]);
            eo = _mm512_mask_add_ps(eo, (__mmask16)~isy, eo, e); /* e_y left out */
        }
        R[0] = _mm512_add_pd(R[0], fx_lo8_pd_avx512(eo));
        R[1] = _mm512_add_pd(R[1], fx_hi8_pd_avx512(eo));
    }
    st->ey[0] = fx_lo8_pd_avx512(ey);
    st->ey[1] = fx_hi8_pd_avx512(ey);
    st->S[0] = _mm512_add_pd(R[0], st->ey[0]);
    st->S[1] = _mm512_add_pd(R[1], st->ey[1]);
    /* NaN in a row: S is NaN (S >= 1 otherwise, finite as C e <= C) */
    if (_mm512_cmp_pd_mask(st->S[0], st->S[1], _CMP_UNORD_Q))
        return 0;
    st->R[0] = R[0];
    st->R[1] = R[1];
    st->sh[0] = fx_lo8_pd_avx512(mx);
    st->sh[1] = fx_hi8_pd_avx512(mx);
    st->xy[0] = _mm512_sub_pd(fx_lo8_pd_avx512(xyf), st->sh[0]);
    st->xy[1] = _mm512_sub_pd(fx_hi8_pd_avx512(xyf), st->sh[1]);
    st->y32 = y32;
    return 1;
}

/* fx_ce_end8 and fx_ce_cm8_back_f32 for 16 rows (0: the block must go
 * another way, as there) */
FX_ZI int fx_ce_cm16_back_f32_avx512(const fx_ce_args *A, const fx_cm16_state *st,
                                      const double *gp, double gscalar, double *lp, float *g,
                                      const int64_t C)
{
    const __m512d zero = _mm512_setzero_pd();
    const __m512d cs = _mm512_set1_pd(A->ce_scale);
    const int hz = A->z > 0.0, HG = g != NULL;
    __m512d wy[2] = {_mm512_set1_pd(1.0), _mm512_set1_pd(1.0)}, ks[2], dy[2];
    if (A->w) {
        const __m512 wyf = _mm512_i32gather_ps(st->y32, (const float *)A->w, 4);
        wy[0] = fx_lo8_pd_avx512(wyf);
        wy[1] = fx_hi8_pd_avx512(wyf);
    }
    for (int h = 0; h < 2; h++) {
        __m512d iS = zero;
        const __m512d L = fx_v8_log_ge1_avx512(st->S[h], HG ? &iS : NULL);
        const __m512d lse = _mm512_add_pd(st->sh[h], L);
        /* ce = w_y (log S - xy), exactly 0 where w_y == 0 */
        __m512d ce = _mm512_mul_pd(wy[h], _mm512_sub_pd(L, st->xy[h]));
        ce = _mm512_mask_mov_pd(ce, _mm512_cmp_pd_mask(wy[h], zero, _CMP_EQ_OQ), zero);
        __m512d l = _mm512_mul_pd(cs, ce);
        if (hz) {
            const __m512d zz = _mm512_set1_pd(A->z_scale * A->z);
            l = _mm512_add_pd(l, _mm512_mul_pd(_mm512_mul_pd(zz, lse), lse));
        }
        if (lp)
            _mm512_storeu_pd(lp + 8 * h, l);
        if (!HG)
            continue;
        const __m512d gn = gp ? _mm512_loadu_pd(gp + 8 * h) : _mm512_set1_pd(gscalar);
        const __m512d aw = _mm512_mul_pd(_mm512_mul_pd(gn, cs), wy[h]);
        __m512d k2 = zero;
        if (hz)
            k2 = _mm512_mul_pd(_mm512_mul_pd(_mm512_mul_pd(gn, _mm512_set1_pd(A->z_scale)),
                                             _mm512_set1_pd(2.0 * A->z)), lse);
        ks[h] = _mm512_mul_pd(_mm512_add_pd(aw, k2), iS);
        dy[h] = _mm512_mul_pd(_mm512_sub_pd(_mm512_mul_pd(st->ey[h], k2),
                                            _mm512_mul_pd(aw, st->R[h])), iS);
    }
    if (!HG)
        return 1;
    const __m512 ksT = fx_cvt16_avx512(ks[0], ks[1]);
    if (__builtin_expect(_mm512_fpclass_ps_mask(ksT, 0x18) != 0, 0)) /* +-inf: fx_any_inf8 */
        return 0;
    /* e_c k, and the target's entry put in by a select on y == c before
     * the transpose, rather than 16 scalar stores after it: the same bits,
     * simpler, and (262144, 10), 1 thread, the two builds alternated in
     * one process, faster in 7 of 8 pairs (-5.6% to +0.5% in the 5 quiet
     * ones).  The compare is the front's again: keeping the front's masks
     * in the state instead measured 3-4% slower (4 pairs, 2.04-2.09 vs
     * 2.11-2.16 ms) */
    const __m512 dyT = fx_cvt16_avx512(dy[0], dy[1]);
    __m512 eb[FX_CM_CMAX + 4];
    for (int64_t c = 0; c < C; c++)
        eb[c] = _mm512_mask_mov_ps(_mm512_mul_ps(st->eb[c], ksT),
                                   _mm512_cmpeq_epi32_mask(st->y32, _mm512_set1_epi32((int)c)),
                                   dyT);
    fx_cm16_out_f32_avx512(eb, g, C);
    return 1;
}

/* fx_ce_cm8_run_f32 for blocks of 16 rows from i to r1 (r1 - i a multiple
 * of 16), pipelined the same way: returns the first block that must go
 * another way, or r1 */
FX_ZI int64_t fx_ce_cm16_run_f32_avx512(const fx_ce_args *A, const float *x,
                                        const int64_t *t, int64_t ign, const double *gp,
                                        double gscalar, double *lp, float *g, int64_t i,
                                        int64_t r1, const int64_t C)
{
    fx_cm16_state st[2];
    int cur = 0;
    int64_t pend = -1; /* the block whose second half is due, in st[cur ^ 1] */
    for (;; i += 16) {
        const int ok = i < r1
                       && fx_ce_cm16_front_f32_avx512(x + i * C, t + i, ign, &st[cur], C);
        if (pend >= 0
            && !fx_ce_cm16_back_f32_avx512(A, &st[cur ^ 1], gp ? gp + pend : NULL,
                                           gscalar, lp ? lp + pend : NULL,
                                           g ? g + pend * C : NULL, C))
            return pend; /* (block i's front wrote nothing) */
        if (!ok)
            return i;
        pend = i;
        cur ^= 1;
    }
}

/* fx_ce_run8_f32 (same contract: rows i to r1, r1 - i a multiple of 8;
 * returns the first 8-row block the caller must do per row, or r1) with
 * 16-row blocks first: a 16-row block that cannot go whole (an ignored row,
 * a non-finite row max, a NaN, an inf gradient factor) goes as two 8-row
 * blocks, and so does a last group of 8 rows.  Above FX_CM_CMAX classes,
 * fx_ce_run8_f32's staged blocks. */
static FX_Z_TARGET int64_t
fx_ce_run16_f32_avx512(const fx_ce_args *A, const fx_small_idx *T, const float *x,
                       const int64_t *t, int64_t ign, const double *gp, double gscalar,
                       double *lp, float *g, int64_t i, int64_t r1)
{
    const int64_t C = A->C;
    if (C > FX_CM_CMAX)
        return fx_ce_run8_f32_avx512(A, T, x, t, ign, gp, gscalar, lp, g, i, r1);
    for (;;) {
        const int64_t e16 = i + ((r1 - i) & ~(int64_t)15);
        switch (C) {
#define FX_CM16(n)                                                           \
    case n:                                                                  \
        i = fx_ce_cm16_run_f32_avx512(A, x, t, ign, gp, gscalar, lp, g, i, e16, n); \
        break;
        FX_CM16(2) FX_CM16(3) FX_CM16(4) FX_CM16(5) FX_CM16(6) FX_CM16(7) FX_CM16(8)
        FX_CM16(9) FX_CM16(10) FX_CM16(11) FX_CM16(12) FX_CM16(13) FX_CM16(14)
        FX_CM16(15) FX_CM16(16)
#undef FX_CM16
        default:
            break;
        }
        if (i == r1)
            return r1;
        /* the 16 rows at i that did not go whole, or the last 8 */
        const int64_t e = r1 - i > 16 ? i + 16 : r1;
        const int64_t j = fx_ce_run8_f32_avx512(A, T, x, t, ign, gp, gscalar, lp, g, i, e);
        if (j < e)
            return j;
        i = e;
        if (i == r1)
            return r1;
    }
}

/* fx_sm_cm8_f32 for 16 rows */
FX_ZI int fx_sm_cm16_f32_avx512(const float *x, float *o, const int LOG, const int64_t C)
{
    __m512 xb[FX_CM_CMAX + 4], eb[FX_CM_CMAX + 4], mx;
    if (!fx_cm16_in_f32_avx512(x, xb, &mx, C))
        return 0;
    __m512d S[2] = {_mm512_setzero_pd(), _mm512_setzero_pd()};
    for (int64_t c = 0; c < C; c += 2) {
        __m512 es = _mm512_setzero_ps();
        for (int64_t k = c; k < c + 2 && k < C; k++) {
            eb[k] = fx_v16_expf_le0_avx512(_mm512_sub_ps(xb[k], mx));
            es = _mm512_add_ps(es, eb[k]);
        }
        S[0] = _mm512_add_pd(S[0], fx_lo8_pd_avx512(es));
        S[1] = _mm512_add_pd(S[1], fx_hi8_pd_avx512(es));
    }
    /* NaN in a row: S is NaN (S >= 1 otherwise, finite as C e <= C) */
    if (_mm512_cmp_pd_mask(S[0], S[1], _CMP_UNORD_Q))
        return 0;
    if (LOG) {
        const __m512 L = fx_cvt16_avx512(fx_v8_log_ge1_avx512(S[0], NULL),
                                         fx_v8_log_ge1_avx512(S[1], NULL));
        for (int64_t c = 0; c < C; c++)
            eb[c] = _mm512_sub_ps(_mm512_sub_ps(xb[c], mx), L);
    } else {
        const __m512d one = _mm512_set1_pd(1.0);
        const __m512 f = fx_cvt16_avx512(_mm512_div_pd(one, S[0]), _mm512_div_pd(one, S[1]));
        for (int64_t c = 0; c < C; c++)
            eb[c] = _mm512_mul_ps(eb[c], f);
    }
    fx_cm16_out_f32_avx512(eb, o, C);
    return 1;
}

/* fx_sm_block8_f32 for 16 rows (2 <= C <= FX_CM_CMAX; 0 otherwise) */
static FX_Z_TARGET int fx_sm_block16_f32_avx512(const float *x, float *o, int64_t C, int LOG)
{
    switch (C) {
#define FX_SM16(n)                                                           \
    case n:                                                                  \
        return LOG ? fx_sm_cm16_f32_avx512(x, o, 1, n) : fx_sm_cm16_f32_avx512(x, o, 0, n);
    FX_SM16(2) FX_SM16(3) FX_SM16(4) FX_SM16(5) FX_SM16(6) FX_SM16(7) FX_SM16(8)
    FX_SM16(9) FX_SM16(10) FX_SM16(11) FX_SM16(12) FX_SM16(13) FX_SM16(14)
    FX_SM16(15) FX_SM16(16)
#undef FX_SM16
    default:
        return 0;
    }
}

#undef FX_COLS4
#undef FX_ZI
