"""What bad input gets (SPEC), inputs left untouched, out= rules, and odd memory layouts."""

from __future__ import annotations

import re

import numpy as np
import pytest

import fastxent

CE_FUNCS = {
    "cross_entropy": fastxent.cross_entropy,
    "cross_entropy_with_grad": fastxent.cross_entropy_with_grad,
    "cross_entropy_grad": fastxent.cross_entropy_grad,
}
ce_funcs = pytest.mark.parametrize("fn", list(CE_FUNCS.values()), ids=list(CE_FUNCS))
SM_FUNCS = {"softmax": fastxent.softmax, "log_softmax": fastxent.log_softmax, "logsumexp": fastxent.logsumexp}
sm_funcs = pytest.mark.parametrize("fn", list(SM_FUNCS.values()), ids=list(SM_FUNCS))


def X(dtype=np.float64):
    return np.array([[2.0, 4.0, 0.5, 1.0], [0.0, 1.0, -1.0, 3.0], [1.0, 1.0, 1.0, 1.0]], dtype)


T = np.array([1, 0, 3])


# ------------------------------------------------------------ TypeError


@pytest.mark.parametrize("bad", [np.int64, np.int32, np.bool_, np.complex128, object],
                         ids=["int64", "int32", "bool", "complex", "object"])
@ce_funcs
def test_non_floating_logits_type_error(backend, fn, bad):
    x = np.array([[1, 2, 3], [0, 1, 0]]).astype(bad)
    with pytest.raises(TypeError):
        fn(x, np.array([0, 1]), backend=backend)


@pytest.mark.parametrize("bad", [np.int64, np.bool_, np.complex128, object], ids=["int64", "bool", "complex", "object"])
@sm_funcs
def test_softmax_non_floating_type_error(backend, fn, bad):
    with pytest.raises(TypeError):
        fn(np.array([[1, 2, 3]]).astype(bad), backend=backend)


# ------------------------------------------------------------ ValueError: shapes


@pytest.mark.parametrize("tshape", [(2,), (3, 1), (4,), (3, 4, 1), (4, 3)], ids=str)
@ce_funcs
def test_bad_target_shape(backend, fn, tshape):
    t = np.zeros(tshape, np.int64) if len(tshape) < 2 or tshape == (3, 1) else np.zeros(tshape)
    with pytest.raises(ValueError) as e:
        fn(X(), t, backend=backend)
    msg = str(e.value)
    assert str(tshape) in msg, msg  # names the target's shape
    assert "(3, 4)" in msg or "(3,)" in msg, msg  # and the logits' (or the expected) shape


@ce_funcs
def test_integer_target_with_logits_shape_is_rejected(backend, fn):
    # An integer array shaped like the logits is neither kind
    with pytest.raises(ValueError):
        fn(X(), np.zeros((3, 4), np.int64), backend=backend)


@pytest.mark.parametrize("wshape", [(3,), (5,), (1, 4), ()], ids=str)
@ce_funcs
def test_bad_weight_shape(backend, fn, wshape):
    with pytest.raises(ValueError) as e:
        fn(X(), T, weight=np.ones(wshape), backend=backend)
    msg = str(e.value)
    assert "4" in msg, msg


@ce_funcs
def test_negative_weight(backend, fn):
    with pytest.raises(ValueError) as e:
        fn(X(), T, weight=np.array([1.0, -0.5, 1.0, 1.0]), backend=backend)
    assert "-0.5" in str(e.value), str(e.value)


@ce_funcs
def test_nan_weight(backend, fn):
    with pytest.raises(ValueError):
        fn(X(), T, weight=np.array([1.0, np.nan, 1.0, 1.0]), backend=backend)


# ------------------------------------------------------------ IndexError


