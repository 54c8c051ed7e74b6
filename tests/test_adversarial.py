"""Adversarial inputs: every public function, every backend, against the NumPy backend.

For each call the backend under test and ``backend="numpy"`` must either both
raise the same exception type (one of TypeError / ValueError / IndexError,
never a crash or an internal error) or agree within SPEC.md's tolerances
(twice the per-backend bound, since both are measured against the exact
value), with the same NaN and inf positions, dtype and shape. No input may
be modified, and an ``out=`` that partly overlaps an input is refused.

Inputs come from ``tests/adversarial.py`` (a fixed catalogue) and from
hypothesis (shapes, dtypes, fills, layouts, strides, option values). The
number of hypothesis examples run per function is printed at the end of the
session (``conftest.pytest_terminal_summary``); ``FASTXENT_HYPOTHESIS_EXAMPLES``
sets ``max_examples`` (default 20 per function and backend; 10x that in the
``slow`` variant).
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import adversarial as A
import fastxent
from conftest import HYPOTHESIS_COUNTS

FUNCS = {
    "softmax": fastxent.softmax,
    "log_softmax": fastxent.log_softmax,
    "logsumexp": fastxent.logsumexp,
    "cross_entropy": fastxent.cross_entropy,
    "cross_entropy_with_grad": fastxent.cross_entropy_with_grad,
    "cross_entropy_grad": fastxent.cross_entropy_grad,
    "binary_cross_entropy": fastxent.binary_cross_entropy,
    "binary_cross_entropy_with_grad": fastxent.binary_cross_entropy_with_grad,
    "binary_cross_entropy_with_logits": fastxent.binary_cross_entropy_with_logits,
    "binary_cross_entropy_with_logits_with_grad": fastxent.binary_cross_entropy_with_logits_with_grad,
}
SM = ("softmax", "log_softmax", "logsumexp")
CE = ("cross_entropy", "cross_entropy_with_grad", "cross_entropy_grad")
BCE = ("binary_cross_entropy", "binary_cross_entropy_with_grad",
       "binary_cross_entropy_with_logits", "binary_cross_entropy_with_logits_with_grad")
WITH_OUT = ("softmax", "log_softmax", "logsumexp", "cross_entropy_with_grad", "cross_entropy_grad",
            "binary_cross_entropy_with_grad", "binary_cross_entropy_with_logits_with_grad")
ALLOWED_ERRORS = (TypeError, ValueError, IndexError)

LOSS_TOL = {4: 1e-6, 8: 1e-12}  # by compute itemsize; doubled below (two approximations)
GRAD_TOL = {4: 2e-6, 8: 1e-12}
N_EXAMPLES = int(os.environ.get("FASTXENT_HYPOTHESIS_EXAMPLES", "20"))
N_EXAMPLES_SLOW = 10 * N_EXAMPLES
SETTINGS = settings(max_examples=N_EXAMPLES, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


def cdt_of(x):
    x = np.asarray(x)
    if x.dtype.kind != "f":
        return np.dtype(np.float64)
    return np.dtype(np.float64) if x.dtype.itemsize >= 8 else np.dtype(np.float32)


# ------------------------------------------------------------ the harness


def _arrays(args, kw):
    out = []
    for v in list(args) + list(kw.values()):
        if isinstance(v, np.ndarray):
            out.append(v)
    return out


def _snapshot(arrays):
    return [(a, a.dtype, a.shape, a.strides, a.tobytes()) for a in arrays]


def _check_unmodified(snap, who):
    for a, dt, shape, strides, b in snap:
        assert (a.dtype, a.shape, a.strides) == (dt, shape, strides), who + ": input array changed shape"
        assert a.tobytes() == b, "%s modified an input array (%s %s)" % (who, dt, shape)


def _materialise(kw, out_spec):
    """A fresh kwargs dict with ``out=`` built from ``out_spec`` (None, "fresh", or a builder)."""
    kw = dict(kw)
    if out_spec is not None:
        kw["out"] = out_spec()
    return kw


def _call(fname, backend, args, kw):
    try:
        return FUNCS[fname](*args, backend=backend, **kw), None
    except Exception as exc:  # noqa: BLE001 - compared below
        return None, exc


def agree(fname, backend, args, kw=None, axis=-1, out=None, expect=None, name=""):
    """Run ``fname`` on ``backend`` and on numpy; both raise the same type or agree.

    ``out`` is a zero-argument builder of an ``out=`` array (each call gets
    its own). ``expect`` an exception type that both must raise. Returns
    ``"raised"`` or ``"ok"``.
    """
    kw = kw or {}
    k1, k2 = _materialise(kw, out), _materialise(kw, out)
    snap = _snapshot(_arrays(args, kw))
    res, err = _call(fname, backend, args, k1)
    _check_unmodified(snap, "%s[%s]" % (fname, backend))
    if backend == "numpy":
        ref, rerr = res, err
    else:
        ref, rerr = _call(fname, "numpy", args, k2)
        _check_unmodified(snap, "%s[numpy]" % fname)
    what = "%s[%s] %s kw=%s" % (fname, backend, name,
                                {k: (v if np.ndim(v) == 0 else "array") for k, v in kw.items()})
    if err is not None or rerr is not None:
        assert err is not None and rerr is not None and type(err) is type(rerr), (
            "%s: backend raised %r, numpy raised %r" % (what, err, rerr))
        assert isinstance(err, ALLOWED_ERRORS), "%s raised %r" % (what, err)
        if expect is not None:
            assert isinstance(err, expect), "%s: expected %s, got %r" % (what, expect, err)
        return "raised"
    assert expect is None, "%s: expected %s, nothing raised" % (what, expect)
    if "out" in k1:
        got = res[1] if isinstance(res, tuple) else res
        assert got is k1["out"], what + ": out= not returned"
    compare(fname, res, ref, args, kw, axis, what)
    return "ok"


def _nonfinite_equal(a, e, what):
    a = np.asarray(a, np.float64)
    e = np.asarray(e, np.float64)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(e), err_msg=what + " (NaN positions)")
    np.testing.assert_array_equal(a[np.isinf(e)], e[np.isinf(e)], err_msg=what + " (inf positions)")
    np.testing.assert_array_equal(np.isinf(a), np.isinf(e), err_msg=what + " (inf positions)")


def _elementwise(a, e, tol, what):
    _nonfinite_equal(a, e, what)
    a = np.asarray(a, np.float64)
    e = np.asarray(e, np.float64)
    fin = np.isfinite(e)
    err = np.abs(a[fin] - e[fin])
    bound = tol * np.maximum(1.0, np.abs(e[fin]))
    if np.any(err > bound):
        i = int(np.argmax(err - bound))
        raise AssertionError("%s: %d values off; worst %r vs %r (err %.3g > %.3g)"
                             % (what, int(np.sum(err > bound)), a[fin][i], e[fin][i], err[i], bound[i]))


def _rowwise(a, e, tol, axis, what, floor=0.0):
    """SPEC gradient measure along ``axis``: within ``tol`` of the row's largest |reference|.

    ``floor`` (a scalar or one value per row) is a lower bound of that scale:
    the size the row's gradient has before cancellation (``|g_n| * factor_n *
    max w``, times 2**-30). Without it a row whose exact gradient is 0 (all-equal logits
    with ``label_smoothing=1``) would have to reproduce the reference's
    rounding noise (5e-17) to a relative 2e-6.
    """
    _nonfinite_equal(a, e, what)
    a = np.asarray(a, np.float64)
    e = np.asarray(e, np.float64)
    if e.size == 0:
        return
    if e.ndim == 0:
        a, e = a.reshape(1, 1), e.reshape(1, 1)
    a = np.moveaxis(a, axis, -1).reshape(-1, e.shape[axis])
    e = np.moveaxis(e, axis, -1).reshape(-1, a.shape[-1])
    fin = np.isfinite(e)
    scale = np.max(np.where(fin, np.abs(e), 0.0), axis=1, keepdims=True)
    scale = np.maximum(scale, np.reshape(np.broadcast_to(floor, (scale.shape[0],)), scale.shape))
    err = np.where(fin, np.abs(a - e), 0.0)
    bad = err > tol * scale
    if np.any(bad):
        r, c = np.argwhere(bad)[0]
        raise AssertionError("%s: %d entries off; row %d col %d: %r vs %r (row max %.3g)"
                             % (what, int(bad.sum()), r, c, a[r, c], e[r, c], scale[r, 0]))


def _reduced(a, e, per_row_ref, scale, tol, what):
    """A mean/sum: the per-row bound carried through the reduction (``scale`` = largest row factor)."""
    rows = np.asarray(per_row_ref, np.float64).reshape(-1)
    if _order_dependent_overflow(rows, scale):
        # finite row losses of both signs, their scaled magnitudes summing
        # near float64's max: a partial sum may leave the range or not, by
        # summation order (the backends block the rows differently), and the
        # result is +-inf or NaN either way; a finite result must be the exact
        # sum's (math.fsum of the scaled rows, exact to its last rounding)
        if not np.isfinite(a):
            return
        assert np.all(np.isfinite(rows)), "%s: %r with an infinite row loss" % (what, a)
        k = scale * 2.0 ** -64  # (scaled by 2**-64: no overflow)
        exact = math.fsum((rows * k).tolist())
        mag = math.fsum((np.abs(rows) * k).tolist())
        err = abs(float(a) * 2.0 ** -64 - exact)
        assert err <= tol * (abs(exact) + mag), "%s: %r vs the exact sum %r * 2**64" % (what, a, exact)
        return
    _nonfinite_equal(a, e, what)
    if not np.isfinite(e):
        return
    bound = tol * (abs(float(e)) + scale * float(np.sum(np.maximum(1.0, np.abs(rows[np.isfinite(rows)])))))
    assert abs(float(a) - float(e)) <= bound, "%s: %r vs %r (bound %.3g)" % (what, a, e, bound)


def _order_dependent_overflow(rows, scale):
    """Whether a float64 sum of ``rows * scale`` can come out differently in
    different orders: finite rows whose partial sums may leave float64's range
    (within 4x of its max), with finite rows of both signs, or an infinite row
    of the sign opposite to the ones that may overflow (+inf then -inf: NaN;
    -inf first then +inf: NaN; or just the inf).  See :func:`_reduced`."""
    if rows.size == 0 or np.any(np.isnan(rows)):
        return False
    fin = rows[np.isfinite(rows)]
    pinf, ninf = bool(np.any(rows == np.inf)), bool(np.any(rows == -np.inf))
    if pinf and ninf:
        return False  # NaN in every order
    with np.errstate(over="ignore"):
        pos = float(np.sum(fin[fin > 0]) * scale)
        neg = float(np.sum(-fin[fin < 0]) * scale)
    big = np.finfo(np.float64).max / 4
    if pinf:
        return not neg < big
    if ninf:
        return not pos < big
    return pos > 0 and neg > 0 and not pos + neg < big


def _mean_scale(fname, args, kw, axis):
    """Largest factor a row's loss gets in ``reduction='mean'`` (from the inputs, in float64)."""
    x = np.asarray(args[0])
    if fname in BCE:
        return 1.0 / x.size if x.size else 0.0
    t = np.asarray(args[1])
    C = x.shape[axis]
    R = x.size // C if C else 0
    if t.dtype.kind == "f":
        return 1.0 / R if R else 0.0
    ii = int(kw.get("ignore_index", -100))
    tt = t.reshape(-1).astype(object)  # exact for uint64
    valid = np.array([int(v) != ii for v in tt], bool)
    w = np.ones(C) if kw.get("weight") is None else np.asarray(kw["weight"], np.float64)
    W = float(sum(w[int(v)] for v, ok in zip(tt, valid) if ok))
    V = int(valid.sum())
    scales = [1.0 / d for d in (W, V) if d > 0]
    return max(scales) if scales else 0.0


