"""AddressSanitizer (slow): the Cython kernels' tests, run against an ASan build of the extension.

The package is copied to a temporary directory, ``fastxent/_kernels.pyx`` is
compiled there with ``-fsanitize=address`` (gcc's libasan), and the Cython
subset of the test suite runs in a subprocess with ``LD_PRELOAD=libasan`` and
``ASAN_OPTIONS=detect_leaks=0`` (CPython itself "leaks" by design), the copy
first on ``PYTHONPATH``. Any out-of-bounds read or write, use-after-free or
double free aborts the subprocess with an ``ERROR: AddressSanitizer`` report.

By hand::

    mkdir /tmp/asan && cp -r fastxent setup.py pyproject.toml README.md /tmp/asan/
    cd /tmp/asan && rm -f fastxent/*.so fastxent/_kernels.c
    CFLAGS="-fsanitize=address -fno-omit-frame-pointer -g -O1" LDFLAGS=-fsanitize=address \\
        python setup.py build_ext --inplace
    LD_PRELOAD=$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 PYTHONPATH=/tmp/asan \\
        python -m pytest -p no:cacheprovider <repo>/tests -k cython
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = ["test_cross_entropy.py", "test_softmax.py", "test_binary.py", "test_special_values.py",
         "test_errors_and_inputs.py", "test_gradients.py", "test_adversarial.py", "test_concurrency.py",
         "test_threads.py", "test_few_classes.py"]


def _libasan():
    if shutil.which("gcc") is None:
        pytest.skip("no gcc")
    lib = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(lib) or not os.path.exists(lib):
        pytest.skip("gcc has no libasan here")
    return lib


@pytest.mark.slow
def test_cython_kernels_under_address_sanitizer(tmp_path):
    lib = _libasan()
    src = tmp_path / "src"
    src.mkdir()
    shutil.copytree(os.path.join(ROOT, "fastxent"), src / "fastxent",
                    ignore=shutil.ignore_patterns("*.so", "_kernels.c", "__pycache__"))
    for f in ("setup.py", "pyproject.toml", "README.md", "MANIFEST.in"):
        if os.path.exists(os.path.join(ROOT, f)):
            shutil.copy(os.path.join(ROOT, f), src / f)
    env = dict(os.environ, CFLAGS="-fsanitize=address -fno-omit-frame-pointer -g -O1",
               LDFLAGS="-fsanitize=address", FASTXENT_REQUIRE_EXT="1")
    b = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace",
                        "--build-temp", str(tmp_path / "build")],
                       cwd=src, env=env, capture_output=True, text=True, timeout=1200)
    assert b.returncode == 0, b.stdout[-3000:] + b.stderr[-3000:]

    run_env = dict(os.environ, LD_PRELOAD=lib, ASAN_OPTIONS="detect_leaks=0:abort_on_error=0",
                   PYTHONPATH=str(src), FASTXENT_HYPOTHESIS_EXAMPLES="10")
    run_env.pop("FASTXENT_BACKEND", None)
    # the subprocess really loads the ASan build
    chk = subprocess.run([sys.executable, "-c", "import fastxent._kernels as k; print(k.__file__)"],
                         cwd=src, env=run_env, capture_output=True, text=True, timeout=300)
    assert chk.returncode == 0, chk.stderr[-2000:]
    so = chk.stdout.strip()
    assert so.startswith(str(src)), so
    ldd = subprocess.run(["ldd", so], capture_output=True, text=True).stdout
    assert "libasan" in ldd, ldd

    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:warnings",
                        "-k", "cython and not memory", *[os.path.join(ROOT, "tests", t) for t in TESTS]],
                       cwd=src, env=run_env, capture_output=True, text=True, timeout=3000)
    out = r.stdout + r.stderr
    assert "AddressSanitizer" not in out, out[-6000:]
    assert r.returncode == 0, out[-6000:]
    assert " passed" in out, out[-2000:]
