/* fastxent: per-row kernels for one (dtype, ISA) pair.  Template header,
 * included by _kernels_isa.h with FX_T (float/double), FX_TS (f32/f64),
 * FX_EXPT (exp in FX_T), FX_FMAT (fma in FX_T).  No include guard.
 *
 * Row rule (see fastxent/_reference.py): m = max(xs), shift = m if finite else
 * 0, S = sum exp(xs - shift) accumulated in double, lse = shift + log(S).
 * One exp per element: pass 2 writes e = exp(xs - shift) into the output row
 * while summing it, pass 3 rescales that row in place.  Everything a row needs
 * from x is read in passes 1-2, before pass 2 overwrites it, so the gradient
 * may be written over the logits (grad_out is X).
 *
 * Softcap: xs = s * tanh(x / s) is computed once per element in double into a
 * per-thread scratch row of C doubles (the caller allocates it); passes 2-3
 * read xs from there, and the chain factor 1 - (xs / s)**2 in pass 3.
 */

#define FX_N(name) FX_CAT3(name, FX_TS, FX_ISA)
/* the row after row i of a run ending at r1 (row i itself for the last) */
#define FX_NEXT_ROW(x, i, r1, C) ((x) + ((i) + 1 < (r1) ? (i) + 1 : (i)) * (C))
#define FX_INL static inline __attribute__((always_inline)) FX_TARGET

/* ------------------------------------------------------------ passes */

/* pass 1: the row max (NaN is skipped here; it propagates through S) */
FX_INL FX_T FX_N(fx_rowmax)(const FX_T *x, int64_t n)
{
    FX_T m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (int64_t i = 0; i < n; i++)
        m = x[i] > m ? x[i] : m;
    return m;
}

/* pass 2 over [a, b): sum exp(x - sh) in double, e written to out unless
 * out is NULL */
FX_INL double FX_N(fx_sumexp_part)(const FX_T *x, FX_T sh, FX_T *out,
                                   int64_t a, int64_t b)
{
    double s = 0.0;
    if (out) {
#pragma omp simd reduction(+ : s)
        for (int64_t i = a; i < b; i++) {
            FX_T e = FX_EXPT(x[i] - sh);
            out[i] = e;
            s += (double)e;
        }
    } else {
#pragma omp simd reduction(+ : s)
        for (int64_t i = a; i < b; i++)
            s += (double)FX_EXPT(x[i] - sh);
    }
    return s;
}

/* pass 2: returns S = sum exp(x - sh); e written to out unless out is NULL.
 * y >= 0, the target: *rest = R, the sum of the e_c, c != y, summed apart
 * so that p_y - 1 = -R / S does not cancel when p_y ~ 1 (S - e_y loses R to
 * the rounding of S); y < 0: *rest = S.  The loss-only and the fused calls
 * both pass y, so they sum alike (equal losses, bit for bit).  pf: a row of
 * n elements the caller reads next (FX_SUMEXP_V prefetches it; x when there
 * is none). */
FX_INL double FX_N(fx_sumexp)(const FX_T *x, FX_T sh, FX_T *out, int64_t n,
                              int64_t y, const FX_T *pf, double *rest)
{
#ifdef FX_SUMEXP_V
    return FX_SUMEXP_V(x, sh, out, n, y, pf, rest);
#else
    (void)pf;
    if (y < 0 || y >= n)
        return *rest = FX_N(fx_sumexp_part)(x, sh, out, 0, n);
    const double R = FX_N(fx_sumexp_part)(x, sh, out, 0, y)
                     + FX_N(fx_sumexp_part)(x, sh, out, y + 1, n);
    const FX_T ey = FX_EXPT(x[y] - sh);
    if (out)
        out[y] = ey;
    *rest = R;
    return R + (double)ey;
#endif
}

/* The loops below take their optional operands as compile-time flags
 * (HW: weights present, HO: output row present): each public helper calls an
 * always_inline body with literal flags, so every combination is its own
 * branch-free loop.  A runtime `if (out)` inside a simd loop becomes an AVX2
 * masked load/store, and a masked access to a NULL pointer costs a microcode
 * assist of hundreds of cycles per vector (measured: 17 ns per element). */