def compare(fname, res, ref, args, kw, axis, what):
    cdt = cdt_of(args[0])
    lt, gt = 2 * LOSS_TOL[cdt.itemsize], 2 * GRAD_TOL[cdt.itemsize]
    pairs = list(zip(res, ref)) if isinstance(res, tuple) else [(res, ref)]
    for a, e in pairs:
        assert np.shape(a) == np.shape(e), "%s: shape %s vs numpy %s" % (what, np.shape(a), np.shape(e))
        assert np.asarray(a).dtype == np.asarray(e).dtype == cdt, "%s: dtype %s vs numpy %s (want %s)" % (
            what, np.asarray(a).dtype, np.asarray(e).dtype, cdt)
    if fname == "softmax":
        return _rowwise(res, ref, gt, axis, what)
    if fname in ("log_softmax", "logsumexp"):
        return _elementwise(res, ref, lt, what)
    loss, eloss = (res[0], ref[0]) if isinstance(res, tuple) else (res, ref)
    if fname != "cross_entropy_grad":
        red = kw.get("reduction", "mean")
        if red == "none":
            _elementwise(loss, eloss, lt, what + " loss")
        else:
            kn = {k: v for k, v in kw.items() if k not in ("out", "grad_output", "reduction")}
            loss_fn = FUNCS[fname.replace("_with_grad", "")]
            rows = loss_fn(*args, reduction="none", backend="numpy", **kn)
            scale = 1.0 if red == "sum" else _mean_scale(fname, args, kw, axis)
            _reduced(loss, eloss, rows, scale, lt, what + " " + red)
    if fname == "cross_entropy_grad" or isinstance(res, tuple):
        g, eg = (res[1], ref[1]) if isinstance(res, tuple) else (res, ref)
        _rowwise(g, eg, gt, axis if fname in CE else -1, what + " grad",
                 floor=_grad_floor(fname, args, kw, axis, eg))