@pytest.mark.parametrize("value", [4, 1234, -1, -101], ids=lambda v: "value%d" % v)
@ce_funcs
def test_target_out_of_range_names_position_and_value(backend, fn, value):
    t = np.array([1, 0, 3, 2, 0, 1, 2, 3])
    x = np.zeros((8, 4))
    t[5] = value
    t[7] = value  # the first offending position is 5
    with pytest.raises(IndexError) as e:
        fn(x, t, backend=backend)
    msg = str(e.value)
    assert str(value) in msg, msg
    assert re.search(r"(?<![\d-])5(?!\d)", msg), msg


@ce_funcs
def test_target_out_of_range_position_in_nd_layout(backend, fn):
    x = np.zeros((2, 4, 3))
    t = np.zeros((2, 3), np.int64)
    t[1, 2] = 9
    with pytest.raises(IndexError) as e:
        fn(x, t, axis=1, backend=backend)
    assert "9" in str(e.value)


def test_ignore_index_not_minus_100_makes_minus_100_invalid(backend):
    with pytest.raises(IndexError):
        fastxent.cross_entropy(X(), np.array([1, -100, 3]), ignore_index=-1, backend=backend)


# ------------------------------------------------------------ ValueError: options


@pytest.mark.parametrize("kw", [
    {"label_smoothing": -0.1}, {"label_smoothing": 1.5}, {"label_smoothing": np.nan},
    {"z_loss": -1e-4}, {"z_loss": np.nan},
    {"softcap": 0.0}, {"softcap": -1.0}, {"softcap": np.nan},
    {"reduction": "avg"}, {"reduction": "batchmean"}, {"reduction": None},
], ids=lambda kw: "%s=%r" % next(iter(kw.items())))
@ce_funcs
def test_bad_options(backend, fn, kw):
    with pytest.raises(ValueError):
        fn(X(), T, backend=backend, **kw)


@pytest.mark.parametrize("eps", [0.0, 1.0], ids=["eps0", "eps1"])
def test_label_smoothing_bounds_are_accepted(backend, eps):
    assert np.isfinite(fastxent.cross_entropy(X(), T, label_smoothing=eps, backend=backend))


@ce_funcs
def test_zero_classes(backend, fn):
    with pytest.raises(ValueError):
        fn(np.zeros((3, 0)), np.zeros(3, np.int64), backend=backend)
    with pytest.raises(ValueError):
        fn(np.zeros((3, 0)), np.zeros((3, 0)), backend=backend)


@ce_funcs
def test_ignore_index_with_soft_targets(backend, fn):
    P = np.full((3, 4), 0.25)
    with pytest.raises(ValueError):
        fn(X(), P, ignore_index=-100, backend=backend)
    with pytest.raises(ValueError):
        fn(X(), P, ignore_index=2, backend=backend)
    fn(X(), P, backend=backend)  # not passing it is fine


@pytest.mark.parametrize("red,gshape", [("mean", (3,)), ("sum", (3,)), ("none", (2,)), ("none", (3, 1))], ids=str)
def test_bad_grad_output_shape(backend, red, gshape):
    with pytest.raises(ValueError):
        fastxent.cross_entropy_with_grad(X(), T, reduction=red, grad_output=np.ones(gshape), backend=backend)


# ------------------------------------------------------------ out=


def test_ce_out_wrong_shape_dtype_readonly(backend):
    x = X(np.float32)
    for out in (np.empty((3, 5), np.float32), np.empty((4, 3), np.float32), np.empty((3, 4), np.float64),
                np.empty((3, 4), np.float16), [[0.0] * 4] * 3):
        with pytest.raises(ValueError):
            fastxent.cross_entropy_with_grad(x, T, out=out, backend=backend)
    ro = np.empty((3, 4), np.float32)
    ro.setflags(write=False)
    with pytest.raises(ValueError):
        fastxent.cross_entropy_grad(x, T, out=ro, backend=backend)


