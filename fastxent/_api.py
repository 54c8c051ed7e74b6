"""Public functions: validate, normalise shapes and dtypes, dispatch, reduce.

Every check happens here, before a kernel runs: kernels receive C-contiguous
2-D ``(rows, C)`` arrays (class axis last) or flat 1-D arrays, int64 targets
already known to be in range, and output buffers of the right shape and dtype.
Inputs are never written to, except logits passed as their own ``out=``.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Optional, Tuple, Union

import numpy as np

from . import _dispatch
from ._reference import BCE_BLOCK, CE_LANES, CE_ROWS

ArrayLike = Any
Loss = Union[np.floating, np.ndarray]

_REDUCTIONS = ("none", "mean", "sum")


class _DefaultIgnoreIndex(int):
    """The default ``ignore_index`` (-100), distinguishable from an explicit one."""

    def __repr__(self) -> str:
        return "-100"


IGNORE_INDEX_DEFAULT = _DefaultIgnoreIndex(-100)


# ------------------------------------------------------------------ helpers


def _floating(a: ArrayLike, name: str) -> np.ndarray:
    """``a`` as an ndarray of a floating dtype, else ``TypeError``."""
    arr = np.asarray(a)
    dt = arr.dtype
    if dt is _F32 or dt is _F64 or dt.kind == "f" or dt.name == "bfloat16":
        return arr
    raise TypeError(
        "%s must have a floating dtype (float16, float32 or float64), got %s" % (name, dt)
    )


_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)
#: Zero-length "absent" operands for the kernels (never written to).
_NONE = {_F32: np.empty(0, _F32), _F64: np.empty(0, _F64)}


def _compute_dtype(dt: np.dtype) -> np.dtype:
    """float64 (and longdouble) compute in float64; float16/bfloat16/float32 in float32."""
    if dt is _F32 or dt is _F64:  # NumPy's own native descriptors: the usual case
        return dt
    if dt.kind == "f" and dt.itemsize >= 8:
        return _F64
    return _F32


def _axis(axis: Any, ndim: int) -> int:
    try:
        ax = operator.index(axis)
    except TypeError:
        raise TypeError("axis must be an integer, got %r" % (axis,)) from None
    if not -ndim <= ax < ndim:
        raise np.exceptions.AxisError(ax, ndim)
    return ax % ndim


def _reduction(reduction: str) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(
            "reduction must be one of 'none', 'mean', 'sum', got %r" % (reduction,)
        )
    return reduction


def _last(a: np.ndarray, axis: int) -> np.ndarray:
    """``a`` with ``axis`` moved last (``a`` itself when it already is)."""
    return a if axis == a.ndim - 1 else np.moveaxis(a, axis, -1)


def _rows(x: np.ndarray, axis: int, cdt: np.dtype) -> np.ndarray:
    """``x`` with ``axis`` moved last, as a C-contiguous ``(R, C)`` array of ``cdt``.

    A view when the layout allows; otherwise one copy.
    """
    xm = _last(x, axis)
    if xm.ndim != 2:
        xm = xm.reshape(-1, xm.shape[-1])
    if xm.dtype == cdt and xm.flags.c_contiguous and xm.dtype.isnative:
        return xm
    return np.ascontiguousarray(xm, dtype=cdt)


def _same_array(a: np.ndarray, b: np.ndarray) -> bool:
    """Same memory, shape, strides and dtype: ``a`` is ``b`` for all purposes."""
    if a is b:  # the usual in-place call (``__array_interface__`` costs ~1 us)
        return True
    return (
        a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
        and a.shape == b.shape
        and a.strides == b.strides
        and a.dtype == b.dtype
    )


def _overlaps(a: np.ndarray, b: np.ndarray) -> bool:
    if not np.may_share_memory(a, b):
        return False
    try:
        return bool(np.shares_memory(a, b, max_work=10000))
    except np.exceptions.TooHardError:
        return True


def _check_out(
    out: Any, shape: Tuple[int, ...], cdt: np.dtype, inputs: Tuple[Tuple[str, Any], ...],
    inplace_ok: Optional[np.ndarray] = None,
) -> Optional[np.ndarray]:
    """Validate an ``out=`` array: shape, dtype, writeable, no partial overlap."""
    if out is None:
        return None
    if not isinstance(out, np.ndarray):
        raise ValueError("out must be a numpy.ndarray, got %s" % type(out).__name__)
    if out.shape != tuple(shape):
        raise ValueError("out has shape %s, expected %s" % (out.shape, tuple(shape)))
    if out.dtype is not cdt and out.dtype != cdt:
        raise ValueError("out has dtype %s, expected %s" % (out.dtype, cdt))
    if not out.flags.writeable:
        raise ValueError("out is read-only")
    out_owns = out.flags.owndata
    for name, arr in inputs:
        if not isinstance(arr, np.ndarray):
            continue
        if out_owns and arr is not out and arr.flags.owndata:
            continue  # two arrays that own their memory cannot overlap
        if not _overlaps(out, arr) or (inplace_ok is arr and _same_array(out, arr)):
            continue
        raise ValueError(
            "out overlaps %s; pass the logits themselves as out= for an "
            "in-place result, or a separate array" % name
        )
    return out


def _rows_out(out: Optional[np.ndarray], axis: int, R: int, C: int, cdt: np.dtype):
    """A C-contiguous ``(R, C)`` buffer for a kernel, and what to copy it into.

    When ``out`` (with ``axis`` moved last) is already such a buffer the kernel
    writes into it directly; otherwise the kernel writes into a new array that
    is copied into ``out`` afterwards.
    """
    if out is not None:
        if axis == out.ndim - 1 and out.flags.c_contiguous:
            # the usual case: out itself, or a view of it
            return (out if out.ndim == 2 else out.reshape(R, C)), None
        om = _last(out, axis)
        try:
            view = om.reshape(R, C)
        except ValueError:
            view = None
        if (
            view is not None
            and view.flags.c_contiguous
            and view.__array_interface__["data"][0] == om.__array_interface__["data"][0]
        ):
            return view, None
        return np.empty((R, C), cdt), om
    return np.empty((R, C), cdt), None


def _finish_rows(buf: np.ndarray, copy_to: Optional[np.ndarray], out, x_shape, axis):
    """Give the caller ``out`` (filled) or ``buf`` reshaped to the input layout."""
    if copy_to is not None:
        np.copyto(copy_to, buf.reshape(copy_to.shape))
        return out
    if out is not None:
        return out
    if axis == len(x_shape) - 1:
        return buf.reshape(x_shape)
    moved = x_shape[:axis] + x_shape[axis + 1:] + (x_shape[axis],)
    return np.moveaxis(buf.reshape(moved), -1, axis)


# ----------------------------------------------------------- softmax family


def _class_axis(a: ArrayLike, axis: Any, name: str):
    """``(array, axis, C)`` for floating input ``a`` with class axis ``axis``."""
    x = _floating(a, name)
    if x.ndim == 0:
        raise ValueError("%s must have at least one dimension (the class axis)" % name)
    ax = _axis(axis, x.ndim)
    C = x.shape[ax]
    if C == 0:
        raise ValueError("%s has 0 classes along axis %d" % (name, ax))
    return x, ax, C


def _softmax_family(kind: str, x, axis, out, backend):
    x, ax, C = _class_axis(x, axis, "x")
    cdt = _compute_dtype(x.dtype)
    be = _dispatch.resolve(backend)
    R = x.size // C
    if kind == "logsumexp":
        out_shape = x.shape[:ax] + x.shape[ax + 1:]
        out = _check_out(out, out_shape, cdt, (("x", x),))
        X = _rows(x, ax, cdt)
        res = np.empty(R, cdt)
        _dispatch.call("logsumexp", be, X, res, work=X.size)
        if out is not None:
            np.copyto(out, res.reshape(out_shape))
            return out
        return res.reshape(out_shape)[()]
    out = _check_out(out, x.shape, cdt, (("x", x),), inplace_ok=x)
    X = _rows(x, ax, cdt)
    buf, copy_to = _rows_out(out, ax, R, C, cdt)
    _dispatch.call(kind, be, X, buf, work=X.size)
    return _finish_rows(buf, copy_to, out, x.shape, ax)


def softmax(x: ArrayLike, axis: int = -1, *, out: Optional[np.ndarray] = None,
            backend: Optional[str] = None) -> np.ndarray:
    """Softmax along ``axis``: ``exp(x - logsumexp(x, axis))``.

    A row whose log-sum-exp is not finite (all ``-inf``, any ``+inf`` or NaN)
    is all NaN. float16 input is computed and returned in float32. ``out`` may
    be ``x`` itself (in-place).
    """
    return _softmax_family("softmax", x, axis, out, backend)


def log_softmax(x: ArrayLike, axis: int = -1, *, out: Optional[np.ndarray] = None,
                backend: Optional[str] = None) -> np.ndarray:
    """Log-softmax along ``axis``: ``x - logsumexp(x, axis)``.

    A row whose log-sum-exp is not finite is all NaN. ``out`` may be ``x``.
    """
    return _softmax_family("log_softmax", x, axis, out, backend)


def logsumexp(x: ArrayLike, axis: int = -1, *, out: Optional[np.ndarray] = None,
              backend: Optional[str] = None) -> Union[np.floating, np.ndarray]:
    """``log(sum(exp(x), axis))`` computed with the row maximum shifted out.

    The result has ``x``'s shape without ``axis`` (a scalar for 1-D input). A
    row of all ``-inf`` gives ``-inf``; any ``+inf`` gives ``+inf``; NaN gives
    NaN (as ``scipy.special.logsumexp``).
    """
    return _softmax_family("logsumexp", x, axis, out, backend)


# ------------------------------------------------------------ cross-entropy


def _check_options(label_smoothing, z_loss, softcap, reduction):
    eps = float(label_smoothing)
    if not 0.0 <= eps <= 1.0:
        raise ValueError("label_smoothing must be in [0, 1], got %r" % (label_smoothing,))
    z = float(z_loss)
    if not (z >= 0.0 and math.isfinite(z)):
        raise ValueError("z_loss must be a finite number >= 0, got %r" % (z_loss,))
    if softcap is None:
        s = 0.0
    else:
        s = float(softcap)
        if not (s > 0.0 and math.isfinite(s)):
            raise ValueError("softcap must be a finite number > 0 or None, got %r" % (softcap,))
    return eps, z, s, _reduction(reduction)


def _check_weight(weight, C: int, cdt: np.dtype) -> np.ndarray:
    if weight is None:
        return _NONE[cdt]
    w = np.asarray(weight)
    if w.dtype.kind not in "fiu" and w.dtype.name != "bfloat16":
        raise TypeError("weight must be a real numeric array, got dtype %s" % w.dtype)
    if w.shape != (C,):
        raise ValueError(
            "weight has shape %s, expected (%d,) (one weight per class)" % (w.shape, C)
        )
    w = np.ascontiguousarray(w, dtype=cdt)
    bad = ~(w >= 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError("weight must be >= 0 (and not NaN): weight[%d] = %r" % (i, w[i].item()))
    return w


_INT64_MIN, _INT64_MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)


_I64 = np.dtype(np.int64)
_U64 = np.dtype(np.uint64)
#: Below this many entries, min/max/sum over a Python list beat NumPy's
#: reductions (about 1 us against 3 us each, measured): the call overhead
#: of small batches is dominated by such fixed costs.
_SMALL = 64


def _minmax(a: np.ndarray) -> Tuple[int, int]:
    if a.size <= _SMALL:
        values = sorted(a.tolist())  # half the cost of min() and max() here
        return values[0], values[-1]
    return int(a.min()), int(a.max())


def _total(a: np.ndarray) -> float:
    """Sum of a float64 vector: deterministic, whatever the thread count; inf
    beyond float64's range and NaN for +inf with -inf, as ``np.sum``."""
    if a.size <= _SMALL:
        v = a.tolist()
        try:
            return math.fsum(v)
        except OverflowError:  # a partial sum beyond float64's range
            return math.fsum([e * 2.0 ** -64 for e in v]) * 2.0 ** 64  # inf if the sum is
        except ValueError:  # +inf and -inf
            return math.nan
    with np.errstate(over="ignore", invalid="ignore"):
        return float(np.add.reduce(a))