#define FX_FLAGS2(f, A, B)                                                 \
    ((A) ? ((B) ? f(1, 1) : f(1, 0)) : ((B) ? f(0, 1) : f(0, 0)))

/* Pass 2 of rows with label smoothing: S, sm = sum_{w != 0} w (x - sh) and
 * *rest = R, the e_c of c != y summed apart (as fx_sumexp) */
FX_INL double FX_N(fx_sumexp_sm_impl)(const FX_T *x, FX_T sh, const FX_T *w,
                                      FX_T *out, int64_t n, int64_t y,
                                      double *sm_out, double *rest,
                                      const int HW, const int HO)
{
    double s = 0.0, sm = 0.0, r = 0.0;
    const double shd = (double)sh;
#pragma omp simd reduction(+ : s, sm, r)
    for (int64_t i = 0; i < n; i++) {
        double d = (double)x[i] - shd;
        FX_T e = FX_EXPT(x[i] - sh);
        if (HO)
            out[i] = e;
        s += (double)e;
        r += i != y ? (double)e : 0.0;
        if (HW) {
            double wi = (double)w[i];
            sm += wi != 0.0 ? wi * d : 0.0;
        } else {
            sm += d;
        }
    }
    *sm_out = sm;
    *rest = r;
    return s;
}

FX_INL double FX_N(fx_sumexp_sm)(const FX_T *x, FX_T sh, const FX_T *w,
                                 FX_T *out, int64_t n, int64_t y,
                                 double *sm_out, double *rest)
{
#define FX_C(HW, HO) FX_N(fx_sumexp_sm_impl)(x, sh, w, out, n, y, sm_out, rest, HW, HO)
    return FX_FLAGS2(FX_C, w != NULL, out != NULL);
#undef FX_C
}

/* softcap pass 1: xs[c] = s tanh(x_c / s) in double (-inf stays -inf),
 * returns max(xs) */
FX_INL double FX_N(fx_capfill)(const FX_T *x, double s, double *xs, int64_t n)
{
    double m = -INFINITY;
    const double inv = 1.0 / s;
#pragma omp simd reduction(max : m)
    for (int64_t i = 0; i < n; i++) {
        double xi = (double)x[i];
        double v = s * FX_I(fx_tanh)(xi * inv);
        v = xi == -INFINITY ? -INFINITY : v;
        xs[i] = v;
        m = v > m ? v : m;
    }
    return m;
}

/* softcap pass 2 on the double scratch row; e stored (as FX_T) when out;
 * with smooth, sm = sum_{w != 0} w (xs - sh); *rest = R (as fx_sumexp) */
FX_INL double FX_N(fx_capsumexp_impl)(const double *xs, double sh,
                                      const FX_T *w, FX_T *out, int64_t n,
                                      int64_t y, double *sm_out, double *rest,
                                      const int SM, const int HW, const int HO)
{
    double s = 0.0, sm = 0.0, r = 0.0;
#pragma omp simd reduction(+ : s, sm, r)
    for (int64_t i = 0; i < n; i++) {
        double d = xs[i] - sh;
        double e = FX_I(fx_exp_le0)(d);
        if (HO)
            out[i] = (FX_T)e;
        s += e;
        r += i != y ? e : 0.0;
        if (SM) {
            double wi = HW ? (double)w[i] : 1.0;
            sm += wi != 0.0 ? wi * d : 0.0;
        }
    }
    *sm_out = sm;
    *rest = r;
    return s;
}

FX_INL double FX_N(fx_capsumexp)(const double *xs, double sh, const FX_T *w,
                                 int smooth, FX_T *out, int64_t n, int64_t y,
                                 double *sm_out, double *rest)
{
    if (!smooth) {
        *sm_out = 0.0;
        return out ? FX_N(fx_capsumexp_impl)(xs, sh, w, out, n, y, sm_out, rest, 0, 0, 1)
                   : FX_N(fx_capsumexp_impl)(xs, sh, w, out, n, y, sm_out, rest, 0, 0, 0);
    }
#define FX_C(HW, HO) FX_N(fx_capsumexp_impl)(xs, sh, w, out, n, y, sm_out, rest, 1, HW, HO)
    return FX_FLAGS2(FX_C, w != NULL, out != NULL);
#undef FX_C
}

