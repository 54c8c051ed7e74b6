"""Independent float64 oracles for the tests, written from the textbook formulas.

Nothing here imports fastxent: every expected value comes from scipy.special
(log_softmax / logsumexp) or from numpy evaluating SPEC.md's formulas in
float64. The tolerances of SPEC.md ("Dtypes and precision") live here too.
"""

from __future__ import annotations

import numpy as np
from scipy import special

# SPEC: float32 loss within 1e-6 relative (1e-6 absolute below 1), gradients
# within 2e-6 of the row's largest reference gradient; float64 1e-12 for both.
LOSS_TOL = {np.float16: 1e-6, np.float32: 1e-6, np.float64: 1e-12}
GRAD_TOL = {np.float16: 2e-6, np.float32: 2e-6, np.float64: 1e-12}

#: The dtype results come back in, per input dtype (float16 runs in float32).
COMPUTE_DTYPE = {np.float16: np.float32, np.float32: np.float32, np.float64: np.float64}


def _key(dtype):
    return np.dtype(dtype).type


def loss_tol(dtype):
    return LOSS_TOL[_key(dtype)]


def grad_tol(dtype):
    return GRAD_TOL[_key(dtype)]


def compute_dtype(dtype):
    return np.dtype(COMPUTE_DTYPE[_key(dtype)])


# ------------------------------------------------------------ comparisons


