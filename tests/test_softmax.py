"""softmax / log_softmax / logsumexp against scipy.special, every axis, dtype and out=."""

from __future__ import annotations

import numpy as np
import pytest

import fastxent
import _oracle as O

DTYPES = [np.float32, np.float64, np.float16]
SHAPES = {
    "row": ((9,), -1),
    "NC": ((6, 5), -1),
    "NC-axis0": ((6, 5), 0),
    "NCd1-axis1": ((3, 5, 4), 1),
    "NCd1d2-axis1": ((2, 5, 3, 2), 1),
    "3d-axis-2": ((2, 5, 3), -2),
}
FUNCS = ["softmax", "log_softmax", "logsumexp"]


def ref(name, x, axis):
    return getattr(O, name)(x, axis=axis)


def check(name, got, expected, dtype, axis):
    tol = O.grad_tol(dtype) if name == "softmax" else O.loss_tol(dtype)
    if name == "softmax":
        O.assert_grad_close(got, expected, tol, axis=axis, err_msg=name)
    elif name == "log_softmax":
        O.assert_rowloss_close(got, expected, tol, name)
    else:
        O.assert_rowloss_close(got, expected, tol, name)


@pytest.mark.parametrize("name", FUNCS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", list(SHAPES))
def test_matches_scipy(backend, name, dtype, layout):
    shape, axis = SHAPES[layout]
    rng = np.random.default_rng(len(layout) * 31 + DTYPES.index(dtype))
    x = (3 * rng.standard_normal(shape)).astype(dtype)
    f = getattr(fastxent, name)
    got = f(x, axis, backend=backend)
    expected = ref(name, x, axis)
    assert np.shape(got) == np.shape(expected)
    assert np.asarray(got).dtype == O.compute_dtype(dtype)
    check(name, got, expected, dtype, axis)


@pytest.mark.parametrize("name", FUNCS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("layout", ["NC", "NCd1-axis1", "NC-axis0"])
def test_out_argument(backend, name, dtype, layout):
    shape, axis = SHAPES[layout]
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(dtype)
    expected = getattr(fastxent, name)(x, axis, backend=backend)
    out = np.full(np.shape(expected), np.nan, dtype)
    r = getattr(fastxent, name)(x, axis, out=out, backend=backend)
    assert r is out
    np.testing.assert_array_equal(out, expected)
    # a strided out view is filled in place
    if name != "logsumexp":
        big = np.full((2,) + x.shape, np.nan, dtype)
        view = big[1]
        r = getattr(fastxent, name)(x, axis, out=view, backend=backend)
        assert np.shares_memory(r, big)
        np.testing.assert_array_equal(big[1], expected)
        assert np.all(np.isnan(big[0]))


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@pytest.mark.parametrize("shape", [(4, 7), (3, 300)], ids=["few-classes", "row-kernels"])
def test_out_may_be_input(backend, name, shape):
    # (3, 300): the per-row kernels, whose log_softmax keeps its exps in out
    # when out is not x, and in a scratch row when it is
    rng = np.random.default_rng(4)
    x = rng.standard_normal(shape)
    expected = getattr(fastxent, name)(x, backend=backend)
    check(name, expected, ref(name, x, -1), x.dtype, -1)
    y = x.copy()
    r = getattr(fastxent, name)(y, out=y, backend=backend)
    assert np.shares_memory(r, y)
    np.testing.assert_array_equal(y, expected)


def test_float16_returns_float32(backend):
    x = np.array([[1, 2, 3], [0, 0, 0]], np.float16)
    for name in FUNCS:
        assert getattr(fastxent, name)(x, backend=backend).dtype == np.float32


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_known_values(backend, dtype):
    x = np.array([[2.0, 4.0, 0.5]], dtype)
    import math

    s = math.exp(2) + math.exp(4) + math.exp(0.5)
    tol = O.loss_tol(dtype)
    assert abs(fastxent.logsumexp(x, backend=backend)[0] - math.log(s)) <= tol * math.log(s)
    sm = fastxent.softmax(x, backend=backend)[0]
    for i, v in enumerate([2.0, 4.0, 0.5]):
        assert abs(sm[i] - math.exp(v) / s) <= O.grad_tol(dtype) * math.exp(4) / s
    ls = fastxent.log_softmax(x, backend=backend)[0]
    for i, v in enumerate([2.0, 4.0, 0.5]):
        assert abs(ls[i] - (v - math.log(s))) <= tol * max(1, abs(v - math.log(s)))


@pytest.mark.parametrize("C", [1, 3, 8, 17, 64, 1000])
def test_many_widths_float32(backend, C):
    # widths around SIMD lane counts and the tail handling
    rng = np.random.default_rng(C)
    x = (4 * rng.standard_normal((5, C))).astype(np.float32)
    O.assert_grad_close(fastxent.softmax(x, backend=backend), O.softmax(x), 2e-6, err_msg="softmax")
    O.assert_rowloss_close(fastxent.log_softmax(x, backend=backend), O.log_softmax(x), 1e-6, "log_softmax")
    O.assert_rowloss_close(fastxent.logsumexp(x, backend=backend), O.logsumexp(x, axis=-1), 1e-6, "lse")


def test_large_input_parallel_path(backend):
    rng = np.random.default_rng(11)
    x = (4 * rng.standard_normal((3000, 33))).astype(np.float32)
    O.assert_grad_close(fastxent.softmax(x, backend=backend), O.softmax(x), 2e-6, err_msg="softmax")
    O.assert_rowloss_close(fastxent.logsumexp(x, backend=backend), O.logsumexp(x, axis=-1), 1e-6, "lse")