/* d(xs)/dx = 1 - tanh**2 = 1 - (xs/s)**2; 0 for a masked (-inf) class */
FX_INL double FX_N(fx_dcap)(double xs, double inv)
{
    double t = xs * inv;
    double dc = 1.0 - t * t;
    return xs == -INFINITY ? 0.0 : dc;
}

/* softcap pass 3: g_c = (e_c ks - cw w_c) * dxs/dx (as the reference: a NaN row stays NaN) */
FX_INL void FX_N(fx_cap_p3)(FX_T *g, const double *xs, const FX_T *w,
                            double ks, double cw, double inv, int64_t n,
                            const int HW)
{
#pragma omp simd
    for (int64_t i = 0; i < n; i++) {
        double wi = HW ? (double)w[i] : 1.0;
        double d = (double)g[i] * ks - cw * wi;
        double dc = FX_N(fx_dcap)(xs[i], inv);
        g[i] = (FX_T)(d * dc); /* dc = 0 at a masked class; NaN d stays NaN */
    }
}

/* ---------------------------------------------- cross-entropy, int target */

/* One row: returns the scaled loss; writes the gradient row into g unless g
 * is NULL (g may be x).  xs: C doubles of scratch, used only with softcap. */
static FX_TARGET double
FX_N(fx_ce_row)(const fx_ce_args *A, const FX_T *x, int64_t y, double gn,
                FX_T *g, double *xs, const FX_T *pf)
{
    const int64_t C = A->C;
    const FX_T *w = (const FX_T *)A->w;
    const double eps = A->eps, s = A->softcap;
    const int smooth = eps > 0.0;
    double shift, S, xy, sm = 0.0, R; /* R: sum of e_c, c != y */

    if (s == 0.0) {
        FX_T m = FX_N(fx_rowmax)(x, C);
        if (m == (FX_T)INFINITY) /* lse = +inf or NaN: a NaN row */
            goto nan_row;
        FX_T sh = isfinite(m) ? m : (FX_T)0;
        xy = (double)x[y] - (double)sh; /* read before x may be overwritten */
        if (smooth)
            S = FX_N(fx_sumexp_sm)(x, sh, w, g, C, y, &sm, &R);
        else
            S = FX_N(fx_sumexp)(x, sh, g, C, y, pf, &R);
        shift = (double)sh;
    } else {
        double m = FX_N(fx_capfill)(x, s, xs, C);
        shift = isfinite(m) ? m : 0.0;
        xy = xs[y] - shift;
        S = FX_N(fx_capsumexp)(xs, shift, w, smooth, g, C, y, &sm, &R);
    }
    const double logS = log(S);
    const double lse = shift + logS;
    if (!isfinite(lse)) {
    nan_row:
        if (g)
            for (int64_t i = 0; i < C; i++)
                g[i] = (FX_T)NAN;
        return NAN;
    }
    const double wy = w ? (double)w[y] : 1.0;
    /* nll = lse - xs_y; smooth = sum_c w_c (lse - xs_c) = wsum logS - sm */
    const double cnll = (1.0 - eps) * wy;  /* 0 * inf := 0 (zero coefficient) */
    double ce = cnll == 0.0 ? 0.0 : cnll * (logS - xy);
    if (smooth)
        ce = ce + eps / (double)C * (A->wsum * logS - sm);
    double loss = A->ce_scale * ce;
    if (A->z > 0.0)
        loss += A->z_scale * A->z * lse * lse;
    if (!g)
        return loss;

    /* d_c = p_c K - cw w_c - [c == y] a (1 - eps) w_y, p_c = e_c / S */
    const double a = gn * A->ce_scale, b = gn * A->z_scale;
    const double An = a * (1.0 - eps) * wy; /* the target's one-hot term */
    double k2 = 0.0;                        /* the rest of K */
    if (smooth)
        k2 += a * (eps / (double)C * A->wsum);
    if (A->z > 0.0)
        k2 += b * 2.0 * A->z * lse;
    const double K = An + k2;
    const double ks = K / S;
    const double cw = smooth ? a * eps / (double)C : 0.0;
    const double ey = (double)g[y];
    const FX_T ksT = (FX_T)ks;
    if (s == 0.0) {
        if (!smooth) {
            if (isinf(ksT) && isfinite(ks)) {
                /* ks beyond the float's range: ksT is inf, but e_c ks need
                 * not be (and 0 * inf is NaN); rounded once from double */
                for (int64_t i = 0; i < C; i++)
                    g[i] = (FX_T)((double)g[i] * ks);
            } else {
#pragma omp simd
                for (int64_t i = 0; i < C; i++)
                    g[i] = g[i] * ksT;
            }
        } else if (w) {
            /* in double: p_c K and cw w_c cancel at the argmax (e = 1) when
             * the target's weight is 0 */
#pragma omp simd
            for (int64_t i = 0; i < C; i++)
                g[i] = (FX_T)((double)g[i] * ks - cw * (double)w[i]);
        } else {
#pragma omp simd
            for (int64_t i = 0; i < C; i++)
                g[i] = (FX_T)((double)g[i] * ks - cw);
        }
    } else {
        if (smooth && w)
            FX_N(fx_cap_p3)(g, xs, w, ks, cw, 1.0 / s, C, 1);
        else
            FX_N(fx_cap_p3)(g, xs, w, ks, smooth ? cw : 0.0, 1.0 / s, C, 0);
    }
    /* the target element in double: e_y K / S - An = e_y k2 / S - An R / S
     * with R summed apart by pass 2 (S - e_y would cancel when p_y ~ 1) */
    double dy = ey * (k2 / S) - An * (R / S) - cw * wy;
    if (s != 0.0) {
        double dc = FX_N(fx_dcap)(xs[y], 1.0 / s);
        dy = dy * dc;
    }
    g[y] = (FX_T)dy;
    return loss;
}


