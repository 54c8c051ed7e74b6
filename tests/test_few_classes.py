"""Few-class rows (C <= 64): the compiled kernels take them 8 rows at a time
(Cython: class-major blocks compiled for each C up to 16, gathered below 4
and transposed from 4, staged row blocks above 16, and with AVX-512 16-row
class-major blocks first; Numba: transposed blocks), a different code path
from long rows.  Cython is checked on each instruction set this CPU has.  Checked against the float64
oracle with special rows landing inside blocks, a partial last block, every
loss option the block path takes, per-row grad_output and in-place output;
softmax and log_softmax the same way (Cython's class-major blocks)."""

from __future__ import annotations

import numpy as np
import pytest

import fastxent
import _oracle as O
from conftest import skip_unless_available

CS = list(range(2, 18)) + [20, 33, 64]  # every compiled class count and beyond


def _logits(C, dtype, rng):
    R = 8 * 5 + 3  # five full blocks and a partial one
    # float64 rows kept below p_y = 1 - 1e-3; confident rows have their own test
    x = ((3 if dtype == np.float32 else 0.5) * rng.standard_normal((R, C))).astype(dtype)
    x[2, 0] = np.nan                        # NaN row in block 0
    x[9, :] = -np.inf                        # all -inf row in block 1
    x[12, C - 1] = np.inf                    # +inf row in block 1
    x[20, :] = 0.0                           # uniform row
    x[21, : max(1, C // 2)] = -np.inf        # masked classes
    x[22, :] = np.finfo(dtype).max / 4       # huge, equal
    x[23, 0] = 50.0 if dtype == np.float32 else 6.0  # confident
    x[30, :] = -1e30                         # huge negative, equal
    x[41, C - 1] = np.nan                    # NaN in the partial block
    t = rng.integers(0, C, R)
    t[21] = C - 1 if C > 1 else 0            # a target that is not masked
    return x, t


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("C", CS)
@pytest.mark.parametrize("opts", ["plain", "weight", "zloss", "ignore"])
def test_few_classes_against_oracle(backend, C, dtype, opts):
    _check_ce_against_oracle(backend, C, dtype, opts)


def _check_ce_against_oracle(backend, C, dtype, opts):
    rng = np.random.default_rng(C)
    x, t = _logits(C, dtype, rng)
    kw = {}
    if opts == "weight":
        kw["weight"] = rng.uniform(0.0, 2.0, C).astype(dtype)
        kw["weight"][0] = 0.0
    elif opts == "zloss":
        kw["z_loss"] = 0.01
    elif opts == "ignore":
        t[[5, 17, 42]] = -100  # ignored rows in blocks 0, 2 and the last
    gout = rng.uniform(-2.0, 2.0, x.shape[0])
    loss, g = fastxent.cross_entropy_with_grad(x, t, reduction="none", grad_output=gout,
                                               backend=backend, **kw)
    eloss, eg = O.cross_entropy(x, t, reduction="none", grad_output=gout, **kw)
    # in the result's dtype: z_loss on the huge row overflows float32 to inf
    eloss = np.asarray(eloss).astype(dtype).astype(np.float64)
    O.assert_rowloss_close(loss, eloss, O.loss_tol(dtype), "loss")
    O.assert_grad_close(g, eg, O.grad_tol(dtype), err_msg="grad")
    # loss-only and in-place calls give the same bits
    np.testing.assert_array_equal(
        fastxent.cross_entropy(x, t, reduction="none", backend=backend, **kw), loss)
    xi = x.copy()
    li, gi = fastxent.cross_entropy_with_grad(xi, t, reduction="none", grad_output=gout,
                                              backend=backend, out=xi, **kw)
    np.testing.assert_array_equal(li, loss)
    np.testing.assert_array_equal(gi, g)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("C", CS)
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_few_classes_softmax_against_oracle(backend, C, dtype, name):
    # Cython takes float32 rows 8 (16 with AVX-512) at a time up to 16
    # classes (class-major blocks, one vector log for log_softmax); the
    # special rows fall back to the per-row code from inside a block
    _check_softmax_against_oracle(backend, C, dtype, name)


def _check_softmax_against_oracle(backend, C, dtype, name):
    rng = np.random.default_rng(100 + C)
    x, _ = _logits(C, dtype, rng)
    f = getattr(fastxent, name)
    got = f(x, backend=backend)
    expected = getattr(O, name)(x)
    expected[np.isposinf(x).any(axis=1)] = np.nan  # SPEC: a +inf row is NaN
    if name == "softmax":
        O.assert_grad_close(got, expected, O.grad_tol(dtype), err_msg=name)
    else:
        O.assert_rowloss_close(got, expected, O.loss_tol(dtype), name)
    # in place gives the same bits; so does each row alone, within tolerance
    xi = x.copy()
    np.testing.assert_array_equal(f(xi, out=xi, backend=backend), got)
    one = np.concatenate([f(x[i:i + 1], backend=backend) for i in range(x.shape[0])])
    if name == "softmax":
        O.assert_grad_close(one, got, O.grad_tol(dtype), err_msg=name + " row by row")
    else:
        O.assert_rowloss_close(one, got, O.loss_tol(dtype), name + " row by row")


@pytest.mark.parametrize("C", [2, 300])  # the few-class and the long-row paths
@pytest.mark.parametrize("opts", [{}, {"label_smoothing": 0.1}, {"softcap": 30.0},
                                  {"label_smoothing": 0.1, "softcap": 30.0},
                                  {"z_loss": 1e-3}])
def test_float64_confident_target_gradient(backend, C, opts):
    # p_y - 1 formed as -R / S with R = sum_{c != y} e_c summed apart: from S
    # (e_y K / S - A, or (S - e_y) / S) it cancels when p_y ~ 1, a relative
    # error ~1e-16 / (1 - p_y), over SPEC's 1e-12 once 1 - p_y < 1e-4 (all
    # three backends did, 8e-11 on these rows, before the fix; Cython rows
    # with smoothing or softcap until they summed R apart too)
    d = np.linspace(9.0, 15.0, 41) + np.log(C - 1)  # 1 - p_y from 1.2e-4 to 3e-7
    x = np.zeros((len(d), C))
    x[:, 0] = d
    t = np.zeros(len(d), dtype=np.int64)
    _, g = fastxent.cross_entropy_with_grad(x, t, reduction="sum", backend=backend, **opts)
    _, eg = O.cross_entropy(x, t, reduction="sum", **opts)
    O.assert_grad_close(g, eg, O.grad_tol(np.float64))


@pytest.fixture(params=["baseline", "avx2", "avx512"])
def cython_isa(request):
    """The Cython kernels forced to one instruction set (skipped where the CPU
    lacks it): the default, the best one, is what ``backend`` tests."""
    skip_unless_available("cython")
    from fastxent import _kernels

    if request.param not in _kernels._simd_levels():
        pytest.skip("this CPU has no %s" % request.param)
    assert _kernels._set_simd_isa(request.param)
    try:
        yield request.param
    finally:
        _kernels._set_simd_isa("best")


@pytest.mark.parametrize("C", CS)
@pytest.mark.parametrize("opts", ["plain", "weight", "zloss", "ignore"])
def test_cython_few_classes_each_isa_against_oracle(cython_isa, C, opts):
    _check_ce_against_oracle("cython", C, np.float32, opts)


@pytest.mark.parametrize("C", CS)
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_cython_few_classes_softmax_each_isa_against_oracle(cython_isa, C, name):
    _check_softmax_against_oracle("cython", C, np.float32, name)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("C", list(range(2, 18)) + [33])
def test_cython_avx512_blocks_match_avx2_bit_for_bit(C, threads):
    # The 16-row AVX-512 blocks do lane for lane what the 8-row AVX2 blocks
    # do, so every output bit agrees: many blocks in a row (the pipelined
    # run), blocks that cannot go whole (an ignored row, NaN, an infinite
    # row) in different places, a per-thread split that is no multiple of 16
    skip_unless_available("cython")
    from fastxent import _kernels

    if "avx512" not in _kernels._simd_levels():
        pytest.skip("this CPU has no avx512")
    rng = np.random.default_rng(1000 + C)
    R = 16 * 1100 + 8 + 5  # >= 32768 elements at C = 2: two threads run
    x = (3 * rng.standard_normal((R, C))).astype(np.float32)
    x[35, 0] = np.nan
    x[70, :] = -np.inf
    x[101, C - 1] = np.inf
    x[140, : max(1, C // 2)] = -np.inf
    t = rng.integers(0, C, R)
    x[8806, 0] = np.nan  # about where two threads split the rows
    t[[50, 123, R - 1]] = -100
    w = rng.uniform(0.0, 2.0, C).astype(np.float32)
    gout = rng.uniform(-2.0, 2.0, R)
    calls = [
        lambda: fastxent.cross_entropy_with_grad(x, t, reduction="none", backend="cython"),
        lambda: fastxent.cross_entropy_with_grad(x, t, reduction="none", grad_output=gout,
                                                 weight=w, z_loss=0.01, backend="cython"),
        lambda: (fastxent.cross_entropy(x, t, reduction="none", weight=w, backend="cython"),),
        lambda: (fastxent.softmax(x, backend="cython"),),
        lambda: (fastxent.log_softmax(x, backend="cython"),),
    ]
    old = fastxent.get_num_threads()
    fastxent.set_num_threads(threads)
    try:
        got = {}
        for isa in ("avx2", "avx512"):
            _kernels._set_simd_isa(isa)
            got[isa] = [[np.asarray(a).view(np.uint32 if a.dtype == np.float32 else np.uint64)
                         for a in f()] for f in calls]
    finally:
        _kernels._set_simd_isa("best")
        fastxent.set_num_threads(old)
    for i, (a, b) in enumerate(zip(got["avx2"], got["avx512"])):
        for j, (u, v) in enumerate(zip(a, b)):
            np.testing.assert_array_equal(u, v, err_msg="call %d output %d" % (i, j))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("C", [2, 3, 10, 17, 33, 63])
@pytest.mark.parametrize("rows", [(0, 0), (0, 1), (5, 13), (0, 200), (7, 199)])
def test_numba_flat_prefetch_stays_inside_the_rows_and_covers_them(C, dtype, rows):
    # The few-class kernels' prefetch arithmetic (_flat_share, _flat_part),
    # run as plain Python: over c = 0..C-1 the indices the kernels prefetch,
    # range(lo, hi, line), lie inside rows a0:a1 (flat, from the array's
    # first element) and include every line-sized step from the rows' first
    # element
    skip_unless_available("numba")
    from fastxent import _numba

    share_of, part = _numba._flat_share.py_func, _numba._flat_part.py_func
    a0, a1 = rows
    line = 64 // np.dtype(dtype).itemsize
    lo_all, hi_all = a0 * C, a1 * C
    share = share_of(hi_all - lo_all, C, line)
    assert share % line == 0
    got = []
    for c in range(C):
        lo, hi = part(lo_all, hi_all, share, c)
        got.extend(range(lo, hi, line))
    assert all(lo_all <= i < hi_all for i in got), (min(got), max(got), lo_all, hi_all)
    assert set(range(lo_all, hi_all, line)) <= set(got)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("C", [2, 10, 33])
def test_few_classes_many_blocks_against_oracle(backend, C, dtype, threads):
    # Enough rows for several blocks per thread (Numba's blocks hold up to
    # 1024 rows at C = 2, and only calls of more than one block prefetch):
    # the special rows of _logits repeated through every block
    rng = np.random.default_rng(200 + C)
    x, t = _logits(C, dtype, rng)
    reps = 2 * 2 * 1024 // x.shape[0] + 3
    x, t = np.tile(x, (reps, 1)), np.tile(t, reps)
    t[::97] = -100
    gout = rng.uniform(-2.0, 2.0, x.shape[0])
    old = fastxent.get_num_threads()
    fastxent.set_num_threads(threads)
    try:
        loss, g = fastxent.cross_entropy_with_grad(x, t, reduction="none", grad_output=gout,
                                                   backend=backend)
        lonly = fastxent.cross_entropy(x, t, reduction="none", backend=backend)
        sm = fastxent.softmax(x, backend=backend)
        lsm = fastxent.log_softmax(x, backend=backend)
        xi = x.copy()
        li, gi = fastxent.cross_entropy_with_grad(xi, t, reduction="none", grad_output=gout,
                                                  backend=backend, out=xi)
    finally:
        fastxent.set_num_threads(old)
    eloss, eg = O.cross_entropy(x, t, reduction="none", grad_output=gout)
    eloss = np.asarray(eloss).astype(dtype).astype(np.float64)
    O.assert_rowloss_close(loss, eloss, O.loss_tol(dtype), "loss")
    O.assert_grad_close(g, eg, O.grad_tol(dtype), err_msg="grad")
    O.assert_rowloss_close(lonly, eloss, O.loss_tol(dtype), "loss only")
    O.assert_rowloss_close(li, eloss, O.loss_tol(dtype), "in-place loss")
    O.assert_grad_close(gi, eg, O.grad_tol(dtype), err_msg="in-place grad")
    inf_rows = np.isposinf(x).any(axis=1)
    esm, elsm = O.softmax(x), O.log_softmax(x)
    esm[inf_rows] = np.nan
    elsm[inf_rows] = np.nan
    O.assert_grad_close(sm, esm, O.grad_tol(dtype), err_msg="softmax")
    O.assert_rowloss_close(lsm, elsm, O.loss_tol(dtype), "log_softmax")