def assert_rowloss_close(actual, expected, tol, err_msg=""):
    """SPEC per-row loss test: ``|a - e| <= tol * max(1, |e|)``; non-finite must match."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape, err_msg)
    fin = np.isfinite(expected)
    # inf must be the same inf, NaN must be NaN
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected), err_msg=err_msg + " (NaN pattern)")
    np.testing.assert_array_equal(actual[np.isinf(expected)], expected[np.isinf(expected)], err_msg=err_msg)
    err = np.abs(actual[fin] - expected[fin])
    bound = tol * np.maximum(1.0, np.abs(expected[fin]))
    bad = err > bound
    if np.any(bad):
        i = np.flatnonzero(bad)[0]
        raise AssertionError(
            "%s: %d of %d losses off; first: actual %r expected %r (err %.3g > %.3g)"
            % (err_msg, bad.sum(), bad.size, actual[fin][i], expected[fin][i], err[i], bound[i])
        )


def assert_grad_close(actual, expected, tol, axis=-1, err_msg=""):
    """SPEC gradient test: each row within ``tol * max_c |expected row|``.

    Rows are taken along ``axis`` (the class axis). A reference row of exact
    zeros must come back as exact zeros; NaN patterns must match.
    """
    actual = np.moveaxis(np.asarray(actual, dtype=np.float64), axis, -1)
    expected = np.moveaxis(np.asarray(expected, dtype=np.float64), axis, -1)
    assert actual.shape == expected.shape, (actual.shape, expected.shape, err_msg)
    C = expected.shape[-1] if expected.ndim else 1
    a = actual.reshape(-1, C)
    e = expected.reshape(-1, C)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(e), err_msg=err_msg + " (NaN pattern)")
    with np.errstate(invalid="ignore"):
        scale = np.nanmax(np.abs(np.where(np.isfinite(e), e, np.nan)), axis=1, initial=0.0, keepdims=True) if e.size else 0
    fin = np.isfinite(e)
    err = np.where(fin, np.abs(a - e), 0.0)
    bound = tol * scale
    bad = err > bound
    if np.any(bad):
        r, c = np.argwhere(bad)[0]
        raise AssertionError(
            "%s: %d gradient entries off; first row %d col %d: actual %r expected %r "
            "(err %.3g > %.3g = tol * row max %.3g)"
            % (err_msg, bad.sum(), r, c, a[r, c], e[r, c], err[r, c], bound[r, 0], scale[r, 0])
        )


# ------------------------------------------------------------ softmax family


def _rows(x, axis):
    """float64 copy with the class axis last, flattened to (R, C), and the moved shape."""
    x = np.moveaxis(np.asarray(x, dtype=np.float64), axis, -1)
    return x.reshape(-1, x.shape[-1]), x.shape


def logsumexp(x, axis=-1):
    with np.errstate(all="ignore"):
        return special.logsumexp(np.asarray(x, dtype=np.float64), axis=axis)


def softmax(x, axis=-1):
    with np.errstate(all="ignore"):
        return special.softmax(np.asarray(x, dtype=np.float64), axis=axis)


def log_softmax(x, axis=-1):
    with np.errstate(all="ignore"):
        return special.log_softmax(np.asarray(x, dtype=np.float64), axis=axis)


# ------------------------------------------------------------ cross-entropy


def _xlogy_sum(coef, logp):
    """``sum_c coef_c * logp_c`` with terms whose coefficient is 0 taken as 0."""
    with np.errstate(invalid="ignore"):
        return np.sum(np.where(coef == 0, 0.0, coef * logp), axis=-1)


def cross_entropy(logits, target, *, axis=-1, weight=None, ignore_index=-100,
                  label_smoothing=0.0, z_loss=0.0, softcap=None, reduction="mean",
                  grad_output=None):
    """float64 loss and gradient of SPEC's cross-entropy, from the formulas.

    Returns ``(loss, grad)`` with ``loss`` a float for "mean"/"sum" and an
    array shaped like the per-row loss for "none"; ``grad`` shaped like logits.
    """
    logits = np.asarray(logits)
    axis = axis % logits.ndim
    X, moved_shape = _rows(logits, axis)
    R, C = X.shape
    eps, z = float(label_smoothing), float(z_loss)
    w = np.ones(C) if weight is None else np.asarray(weight, dtype=np.float64)
    soft = np.issubdtype(np.asarray(target).dtype, np.floating)

    with np.errstate(all="ignore"):
        if softcap is not None:
            t = np.tanh(X / softcap)
            xs = softcap * t
            xs[X == -np.inf] = -np.inf
            dcap = 1.0 - t * t
        else:
            xs, dcap = X, np.ones_like(X)
        lse = special.logsumexp(xs, axis=1)
        logp = special.log_softmax(xs, axis=1)
        p = np.exp(logp)

        if soft:
            P, _ = _rows(target, axis)
            q = (1 - eps) * P + eps / C
            wq = w[None, :] * q
            ce = -_xlogy_sum(wq, logp)
            valid = np.ones(R, bool)
            dce = p * wq.sum(axis=1, keepdims=True) - wq
        else:
            y_all = np.asarray(target).reshape(-1).astype(np.int64)
            valid = y_all != ignore_index
            y = np.where(valid, y_all, 0)
            nll = -w[y] * logp[np.arange(R), y]
            nll = np.where(w[y] == 0, 0.0, nll)
            smooth = -_xlogy_sum(w[None, :], logp) / C
            ce = (1 - eps) * nll + (eps * smooth if eps else 0.0)
            onehot = np.zeros((R, C))
            onehot[np.arange(R), y] = 1.0
            pm = p - onehot
            # p_y - 1 = -sum_{c != y} p_c: no cancellation when p_y ~ 1
            pm[np.arange(R), y] = -np.sum(np.where(onehot == 1.0, 0.0, p), axis=1)
            dce = (1 - eps) * w[y][:, None] * pm
            if eps:
                dce = dce + eps / C * (w.sum() * p - w[None, :])
        zl = z * lse ** 2 if z else np.zeros(R)
        dz = 2 * z * lse[:, None] * p if z else np.zeros((R, C))

    finite = np.isfinite(lse)
    ce = np.where(valid, ce, 0.0)
    zl = np.where(valid, zl, 0.0)

    if reduction == "none":
        g = np.ones(R) if grad_output is None else np.broadcast_to(np.asarray(grad_output, np.float64), moved_shape[:-1]).reshape(-1)
        a = b = g
    else:
        g = 1.0 if grad_output is None else float(grad_output)
        if reduction == "sum":
            a = b = np.full(R, g)
        elif soft:
            a = b = np.full(R, g / R) if R else np.zeros(0)
        else:
            W = np.sum(np.where(valid, w[y], 0.0))
            V = np.sum(valid)
            a = np.full(R, g / W) if W > 0 else np.zeros(R)
            b = np.full(R, g / V) if V > 0 else np.zeros(R)

    with np.errstate(all="ignore"):
        grad = a[:, None] * dce + (b[:, None] * dz if z else 0.0)
        grad = np.where(dcap == 0, 0.0, grad * dcap) if softcap is not None else grad
    grad[~finite] = np.nan
    grad[~valid] = 0.0
    grad = np.moveaxis(grad.reshape(moved_shape), -1, axis)

    per_row = np.where(finite & valid, ce + zl, np.where(valid, np.nan, 0.0))
    if reduction == "none":
        loss = per_row.reshape(moved_shape[:-1])
    elif reduction == "sum":
        loss = float(np.sum(per_row))
    else:
        if soft:
            loss = float(np.sum(per_row) / R) if R else 0.0
        else:
            W = np.sum(np.where(valid, w[y], 0.0))
            V = np.sum(valid)
            ce_part = np.sum(np.where(finite, ce, np.nan)) / W if W > 0 else 0.0
            z_part = np.sum(np.where(finite, zl, np.nan)) / V if (V > 0 and z) else 0.0
            loss = float(ce_part + z_part)
    return loss, grad


def reduced_loss_bound(logits, target, tol, **kw):
    """Tolerance for a mean/sum loss: the per-row SPEC bounds, carried through the reduction.

    Each row may be off by ``tol * max(1, l_n)``; the reduction multiplies row
    ``n`` by a positive factor, so the total may be off by the same weighted sum.
    Computed as ``tol * (|L| + L_ones)`` where ``L_ones`` is the reduction of
    all-ones per-row losses (an upper bound of the 1e-6-absolute part).
    """
    red = kw.get("reduction", "mean")
    loss, _ = cross_entropy(logits, target, **kw)
    g = abs(1.0 if kw.get("grad_output") is None else float(kw["grad_output"]))
    soft = np.issubdtype(np.asarray(target).dtype, np.floating)
    if soft:
        n_rows = int(np.prod(np.asarray(target).shape)) // np.asarray(logits).shape[kw.get("axis", -1)]
        ones = (n_rows if red == "sum" else 1.0)
    else:
        t = np.asarray(target)
        valid = t != kw.get("ignore_index", -100)
        if red == "sum":
            ones = float(valid.sum())
        else:
            w = kw.get("weight")
            wy = np.ones(t.shape) if w is None else np.asarray(w, np.float64)[np.where(valid, t, 0)]
            W = float(np.sum(np.where(valid, wy, 0.0)))
            ones = (valid.sum() / W if W > 0 else 0.0) + 1.0
    return tol * (abs(loss) + g * ones)


# ------------------------------------------------------------ binary


def softplus(x):
    """``log(1 + exp(x))`` in float64 without overflow."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(all="ignore"):
        return np.logaddexp(0.0, x)


