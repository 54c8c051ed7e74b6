"""NumPy reference kernels: the fallback backend and the oracle of every test.

Kernel contract (the same names, arguments and argument order in
``_kernels.pyx`` and ``_numba.py``; the registry in ``_dispatch.py`` lists them):

* Inputs are validated by the public layer (``_api.py``) before a kernel runs.
  Kernels never validate data, never raise for it and never allocate an
  output. (The Cython kernels, which run on raw data pointers, still check
  each array's dtype, dimensions, shape, contiguity and writeability, so that
  a misuse raises instead of reading out of bounds.)
* ``X`` is a C-contiguous 2-D ``(R, C)`` float32 or float64 array, one row per
  sample, the class axis last. ``target`` is a C-contiguous int64 ``(R,)``
  array whose entries are in ``[0, C)`` or equal ``ignore_index``. ``P`` (soft
  targets) has the shape and dtype of ``X``. ``weight`` has ``X``'s dtype and
  length ``C``, or length 0 for "all ones".
* ``loss_out`` is a float64 ``(R,)`` buffer that receives each row's loss,
  already multiplied by the reduction scales: ``ce_scale * ce_n + z_scale *
  z * lse_n**2`` (``reduction="none"``), or length 0 for none. ``partial``
  (float64, length ``CE_LANES * ceil(R / CE_ROWS)`` or 0) receives partial
  sums of those losses: per group of ``CE_ROWS`` consecutive rows,
  ``CE_LANES`` sums, lane ``j`` of the rows ``r % CE_LANES == j``, each added
  in row order from 0.0, so that the total the public layer forms from them
  does not depend on the thread count; the compiled kernels form them
  without writing a per-row buffer out to memory.
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
#: Rows per group of the cross-entropy kernels' partial sums (all backends),
#: and the sums per group (lanes): row r's loss goes to partial[CE_LANES * (r
#: // CE_ROWS) + r % CE_LANES]; the compiled kernels split rows between
#: threads at multiples of CE_ROWS.
CE_ROWS = 64
CE_LANES = 8


# ---------------------------------------------------------------- row helpers
#
# The reference computes in the input's dtype with float64 row sums, and keeps
# at most two N x C temporaries alive, so that it is also a usable fallback.
# Row-wise quantities (lse, losses, scales) are float64 vectors of length R.


def _softcap(X, softcap):
    """``xs = s * tanh(x / s)`` with ``-inf`` kept masked (``X`` itself when off)."""
    if softcap == 0:
        return X
    s = X.dtype.type(softcap)
    xs = np.divide(X, s)
    np.tanh(xs, out=xs)
    xs *= s
    xs[X == -np.inf] = -np.inf
    return xs


def _softcap_slope(xs, softcap, out=None):
    """``d xs / d x = 1 - tanh(x / s)**2 = 1 - (xs / s)**2``; 0 where masked.

    Into ``out`` when given, which may be ``xs`` itself (one N x C temporary
    fewer once ``xs`` has no other use)."""
    masked = xs == -np.inf
    with np.errstate(invalid="ignore"):
        d = np.divide(xs, xs.dtype.type(softcap), out=out)
        d *= d
        np.subtract(1, d, out=d)
    d[masked] = 0
    return d


def _row_shift_logsum(xs):
    """Per row: ``shift`` (the max when finite, else 0) and ``log(sum exp(xs - shift))``.

    ``lse = shift + logsum``; the two are kept apart so that ``lse - xs_y`` can be
    formed as ``logsum + (shift - xs_y)``, exact even where ``|shift|`` dwarfs
    ``logsum``.
    """
    shift = _row_shift(xs)
    return shift, _log(_rowsum64(_shifted_exp_into(np.empty_like(xs), xs, shift)))


def _row_shift(xs):
    """Per row: the max when finite, else 0 (float64, and exact in ``xs``'s
    dtype: ``xs - shift`` is formed in that dtype, which gives what a float64
    subtraction rounded to it would, float64 having over 2 p + 2 bits)."""
    m = xs.max(axis=1, initial=-np.inf)
    return np.where(np.isfinite(m), m, 0).astype(np.float64)


def _shifted_exp_into(out, xs, shift):
    """``out = exp(xs - shift)`` row-wise, in ``out``'s dtype (``out`` may be
    ``xs``); returns ``out``."""
    with np.errstate(invalid="ignore", over="ignore"):
        np.subtract(xs, shift[:, None], out=out, dtype=out.dtype)
        return np.exp(out, out=out)


def _scale_rows(out, logsum):
    """``out *= 1 / exp(logsum)`` row-wise (one multiply per element)."""
    with np.errstate(invalid="ignore", over="ignore"):
        out *= np.exp(-logsum)[:, None].astype(out.dtype)


def _log(s):
    """``log(s)``, quietly: ``-inf`` for 0, NaN for NaN."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(s)


