"""Backend registry: availability report, selection, errors, environment variables."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastxent
from conftest import skip_unless_available

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(code, cwd=ROOT, **env):
    """Run ``code`` in a fresh interpreter (cwd = repo root unless given) and
    return its stdout.  From the repo root ``import fastxent`` takes the
    source tree, which has no compiled extension in a clean checkout: tests
    of the installed Cython backend run elsewhere."""
    full_env = dict(os.environ)
    for k in ("FASTXENT_BACKEND", "FASTXENT_NUM_THREADS", "FASTXENT_SIMD"):
        full_env.pop(k, None)
    full_env.update(env)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=full_env,
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_backends_report_structure():
    info = fastxent.backends()
    assert set(info) == {"cython", "numba", "numpy"}
    for name, d in info.items():
        assert isinstance(d["available"], bool), name
        assert "version" in d, name
        assert "reason" in d, name
        if not d["available"]:
            assert isinstance(d["reason"], str) and d["reason"], name
        else:
            assert d["reason"] is None, (name, d["reason"])
    assert info["numpy"]["available"] is True
    assert info["numpy"]["version"] == np.__version__
    assert isinstance(info["cython"]["openmp"], bool)
    if info["cython"]["available"]:
        assert isinstance(info["cython"]["isa"], str) and info["cython"]["isa"]


@pytest.mark.skipif(os.environ.get("FASTXENT_REQUIRE_ALL_BACKENDS") != "1",
                    reason="set FASTXENT_REQUIRE_ALL_BACKENDS=1 (CI does) to require every backend")
def test_all_backends_available_in_ci():
    info = fastxent.backends()
    for name in ("cython", "numba", "numpy"):
        assert info[name]["available"], "%s unavailable: %s" % (name, info[name]["reason"])
    assert info["cython"]["openmp"], "the cython extension was built without OpenMP"
    import fastxent._kernels as k
    assert k.openmp_enabled()


def test_unknown_backend_is_value_error():
    x = np.zeros((2, 3))
    for fn in (lambda: fastxent.softmax(x, backend="cuda"),
               lambda: fastxent.logsumexp(x, backend="torch"),
               lambda: fastxent.cross_entropy(x, np.array([0, 1]), backend="fortran"),
               lambda: fastxent.binary_cross_entropy_with_logits(x, x, backend="gpu")):
        with pytest.raises(ValueError):
            fn()


@pytest.mark.parametrize("name", [None, "auto"], ids=["None", "auto"])
def test_auto_backend_matches_numpy(name):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 7))
    t = rng.integers(0, 7, size=5)
    a = fastxent.cross_entropy(x, t, backend=name)
    b = fastxent.cross_entropy(x, t, backend="numpy")
    assert abs(a - b) <= 1e-12 * abs(b)


def test_known_but_unavailable_backend_is_runtime_error_with_reason():
    # Block numba's import in a fresh interpreter: the numba backend becomes
    # unavailable, the report says why, forcing it raises RuntimeError, and
    # auto still works on what is left.
    out = run_python("""
        import sys
        sys.modules['numba'] = None
        import numpy as np, fastxent
        info = fastxent.backends()
        assert info['numba']['available'] is False, info
        assert info['numba']['reason'], info
        try:
            fastxent.cross_entropy(np.zeros((2, 3)), np.array([0, 1]), backend='numba')
        except RuntimeError as e:
            print('RuntimeError', str(e))
        else:
            print('no error')
        print(float(fastxent.cross_entropy(np.zeros((2, 3)), np.array([0, 1]))))
    """)
    first, second = out.splitlines()[-2:]
    assert first.startswith("RuntimeError") and len(first) > len("RuntimeError "), out
    assert abs(float(second) - np.log(3)) < 1e-12


def test_missing_extension_leaves_package_working():
    out = run_python("""
        import sys
        sys.modules['fastxent._kernels'] = None
        import numpy as np, fastxent
        info = fastxent.backends()
        assert info['cython']['available'] is False, info
        assert info['cython']['openmp'] is False
        try:
            fastxent.softmax(np.zeros((2, 3)), backend='cython')
        except RuntimeError as e:
            print('RuntimeError')
        print(fastxent.softmax(np.zeros((2, 3)))[0, 0])
    """)
    lines = out.splitlines()
    assert lines[-2] == "RuntimeError"
    assert abs(float(lines[-1]) - 1 / 3) < 1e-15


def test_import_does_not_import_numba():
    # DESIGN: import fastxent stays fast and compiles nothing.
    out = run_python("""
        import sys, fastxent
        print('numba' in sys.modules)
    """)
    assert out.splitlines()[-1] == "False"


def test_env_backend_sets_default():
    # FASTXENT_BACKEND=numba with numba blocked: the default now names an
    # unavailable backend, so a call without backend= must raise RuntimeError.
    out = run_python("""
        import sys
        sys.modules['numba'] = None
        import numpy as np, fastxent
        try:
            fastxent.softmax(np.zeros((2, 3)))
        except RuntimeError:
            print('RuntimeError')
        else:
            print('no error')
    """, FASTXENT_BACKEND="numba")
    assert out.splitlines()[-1] == "RuntimeError"


def test_env_backend_unknown_is_value_error():
    out = run_python("""
        import numpy as np, fastxent
        try:
            fastxent.softmax(np.zeros((2, 3)))
        except ValueError:
            print('ValueError')
        else:
            print('no error')
    """, FASTXENT_BACKEND="bogus")
    assert out.splitlines()[-1] == "ValueError"


def test_env_num_threads():
    out = run_python("import fastxent; print(fastxent.get_num_threads())", FASTXENT_NUM_THREADS="1")
    assert out.splitlines()[-1] == "1"


def test_default_num_threads_is_affinity():
    out = run_python("import fastxent; print(fastxent.get_num_threads())")
    assert int(out.splitlines()[-1]) == len(os.sched_getaffinity(0))


def test_set_get_num_threads():
    fastxent.set_num_threads(1)
    assert fastxent.get_num_threads() == 1
    fastxent.set_num_threads(2)
    assert fastxent.get_num_threads() == 2
    with pytest.raises(ValueError):
        fastxent.set_num_threads(0)
    with pytest.raises((TypeError, ValueError)):
        fastxent.set_num_threads(1.5)


def test_public_layer_passes_kernels_python_scalars(monkeypatch):
    # The Numba wrappers pass scalars to the jitted kernels as they come (a
    # float conversion apiece is measurable in a call of a few rows), so the
    # public layer must hand every kernel Python floats and ints: an int, a
    # bool or a NumPy scalar where a float goes would compile another
    # specialisation (a float32 one would compute in float32).  Inputs are
    # given as NumPy scalars and ints on purpose.
    import inspect

    from fastxent import _reference

    seen = []
    real = fastxent._dispatch.call
    fastxent._dispatch.resolve("numpy")

    def spy(name, backend, *args, work):
        params = inspect.signature(getattr(_reference, name)).parameters
        seen.append((name, {p: type(a) for p, a in zip(params, args)
                            if not (isinstance(a, np.ndarray) and a.ndim)}))
        return real(name, "numpy", *args, work=work)

    monkeypatch.setattr(fastxent._dispatch, "call", spy)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 5)).astype(np.float32)
    t = np.array([0, 4, 2, -100], np.int32)
    p = rng.random((4, 5)).astype(np.float32)
    y = (rng.random((4, 5)) > 0.5).astype(np.float32)
    f32 = np.float32
    fastxent.softmax(x)
    fastxent.log_softmax(x)
    fastxent.logsumexp(x)
    for reduction, go, gob in (("mean", f32(2), 2), ("sum", 3, f32(0.5)),
                               ("none", np.ones(4, f32), np.ones((4, 5)))):
        fastxent.cross_entropy(x, t, weight=np.ones(5, f32), ignore_index=np.int64(-100),
                               label_smoothing=f32(0.1), z_loss=1, softcap=np.float64(30),
                               reduction=reduction)
        fastxent.cross_entropy_with_grad(x, t, label_smoothing=0, z_loss=f32(0.01),
                                         softcap=5, reduction=reduction, grad_output=go)
        fastxent.cross_entropy_with_grad(x, p, weight=np.arange(5), label_smoothing=f32(0.2),
                                         reduction=reduction, grad_output=go)
        fastxent.cross_entropy(x, p, z_loss=f32(1), reduction=reduction)
        fastxent.binary_cross_entropy(p, y, weight=f32(2), reduction=reduction)
        fastxent.binary_cross_entropy_with_grad(p, y, reduction=reduction, grad_output=gob)
        fastxent.binary_cross_entropy_with_logits(x, y, pos_weight=np.ones(5, f32),
                                                  reduction=reduction)
        fastxent.binary_cross_entropy_with_logits_with_grad(x, y, weight=2, reduction=reduction,
                                                            grad_output=gob)
    assert {name for name, _ in seen} == set(fastxent._dispatch.KERNELS)
    assert all(types for name, types in seen if name.startswith(("ce_", "bce_")))
    for name, types in seen:
        assert all(ty is (int if p == "ignore_index" else float)
                   for p, ty in types.items()), (name, types)


@pytest.mark.parametrize("level, isa", [("baseline", "sse2"), ("avx2", "avx2+fma"),
                                        ("avx512", "avx512"), ("AVX2", "avx2+fma")])
def test_fastxent_simd_caps_the_cython_instruction_set(level, isa, tmp_path):
    skip_unless_available("cython")
    from fastxent import _kernels

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("x86-64 ISA names")
    if level.lower() not in _kernels._simd_levels():
        pytest.skip("this CPU has no %s" % level)
    code = """
        import numpy as np, fastxent
        print(fastxent.backends()["cython"]["isa"])
        x = np.linspace(-3, 3, 40 * 10, dtype=np.float32).reshape(40, 10)
        t = np.arange(40) % 10
        print(repr(float(fastxent.cross_entropy(x, t, backend="cython"))))
    """
    got_isa, loss = run_python(code, cwd=str(tmp_path), FASTXENT_SIMD=level).splitlines()
    assert got_isa == isa
    # the same loss as this process's (best) kernels, within SPEC's float32 tolerance
    x = np.linspace(-3, 3, 40 * 10, dtype=np.float32).reshape(40, 10)
    t = np.arange(40) % 10
    expected = float(fastxent.cross_entropy(x.astype(np.float64), t, backend="numpy"))
    assert abs(float(loss) - expected) <= 1e-6 * max(1.0, abs(expected))


def test_fastxent_simd_unknown_value_makes_cython_unavailable_with_the_reason(tmp_path):
    skip_unless_available("cython")
    out = run_python("""
        import fastxent
        info = fastxent.backends()["cython"]
        print(info["available"], info["reason"])
    """, cwd=str(tmp_path), FASTXENT_SIMD="avx1024")
    assert out.startswith("False ") and "FASTXENT_SIMD='avx1024'" in out, out
