"""Fit the float32 exp polynomial of fastxent/_kernels_isa.h (fx_expf_le0).

exp(r) = 1 + r + r**2 q(r) on |r| <= ln(2)/2, q of degree 4, fitted to
minimise the largest *relative* error of exp by Lawson's iteratively
reweighted least squares (converges to the minimax fit).  Prints the
coefficients rounded to float32 and the fit's error (3.1e-9, far below
float32's 6e-8 half-ULP: the kernel's ~1 ULP comes from float32 evaluation).

    python tools/fit_expf.py
"""

import numpy as np


def fit(deg_q=4, iters=500):
    a = np.log(2.0) / 2
    r = np.cos(np.linspace(0.0, np.pi, 4001)) * a  # Chebyshev nodes
    f = np.exp(r)
    with np.errstate(invalid="ignore", divide="ignore"):
        target = np.where(np.abs(r) < 1e-12, 0.5, (f - 1 - r) / r**2)
    V = np.vander(r, deg_q + 1, increasing=True)
    w = np.ones_like(r)
    for _ in range(iters):
        W = np.sqrt(w) * r**2 / f  # relative error of exp = r**2 (q - target) / f
        c, *_ = np.linalg.lstsq(V * W[:, None], target * W, rcond=None)
        err = np.abs((V @ c - target) * r**2 / f)
        w = w * err
        w /= w.sum()
    return c, err.max()


if __name__ == "__main__":
    c, e = fit()
    for k, v in enumerate(c, start=2):
        print("FX_E32_C%d %.16gf" % (k, float(np.float32(v))))
    print("max relative error of the fit: %.2g" % e)