def _row_lse(xs):
    """``lse = log(sum exp(xs))`` per row (float64), the row max shifted out."""
    shift, logsum = _row_shift_logsum(xs)
    return shift + logsum


def _probs_into(out, xs, shift, logsum):
    """``out = exp(xs - shift) / exp(logsum)`` row-wise (``out`` may be ``xs``).

    The same order of operations as the compiled kernels: the shifted exp, then
    one multiply by ``1 / sum``; exact in structure even where ``|shift|`` is huge.
    """
    _scale_rows(_shifted_exp_into(out, xs, shift), logsum)


#: Elements per block where the reference needs a float64 N x C intermediate.
_BLOCK_ELEMENTS = 1 << 16


def _row_blocks(a):
    """Slices of about ``_BLOCK_ELEMENTS`` elements over the rows of ``a``."""
    step = max(1, _BLOCK_ELEMENTS // max(1, a.shape[1]))
    return [slice(r, r + step) for r in range(0, a.shape[0], step)]


def _rowsum64(a):
    """``sum_c a[n, c]`` per row in float64 (NumPy casts in buffers: no float64
    copy of ``a``)."""
    return np.add.reduce(a, axis=1, dtype=np.float64)  # np.sum, without its ~3 us wrapper


def _shifted_weighted_rowsum(xs, shift, w, coef=None):
    """``sum_c w_c * coef_c * (shift - xs_c)`` per row in float64.

    Terms whose coefficient ``w_c * coef_c`` is 0 add exactly 0 (even where
    ``xs_c = -inf``). Runs over blocks of rows to keep the temporaries small.
    """
    R = xs.shape[0]
    out = np.empty(R)
    for rs in _row_blocks(xs):
        below = np.subtract(shift[rs, None], xs[rs], dtype=np.float64)
        k = None if w is None else w[None, :]
        if coef is not None:
            k = coef[rs] if k is None else coef[rs] * k
        if k is not None:
            with np.errstate(invalid="ignore"):
                below *= k
            below[np.broadcast_to(k == 0, below.shape)] = 0  # no 0 * inf
        out[rs] = np.sum(below, axis=1)
    return out


def _wide(coef, dtype):
    """The rows whose gradient factor ``coef`` (float64) is finite but beyond
    ``dtype``'s range: float32 with z_loss at logits near its max, or with a
    large grad_output.  Cast to the dtype it would be inf, and ``p_c coef``
    inf where it is finite, NaN where ``p_c = 0``; those rows are formed in
    float64 and rounded once, as the compiled kernels do."""
    return np.flatnonzero(np.isfinite(coef) & (np.abs(coef) > np.finfo(dtype).max))


# ------------------------------------------------------------ softmax family


def logsumexp(X, out, nthreads=1):
    """``out[n] = log(sum_c exp(X[n, c]))``."""
    out[...] = _row_lse(X)


def log_softmax(X, out, nthreads=1):
    """``out[n, c] = X[n, c] - logsumexp(X[n])``; non-finite lse -> NaN row."""
    # Shifted by the row max itself (out may be X: X is read only before out
    # is first written). A row whose lse is not finite has a max of NaN or
    # +inf, or is all -inf: X - max has a NaN there (NaN, inf - inf, -inf -
    # -inf), and the NaN reaches the whole row through its sum; otherwise
    # the max term gives exp(0) = 1, so 1 <= sum <= C.
    with np.errstate(invalid="ignore", over="ignore"):
        np.subtract(X, X.max(axis=1, keepdims=True), out=out)
        logsum = np.log(_rowsum64(np.exp(out)))
        out -= logsum[:, None].astype(out.dtype)


def softmax(X, out, nthreads=1):
    """``out[n, c] = exp(X[n, c] - logsumexp(X[n]))``; non-finite lse -> NaN row."""
    # The exps formed once, in out (which may be X), each divided by its
    # row's float64 sum rounded to out's dtype (the compiled kernels multiply
    # by 1 / sum rounded so: at most an ulp apart; a float64 divisor made
    # NumPy cast every element through buffers, 2x the divide's time at
    # (64, 100) float32); the NaN rows as in log_softmax.
    with np.errstate(invalid="ignore", over="ignore"):
        np.subtract(X, X.max(axis=1, keepdims=True), out=out)
        np.exp(out, out=out)
        np.divide(out, _rowsum64(out).astype(out.dtype, copy=False)[:, None], out=out)


# ------------------------------------------------ cross-entropy, int targets


def _ce_finish(loss, loss_out, partial):
    """Write the row losses and/or their float64 partial sums: per group of
    ``CE_ROWS`` rows, lane ``j`` sums the losses of the rows ``r`` with ``r %
    CE_LANES == j``, added in row order from 0.0 (as the compiled kernels
    add them)."""
    if loss_out.size:
        loss_out[...] = loss
    if partial.size:
        groups = np.zeros((partial.size // CE_LANES, CE_ROWS // CE_LANES, CE_LANES))
        groups.reshape(-1)[:loss.size] = loss
        acc = np.zeros((groups.shape[0], CE_LANES))
        with np.errstate(over="ignore", invalid="ignore"):  # inf, NaN: as summed
            for i in range(groups.shape[1]):
                acc += groups[:, i, :]
        partial[...] = acc.reshape(-1)


def _ce_int(X, target, weight, ignore_index, eps, z, softcap,
            ce_scale, z_scale, gscalar, gout, loss_out, partial, grad_out):
    R, C = X.shape
    w = weight.astype(np.float64) if weight.size else None
    wsum = np.sum(w) if w is not None else float(C)
    valid = target != ignore_index
    y = np.where(valid, target, 0)
    rows = np.arange(R)
    xs = _softcap(X, softcap)
    shift, logsum = _row_shift_logsum(xs)
    lse = shift + logsum
    wy = w[y] if w is not None else 1.0
    with np.errstate(invalid="ignore", over="ignore"):
        # nll = -w_y logp_y = w_y (logsum + shift - xs_y); a zero coefficient adds 0
        c_nll = (1 - eps) * wy * np.ones(R)
        ce = np.where(c_nll == 0, 0.0, c_nll * (logsum + (shift - xs[rows, y])))
        if eps > 0:
            # smooth = -(1/C) sum_c w_c logp_c = (wsum logsum + sum_c w_c (shift - xs_c)) / C
            ce += eps / C * (wsum * logsum + _shifted_weighted_rowsum(xs, shift, w))
        loss = ce_scale * ce
        if z > 0:
            loss += z_scale * z * lse * lse
    finite = np.isfinite(lse)
    _ce_finish(np.where(valid, np.where(finite, loss, np.nan), 0.0), loss_out, partial)
    if grad_out is None:
        return

    g = gout if gout.size else gscalar
    a = g * ce_scale * np.ones(R)  # scale of the cross-entropy part, per row
    b = g * z_scale * np.ones(R)   # scale of the z-loss part, per row
    # d loss / d xs_c = p_c coef - A [c == y] - B w_c, with coef = A + k2,
    # A = a (1-eps) w_y, B = a eps / C, k2 = B wsum + b 2 z lse (each term
    # only when its option is on: a * 0 is NaN for an infinite a)
    A = a * (1 - eps) * wy
    B = a * eps / C if eps > 0 else np.zeros(R)
    k2 = B * wsum
    if z > 0:
        k2 = k2 + b * 2 * z * lse
    coef = A + k2
    slope = _softcap_slope(xs, softcap) if softcap else None
    _probs_into(grad_out, xs, shift, logsum)  # grad_out may be X (= xs): reads are done
    # The target column in float64 with p_y - 1 = -sum_{c != y} p_c: p_y * coef
    # - a (1-eps) w_y, or exp(logp_y) - 1, cancels when p_y is near 1.
    p_y = grad_out[rows, y].astype(np.float64)
    grad_out[rows, y] = 0
    pm1_y = -_rowsum64(grad_out)
    big = _wide(coef, grad_out.dtype)
    p_big = grad_out[big].astype(np.float64)  # p, for the rows formed in float64
    with np.errstate(invalid="ignore", over="ignore"):
        g_y = A * pm1_y + p_y * k2
        if eps > 0:
            g_y -= B * (w[y] if w is not None else 1.0)
    if slope is not None:
        g_y *= slope[rows, y]
    with np.errstate(invalid="ignore", over="ignore"):
        grad_out *= coef[:, None].astype(grad_out.dtype)
        if eps > 0:
            k = B.astype(grad_out.dtype)
            if w is None:
                grad_out -= k[:, None]
            else:
                wrow = w.astype(grad_out.dtype)
                for rs in _row_blocks(grad_out):
                    grad_out[rs] -= k[rs, None] * wrow
        if slope is not None:
            grad_out *= slope
        if big.size:
            d = p_big * coef[big, None]
            if eps > 0:
                d -= B[big, None] * (w[None, :] if w is not None else 1.0)
            grad_out[big] = d * slope[big] if slope is not None else d
        grad_out[rows, y] = g_y  # beyond the dtype's max: inf, as the compiled kernels
    grad_out[~finite] = np.nan
    grad_out[~valid] = 0.0


def ce_loss(X, target, weight, ignore_index, eps, z, softcap,
            ce_scale, z_scale, loss_out, partial, nthreads=1):
    """Per-row cross-entropy with integer targets (see the module docstring)."""
    _ce_int(X, target, weight, ignore_index, eps, z, softcap,
            ce_scale, z_scale, 0.0, np.empty(0), loss_out, partial, None)


def ce_loss_grad(X, target, weight, ignore_index, eps, z, softcap,
                 ce_scale, z_scale, gscalar, gout, loss_out, partial, grad_out,
                 nthreads=1):
    """Per-row cross-entropy with integer targets and its gradient."""
    _ce_int(X, target, weight, ignore_index, eps, z, softcap,
            ce_scale, z_scale, gscalar, gout, loss_out, partial, grad_out)


# ----------------------------------------------- cross-entropy, soft targets


def _ce_soft(X, P, weight, eps, z, softcap, ce_scale, z_scale,
             gscalar, gout, loss_out, partial, grad_out):
    R, C = X.shape
    xs = _softcap(X, softcap)
    shift, logsum = _row_shift_logsum(xs)  # (its temporary freed before wq)
    # wq_c = w_c q_c with the smoothed target q = (1 - eps) P + eps / C
    wq = np.multiply(P, X.dtype.type(1 - eps), dtype=X.dtype)
    wq += X.dtype.type(eps / C)
    if weight.size:
        wq *= weight
    lse = shift + logsum
    sum_wq = _rowsum64(wq)
    with np.errstate(invalid="ignore", over="ignore"):
        # ce = -sum_c wq_c logp_c = sum_c wq_c (logsum + (shift - xs_c)), 0 where wq_c = 0
        ce = sum_wq * logsum + _shifted_weighted_rowsum(xs, shift, None, wq)
        loss = ce_scale * ce
        if z > 0:
            loss += z_scale * z * lse * lse
    finite = np.isfinite(lse)
    _ce_finish(np.where(finite, loss, np.nan), loss_out, partial)
    if grad_out is None:
        return

    g = gout if gout.size else gscalar
    a = g * ce_scale * np.ones(R)
    b = g * z_scale * np.ones(R)
    # d loss / d xs_c = p_c (a sum_k wq_k + b 2 z lse) - a wq_c
    coef = a * sum_wq
    if z > 0:
        coef = coef + b * 2 * z * lse
    _probs_into(grad_out, xs, shift, logsum)
    big = _wide(coef, grad_out.dtype)
    p_big = grad_out[big].astype(np.float64)
    wq_big = wq[big].astype(np.float64)
    # xs (a temporary of its own under softcap) becomes the slope: with wq,
    # two N x C temporaries at most
    slope = _softcap_slope(xs, softcap, out=xs) if softcap else None
    with np.errstate(invalid="ignore", over="ignore"):
        grad_out *= coef[:, None].astype(grad_out.dtype)
        wq *= a[:, None].astype(wq.dtype)
        grad_out -= wq
        if slope is not None:
            grad_out *= slope
        if big.size:
            d = p_big * coef[big, None] - a[big, None] * wq_big
            grad_out[big] = d * slope[big] if slope is not None else d
    grad_out[~finite] = np.nan


def ce_soft_loss(X, P, weight, eps, z, softcap, ce_scale, z_scale,
                 loss_out, partial, nthreads=1):
    """Per-row cross-entropy with probability targets."""
    _ce_soft(X, P, weight, eps, z, softcap, ce_scale, z_scale,
             0.0, np.empty(0), loss_out, partial, None)


def ce_soft_loss_grad(X, P, weight, eps, z, softcap, ce_scale, z_scale,
                      gscalar, gout, loss_out, partial, grad_out, nthreads=1):
    """Per-row cross-entropy with probability targets and its gradient."""
    _ce_soft(X, P, weight, eps, z, softcap, ce_scale, z_scale,
             gscalar, gout, loss_out, partial, grad_out)


# ------------------------------------------------------ binary cross-entropy


def _bce_finish(l, scale, loss_out, partial):
    """Write ``scale * l`` per element and/or its float64 sums per block."""
    if scale != 1:
        l *= l.dtype.type(scale)
    if loss_out.size:
        loss_out[...] = l
    if partial.size:
        starts = np.arange(0, l.size, BCE_BLOCK)
        partial[...] = np.add.reduceat(l, starts, dtype=np.float64)


#: Elements per span of the binary cross-entropy below: whole BCE_BLOCKs, so
#: each span's partial sums are whole blocks, and the temporaries are a few
#: spans' size instead of the inputs' (the fallback's memory stays bounded).
_BCE_SPAN = (_BLOCK_ELEMENTS // BCE_BLOCK or 1) * BCE_BLOCK


def _bce_spans(span_fn, A, Y, W, scale, gscalar, gout, loss_out, partial,
               grad_out, *extra):
    """``span_fn`` over the elements in spans of ``_BCE_SPAN`` (each call
    gets its span's offset last); the same values as one call over all.
    Quietly, as the compiled kernels: log(0), 0 * inf and values beyond the
    dtype's range give what they give (clamped logs, NaN, inf) unwarned."""
    n = A.size
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for a in range(0, n, _BCE_SPAN):
            b = min(n, a + _BCE_SPAN)

            def cut(v):
                return v[a:b] if v.size else v
            span_fn(A[a:b], Y[a:b], cut(W), scale, gscalar, cut(gout),
                    cut(loss_out),
                    partial[a // BCE_BLOCK:-(-b // BCE_BLOCK)] if partial.size else partial,
                    None if grad_out is None else grad_out[a:b], *extra, a)


def _bce_prob(P, Y, W, scale, gscalar, gout, loss_out, partial, grad_out,
              a=0):
    # (a, the span's offset, is not needed here)
    # In float64, rounded once on the way out, as the compiled kernels: a
    # weight near float32's max times a loss or a slope above 1 stays finite
    # until the scale brings it back into range.
    p = P.astype(np.float64)
    y = Y.astype(np.float64)
    w = W.astype(np.float64) if W.size else 1.0
    # PyTorch clamps each log at -100, so p = 0 or 1 gives a finite loss
    logp = np.maximum(np.log(p), -100)
    log1mp = np.maximum(np.log1p(-p), -100)
    l = -(y * logp + (1 - y) * log1mp) * w
    _bce_finish(l, scale, loss_out, partial)
    if grad_out is None:
        return
    g = (gout if gout.size else gscalar) * scale
    # PyTorch's gradient: w (p - y) / max(p (1 - p), 1e-12)
    grad_out[...] = g * w * (p - y) / np.maximum(p * (1 - p), 1e-12)


def bce_loss(P, Y, W, scale, loss_out, partial, nthreads=1):
    """``l = -w (y max(log p, -100) + (1-y) max(log(1-p), -100))``."""
    _bce_spans(_bce_prob, P, Y, W, scale, 0.0, np.empty(0), loss_out, partial,
               None)


def bce_loss_grad(P, Y, W, scale, gscalar, gout, loss_out, partial, grad_out,
                  nthreads=1):
    """Binary cross-entropy on probabilities and its (PyTorch) gradient."""
    _bce_spans(_bce_prob, P, Y, W, scale, gscalar, gout, loss_out, partial,
               grad_out)


def _zero_where_zero(coef, value):
    """``coef * value``, exactly 0 where ``coef == 0`` (even if value is inf)."""
    return np.where(coef == 0, 0, coef * value)


def _bce_logits(x, y, W, scale, gscalar, gout, loss_out, partial, grad_out,
                PW, a=0):
    # (the elements from a of the flattened input: pos_weight[i % L] for i)
    # l = w (pw y softplus(-x) + (1 - y) softplus(x)), which equals SPEC's
    # w ((1 - y) x + (1 + (pw - 1) y) softplus(-x)) but never forms inf - inf:
    # softplus(+-x) = max(+-x, 0) + log1p(exp(-|x|)), exact for large |x|.
    cpos = y * PW[np.arange(a, a + x.size) % PW.size] if PW.size else y
    cneg = 1 - y
    e = np.exp(-np.abs(x))
    t = np.log1p(e)
    l = (_zero_where_zero(cpos, np.maximum(-x, 0) + t)
         + _zero_where_zero(cneg, np.maximum(x, 0) + t))
    if W.size:
        l *= W
    _bce_finish(l, scale, loss_out, partial)
    if grad_out is None:
        return
    g = (gout if gout.size else gscalar) * scale
    # dl/dx = w ((1 - y) sigmoid(x) - pw y sigmoid(-x)); with q = 1 / (1 + e),
    # sigmoid(|x|) = q and sigmoid(-|x|) = e q, neither cancelling.
    q = 1 / (1 + e)
    pos = x >= 0
    sig = np.where(pos, q, e * q)
    sig_neg = np.where(pos, e * q, q)
    d = cneg * sig - cpos * sig_neg
    if W.size:
        d *= W
    np.multiply(d, np.asarray(g, dtype=d.dtype), out=grad_out)


def bce_logits_loss(X, Y, W, PW, scale, loss_out, partial, nthreads=1):
    """Binary cross-entropy on logits, ``pos_weight`` along the last axis."""
    _bce_spans(_bce_logits, X, Y, W, scale, 0.0, np.empty(0), loss_out,
               partial, None, PW)


def bce_logits_loss_grad(X, Y, W, PW, scale, gscalar, gout, loss_out, partial,
                         grad_out, nthreads=1):
    """Binary cross-entropy on logits and its gradient."""
    _bce_spans(_bce_logits, X, Y, W, scale, gscalar, gout, loss_out,
               partial, grad_out, PW)