def _grad_floor(fname, args, kw, axis, eg):
    """A few ulps of the per-row gradient size before cancellation (see :func:`_rowwise`).

    2**-10 of that size in float64 (times the 2e-12 tolerance: ~10 ulps) and
    2**-4 in float32 (times 4e-6: ~4 ulps): the rounding noise left where the
    exact gradient cancels (float64, label_smoothing=1, softcap, tiny logits:
    the reference returns -5.6e-17, a compiled backend exactly 0; float32 soft
    targets with C=1: p * sum(wq) - wq cancels in the float32 reference).
    """
    red = kw.get("reduction", "mean")
    factor = 1.0 if red != "mean" else _mean_scale(fname, args, kw, axis)
    x = np.asarray(args[0])
    rows = eg.size // eg.shape[axis] if (np.ndim(eg) and eg.shape[axis]) else max(eg.size, 1)
    g = kw.get("grad_output")
    if g is None or np.ndim(g) == 0:
        gmag = np.full(rows, abs(float(1.0 if g is None else g)))
    elif fname in CE:
        gmag = np.abs(np.broadcast_to(g, _row_shape(x, axis)).reshape(-1)).astype(np.float64)
    else:  # BCE rows are along the last axis
        gb = np.abs(np.broadcast_to(g, np.shape(eg)).astype(np.float64))
        gmag = gb.reshape(rows, -1).max(axis=1) if gb.size else np.zeros(0)
    w = kw.get("weight")
    wmax = 1.0 if w is None or np.size(w) == 0 else max(float(np.max(np.abs(w))), 1.0)
    x64 = np.asarray(args[0]).dtype == np.float64
    return (2.0 ** -10 if x64 else 2.0 ** -4) * gmag * factor * wmax