def test_float16_out_must_be_float32(backend):
    x = X(np.float16)
    with pytest.raises(ValueError):
        fastxent.cross_entropy_with_grad(x, T, out=np.empty((3, 4), np.float16), backend=backend)
    out = np.empty((3, 4), np.float32)
    _, g = fastxent.cross_entropy_with_grad(x, T, out=out, backend=backend)
    assert g is out


@pytest.mark.parametrize("red", ["mean", "none"])
@pytest.mark.parametrize("kind", ["int", "soft"])
def test_ce_out_in_place_on_logits(backend, red, kind):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 5)).astype(np.float32)
    t = rng.integers(0, 5, 6) if kind == "int" else fastxent.softmax(rng.standard_normal((6, 5)).astype(np.float32))
    kw = dict(reduction=red, label_smoothing=0.1, z_loss=1e-3, softcap=4.0)
    loss_ref, grad_ref = fastxent.cross_entropy_with_grad(x, t, backend=backend, **kw)
    y = x.copy()
    loss, g = fastxent.cross_entropy_with_grad(y, t, out=y, backend=backend, **kw)
    assert np.shares_memory(g, y)
    np.testing.assert_array_equal(y, grad_ref)
    np.testing.assert_array_equal(loss, loss_ref)
    z = x.copy()
    g2 = fastxent.cross_entropy_grad(z, t, out=z, backend=backend, **kw)
    assert np.shares_memory(g2, z)
    np.testing.assert_array_equal(z, grad_ref)


def test_ce_out_in_place_axis1(backend):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 5, 3))
    t = rng.integers(0, 5, (2, 3))
    _, grad_ref = fastxent.cross_entropy_with_grad(x, t, axis=1, backend=backend)
    y = x.copy()
    fastxent.cross_entropy_with_grad(y, t, axis=1, out=y, backend=backend)
    np.testing.assert_array_equal(y, grad_ref)
    # and a separate out buffer
    out = np.empty_like(x)
    r = fastxent.cross_entropy_grad(x, t, axis=1, out=out, backend=backend)
    assert r is out
    np.testing.assert_array_equal(out, grad_ref)


def test_out_partly_overlapping_input_refused(backend):
    base = np.random.default_rng(3).standard_normal((4, 4))
    x = base[:3]
    out = base[1:]
    with pytest.raises(ValueError):
        fastxent.cross_entropy_with_grad(x, T, out=out, backend=backend)
    with pytest.raises(ValueError):
        fastxent.softmax(x, out=out, backend=backend)
    # overlapping a soft target
    buf = np.full((4, 4), 0.25)
    with pytest.raises(ValueError):
        fastxent.cross_entropy_with_grad(X(), buf[:3], out=buf[1:], backend=backend)
    # overlapping the weight
    wbuf = np.ones(12)
    with pytest.raises(ValueError):
        fastxent.cross_entropy_with_grad(X(), T, weight=wbuf[:4], out=wbuf.reshape(3, 4), backend=backend)
    # the same memory with another layout (a transpose of itself) is not "the logits themselves"
    sq = np.random.default_rng(4).standard_normal((4, 4))
    with pytest.raises(ValueError):
        fastxent.cross_entropy_with_grad(sq, np.array([0, 1, 2, 3]), out=sq.T, backend=backend)


def test_softmax_out_wrong(backend):
    x = X(np.float32)
    for out in (np.empty((3, 4), np.float64), np.empty((4, 3), np.float32)):
        with pytest.raises(ValueError):
            fastxent.softmax(x, out=out, backend=backend)
    with pytest.raises(ValueError):
        fastxent.logsumexp(x, out=np.empty((3, 4), np.float32), backend=backend)
    ro = np.empty(3, np.float32)
    ro.setflags(write=False)
    with pytest.raises(ValueError):
        fastxent.logsumexp(x, out=ro, backend=backend)


# ------------------------------------------------------------ inputs untouched