/* Rows [r0, r1) of an integer-target cross-entropy: one call per thread (no
 * per-row dispatch).  Ignored rows get 0 loss and a zero gradient row. */
static FX_TARGET void
FX_N(fx_ce_rows)(const fx_ce_args *A, const FX_T *x, const int64_t *t,
                 int64_t ign, const double *gp, double gscalar, double *lp,
                 FX_T *g, int64_t r0, int64_t r1, double *xs, FX_T *gs)
{
    const int64_t C = A->C;
    int64_t i = r0;
    if (gs && g) {
        /* streamed gradient: each row computed into the cache-resident
         * scratch row gs, then copied out with non-temporal stores (no
         * read-for-ownership of the gradient) */
        for (; i < r1; i++) {
            double loss = 0.0;
            if (t[i] == ign || (A->softcap != 0.0 && xs == NULL)) {
                memset(g + i * C, 0, (size_t)C * sizeof(FX_T));
            } else {
                loss = FX_N(fx_ce_row)(A, x + i * C, t[i],
                                       gp ? gp[i] : gscalar, gs, xs,
                                       FX_NEXT_ROW(x, i, r1, C));
                FX_STREAMT(g + i * C, gs, C);
            }
            if (lp)
                lp[i] = loss;
        }
        fx_sfence();
        return;
    }
#ifdef FX_SMALL8
    if (A->softcap == 0.0 && A->eps == 0.0 && C >= 2 && C <= FX_SMALL_CMAX
        && r1 - r0 >= 8) {
        fx_small_idx T;
        FX_I(fx_small_idx_init)(&T, C);
        const int64_t rb = r0 + ((r1 - r0) & ~(int64_t)7); /* whole blocks */
        while (i < rb) {
            i = FX_SMALL8(A, &T, x, t, ign, gp, gscalar, lp, g, i, rb);
            if (i == rb)
                break;
            /* the block at i goes per row, then the blocks after it */
            for (int64_t k = i; k < i + 8; k++) {
                double loss = 0.0;
                if (t[k] == ign) {
                    if (g)
                        memset(g + k * C, 0, (size_t)C * sizeof(FX_T));
                } else {
                    loss = FX_N(fx_ce_row)(A, x + k * C, t[k],
                                           gp ? gp[k] : gscalar,
                                           g ? g + k * C : NULL, xs,
                                           x + k * C);
                }
                if (lp)
                    lp[k] = loss;
            }
            i += 8;
        }
    }
#endif
    for (; i < r1; i++) {
        double loss = 0.0;
        if (t[i] == ign || (A->softcap != 0.0 && xs == NULL)) {
            if (g)
                memset(g + i * C, 0, (size_t)C * sizeof(FX_T));
        } else {
            loss = FX_N(fx_ce_row)(A, x + i * C, t[i], gp ? gp[i] : gscalar,
                                   g ? g + i * C : NULL, xs,
                                   FX_NEXT_ROW(x, i, r1, C));
        }
        if (lp)
            lp[i] = loss;
    }
}

