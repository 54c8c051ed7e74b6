"""The compiled kernels' exp (pass 2 of every softmax-family row): Cython on
both instruction sets and Numba, against NumPy's float64 exp.

The kernels only take exp of ``x - rowmax`` (<= 0, -inf or NaN), so that is
the domain checked: a spread sample of float32 bit patterns over [-104, 0]
(every binade, the subnormal-result band) plus the special values.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import skip_unless_available

ISAS = ("baseline", "avx2", "avx512")


def _force_isa(name):
    """The Cython kernels on instruction set ``name`` (skipped where the CPU
    lacks it); ``_set_simd_isa("best")`` restores them."""
    skip_unless_available("cython")
    from fastxent import _kernels

    if name not in _kernels._simd_levels():
        pytest.skip("this CPU has no %s" % name)
    _kernels._set_simd_isa(name)
    return _kernels


@pytest.fixture(params=ISAS)
def kernels(request):
    _kernels = _force_isa(request.param)
    try:
        yield _kernels
    finally:
        _kernels._set_simd_isa("best")


_numba_apply = {}


def _numba_elementwise(name, x):
    """The Numba helper ``fastxent._numba.<name>`` applied elementwise in a
    jitted loop, as the kernels run it (compiled once per helper and dtype)."""
    if name not in _numba_apply:
        import numba

        from fastxent import _numba

        _numba._ensure()
        f = getattr(_numba, name)

        @numba.njit
        def apply(x, out):
            for i in range(x.shape[0]):
                out[i] = f(x[i])

        _numba_apply[name] = apply
    out = np.empty_like(x)
    _numba_apply[name](x, out)
    return out


def numba_exp(x):
    """Numba's ``_exp`` applied elementwise."""
    return _numba_elementwise("_exp", x)


@pytest.fixture(params=["cython-" + i for i in ISAS] + ["numba"])
def exp_le0(request):
    """The backend's exp as ``f(x) -> array``."""
    if request.param == "numba":
        skip_unless_available("numba")
        yield numba_exp
        return
    _kernels = _force_isa(request.param.split("-")[1])
    try:
        yield lambda x: _kernels._exp_le0(x)[0]
    finally:
        _kernels._set_simd_isa("best")


def _float32_sample():
    # every 97th float32 bit pattern from -0.0 down to -104 (~1.1e7 values),
    # plus a dense walk through the band whose results are subnormal
    lo = np.array(-0.0, np.float32).view(np.uint32)
    hi = np.array(-104.0, np.float32).view(np.uint32)
    bits = np.arange(lo, hi + 1, 97, dtype=np.uint32)
    x = bits.view(np.float32)
    band = np.linspace(-104.0, -87.0, 200_003, dtype=np.float32)
    return np.concatenate([x, band, np.float32([-104.0, -103.972, -87.3365, -0.0, 0.0])])


def _ulp_errors(got, ref64, dtype):
    """|got - ref| in units of the result's ULP (of the smallest subnormal
    where the result is below the smallest normal)."""
    fi = np.finfo(dtype)
    ref_r = ref64.astype(dtype)
    unit = np.where(np.abs(ref_r) >= fi.tiny, np.spacing(np.abs(ref_r)).astype(np.float64),
                    float(fi.smallest_subnormal))
    return np.abs(got.astype(np.float64) - ref64) / unit


def test_float32_exp_within_one_and_a_half_ulp(exp_le0):
    x = _float32_sample()
    got = exp_le0(x)
    err = _ulp_errors(got, np.exp(x.astype(np.float64)), np.float32)
    # measured on this sample: 0.98 ULP (sse2), 1.00 ULP (avx2+fma, avx512, numba)
    assert err.max() <= 1.5, (float(err.max()), float(x[np.argmax(err)]))


@pytest.mark.parametrize("kernels", ["avx2", "avx512"], indirect=True)
def test_float32_exp_numba_equals_cython_with_fma(kernels):
    # Numba's _exp32 is fx_expf_le0 operation for operation; where both
    # fuse the multiply-adds (Cython's FMA builds, Numba on an FMA CPU) the
    # results are the same bits, subnormals, zeros and NaN included
    skip_unless_available("numba")
    x = np.concatenate([_float32_sample(),
                        np.float32([-np.inf, np.nan, -1e30, -103.99, -87.34])])
    got = kernels._exp_le0(x)[0]
    want = numba_exp(x)
    diff = got.view(np.uint32) != want.view(np.uint32)
    assert not diff.any(), (int(diff.sum()), float(x[np.argmax(diff)]))


def test_float32_pass2_sum_is_the_sum_of_the_values(kernels):
    x = _float32_sample()
    got, s = kernels._exp_le0(x)
    # the float64 sum of the stored values up to the float blocks' rounding:
    # each lane adds 8 exps into an accumulator, then 4 accumulators by
    # pairs, 10 roundings of a sum of positive terms (relative 10 * 2**-24)
    exact = math.fsum(got.astype(np.float64))
    assert abs(s - exact) <= 10 * 2.0 ** -24 * exact
    _, s = kernels._exp_le0(np.float32([-1.0, np.nan, 0.0]))
    assert math.isnan(s)


def test_float32_exp_special_values(exp_le0):
    x = np.float32([-np.inf, np.nan, 0.0, -0.0, -1e-30, -103.0, -104.0, -1e30] * 3)
    got = exp_le0(x)
    ref = np.exp(x.astype(np.float64)).astype(np.float32)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(x))
    fin = ~np.isnan(x)
    np.testing.assert_array_equal(got[fin], ref[fin])  # 0, 1, 1, 1e-45, exact zeros