# ------------------------------------------------------------ overlap builders


def overlapping(x_like, out_shape, out_dtype, shift=1):
    """``(x2, out_builder)``: ``x2`` holds ``x_like``'s values; every ``out`` built partly overlaps it.

    Both live in one byte buffer, ``out`` starting ``shift`` of its items
    later. Returns ``(x_like, None)`` when nothing can overlap (empty arrays).
    """
    x_like = np.asarray(x_like)
    out_dtype = np.dtype(out_dtype)
    on = int(np.prod(out_shape)) * out_dtype.itemsize
    if x_like.nbytes == 0 or on == 0 or shift * out_dtype.itemsize >= x_like.nbytes:
        return x_like, None
    buf = np.zeros(max(x_like.nbytes, shift * out_dtype.itemsize + on) + 16, np.uint8)
    x2 = buf[:x_like.nbytes].view(x_like.dtype).reshape(x_like.shape)
    x2[...] = x_like
    off = shift * out_dtype.itemsize

    def build():
        o = buf[off:off + on].view(out_dtype).reshape(out_shape)
        assert np.shares_memory(o, x2) and not (o.shape == x2.shape and o.dtype == x2.dtype and off == 0)
        return o

    return x2, build


def fresh(shape, dtype):
    return lambda: np.full(shape, 7.0, dtype)


# ------------------------------------------------------------ the fixed catalogue


def _row_shape(x, axis):
    return x.shape[:axis % x.ndim] + x.shape[axis % x.ndim + 1:] if x.ndim else ()


@pytest.mark.parametrize("fname", SM)
def test_softmax_family_catalogue(backend, fname, tmp_path):
    rng = np.random.default_rng(1)
    n = 0
    for name, x, axis in A.logits_cases(rng, tmp_path):
        r = agree(fname, backend, (x,), {"axis": axis}, axis=axis, name=name)
        n += r == "ok"
        if x.ndim == 0 or x.dtype.kind != "f":
            assert r == "raised", name
        if r == "ok" and x.ndim and x.size:  # with a fresh out= too
            shape = _row_shape(x, axis) if fname == "logsumexp" else x.shape
            agree(fname, backend, (x,), {"axis": axis}, axis=axis, out=fresh(shape, cdt_of(x)), name=name)
    assert n > 100


def _ce_options():
    return [
        {},
        {"reduction": "none"},
        {"reduction": "sum", "label_smoothing": 0.1, "z_loss": 1e-3},
        {"reduction": "none", "softcap": 2.0, "label_smoothing": 1.0},
        {"reduction": "mean", "weight_kind": "zeros-some", "label_smoothing": 0.2, "softcap": 30.0},
    ]


def _weight(kind, C, dtype, rng):
    if kind == "zeros-some":
        w = rng.uniform(0.5, 2.0, C)
        w[::2] = 0
        return w.astype(dtype)
    return None