/* --------------------------------------------- cross-entropy, soft target */

/* soft pass 2: S = sum e (e stored when HG), wqs = sum wq, sm = sum_{wq != 0}
 * wq (xs - shift); xs read from x (CAP = 0) or from the scratch row (CAP = 1) */
FX_INL double FX_N(fx_soft_p2)(const FX_T *x, const double *xs, const FX_T *P,
                               const FX_T *w, FX_T sh, double shd, double c1,
                               double c0, FX_T *g, int64_t n, double *wqs_out,
                               double *sm_out, const int CAP, const int HW,
                               const int HG)
{
    double S = 0.0, wqs = 0.0, sm = 0.0;
#pragma omp simd reduction(+ : S, wqs, sm)
    for (int64_t i = 0; i < n; i++) {
        double wq = c1 * (double)P[i] + c0;
        if (HW)
            wq *= (double)w[i];
        double d, e;
        if (CAP) {
            d = xs[i] - shd;
            e = FX_I(fx_exp_le0)(d);
            if (HG)
                g[i] = (FX_T)e;
        } else {
            d = (double)x[i] - shd;
            FX_T et = FX_EXPT(x[i] - sh);
            if (HG)
                g[i] = et;
            e = (double)et;
        }
        S += e;
        wqs += wq;
        sm += wq != 0.0 ? wq * d : 0.0;
    }
    *wqs_out = wqs;
    *sm_out = sm;
    return S;
}

/* soft pass 3: g_c = (e_c ks - a wq_c) [* dxs/dx] */
FX_INL void FX_N(fx_soft_p3)(FX_T *g, const double *xs, const FX_T *P,
                             const FX_T *w, double c1, double c0, double ks,
                             double a, double inv, int64_t n, const int CAP,
                             const int HW)
{
#pragma omp simd
    for (int64_t i = 0; i < n; i++) {
        double wq = c1 * (double)P[i] + c0;
        if (HW)
            wq *= (double)w[i];
        double d = (double)g[i] * ks - a * wq;
        if (CAP) {
            double dc = FX_N(fx_dcap)(xs[i], inv);
            d = d * dc; /* dc = 0 at a masked class; NaN stays NaN */
        }
        g[i] = (FX_T)d;
    }
}

/* q_c = (1 - eps) P_c + eps / C, wq_c = w_c q_c.  Loss = -sum wq (xs - lse)
 * = wqsum logS - sum_{wq != 0} wq (xs - shift): two non-negative terms.
 * Gradient d_c = p_c K - a wq_c, K = a wqsum + 2 b z lse. */