def _loss_scalar(v: float, cdt: np.dtype) -> np.floating:
    """The reduced loss ``v`` in ``cdt``; a float32 loss beyond that type's
    range is inf, without NumPy's overflow warning, as every value the kernels
    write (the check keeps ``errstate`` off the common path)."""
    if abs(v) > _F32_MAX:
        with np.errstate(over="ignore"):
            return cdt.type(v)
    return cdt.type(v)


def _int_target(t: np.ndarray, row_shape, C: int, ignore_index: int):
    """Validated int64 row targets and whether ``ignore_index`` may be among
    them; ``IndexError`` on a bad one."""
    if t.shape != row_shape:
        raise ValueError(
            "target has shape %s; integer targets need the logits' shape without the "
            "class axis, %s (or the logits' own shape for probability targets)"
            % (t.shape, row_shape)
        )
    flat = t if t.ndim == 1 else t.reshape(-1)
    dt = flat.dtype
    if dt.kind == "u" and dt.itemsize == 8 and flat.size and int(flat.max()) > _INT64_MAX:
        _bad_target(t, np.flatnonzero(flat > _INT64_MAX)[0], C, ignore_index)
    if (dt is _I64 or dt == _I64) and flat.flags.c_contiguous:
        t64 = flat
    else:
        t64 = np.ascontiguousarray(flat, dtype=_I64)
    if not t64.size:
        return t64, False
    if t64.size > _SMALL and not 0 <= ignore_index < C:
        # one pass instead of min and max: a negative target is a huge
        # unsigned one, so all are in [0, C) (none ignored) iff this holds
        if int(t64.view(_U64).max()) < C:
            return t64, False
    lo, hi = _minmax(t64)
    if lo < 0 or hi >= C:  # out of range, unless all such entries are ignore_index
        bad = (t64 != ignore_index) & ((t64 < 0) | (t64 >= C))
        if bad.any():
            _bad_target(t, np.flatnonzero(bad)[0], C, ignore_index)
    return t64, lo <= ignore_index <= hi