@pytest.mark.parametrize("fname", CE)
def test_cross_entropy_logits_catalogue(backend, fname, tmp_path):
    """Every adversarial logits array, with valid integer and probability targets and several options."""
    rng = np.random.default_rng(2)
    n = 0
    for i, (name, x, axis) in enumerate(A.logits_cases(rng, tmp_path)):
        rs = _row_shape(x, axis)
        C = x.shape[axis] if x.ndim else 1
        opts = dict(_ce_options()[i % 5])
        wk = opts.pop("weight_kind", None)
        if wk and x.ndim:
            opts["weight"] = _weight(wk, C, np.float64, rng)
        t = rng.integers(0, max(C, 1), rs).astype(np.int64)
        if t.size:
            t.reshape(-1)[0] = -100  # one ignored row
        r = agree(fname, backend, (x, t), dict(opts, axis=axis), axis=axis, name=name)
        n += r == "ok"
        if x.ndim == 0 or x.dtype.kind != "f":
            assert r == "raised", name
        if x.dtype.kind == "f" and x.ndim:
            P = rng.dirichlet(np.ones(C), int(np.prod(rs))).reshape(rs + (C,))
            P = np.moveaxis(P, -1, axis % x.ndim).astype(x.dtype)
            agree(fname, backend, (x, P), dict(opts, axis=axis), axis=axis, name=name + "/soft")
        if fname != "cross_entropy" and r == "ok" and x.size:
            agree(fname, backend, (x, t), dict(opts, axis=axis), axis=axis, out=fresh(x.shape, cdt_of(x)), name=name)
    assert n > 100


@pytest.mark.parametrize("fname", CE)
@pytest.mark.parametrize("shape,axis", [((4, 5), -1), ((2, 5, 3), 1), ((5,), 0)], ids=str)
def test_cross_entropy_target_catalogue(backend, fname, shape, axis):
    """Every integer target dtype, ignored entries, values >= C, stray negatives, uint64 beyond int64."""
    rng = np.random.default_rng(3)
    x = A.fill(rng, shape, np.float32, "nonfinite")
    C = shape[axis]
    rs = _row_shape(x, axis)
    seen = set()
    for name, t, ii in A.int_targets(rng, rs, C):
        kw = {"axis": axis, "reduction": "none" if "ignored" in name else "mean"}
        if ii != -100:
            kw["ignore_index"] = ii
        tt = t.reshape(-1).astype(object)
        bad = any((int(v) < 0 or int(v) >= C) and int(v) != ii for v in tt)
        r = agree(fname, backend, (x, t), kw, axis=axis, expect=IndexError if bad else None, name=name)
        seen.add((t.dtype.name, r))
        # the same target in odd layouts
        for lay in ("negstride", "byteswap", "readonly", "fortran"):
            tl = A.relayout(t, lay)
            if tl is not None:
                agree(fname, backend, (x, tl), kw, axis=axis, expect=IndexError if bad else None, name=name + "/" + lay)
    assert {d for d, _ in seen} == {np.dtype(d).name for d in A.INT_TARGET_DTYPES}
    assert {r for _, r in seen} == {"ok", "raised"}


@pytest.mark.parametrize("fname", CE)
def test_cross_entropy_soft_target_catalogue(backend, fname):
    rng = np.random.default_rng(4)
    for dt in A.FLOAT_DTYPES:
        for shape, axis in (((4, 5), -1), ((2, 5, 3), 1), ((5,), -1), ((0, 3), -1)):
            x = A.fill(rng, shape, dt, "nonfinite")
            for name, P in A.soft_targets(rng, shape, dt, axis):
                for opts in ({}, {"reduction": "none", "label_smoothing": 0.3, "z_loss": 1e-2},
                             {"reduction": "sum", "softcap": 5.0}):
                    agree(fname, backend, (x, P), dict(opts, axis=axis), axis=axis, name="%s/%s/%s" % (np.dtype(dt).name, shape, name))