static FX_TARGET double
FX_N(fx_soft_row)(const fx_ce_args *A, const FX_T *x, const FX_T *P, double gn,
                  FX_T *g, double *xs)
{
    const int64_t C = A->C;
    const FX_T *w = (const FX_T *)A->w;
    const double eps = A->eps, s = A->softcap;
    const double c1 = 1.0 - eps, c0 = eps / (double)C;
    double shift, S, wqs, sm;

    if (s == 0.0) {
        FX_T m = FX_N(fx_rowmax)(x, C);
        if (m == (FX_T)INFINITY)
            goto nan_row;
        FX_T sh = isfinite(m) ? m : (FX_T)0;
        shift = (double)sh;
#define FX_C(HW, HG) FX_N(fx_soft_p2)(x, xs, P, w, sh, shift, c1, c0, g, C, &wqs, &sm, 0, HW, HG)
        S = FX_FLAGS2(FX_C, w != NULL, g != NULL);
#undef FX_C
    } else {
        double m = FX_N(fx_capfill)(x, s, xs, C);
        shift = isfinite(m) ? m : 0.0;
#define FX_C(HW, HG) FX_N(fx_soft_p2)(x, xs, P, w, (FX_T)0, shift, c1, c0, g, C, &wqs, &sm, 1, HW, HG)
        S = FX_FLAGS2(FX_C, w != NULL, g != NULL);
#undef FX_C
    }
    const double logS = log(S);
    const double lse = shift + logS;
    if (!isfinite(lse)) {
    nan_row:
        if (g)
            for (int64_t i = 0; i < C; i++)
                g[i] = (FX_T)NAN;
        return NAN;
    }
    const double ce = wqs * logS - sm;
    double loss = A->ce_scale * ce;
    if (A->z > 0.0)
        loss += A->z_scale * A->z * lse * lse;
    if (!g)
        return loss;
    const double a = gn * A->ce_scale, b = gn * A->z_scale;
    double K = a * wqs;
    if (A->z > 0.0)
        K += b * 2.0 * A->z * lse;
    const double ks = K / S;
    const double inv = s != 0.0 ? 1.0 / s : 0.0;
    if (s == 0.0) {
        if (w) FX_N(fx_soft_p3)(g, xs, P, w, c1, c0, ks, a, inv, C, 0, 1);
        else FX_N(fx_soft_p3)(g, xs, P, w, c1, c0, ks, a, inv, C, 0, 0);
    } else {
        if (w) FX_N(fx_soft_p3)(g, xs, P, w, c1, c0, ks, a, inv, C, 1, 1);
        else FX_N(fx_soft_p3)(g, xs, P, w, c1, c0, ks, a, inv, C, 1, 0);
    }
    return loss;
}

/* ---------------------------------------------------------- softmax family */

/* A row holding +inf: lse is +inf, or NaN when the row also holds a NaN. */
FX_INL double FX_N(fx_lse_inf_row)(const FX_T *x, int64_t C)
{
    for (int64_t i = 0; i < C; i++)
        if (isnan(x[i]))
            return NAN;
    return INFINITY;
}

static FX_TARGET double FX_N(fx_lse_row)(const FX_T *x, int64_t C,
                                         const FX_T *pf)
{
    FX_T m = FX_N(fx_rowmax)(x, C);
    if (m == (FX_T)INFINITY)
        return FX_N(fx_lse_inf_row)(x, C);
    FX_T sh = isfinite(m) ? m : (FX_T)0;
    double R;
    return (double)sh + log(FX_N(fx_sumexp)(x, sh, NULL, C, -1, pf, &R));
}

static FX_TARGET void FX_N(fx_softmax_row)(const FX_T *x, FX_T *out, int64_t C,
                                           const FX_T *pf)
{
    FX_T m = FX_N(fx_rowmax)(x, C);
    if (m == (FX_T)INFINITY) {
        for (int64_t i = 0; i < C; i++)
            out[i] = (FX_T)NAN;
        return;
    }
    FX_T sh = isfinite(m) ? m : (FX_T)0;
    double R;
    double S = FX_N(fx_sumexp)(x, sh, out, C, -1, pf, &R);
    double lse = (double)sh + log(S);
    const FX_T f = isfinite(lse) ? (FX_T)(1.0 / S) : (FX_T)NAN;
#pragma omp simd
    for (int64_t i = 0; i < C; i++)
        out[i] = out[i] * f;  /* NaN * 0 = NaN: a non-finite row is all NaN */
}

/* out = (x - shift) - logS: exact in structure even where |shift| >> logS
 * (x - (float)lse would lose logS to the rounding of lse).  Unless out is
 * x, pass 2 stores its exps into out, to be overwritten: the output row's
 * lines then come in (read for ownership) while the exps compute, instead
 * of stalling the last pass, which finds them in cache (the same sums: the
 * store changes no arithmetic).  Measured ((4096, 32000) float32, medians
 * of 15 alternations in one process): 67-68 -> 61 ms on 2 threads, 119 ->
 * 95 ms on 1; (1024, 128256) 70.6 -> 67.2; (8192, 1000) 3.8 -> 3.2. */
