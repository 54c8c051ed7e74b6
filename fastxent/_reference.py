"""NumPy reference kernels: the fallback backend and the oracle of every test.

Kernel contract (the same names, arguments and argument order in
``_kernels.pyx`` and ``_numba.py``; the registry in ``_dispatch.py`` lists them):

* Inputs are validated by the public layer (``_api.py``) before a kernel runs.
  Kernels never validate, never raise for data and never allocate an output.
* ``X`` is a C-contiguous 2-D ``(R, C)`` float32 or float64 array, one row per
  sample, the class axis last. ``target`` is a C-contiguous int64 ``(R,)``
  array whose entries are in ``[0, C)`` or equal ``ignore_index``. ``P`` (soft
  targets) has the shape and dtype of ``X``. ``weight`` has ``X``'s dtype and
  length ``C``, or length 0 for "all ones".
* ``loss_out`` is a float64 ``(R,)`` buffer that receives each row's loss,
  already multiplied by the reduction scales: ``ce_scale * ce_n + z_scale *
  z * lse_n**2``. The public layer sums it (pairwise, so the result does not
  depend on the thread count) or returns it for ``reduction="none"``.
* ``grad_out`` (same shape and dtype as ``X``, may *be* ``X``) receives the
  gradient of ``sum_n g_n * loss_out[n]`` where ``g_n = gout[n]`` when
  ``gout`` (float64, ``(R,)``) is non-empty and ``gscalar`` otherwise.
* ``softcap == 0`` means no softcap; ``eps`` is the label smoothing and ``z``
  the z-loss coefficient.
* A row whose ``lse`` is not finite (NaN present, all ``-inf``, or a ``+inf``)
  gets NaN loss and an all-NaN gradient row (``softmax``/``log_softmax``: an
  all-NaN row; ``logsumexp``: the ``lse`` itself). Rows whose target equals
  ``ignore_index`` get exactly 0 loss and a gradient row of exact zeros.
* Terms whose coefficient is exactly 0 (a zero class weight, a zero target
  probability) contribute exactly 0, even against a ``-inf`` log-probability.
* ``nthreads`` is the thread count for the compiled backends; here it is unused.

Binary cross-entropy kernels work on flat 1-D C-contiguous arrays of ``n``
elements: ``W`` is the broadcast weight (length ``n``, or 0 for none), ``PW``
the ``pos_weight`` along the last axis of length ``L`` (element ``i`` uses
``PW[i % L]``; length 0 for none). ``loss_out`` (length ``n`` or 0) receives
``scale * l_i`` in the input dtype; ``partial`` (float64, length
``ceil(n / BCE_BLOCK)`` or 0) receives the sum of ``scale * l_i`` over each
block of ``BCE_BLOCK`` consecutive elements, so that the total does not depend
on the thread count.
"""

from __future__ import annotations

import numpy as np

#: Elements per partial sum of the binary cross-entropy kernels (all backends).
BCE_BLOCK = 16384


# ---------------------------------------------------------------- row helpers


def _softcap(X, softcap):
    """``xs = s * tanh(x / s)`` with ``-inf`` kept masked, and ``dxs/dx``."""
    if softcap == 0:
        return X, None
    t = np.tanh(X / softcap)
    xs = softcap * t
    xs[X == -np.inf] = -np.inf
    return xs, 1 - t * t  # tanh' = 1 - tanh**2: 0 at x = +-inf


