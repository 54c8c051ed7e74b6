"""Fit the float32 log1p polynomial of fastxent/_kernels_isa.h (fx_log1pf01).

log1p(e) for e in [0, 1] is 2 atanh(s) with s = e / (2 + e) in [0, 1/3]:
2 s + 2 s z P(z), z = s**2 in [0, 1/9], P(z) ~ 1/3 + z/5 + z**2/7 + ...  P of
degree 3, fitted to minimise the largest relative error of log1p (~ z times
the error of P) by Lawson's iteratively reweighted least squares (converges to
the minimax fit).  Prints the coefficients rounded to float32 and the fit's
error (~4.6e-9, against float32's 6e-8 half-ULP: the kernels' ~2 ULP come
from float32 evaluation, the same as the series to s**15 they replaced).

    python tools/fit_log1pf.py
"""

import numpy as np


def fit(deg=3, iters=500):
    z = (np.cos(np.linspace(0.0, np.pi, 4001)) + 1.0) / 18.0  # Chebyshev nodes
    z = z[z > 0.0]
    s = np.sqrt(z)
    target = (np.arctanh(s) / s - 1.0) / z
    V = np.vander(z, deg + 1, increasing=True)
    w = np.ones_like(z)
    for _ in range(iters):
        W = np.sqrt(w) * z  # relative error of log1p ~ z (P - target)
        c, *_ = np.linalg.lstsq(V * W[:, None], target * W, rcond=None)
        err = np.abs((V @ c - target) * z)
        w = w * err
        w /= w.sum()
    return c, err.max()


if __name__ == "__main__":
    c, e = fit()
    for k, v in enumerate(c):
        print("P%d %.9gf" % (k, float(np.float32(v))))
    print("max relative error of the fit: %.2g" % e)