@pytest.mark.parametrize("fname", BCE)
def test_binary_catalogue(backend, fname, tmp_path):
    rng = np.random.default_rng(5)
    want = "prob" if "logits" not in fname else "logits"
    n = 0
    for i, (name, x, y, kind) in enumerate(A.bce_cases(rng, tmp_path)):
        if kind != want:
            continue
        red = ("mean", "sum", "none")[i % 3]
        kw = {"reduction": red}
        if i % 4 == 1 and np.ndim(x):
            kw["weight"] = rng.uniform(0, 2, np.shape(x)[-1:])
        if want == "logits" and i % 5 == 2 and np.ndim(x):
            kw["pos_weight"] = rng.uniform(0, 3, np.shape(x)[-1:])
        expect = None
        if np.asarray(x).dtype.kind != "f" or np.asarray(y).dtype.kind != "f":
            expect = TypeError
        elif kind == "prob" and np.any((np.asarray(x, np.float64) < 0) | (np.asarray(x, np.float64) > 1)):
            expect = ValueError
        r = agree(fname, backend, (x, y), kw, expect=expect, name=name)
        n += r == "ok"
        if r == "ok" and fname.endswith("_with_grad") and np.size(x):
            agree(fname, backend, (x, y), kw, out=fresh(np.shape(x), cdt_of(x)), name=name)
    assert n > 100


# ------------------------------------------------------------ out= partly overlapping


@pytest.mark.parametrize("fname", WITH_OUT)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16], ids=["f32", "f64", "f16"])
def test_out_partly_overlapping_any_input_refused(backend, fname, dtype):
    rng = np.random.default_rng(6)
    cdt = np.float64 if dtype == np.float64 else np.float32
    x = A.fill(rng, (4, 5), dtype)
    out_shape = (4,) if fname == "logsumexp" else (4, 5)
    # overlapping the logits / probabilities, shifted by 1 and by a whole row
    for shift in (1, 5):
        if fname.startswith("binary_cross_entropy") and "logits" not in fname:
            x = rng.uniform(0, 1, (4, 5)).astype(dtype)
        x2, build = overlapping(x, out_shape, cdt, shift)
        args = (x2,) if fname in SM else (x2, rng.integers(0, 5, 4)) if fname in CE else (x2, np.ones((4, 5), dtype))
        agree(fname, backend, args, out=build, expect=ValueError)
    if fname in SM:
        return
    # overlapping the other inputs
    if fname in CE:
        P, pbuild = overlapping(rng.dirichlet(np.ones(5), 4).astype(dtype), out_shape, cdt)
        agree(fname, backend, (x, P), out=pbuild, expect=ValueError)
        w, wbuild = overlapping(np.ones(20, dtype), out_shape, cdt, 2)
        agree(fname, backend, (x, rng.integers(0, 5, 4)), {"weight": w[:5]}, out=wbuild, expect=ValueError)
        g, gbuild = overlapping(np.ones(8, np.float64), out_shape, cdt, 1)
        agree(fname, backend, (x, rng.integers(0, 5, 4)), {"reduction": "none", "grad_output": g[:4]},
              out=gbuild, expect=ValueError)
    else:
        p = rng.uniform(0, 1, (4, 5)).astype(dtype)
        y, ybuild = overlapping(np.ones((4, 5), dtype), out_shape, cdt, 1)
        agree(fname, backend, (p, y), out=ybuild, expect=ValueError)
        w, wbuild = overlapping(np.ones((4, 5), dtype), out_shape, cdt, 3)
        agree(fname, backend, (p, np.ones((4, 5))), {"weight": w}, out=wbuild, expect=ValueError)
        if "logits" in fname:
            pw, pbuild = overlapping(np.ones(25, dtype), out_shape, cdt, 2)
            agree(fname, backend, (p, np.ones((4, 5))), {"pos_weight": pw[:5]}, out=pbuild, expect=ValueError)


# ------------------------------------------------------------ hypothesis


def _count(fname, backend, result):
    HYPOTHESIS_COUNTS[(fname, backend, result)] += 1


@st.composite
def logits_st(draw, allow_bad=True):
    ndim = draw(st.sampled_from([0, 1, 2, 2, 2, 3, 3] if allow_bad else [1, 2, 2, 3]))
    shape = tuple(draw(st.lists(st.integers(0, 5), min_size=ndim, max_size=ndim)))
    if allow_bad and draw(st.integers(0, 14)) == 0:
        dtype = draw(st.sampled_from(A.BAD_LOGIT_DTYPES))
    else:
        dtype = draw(st.sampled_from(A.FLOAT_DTYPES))
    kind = draw(st.sampled_from(A.FILLS))
    layout = draw(st.sampled_from(A.LAYOUTS))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = A.fill(rng, shape, dtype, kind)
    xl = A.relayout(x, layout)
    x = x if xl is None else xl
    axis = draw(st.integers(-ndim, ndim - 1)) if ndim else -1
    if allow_bad and draw(st.integers(0, 19)) == 0:
        axis = ndim  # out of range
    return x, axis, rng


