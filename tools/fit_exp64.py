"""Fit the float64 exp polynomial of fastxent/_kernels_isa.h and _numba.py.

exp(r) = 1 + r + r**2 q(r) on |r| <= ln(2)/2 (the Cody-Waite reduced
argument), q of degree 9: the Chebyshev interpolant of
(exp(r) - 1 - r) / r**2 at 60 digits (mpmath.chebyfit; near-minimax), its
coefficients rounded to float64.  Prints them and the largest relative error
of exp with the rounded coefficients in exact arithmetic over 4001 points:
1.6e-17, below a quarter of float64's half-ULP (the kernels' ~1 ULP comes
from float64 evaluation).  Degree 8 gives 1.2e-15 (too coarse); the degree-13
Taylor polynomial this replaces had 4e-18 with two more multiply-adds.

    python tools/fit_exp64.py
"""

import mpmath as mp


def fit(deg_q=9):
    mp.mp.dps = 60
    a = mp.log(2) / 2 * mp.mpf("1.0001")

    def g(r):
        return mp.mpf(1) / 2 if r == 0 else (mp.exp(r) - 1 - r) / r**2

    poly = mp.chebyfit(g, [-a, a], deg_q + 1)
    c = [float(v) for v in poly[::-1]]  # increasing powers, rounded
    worst = mp.mpf(0)
    for r in mp.linspace(-a, a, 4001):
        q = mp.mpf(0)
        for v in c[::-1]:
            q = q * r + mp.mpf(v)
        worst = max(worst, abs((1 + r + r * r * q) / mp.exp(r) - 1))
    return c, float(worst)


if __name__ == "__main__":
    c, e = fit()
    for k, v in enumerate(c, start=2):
        print("FX_E64_C%d %.17g" % (k, v))
    print("max relative error of the fit: %.2g" % e)