static FX_TARGET void FX_N(fx_log_softmax_row)(const FX_T *x, FX_T *out,
                                               int64_t C, const FX_T *pf)
{
    FX_T m = FX_N(fx_rowmax)(x, C);
    FX_T sh = isfinite(m) ? m : (FX_T)0;
    double R;
    FX_T *e = out != x ? out : NULL;
    double logS = m == (FX_T)INFINITY ? (double)NAN
                                      : log(FX_N(fx_sumexp)(x, sh, e, C, -1, pf, &R));
    if (!isfinite((double)sh + logS)) {
        for (int64_t i = 0; i < C; i++)
            out[i] = (FX_T)NAN;
        return;
    }
    const FX_T l = (FX_T)logS;
#pragma omp simd
    for (int64_t i = 0; i < C; i++)
        out[i] = (x[i] - sh) - l;
}

/* one row of softmax, or of log_softmax with LOG (a compile-time flag) */
FX_INL void FX_N(fx_sm_row)(const FX_T *x, FX_T *out, int64_t C,
                            const FX_T *pf, const int LOG)
{
    if (LOG)
        FX_N(fx_log_softmax_row)(x, out, C, pf);
    else
        FX_N(fx_softmax_row)(x, out, C, pf);
}

#ifdef FX_SM8
/* the 8 rows at row i: one few-class block, or per row if it declines */
FX_INL void FX_N(fx_sm_block8_or_rows)(const fx_small_idx *T, const FX_T *x, FX_T *out,
                                       int64_t C, int64_t i, const int LOG)
{
    if (FX_SM8(T, x + i * C, out + i * C, C, LOG))
        return;
    for (int64_t k = i; k < i + 8; k++)
        FX_N(fx_sm_row)(x + k * C, out + k * C, C, x + k * C, LOG);
}

/* rows [r0, r1) of softmax (log_softmax with LOG) 8 at a time while C has a
 * few-class block (FX_SM8), a block it declines per row; returns the first
 * row left to the caller */
FX_INL int64_t FX_N(fx_sm_rows8)(const FX_T *x, FX_T *out, int64_t C,
                                 int64_t r0, int64_t r1, const int LOG)
{
    int64_t i = r0;
    if (C < 2 || C > FX_CM_CMAX || r1 - r0 < 8)
        return i;
    fx_small_idx T;
    FX_I(fx_small_idx_init)(&T, C);
#ifdef FX_SM16
    /* 16 rows at once first; 16 that cannot go whole go as two blocks of 8 */
    for (; i + 16 <= r1; i += 16) {
        if (FX_SM16(x + i * C, out + i * C, C, LOG))
            continue;
        for (int64_t h = i; h < i + 16; h += 8)
            FX_N(fx_sm_block8_or_rows)(&T, x, out, C, h, LOG);
    }
#endif
    for (; i + 8 <= r1; i += 8)
        FX_N(fx_sm_block8_or_rows)(&T, x, out, C, i, LOG);
    return i;
}
#endif

/* rows [r0, r1) of softmax (log_softmax with LOG); with gs (a scratch row)
 * the output rows are streamed */
FX_INL void FX_N(fx_sm_rows)(const FX_T *x, FX_T *out, int64_t C, int64_t r0,
                             int64_t r1, FX_T *gs, const int LOG)
{
    int64_t i = r0;
#ifdef FX_SM8
    if (!gs)
        i = FX_N(fx_sm_rows8)(x, out, C, r0, r1, LOG);
#endif
    for (; i < r1; i++) {
        if (gs) {
            FX_N(fx_sm_row)(x + i * C, gs, C, FX_NEXT_ROW(x, i, r1, C), LOG);
            FX_STREAMT(out + i * C, gs, C);
        } else {
            FX_N(fx_sm_row)(x + i * C, out + i * C, C, FX_NEXT_ROW(x, i, r1, C), LOG);
        }
    }
    if (gs)
        fx_sfence();
}