def _out_spec(draw, fname, x, shape, rng):
    """None, a fresh out=, or a partly overlapping one (then x is replaced by a same-valued view)."""
    if fname not in WITH_OUT or x.dtype.kind != "f":
        return x, None, None
    mode = draw(st.sampled_from(["none", "none", "fresh", "overlap"]))
    cdt = cdt_of(x)
    if mode == "fresh":
        return x, fresh(shape, cdt), None
    if mode == "overlap":
        x2, build = overlapping(x, shape, cdt, draw(st.integers(1, 3)))
        if build is not None:
            # refused; which check fires first (a bad target, a bad option) is unspecified
            return x2, build, ALLOWED_ERRORS
    return x, None, None


def _expected_shape_ok(x, axis):
    return x.ndim and -x.ndim <= axis < x.ndim


@st.composite
def sm_case(draw, fname):
    x, axis, rng = draw(logits_st())
    ok = _expected_shape_ok(x, axis)
    shape = (_row_shape(x, axis) if fname == "logsumexp" else x.shape) if ok else x.shape
    x, out, expect = _out_spec(draw, fname, x, shape, rng) if ok else (x, None, None)
    return (x,), {"axis": axis}, axis, out, expect


@st.composite
def ce_case(draw, fname):
    x, axis, rng = draw(logits_st())
    kw = {"axis": axis}
    ok = _expected_shape_ok(x, axis)
    rs = _row_shape(x, axis) if ok else ()
    C = x.shape[axis] if ok else 1
    if draw(st.integers(0, 3)) == 0 and x.ndim:  # probability targets
        P = A.fill(rng, x.shape, draw(st.sampled_from(A.FLOAT_DTYPES)), "normal")
        P = np.abs(P) if draw(st.booleans()) else P
        if ok and C:
            P = np.moveaxis(np.moveaxis(P, axis, -1) / np.maximum(np.moveaxis(np.abs(P), axis, -1).sum(-1, keepdims=True), 1e-3), -1, axis).astype(P.dtype)
        t = A.relayout(P, draw(st.sampled_from(A.LAYOUTS)))
        t = P if t is None else t
        if draw(st.integers(0, 9)) == 0:
            kw["ignore_index"] = -100  # explicit: refused with soft targets
    else:
        dt = np.dtype(draw(st.sampled_from(A.INT_TARGET_DTYPES)))
        t = rng.integers(0, max(C, 1), rs).astype(dt)
        ii = -100
        if draw(st.booleans()):
            ii = draw(st.sampled_from([-100, -1, 0, C, C + 2, 2**40]))
            kw["ignore_index"] = ii
        if t.size:
            flat = t.reshape(-1)
            if draw(st.booleans()) and (dt.kind == "i" or ii >= 0) and np.can_cast(np.min_scalar_type(ii), dt):
                flat[rng.random(flat.size) < 0.4] = ii
            bad = draw(st.sampled_from([None] * 9 + ["geC", "neg", "max"]))
            if bad == "geC" and C < np.iinfo(dt).max:
                flat[rng.integers(flat.size)] = C
            elif bad == "neg" and dt.kind == "i":
                flat[rng.integers(flat.size)] = -draw(st.integers(1, 120))
            elif bad == "max":
                flat[rng.integers(flat.size)] = np.iinfo(dt).max
        tl = A.relayout(t, draw(st.sampled_from(A.LAYOUTS)))
        t = t if tl is None else tl
    wmode = draw(st.sampled_from(["none", "none", "none", "pos", "pos", "zeros", "int", "neg", "shape"]))
    if wmode != "none" and ok:
        w = rng.uniform(0.1, 3, C)
        if wmode == "zeros":
            w[rng.random(C) < 0.5] = 0
        elif wmode == "neg" and C:
            w[0] = -0.5
        elif wmode == "shape":
            w = np.ones(C + 1)
        elif wmode == "int":
            w = rng.integers(0, 3, C)
        kw["weight"] = w.astype(draw(st.sampled_from([np.float32, np.float64]))) if wmode != "int" else w
    kw["label_smoothing"] = draw(st.sampled_from([0.0, 0.0, 0.1, 1.0]))
    kw["z_loss"] = draw(st.sampled_from([0.0, 0.0, 1e-3, 1.0]))
    kw["softcap"] = draw(st.sampled_from([None, None, 0.5, 30.0]))
    kw["reduction"] = draw(st.sampled_from(["mean", "sum", "none"]))
    if draw(st.integers(0, 9)) == 0:  # one bad option value
        k, v = draw(st.sampled_from([("label_smoothing", -0.1), ("label_smoothing", 1.5), ("z_loss", -1.0),
                                     ("softcap", 0.0), ("reduction", "avg"), ("z_loss", float("nan"))]))
        kw[k] = v
    if fname != "cross_entropy":
        g = draw(st.sampled_from(["none", "scalar", "array"]))
        if g == "scalar":
            kw["grad_output"] = draw(st.sampled_from([0.5, -2.0, 0.0]))
        elif g == "array" and ok:
            kw["grad_output"] = rng.standard_normal(rs)
    out, expect = None, None
    if ok:
        x, out, expect = _out_spec(draw, fname, x, x.shape, rng)
    return (x, t), kw, axis, out, expect