@pytest.mark.parametrize("kind", ["int", "soft"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16], ids=["float32", "float64", "float16"])
def test_inputs_not_modified(backend, kind, dtype):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((5, 4)).astype(dtype)
    x[0, 1] = np.nan
    x[1, 2] = -np.inf
    t = rng.integers(0, 4, 5) if kind == "int" else rng.dirichlet(np.ones(4), 5).astype(dtype)
    if kind == "int":
        t[0] = -100
    w = np.array([1.0, 2.0, 0.5, 0.0], dtype)
    g = np.linspace(0.5, 1.5, 5)
    copies = [a.copy() for a in (x, t, w, g)]
    for red in ("mean", "sum", "none"):
        kw = dict(weight=w, label_smoothing=0.1, z_loss=1e-2, softcap=5.0, reduction=red, backend=backend)
        fastxent.cross_entropy(x, t, **kw)
        fastxent.cross_entropy_with_grad(x, t, grad_output=g if red == "none" else 0.5, **kw)
        fastxent.cross_entropy_grad(x, t, **kw)
    for f in SM_FUNCS.values():
        f(x, backend=backend)
    for a, c in zip((x, t, w, g), copies):
        np.testing.assert_array_equal(a, c)


def test_binary_inputs_not_modified(backend):
    rng = np.random.default_rng(6)
    p = rng.uniform(0, 1, (3, 4))
    xl = rng.standard_normal((3, 4))
    y = rng.uniform(0, 1, (3, 4))
    w = rng.uniform(0, 2, (3, 4))
    pw = rng.uniform(0, 2, 4)
    copies = [a.copy() for a in (p, xl, y, w, pw)]
    fastxent.binary_cross_entropy_with_grad(p, y, weight=w, backend=backend)
    fastxent.binary_cross_entropy_with_logits_with_grad(xl, y, weight=w, pos_weight=pw, backend=backend)
    for a, c in zip((p, xl, y, w, pw), copies):
        np.testing.assert_array_equal(a, c)


# ------------------------------------------------------------ layouts