def _row_lse(xs):
    """``lse = log(sum exp(xs))`` per row, the row max shifted out when finite."""
    m = np.max(xs, axis=1, keepdims=True, initial=-np.inf)
    shift = np.where(np.isfinite(m), m, 0).astype(xs.dtype)
    s = np.sum(np.exp(xs - shift), axis=1, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(s) + shift[:, 0]  # float64 (R,)


def _xlogy_rowsum(coef, logp):
    """``sum_c coef_c * logp_c`` per row, with ``0 * -inf`` taken as 0."""
    with np.errstate(invalid="ignore"):
        terms = np.where(coef == 0, 0, coef * logp)
    return np.sum(terms, axis=1, dtype=np.float64)


def _weights(weight, C, dtype):
    return np.ones(C, dtype) if weight.size == 0 else weight


# ------------------------------------------------------------ softmax family


def logsumexp(X, out, nthreads=1):
    """``out[n] = log(sum_c exp(X[n, c]))``."""
    out[...] = _row_lse(X)


def log_softmax(X, out, nthreads=1):
    """``out[n, c] = X[n, c] - logsumexp(X[n])``; non-finite lse -> NaN row."""
    lse = _row_lse(X)
    with np.errstate(invalid="ignore"):
        np.subtract(X, lse[:, None].astype(X.dtype), out=out)
    out[~np.isfinite(lse)] = np.nan


def softmax(X, out, nthreads=1):
    """``out[n, c] = exp(X[n, c] - logsumexp(X[n]))``; non-finite lse -> NaN row."""
    lse = _row_lse(X)
    with np.errstate(invalid="ignore", over="ignore"):
        np.subtract(X, lse[:, None].astype(X.dtype), out=out)
        np.exp(out, out=out)
    out[~np.isfinite(lse)] = np.nan


# ------------------------------------------------ cross-entropy, int targets


def _ce_int(X, target, weight, ignore_index, eps, z, softcap,
            ce_scale, z_scale, gscalar, gout, loss_out, grad_out):
    R, C = X.shape
    w = _weights(weight, C, X.dtype).astype(np.float64)
    wsum = np.sum(w)
    valid = target != ignore_index
    y = np.where(valid, target, 0)
    rows = np.arange(R)

    x = X.astype(np.float64)  # the reference evaluates in float64
    xs, dcap = _softcap(x, softcap)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        lse = _row_lse(xs)
        logp = xs - lse[:, None]
        wy = w[y]
        # loss_n = (1 - eps) * nll + eps * smooth, then the z-loss
        ce = (1 - eps) * wy * -logp[rows, y]
        if eps > 0:
            ce = ce + eps / C * -_xlogy_rowsum(w[None, :], logp)
        zl = z * lse * lse if z > 0 else 0.0
        loss = ce_scale * ce + z_scale * zl
    loss = np.where(np.isfinite(lse), loss, np.nan)
    loss_out[...] = np.where(valid, loss, 0.0)
    if grad_out is None:
        return

    g = gout if gout.size else np.full(R, gscalar)
    a = g * ce_scale  # scale of the cross-entropy part, per row
    b = g * z_scale   # scale of the z-loss part, per row
    with np.errstate(invalid="ignore", over="ignore"):
        p = np.exp(logp)
        onehot = np.zeros_like(p)
        onehot[rows, y] = 1.0
        # d ce / d xs_c = (1-eps) w_y (p_c - [c == y]) + eps/C (wsum p_c - w_c)
        d = a[:, None] * ((1 - eps) * wy[:, None] * (p - onehot))
        if eps > 0:
            d += a[:, None] * (eps / C * (wsum * p - w[None, :]))
        # d (z lse^2) / d xs_c = 2 z lse p_c
        if z > 0:
            d += (b * 2 * z * lse)[:, None] * p
        if dcap is not None:
            d = np.where(dcap == 0, 0.0, d * dcap)  # masked classes: 0
    d[~np.isfinite(lse)] = np.nan
    d[~valid] = 0.0
    grad_out[...] = d


def ce_loss(X, target, weight, ignore_index, eps, z, softcap,
            ce_scale, z_scale, loss_out, nthreads=1):
    """Per-row cross-entropy with integer targets (see the module docstring)."""
    _ce_int(X, target, weight, ignore_index, eps, z, softcap,
            ce_scale, z_scale, 0.0, np.empty(0), loss_out, None)


def ce_loss_grad(X, target, weight, ignore_index, eps, z, softcap,
                 ce_scale, z_scale, gscalar, gout, loss_out, grad_out,
                 nthreads=1):
    """Per-row cross-entropy with integer targets and its gradient."""
    _ce_int(X, target, weight, ignore_index, eps, z, softcap,
            ce_scale, z_scale, gscalar, gout, loss_out, grad_out)


# ----------------------------------------------- cross-entropy, soft targets


def _ce_soft(X, P, weight, eps, z, softcap, ce_scale, z_scale,
             gscalar, gout, loss_out, grad_out):
    R, C = X.shape
    w = _weights(weight, C, X.dtype).astype(np.float64)
    x = X.astype(np.float64)
    xs, dcap = _softcap(x, softcap)
    q = (1 - eps) * P.astype(np.float64) + eps / C  # smoothed target
    wq = w[None, :] * q
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        lse = _row_lse(xs)
        logp = xs - lse[:, None]
        ce = -_xlogy_rowsum(wq, logp)
        zl = z * lse * lse if z > 0 else 0.0
        loss = ce_scale * ce + z_scale * zl
    loss_out[...] = np.where(np.isfinite(lse), loss, np.nan)
    if grad_out is None:
        return

    g = gout if gout.size else np.full(R, gscalar)
    a = g * ce_scale
    b = g * z_scale
    with np.errstate(invalid="ignore", over="ignore"):
        p = np.exp(logp)
        # d ce / d xs_c = p_c sum_k w_k q_k - w_c q_c
        d = a[:, None] * (p * np.sum(wq, axis=1, keepdims=True) - wq)
        if z > 0:
            d += (b * 2 * z * lse)[:, None] * p
        if dcap is not None:
            d = np.where(dcap == 0, 0.0, d * dcap)
    d[~np.isfinite(lse)] = np.nan
    grad_out[...] = d


def ce_soft_loss(X, P, weight, eps, z, softcap, ce_scale, z_scale,
                 loss_out, nthreads=1):
    """Per-row cross-entropy with probability targets."""
    _ce_soft(X, P, weight, eps, z, softcap, ce_scale, z_scale,
             0.0, np.empty(0), loss_out, None)


def ce_soft_loss_grad(X, P, weight, eps, z, softcap, ce_scale, z_scale,
                      gscalar, gout, loss_out, grad_out, nthreads=1):
    """Per-row cross-entropy with probability targets and its gradient."""
    _ce_soft(X, P, weight, eps, z, softcap, ce_scale, z_scale,
             gscalar, gout, loss_out, grad_out)


# ------------------------------------------------------ binary cross-entropy


def _bce_finish(l, scale, loss_out, partial):
    l = scale * l
    if loss_out.size:
        loss_out[...] = l
    if partial.size:
        n = l.size
        pad = np.zeros(partial.size * BCE_BLOCK - n)
        partial[...] = np.concatenate([l, pad]).reshape(-1, BCE_BLOCK).sum(axis=1)


def _bce_prob(P, Y, W, scale, gscalar, gout, loss_out, partial, grad_out):
    p = P.astype(np.float64)
    y = Y.astype(np.float64)
    w = W.astype(np.float64) if W.size else 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        # PyTorch clamps each log at -100, so p = 0 or 1 gives a finite loss
        logp = np.maximum(np.log(p), -100.0)
        log1mp = np.maximum(np.log1p(-p), -100.0)
        l = -w * (y * logp + (1 - y) * log1mp)
    _bce_finish(l, scale, loss_out, partial)
    if grad_out is None:
        return
    g = (gout if gout.size else gscalar) * scale
    # PyTorch's gradient: w (p - y) / max(p (1 - p), 1e-12)
    grad_out[...] = g * w * (p - y) / np.maximum(p * (1 - p), 1e-12)


def bce_loss(P, Y, W, scale, loss_out, partial, nthreads=1):
    """``l = -w (y max(log p, -100) + (1-y) max(log(1-p), -100))``."""
    _bce_prob(P, Y, W, scale, 0.0, np.empty(0), loss_out, partial, None)


def bce_loss_grad(P, Y, W, scale, gscalar, gout, loss_out, partial, grad_out,
                  nthreads=1):
    """Binary cross-entropy on probabilities and its (PyTorch) gradient."""
    _bce_prob(P, Y, W, scale, gscalar, gout, loss_out, partial, grad_out)


def _softplus(x):
    """``log(1 + exp(x))`` without overflow or cancellation."""
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


def _sigmoid(x):
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _bce_logits(X, Y, W, PW, scale, gscalar, gout, loss_out, partial,
                grad_out):
    x = X.astype(np.float64)
    y = Y.astype(np.float64)
    w = W.astype(np.float64) if W.size else 1.0
    n = x.size
    pw = np.resize(PW.astype(np.float64), n) if PW.size else 1.0
    # l = w (pw y softplus(-x) + (1 - y) softplus(x)), which equals SPEC's
    # w ((1 - y) x + (1 + (pw - 1) y) softplus(-x)) but has no inf - inf;
    # a term with a zero coefficient is exactly 0 even at x = +-inf.
    cpos = pw * y
    cneg = 1 - y
    with np.errstate(invalid="ignore"):
        l = w * (np.where(cpos == 0, 0, cpos * _softplus(-x))
                 + np.where(cneg == 0, 0, cneg * _softplus(x)))
    _bce_finish(l, scale, loss_out, partial)
    if grad_out is None:
        return
    g = (gout if gout.size else gscalar) * scale
    # dl/dx = w ((1 - y) sigmoid(x) - pw y sigmoid(-x))
    grad_out[...] = g * w * (cneg * _sigmoid(x) - cpos * _sigmoid(-x))


def bce_logits_loss(X, Y, W, PW, scale, loss_out, partial, nthreads=1):
    """Binary cross-entropy on logits, ``pos_weight`` along the last axis."""
    _bce_logits(X, Y, W, PW, scale, 0.0, np.empty(0), loss_out, partial, None)


def bce_logits_loss_grad(X, Y, W, PW, scale, gscalar, gout, loss_out, partial,
                         grad_out, nthreads=1):
    """Binary cross-entropy on logits and its gradient."""
    _bce_logits(X, Y, W, PW, scale, gscalar, gout, loss_out, partial, grad_out)