@st.composite
def bce_case(draw, fname):
    logits = "logits" in fname
    ndim = draw(st.integers(0, 3))
    shape = tuple(draw(st.lists(st.integers(0, 5), min_size=ndim, max_size=ndim)))
    dtype = np.dtype(draw(st.sampled_from(A.FLOAT_DTYPES)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if logits:
        x = A.fill(rng, shape, dtype, draw(st.sampled_from(A.FILLS)))
    else:
        u = rng.random(shape)
        pk = draw(st.sampled_from(["uniform", "uniform", "edges", "nan", "outside", "subnormal"]))
        if pk == "edges":
            u = np.where(u < 0.3, 0.0, np.where(u > 0.7, 1.0, u))
        elif pk == "nan":
            u = np.where(u < 0.2, np.nan, u)
        elif pk == "outside":
            u = np.where(u < 0.1, 1.0 + 1e-3, u)
        elif pk == "subnormal":
            u = np.where(u < 0.5, float(np.finfo(dtype).smallest_subnormal), u)
        x = np.asarray(u).astype(dtype)
    if draw(st.integers(0, 19)) == 0:
        x = A.fill(rng, shape, draw(st.sampled_from(A.BAD_LOGIT_DTYPES)))
    yshape = draw(st.sampled_from(["same", "row", "scalar"]))
    ys = shape if yshape == "same" else shape[-1:] if yshape == "row" else ()
    y = rng.random(ys)
    ym = draw(st.sampled_from(["hard", "soft", "nan", "outside"]))
    if ym == "hard":
        y = np.round(y)
    elif ym == "nan":
        y = np.where(y < 0.2, np.nan, y)
    elif ym == "outside":
        y = 2 * y - 0.5
    y = np.asarray(y).astype(draw(st.sampled_from(A.FLOAT_DTYPES)))
    x = A.relayout(x, draw(st.sampled_from(A.LAYOUTS))) if A.relayout(x, "c") is not None else x
    x = x if x is not None else A.fill(rng, shape, dtype)
    yl = A.relayout(y, draw(st.sampled_from(A.LAYOUTS)))
    y = y if yl is None else yl
    kw = {"reduction": draw(st.sampled_from(["mean", "sum", "none", "mean", "sum", "none", "bad"]))}
    wm = draw(st.sampled_from(["none", "none", "full", "row", "neg"]))
    if wm != "none":
        ws = shape if wm == "full" else shape[-1:]
        kw["weight"] = rng.uniform(-1 if wm == "neg" else 0, 2, ws)
    if logits:
        pm = draw(st.sampled_from(["none", "none", "row", "one", "bad"]))
        if pm == "row":
            kw["pos_weight"] = rng.uniform(0, 3, shape[-1:] if shape else (1,))
        elif pm == "one":
            kw["pos_weight"] = np.array([2.5])
        elif pm == "bad":
            kw["pos_weight"] = np.ones((shape[-1] + 1,) if shape else (2,))
    if fname.endswith("_with_grad"):
        g = draw(st.sampled_from(["none", "scalar", "array"]))
        if g == "scalar":
            kw["grad_output"] = -1.5
        elif g == "array":
            kw["grad_output"] = rng.standard_normal(shape)
    out, expect = None, None
    if np.asarray(x).dtype.kind == "f":
        x, out, expect = _out_spec(draw, fname, np.asarray(x) if not isinstance(x, np.memmap) else x, shape, rng)
    return (x, y), kw, -1, out, expect


STRATEGY = {**{f: sm_case for f in SM}, **{f: ce_case for f in CE}, **{f: bce_case for f in BCE}}


@pytest.mark.parametrize("fname", list(FUNCS))
@pytest.mark.parametrize("n", [N_EXAMPLES, pytest.param(N_EXAMPLES_SLOW, marks=pytest.mark.slow)],
                         ids=["fast", "slow"])
def test_hypothesis_agrees_with_numpy(backend, fname, n):
    @settings(SETTINGS, max_examples=n)
    @given(case=STRATEGY[fname](fname))
    def run(case):
        args, kw, axis, out, expect = case
        r = agree(fname, backend, args, kw, axis=axis, out=out, expect=expect)
        _count(fname, backend, r)

    run()