def layouts(x):
    """The same values in other memory layouts: read-only, Fortran, strided, byteswapped, memmap-like."""
    ro = x.copy()
    ro.setflags(write=False)
    yield "readonly", ro
    yield "fortran", np.asfortranarray(x)
    big = np.zeros((x.shape[0] * 2,) + x.shape[1:-1] + (x.shape[-1] * 3,), x.dtype)
    big[::2, ..., ::3] = x
    yield "strided", big[::2, ..., ::3]
    yield "reversed", x[::-1].copy()[::-1]
    yield "byteswapped", x.astype(x.dtype.newbyteorder(">"))
    yield "broadcast-row", None  # placeholder, handled by the caller


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_any_layout_equals_contiguous_copy(backend, dtype, tmp_path):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((6, 5)).astype(dtype)
    t = rng.integers(0, 5, 6)
    P = rng.dirichlet(np.ones(5), 6).astype(dtype)
    kw = dict(label_smoothing=0.1, weight=np.arange(1, 6, dtype=dtype), reduction="none", backend=backend)
    ref_l, ref_g = fastxent.cross_entropy_with_grad(x, t, **kw)
    ref_sl, ref_sg = fastxent.cross_entropy_with_grad(x, P, **kw)
    # the loss-only kernels may round the last bit differently from the fused
    # ones (Numba vectorises their sums differently): compare layouts of the
    # same function bit for bit, and the two functions within a few ulps
    ref_lo = fastxent.cross_entropy(x, t, **kw)
    ref_slo = fastxent.cross_entropy(x, P, **kw)
    np.testing.assert_allclose(ref_lo, ref_l, rtol=4 * np.finfo(dtype).eps, atol=0)
    np.testing.assert_allclose(ref_slo, ref_sl, rtol=4 * np.finfo(dtype).eps, atol=0)
    ref_sm = fastxent.softmax(x, backend=backend)
    ref_lse = fastxent.logsumexp(x, backend=backend)
    mm = np.memmap(tmp_path / "x.dat", dtype=dtype, mode="w+", shape=x.shape)
    mm[:] = x
    mm.flush()
    mm_ro = np.memmap(tmp_path / "x.dat", dtype=dtype, mode="r", shape=x.shape)
    cases = [(n, v) for n, v in layouts(x) if v is not None] + [("memmap", mm_ro)]
    for name, xv in cases:
        np.testing.assert_array_equal(xv, x)
        l, g = fastxent.cross_entropy_with_grad(xv, t, **kw)
        np.testing.assert_array_equal(l, ref_l, err_msg=name)
        np.testing.assert_array_equal(g, ref_g, err_msg=name)
        assert g.dtype.isnative and g.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(fastxent.cross_entropy(xv, t, **kw), ref_lo, err_msg=name + " loss only")
        np.testing.assert_array_equal(fastxent.cross_entropy_grad(xv, t, **kw), ref_g, err_msg=name + " grad only")
        np.testing.assert_array_equal(fastxent.cross_entropy(xv, P, **kw), ref_slo, err_msg=name + " soft loss only")
        np.testing.assert_array_equal(fastxent.log_softmax(xv, backend=backend),
                                      fastxent.log_softmax(x, backend=backend), err_msg=name)
        np.testing.assert_array_equal(fastxent.softmax(xv, backend=backend), ref_sm, err_msg=name)
        np.testing.assert_array_equal(fastxent.logsumexp(xv, backend=backend), ref_lse, err_msg=name)
        # soft targets in odd layouts too
        for pname, Pv in [(n, v) for n, v in layouts(P) if v is not None]:
            sl, sg = fastxent.cross_entropy_with_grad(xv, Pv, **kw)
            np.testing.assert_array_equal(sl, ref_sl, err_msg=name + "/" + pname)
            np.testing.assert_array_equal(sg, ref_sg, err_msg=name + "/" + pname)
    # odd target layouts
    for tv in (t[::-1].copy()[::-1], t.astype(">i8"), np.asfortranarray(t)):
        np.testing.assert_array_equal(fastxent.cross_entropy(x, tv, **kw), ref_lo)
    # odd weight layouts
    w = kw.pop("weight")
    wbig = np.zeros(15, dtype)
    wbig[::3] = w
    for wv in (wbig[::3], w.astype(w.dtype.newbyteorder(">"))):
        np.testing.assert_array_equal(fastxent.cross_entropy(x, t, weight=wv, **kw), ref_lo)


def test_axis1_on_transposed_views(backend):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 5, 4))
    t = rng.integers(0, 5, (3, 4))
    ref = fastxent.cross_entropy_with_grad(x, t, axis=1, reduction="none", backend=backend)
    xv = np.ascontiguousarray(np.moveaxis(x, 1, -1))  # (3, 4, 5) class-last, then viewed back
    l, g = fastxent.cross_entropy_with_grad(np.moveaxis(xv, -1, 1), t, axis=1, reduction="none", backend=backend)
    np.testing.assert_array_equal(l, ref[0])
    np.testing.assert_array_equal(g, ref[1])
    # negative and positive spelling of the same axis agree
    l2, g2 = fastxent.cross_entropy_with_grad(x, t, axis=-2, reduction="none", backend=backend)
    np.testing.assert_array_equal(l2, ref[0])
    np.testing.assert_array_equal(g2, ref[1])


def test_list_inputs_accepted(backend):
    l = fastxent.cross_entropy([[2.0, 4.0, 0.5]], [1], backend=backend)
    assert abs(float(l) - -np.log(np.exp(4) / (np.exp(2) + np.exp(4) + np.exp(0.5)))) < 1e-12


def test_bad_axis(backend):
    with pytest.raises((ValueError, IndexError)):  # numpy's AxisError is both
        fastxent.cross_entropy(X(), T, axis=2, backend=backend)
    with pytest.raises((ValueError, IndexError)):
        fastxent.softmax(X(), axis=-3, backend=backend)