static FX_TARGET void FX_N(fx_softmax_rows)(const FX_T *x, FX_T *out,
                                            int64_t C, int64_t r0, int64_t r1,
                                            FX_T *gs)
{
    FX_N(fx_sm_rows)(x, out, C, r0, r1, gs, 0);
}

static FX_TARGET void FX_N(fx_log_softmax_rows)(const FX_T *x, FX_T *out,
                                                int64_t C, int64_t r0,
                                                int64_t r1, FX_T *gs)
{
    FX_N(fx_sm_rows)(x, out, C, r0, r1, gs, 1);
}

/* ------------------------------------------------ binary cross-entropy */

/* One block of n elements (pointers already offset to the block start).
 * Evaluated in double with libm (as the float64 reference); returns the sum of
 * scale * l_i over the block.  lossp / grad may be NULL; gout NULL means
 * gscalar; w NULL means 1. */
static FX_TARGET double
FX_N(fx_bce_block)(const FX_T *p, const FX_T *y, const FX_T *w, double scale,
                   const double *gout, double gscalar, FX_T *lossp, FX_T *grad,
                   int64_t n)
{
    double acc = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double pi = (double)p[i], yi = (double)y[i];
        double wi = w ? (double)w[i] : 1.0;
        double lp = log(pi), l1p = log1p(-pi);
        lp = lp < -100.0 ? -100.0 : lp;    /* np.maximum: NaN propagates */
        l1p = l1p < -100.0 ? -100.0 : l1p;
        double l = scale * (-wi * (yi * lp + (1.0 - yi) * l1p));
        if (lossp)
            lossp[i] = (FX_T)l;
        acc += l;
        if (grad) {
            double g = (gout ? gout[i] : gscalar) * scale;
            double den = pi * (1.0 - pi);
            den = den < 1e-12 ? 1e-12 : den;
            grad[i] = (FX_T)(g * wi * (pi - yi) / den);
        }
    }
    return acc;
}

/* log(1 + exp(x)) without overflow; NaN propagates */
static inline FX_TARGET double FX_N(fx_softplus)(double x)
{
    double mx = x < 0.0 ? 0.0 : x;
    return mx + log1p(exp(-fabs(x)));
}

static inline FX_TARGET double FX_N(fx_sigmoid)(double x)
{
    double e = exp(-fabs(x));
    return x >= 0.0 ? 1.0 / (1.0 + e) : e / (1.0 + e);
}

/* bce on logits; pw (length L) indexed by (i0 + i) % L */
static FX_TARGET double
FX_N(fx_bcel_block)(const FX_T *x, const FX_T *y, const FX_T *w,
                    const FX_T *pw, int64_t L, int64_t i0, double scale,
                    const double *gout, double gscalar, FX_T *lossp,
                    FX_T *grad, int64_t n, int stream)
{
    double acc = 0.0;
    (void)stream;
    int64_t j = L > 0 ? i0 % L : 0;
    for (int64_t i = 0; i < n; i++) {
        double xi = (double)x[i], yi = (double)y[i];
        double wi = w ? (double)w[i] : 1.0;
        double pwi = pw ? (double)pw[j] : 1.0;
        if (pw && ++j == L)
            j = 0;
        double cpos = pwi * yi, cneg = 1.0 - yi;
        double tpos = cpos == 0.0 ? 0.0 : cpos * FX_N(fx_softplus)(-xi);
        double tneg = cneg == 0.0 ? 0.0 : cneg * FX_N(fx_softplus)(xi);
        double l = scale * (wi * (tpos + tneg));
        if (lossp)
            lossp[i] = (FX_T)l;
        acc += l;
        if (grad) {
            double g = (gout ? gout[i] : gscalar) * scale;
            grad[i] = (FX_T)(g * wi * (cneg * FX_N(fx_sigmoid)(xi)
                                       - cpos * FX_N(fx_sigmoid)(-xi)));
        }
    }
    return acc;
}

#undef FX_N
#undef FX_INL
#undef FX_FLAGS2