def _bad_target(t: np.ndarray, flat_index: int, C: int, ignore_index: int):
    pos = np.unravel_index(int(flat_index), t.shape) if t.ndim else ()
    val = t[pos].item() if t.ndim else t.item()
    raise IndexError(
        "target%s = %d is out of range for %d classes (valid: 0..%d, or "
        "ignore_index=%d)" % (list(pos) if t.ndim else "", val, C, C - 1, ignore_index)
    )


def _grad_output(grad_output, reduction: str, loss_shape, what: str):
    """``(gscalar, gout)`` for a kernel: a scalar, or float64 per-row/element values.

    ``grad_output`` is a scalar for ``"mean"``/``"sum"``; for ``"none"`` a scalar
    or an array broadcastable to the unreduced loss's shape.
    """
    if grad_output is None:
        return 1.0, _NONE[_F64]
    g = np.asarray(grad_output)
    if g.dtype.kind not in "fiub" and g.dtype.name != "bfloat16":
        raise TypeError("grad_output must be real numeric, got dtype %s" % g.dtype)
    if g.ndim == 0:
        return float(g), _NONE[_F64]
    if reduction != "none":
        raise ValueError(
            "grad_output must be a scalar for reduction=%r, got shape %s" % (reduction, g.shape)
        )
    try:
        gb = np.broadcast_to(g, loss_shape)
    except ValueError:
        raise ValueError(
            "grad_output has shape %s, expected the %s shape %s" % (g.shape, what, loss_shape)
        ) from None
    return 1.0, np.ascontiguousarray(gb, dtype=_F64).reshape(-1)