def test_float64_exp_within_one_and_a_half_ulp(exp_le0):
    rng = np.random.default_rng(7)
    x = np.concatenate([
        -rng.uniform(0.0, 746.0, 400_000),
        -np.exp(rng.uniform(-40.0, 0.0, 100_000)),   # tiny arguments
        np.linspace(-746.0, -700.0, 100_001),        # subnormal results
        [-745.133, -708.3964, -0.0, 0.0],
    ])
    got = exp_le0(x)
    ref = np.exp(x)  # libm, itself within about half an ULP of exact
    err = _ulp_errors(got, ref, np.float64)
    # measured: 1.0 ULP against glibc's exp on both instruction sets
    assert err.max() <= 1.5, (float(err.max()), float(x[np.argmax(err)]))
    sp = np.array([-np.inf, np.nan, -1e300])
    got = exp_le0(sp)
    assert got[0] == 0.0 and math.isnan(got[1]) and got[2] == 0.0


# ------------------------------------------------ Numba's log of s >= 1

def numba_log_ge1(s):
    """Numba's ``_log_ge1`` (the few-class path's log of a row's sum of
    exps) applied elementwise."""
    return _numba_elementwise("_log_ge1", s)


def test_numba_log_ge1_within_one_ulp():
    skip_unless_available("numba")
    rng = np.random.default_rng(7)
    sqrt2 = math.sqrt(2.0)
    edges = [1.0, 2.0, 4.0, 10.0, 63.0, 64.0, sqrt2, 2.0 * sqrt2, np.finfo(np.float64).max]
    edges += [np.nextafter(v, d) for v in (1.0, 2.0, sqrt2, 2.0 * sqrt2, 64.0)
              for d in (0.0, np.inf) if np.nextafter(v, d) >= 1.0]
    s = np.concatenate([
        np.array(edges),
        1.0 + rng.random(400_000) * 1e-6,       # log s tiny: relative accuracy
        1.0 + rng.random(400_000),
        1.0 + 63.0 * rng.random(400_000),        # the sums of <= 64 classes
        np.exp(rng.uniform(0.0, 709.0, 200_000)),
        np.ldexp(1.0 + rng.random(10_000), rng.integers(0, 1023, 10_000)),
    ])
    got = numba_log_ge1(s)
    ref = np.log(s.astype(np.longdouble))
    nz = s != 1.0
    ulp = np.abs(got[nz].astype(np.longdouble) - ref[nz]) / np.spacing(ref[nz].astype(np.float64))
    assert float(ulp.max()) <= 1.0, (float(ulp.max()), s[nz][int(np.argmax(ulp))])
    one = got[s == 1.0]
    assert one.size and np.all(one == 0.0) and not np.any(np.signbit(one))  # log(1) = +0 exactly


def test_numba_log_ge1_f32_within_its_bound():
    # the float32 rows' log of S (and the Cython blocks' vector log, the same
    # series): the atanh series to q**11 leaves < 1.8e-11 absolute (relative
    # near s = 1, where log s is small), against SPEC's 1e-6 for float32 losses
    skip_unless_available("numba")
    rng = np.random.default_rng(8)
    sqrt2 = math.sqrt(2.0)
    s = np.concatenate([
        np.array([1.0, 2.0, 64.0, sqrt2, 16.0 * sqrt2, np.nextafter(sqrt2, 0.0),
                  np.nextafter(sqrt2, 2.0)]),
        1.0 + rng.random(200_000) * 1e-6,
        1.0 + 63.0 * rng.random(400_000),
        np.exp(rng.uniform(0.0, 700.0, 100_000)),
    ])
    got = _numba_elementwise("_log_ge1_f32", s).astype(np.longdouble)
    ref = np.log(s.astype(np.longdouble))
    err = np.abs(got - ref)
    assert float(err.max()) < 1.8e-11, (float(err.max()), s[int(np.argmax(err))])
    nz = s != 1.0
    rel = err[nz] / ref[nz]
    assert float(rel.max()) < 1e-10, (float(rel.max()), s[nz][int(np.argmax(rel))])
    assert got[0] == 0.0


def test_numba_log1p32_within_2_ulp():
    # BCE on logits' softplus term log1p(e), e = exp(-|x|) in [0, 1] (float32;
    # the Cython kernels' fx_log1pf01, the same operations): a degree-3 fit
    # (tools/fit_log1pf.py, 4.5e-9 relative) evaluated in float32, <= 2 ULP
    # (1.92 measured) on normal e, against float64 log1p; log1p(0) = +0
    skip_unless_available("numba")
    rng = np.random.default_rng(9)
    e = np.concatenate([
        np.array([0.0, 1.0, 2.0 ** -126, np.nextafter(np.float32(1), np.float32(0))], np.float32),
        rng.random(1_000_000).astype(np.float32),
        np.exp(-rng.uniform(0.0, 87.0, 500_000)).astype(np.float32),
        np.linspace(0.0, 1.0, 500_001, dtype=np.float32),
    ])
    got = _numba_elementwise("_log1p32", e).astype(np.float64)
    ref = np.log1p(e.astype(np.float64))
    ulp = np.spacing(ref.astype(np.float32)).astype(np.float64)
    err = np.abs(got - ref) / ulp
    assert float(err.max()) <= 2.0, (float(err.max()), e[int(np.argmax(err))])
    assert got[0] == 0.0 and not np.signbit(got[0])
    assert np.isnan(_numba_elementwise("_log1p32", np.array([np.nan], np.float32))[0])