def sigmoid(x):
    return special.expit(np.asarray(x, dtype=np.float64))


def bce(p, y, weight=None):
    """Per-element BCE on probabilities with PyTorch's log clamp at -100, and its gradient."""
    p = np.asarray(p, np.float64)
    y = np.asarray(y, np.float64)
    w = 1.0 if weight is None else np.asarray(weight, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        lp = np.maximum(np.log(p), -100.0)
        l1p = np.maximum(np.log1p(-p), -100.0)
        loss = -w * (y * lp + (1 - y) * l1p)
        grad = w * (p - y) / np.maximum(p * (1 - p), 1e-12)
    return loss, grad


def bce_logits(x, y, weight=None, pos_weight=None):
    """Per-element BCE-with-logits and d/dx, zero-coefficient terms exactly 0."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    w = 1.0 if weight is None else np.asarray(weight, np.float64)
    pw = 1.0 if pos_weight is None else np.asarray(pos_weight, np.float64)
    cpos = pw * y          # coefficient of softplus(-x) = -log sigmoid(x)
    cneg = 1.0 - y         # coefficient of softplus(x)  = -log(1 - sigmoid(x))
    with np.errstate(invalid="ignore"):
        loss = w * (np.where(cpos == 0, 0.0, cpos * softplus(-x))
                    + np.where(cneg == 0, 0.0, cneg * softplus(x)))
        grad = w * (np.where(cneg == 0, 0.0, cneg * sigmoid(x))
                    - np.where(cpos == 0, 0.0, cpos * sigmoid(-x)))
    return loss, grad


def reduce(per_elem, reduction):
    if reduction == "none":
        return per_elem
    if reduction == "sum":
        return float(np.sum(per_elem))
    return float(np.mean(per_elem)) if per_elem.size else 0.0


# ------------------------------------------------------------ finite differences


def central_diff4(f, x, h):
    """4th-order central difference of ``f`` at ``x`` (SciPy/scikit-learn's stencil)."""
    return (-f(x + 2 * h) + 8 * f(x + h) - 8 * f(x - h) + f(x - 2 * h)) / (12 * h)