def _ce(logits, target, axis, weight, ignore_index, label_smoothing, z_loss, softcap,
        reduction, backend, want_grad, grad_output=None, out=None):
    x, ax, C = _class_axis(logits, axis, "logits")
    eps, z, s, reduction = _check_options(label_smoothing, z_loss, softcap, reduction)
    try:
        ii = operator.index(ignore_index)
    except TypeError:
        raise TypeError("ignore_index must be an integer, got %r" % (ignore_index,)) from None
    if not _INT64_MIN <= ii <= _INT64_MAX:
        raise ValueError("ignore_index must fit in int64, got %d" % ii)
    cdt = _compute_dtype(x.dtype)
    w = _check_weight(weight, C, cdt)
    t = np.asarray(target)
    row_shape = x.shape[:ax] + x.shape[ax + 1:]
    R = x.size // C

    if t.dtype.kind in "iu":
        soft = False
        t64, maybe_ignored = _int_target(t, row_shape, C, ii)
        if maybe_ignored:
            valid = t64 != ii
            nvalid = int(np.count_nonzero(valid))
        else:
            valid, nvalid = None, R
        if reduction == "mean":
            if nvalid == 0:
                ce_scale = z_scale = 0.0
            else:
                if w.size:
                    wy = w[t64 if valid is None else t64[valid]]
                    W = float(np.add.reduce(wy, dtype=np.float64))
                else:
                    W = float(nvalid)
                # 0 / 0 when every valid target has weight 0: NaN, as PyTorch
                ce_scale = 1.0 / W if W != 0 else math.nan
                z_scale = 1.0 / nvalid
        else:
            ce_scale = z_scale = 1.0
    elif t.dtype.kind == "f" or t.dtype.name == "bfloat16":
        soft = True
        if ignore_index is not IGNORE_INDEX_DEFAULT:
            raise ValueError("ignore_index does not apply to probability (floating) targets")
        if t.shape != x.shape:
            raise ValueError(
                "probability targets need the logits' shape %s, got %s (integer targets "
                "need %s)" % (x.shape, t.shape, row_shape)
            )
        ce_scale = z_scale = (1.0 / R if R else 0.0) if reduction == "mean" else 1.0
    else:
        raise TypeError(
            "target must hold integer class indices or floating probabilities, got dtype %s"
            % t.dtype
        )

    gscalar, gout = (_grad_output(grad_output, reduction, row_shape, "per-row loss")
                     if want_grad else (1.0, _NONE[_F64]))

    be = _dispatch.resolve(backend)
    if want_grad and out is not None:
        inputs = (("logits", x), ("target", t))
        if weight is not None:
            inputs += (("weight", weight),)
        if grad_output is not None:
            inputs += (("grad_output", grad_output),)
        out = _check_out(out, x.shape, cdt, inputs, inplace_ok=x)
    X = _rows(x, ax, cdt)
    # per-row losses for "none"; else the kernels' partial sums (CE_LANES
    # per CE_ROWS rows), without a buffer of R losses written and read back
    if reduction == "none":
        loss_rows, partial = np.empty(R, _F64), _NONE[_F64]
    else:
        loss_rows, partial = _NONE[_F64], np.empty(-(-R // CE_ROWS) * CE_LANES, _F64)
    if soft:
        P = _rows(t, ax, cdt)
        if want_grad:
            buf, copy_to = _rows_out(out, ax, R, C, cdt)
            _dispatch.call("ce_soft_loss_grad", be, X, P, w, eps, z, s, ce_scale, z_scale,
                           gscalar, gout, loss_rows, partial, buf, work=X.size)
        else:
            _dispatch.call("ce_soft_loss", be, X, P, w, eps, z, s, ce_scale, z_scale,
                           loss_rows, partial, work=X.size)
    else:
        if want_grad:
            buf, copy_to = _rows_out(out, ax, R, C, cdt)
            _dispatch.call("ce_loss_grad", be, X, t64, w, ii, eps, z, s, ce_scale, z_scale,
                           gscalar, gout, loss_rows, partial, buf, work=X.size)
        else:
            _dispatch.call("ce_loss", be, X, t64, w, ii, eps, z, s, ce_scale, z_scale,
                           loss_rows, partial, work=X.size)

    if reduction == "none":
        with np.errstate(over="ignore"):  # beyond float32's max: inf, quietly
            loss = loss_rows.astype(cdt).reshape(row_shape)
        if loss.ndim == 0:
            loss = loss[()]
    else:
        loss = _loss_scalar(_total(partial), cdt)
    if not want_grad:
        return loss
    return loss, _finish_rows(buf, copy_to, out, x.shape, ax)


_CE_DOC = """

    Parameters
    ----------
    logits : array_like, floating (float16 and bfloat16 are computed in float32)
        Unnormalised scores; ``axis`` is the class axis.
    target : array_like
        Integer class indices shaped like ``logits`` without ``axis``, or
        floating class probabilities shaped like ``logits``.
    axis : int
        The class axis (``-1``; PyTorch's ``(N, C, d1, ...)`` layout is ``axis=1``).
    weight : array_like of shape (C,), optional
        Non-negative class weights.
    ignore_index : int
        Rows whose integer target equals it add exactly 0 to the loss and the
        gradient, whatever their logits hold. Not allowed with probability targets.
    label_smoothing : float in [0, 1]
    z_loss : float >= 0
        Adds ``z_loss * logsumexp(row)**2`` per row (Liger-Kernel's ``lse_square_scale``).
    softcap : float > 0, optional
        Replaces logits by ``softcap * tanh(logits / softcap)``; ``-inf`` stays masked.
    reduction : {"mean", "sum", "none"}
        ``"mean"`` divides by the summed weight of non-ignored targets (by the row
        count for probability targets); with no valid row it is 0.0.
    backend : {None, "auto", "cython", "numba", "numpy"}
"""


def cross_entropy(logits: ArrayLike, target: ArrayLike, *, axis: int = -1,
                  weight: Optional[ArrayLike] = None,
                  ignore_index: int = IGNORE_INDEX_DEFAULT,
                  label_smoothing: float = 0.0, z_loss: float = 0.0,
                  softcap: Optional[float] = None, reduction: str = "mean",
                  backend: Optional[str] = None) -> Loss:
    """Cross-entropy loss between logits and targets (PyTorch's semantics).

    Returns a scalar of the compute dtype for ``"mean"``/``"sum"``, or the
    per-row losses shaped like an integer target for ``"none"``.
    """
    return _ce(logits, target, axis, weight, ignore_index, label_smoothing, z_loss,
               softcap, reduction, backend, want_grad=False)


def cross_entropy_with_grad(logits: ArrayLike, target: ArrayLike, *, axis: int = -1,
                            weight: Optional[ArrayLike] = None,
                            ignore_index: int = IGNORE_INDEX_DEFAULT,
                            label_smoothing: float = 0.0, z_loss: float = 0.0,
                            softcap: Optional[float] = None, reduction: str = "mean",
                            grad_output: Optional[ArrayLike] = None,
                            out: Optional[np.ndarray] = None,
                            backend: Optional[str] = None) -> Tuple[Loss, np.ndarray]:
    """Cross-entropy loss and its gradient with respect to ``logits``, in one fused pass.

    Returns ``(loss, grad)``. ``grad`` is the derivative of the reduced loss
    (of ``sum(grad_output * loss)`` for ``"none"``) and has the logits' shape in
    the compute dtype. ``out=`` receives the gradient and may be ``logits``
    itself (explicit in-place). ``grad_output`` is a scalar for ``"mean"`` and
    ``"sum"``, a scalar or an array shaped like the per-row loss for ``"none"``.
    """
    return _ce(logits, target, axis, weight, ignore_index, label_smoothing, z_loss,
               softcap, reduction, backend, True, grad_output, out)


def cross_entropy_grad(logits: ArrayLike, target: ArrayLike, *, axis: int = -1,
                       weight: Optional[ArrayLike] = None,
                       ignore_index: int = IGNORE_INDEX_DEFAULT,
                       label_smoothing: float = 0.0, z_loss: float = 0.0,
                       softcap: Optional[float] = None, reduction: str = "mean",
                       grad_output: Optional[ArrayLike] = None,
                       out: Optional[np.ndarray] = None,
                       backend: Optional[str] = None) -> np.ndarray:
    """The gradient of :func:`cross_entropy` alone (see :func:`cross_entropy_with_grad`)."""
    return _ce(logits, target, axis, weight, ignore_index, label_smoothing, z_loss,
               softcap, reduction, backend, True, grad_output, out)[1]


for _f in (cross_entropy, cross_entropy_with_grad, cross_entropy_grad):
    _f.__doc__ += _CE_DOC


# ----------------------------------------------------- binary cross-entropy


_F32_MAX = float(np.finfo(np.float32).max)


def _grad_beyond_f32(grad_output, gscalar: float, gout: np.ndarray, scale: float) -> bool:
    """Whether a float32 binary cross-entropy's gradient factor (``grad_output``
    times the reduction's scale) leaves float32's range: the kernels form it
    in float32 first, and ``d * inf`` would be NaN where ``d = 0`` and inf
    where ``d * g`` is finite.  Only a float64 ``grad_output`` array can hold
    such values (its max is a pass over it, paid only then)."""
    if math.isfinite(gscalar) and abs(gscalar * scale) > _F32_MAX:
        return True
    if not gout.size:
        return False
    g = np.asarray(grad_output)
    if g.dtype.kind != "f" or g.dtype.itemsize <= 4:
        return False
    with np.errstate(invalid="ignore"):
        m = np.max(np.abs(gout), where=np.isfinite(gout), initial=0.0)
    return m * scale > _F32_MAX


def _bce(kind, x, y, weight, pos_weight, reduction, backend, want_grad,
         grad_output=None, out=None):
    name = "p" if kind == "prob" else "x"
    x = _floating(x, name)
    y = _floating(y, "y")
    reduction = _reduction(reduction)
    shape = x.shape
    try:
        if y.shape != shape and np.broadcast_shapes(shape, y.shape) != shape:
            raise ValueError
    except ValueError:
        raise ValueError(
            "y has shape %s, which does not broadcast to the input shape %s" % (y.shape, shape)
        ) from None
    cdt = _compute_dtype(x.dtype)
    n = x.size
    X = np.ascontiguousarray(x, dtype=cdt).reshape(-1)
    Y = np.ascontiguousarray(y if y.shape == shape else np.broadcast_to(y, shape),
                             dtype=cdt).reshape(-1)
    if kind == "prob":
        with np.errstate(invalid="ignore"):
            bad = (X < 0) | (X > 1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            pos = list(np.unravel_index(i, shape)) if shape else []
            raise ValueError("p must hold probabilities in [0, 1]: p%s = %r" % (pos, X[i].item()))
    W = np.empty(0, cdt)
    if weight is not None:
        wa = np.asarray(weight)
        if wa.dtype.kind not in "fiu" and wa.dtype.name != "bfloat16":
            raise TypeError("weight must be a real numeric array, got dtype %s" % wa.dtype)
        try:
            W = np.ascontiguousarray(wa if wa.shape == shape else np.broadcast_to(wa, shape),
                                     dtype=cdt).reshape(-1)
        except ValueError:
            raise ValueError(
                "weight has shape %s, which does not broadcast to the input shape %s"
                % (wa.shape, shape)
            ) from None
    PW = np.empty(0, cdt)
    if pos_weight is not None:
        pa = np.asarray(pos_weight)
        if pa.dtype.kind not in "fiu" and pa.dtype.name != "bfloat16":
            raise TypeError("pos_weight must be a real numeric array, got dtype %s" % pa.dtype)
        L = shape[-1] if shape else 1
        if pa.ndim > 1 and any(d != 1 for d in pa.shape[:-1]) or (
            pa.ndim and pa.shape[-1] not in (1, L)
        ) or pa.ndim > max(len(shape), 1):
            raise ValueError(
                "pos_weight has shape %s; it must broadcast along the last axis of the "
                "input (length %d)" % (pa.shape, L)
            )
        PW = np.ascontiguousarray(np.broadcast_to(pa.reshape(-1), (L,)), dtype=cdt)

    gscalar, gout = (_grad_output(grad_output, reduction, shape, "loss")
                     if want_grad else (1.0, _NONE[_F64]))

    be = _dispatch.resolve(backend)
    if want_grad:
        inputs = ((name, x), ("y", y))
        for nm, v in (("weight", weight), ("pos_weight", pos_weight),
                      ("grad_output", grad_output)):
            if v is not None:
                inputs += ((nm, v),)
        out = _check_out(out, shape, cdt, inputs, inplace_ok=x)
        if out is not None and out.flags.c_contiguous:
            G = out.reshape(-1)
            copy_back = False
        else:
            G = np.empty(n, cdt)
            copy_back = out is not None
    scale = (1.0 / n if n else 0.0) if reduction == "mean" else 1.0
    if want_grad and cdt == _F32 and _grad_beyond_f32(grad_output, gscalar, gout, scale):
        # rare: the loss in float32 as always, the gradient in float64,
        # rounded once to float32
        loss = _bce(kind, x, y, weight, pos_weight, reduction, be, False)
        f64 = [None if a is None else np.asarray(a, np.float64) for a in (x, y, weight, pos_weight)]
        _, g64 = _bce(kind, *f64, reduction, be, True, grad_output)
        with np.errstate(over="ignore"):
            g32 = g64.astype(cdt)
        if out is None:
            return loss, g32
        np.copyto(out, g32)
        return loss, out
    loss_el = np.empty(n if reduction == "none" else 0, cdt)
    partial = np.zeros(0 if reduction == "none" else -(-n // BCE_BLOCK), np.float64)
    # Kernel names are literals, never built per call: a fresh string looked
    # up as an attribute is kept by CPython's type-attribute cache, in a slot
    # chosen by its address, so per-call names pile up there (tracemalloc
    # saw ~20 KiB after 15,000 calls).
    extra = (W,) if kind == "prob" else (W, PW)
    if want_grad:
        kern = "bce_loss_grad" if kind == "prob" else "bce_logits_loss_grad"
        _dispatch.call(kern, be, X, Y, *extra, scale, gscalar, gout, loss_el, partial, G, work=n)
    else:
        kern = "bce_loss" if kind == "prob" else "bce_logits_loss"
        _dispatch.call(kern, be, X, Y, *extra, scale, loss_el, partial, work=n)
    if reduction == "none":
        loss = loss_el.reshape(shape)
        if loss.ndim == 0:
            loss = loss[()]
    else:
        loss = _loss_scalar(_total(partial), cdt)
    if not want_grad:
        return loss
    if copy_back:
        np.copyto(out, G.reshape(shape))
        grad = out
    else:
        grad = out if out is not None else G.reshape(shape)
    return loss, grad


def binary_cross_entropy(p: ArrayLike, y: ArrayLike, *, weight: Optional[ArrayLike] = None,
                         reduction: str = "mean", backend: Optional[str] = None) -> Loss:
    """Binary cross-entropy on probabilities (PyTorch's ``binary_cross_entropy``).

    ``l = -weight * (y * max(log p, -100) + (1 - y) * max(log(1 - p), -100))``
    elementwise, any shape; ``y`` may be soft (in [0, 1]) and broadcasts to
    ``p``, ``weight`` broadcasts to ``p``. ``"mean"`` divides by the element
    count (0.0 for an empty input). ``p`` outside [0, 1] is a ``ValueError``.
    """
    return _bce("prob", p, y, weight, None, reduction, backend, False)


def binary_cross_entropy_with_grad(p: ArrayLike, y: ArrayLike, *,
                                   weight: Optional[ArrayLike] = None,
                                   reduction: str = "mean",
                                   grad_output: Optional[ArrayLike] = None,
                                   out: Optional[np.ndarray] = None,
                                   backend: Optional[str] = None) -> Tuple[Loss, np.ndarray]:
    """:func:`binary_cross_entropy` and its gradient with respect to ``p``, fused.

    The gradient is PyTorch's, ``weight * (p - y) / max(p * (1 - p), 1e-12)``,
    times ``grad_output`` (and ``1/n`` for ``"mean"``). ``out=`` receives it
    and may be ``p`` itself.
    """
    return _bce("prob", p, y, weight, None, reduction, backend, True, grad_output, out)


def binary_cross_entropy_with_logits(x: ArrayLike, y: ArrayLike, *,
                                     weight: Optional[ArrayLike] = None,
                                     pos_weight: Optional[ArrayLike] = None,
                                     reduction: str = "mean",
                                     backend: Optional[str] = None) -> Loss:
    """Binary cross-entropy on logits (PyTorch's ``binary_cross_entropy_with_logits``).

    ``l = weight * ((1 - y) * x + (1 + (pos_weight - 1) * y) * softplus(-x))``,
    evaluated without overflow: ``x = +-inf`` with the matching label gives 0.
    ``pos_weight`` runs along the last axis (one weight per output of a
    multi-label problem); ``weight`` broadcasts to ``x``.
    """
    return _bce("logits", x, y, weight, pos_weight, reduction, backend, False)


def binary_cross_entropy_with_logits_with_grad(
    x: ArrayLike, y: ArrayLike, *, weight: Optional[ArrayLike] = None,
    pos_weight: Optional[ArrayLike] = None, reduction: str = "mean",
    grad_output: Optional[ArrayLike] = None, out: Optional[np.ndarray] = None,
    backend: Optional[str] = None,
) -> Tuple[Loss, np.ndarray]:
    """:func:`binary_cross_entropy_with_logits` and its gradient with respect to ``x``, fused.

    ``dl/dx = weight * ((1 + (pos_weight - 1) * y) * sigmoid(x) - pos_weight * y)``.
    ``out=`` receives the gradient and may be ``x`` itself.
    """
    return _bce("logits", x, y, weight, pos_weight, reduction, backend, True,
                grad_output, out)
