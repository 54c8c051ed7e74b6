"""Build of the optional Cython/OpenMP extension ``fastxent._kernels``.

Flags: ``-O3 -fno-math-errno -fno-trapping-math`` let gcc vectorise while
keeping IEEE NaN/inf semantics (``-falign-loops=64`` only places code); gcc's fast-math options are never used (they
turn NaN handling into garbage), nor tuning for the build machine (a wheel built so
crashes on older CPUs). AVX2/FMA code paths are chosen at run time inside the
extension. If the extension cannot be compiled (no compiler, no OpenMP), the
package still installs and runs on its Numba and NumPy backends;
``fastxent.backends()`` then says why cython is unavailable.
Set ``FASTXENT_NO_OPENMP=1`` to build without OpenMP, ``FASTXENT_REQUIRE_EXT=1``
to make a failed extension build an error instead of a warning.
"""

import glob
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# -fopenmp-simd: the `#pragma omp simd` loops vectorise even without OpenMP.
# -falign-loops=64: every loop starts on a 64-byte line (layout only, no
# change to any value).  Without it a loop's place in its line moved with
# unrelated edits: the row max of the long rows (17 bytes: load, max, add,
# compare, branch) sat inside one line in one build and across two in the
# next, and the loss alone at (2048, 32000) float32 on one thread took
# 1.09-1.19x the time (the same loop, in builds of an edit of the .pyx that
# did not touch it, or with -falign-functions=64).  With it, builds of either
# source took the time of the fast layout (0.99-1.01x at 5 shapes; see
# docs/performance.md).
COMPILE_ARGS = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-std=c99",
                "-fopenmp-simd", "-falign-loops=64"]
OPENMP = [] if os.environ.get("FASTXENT_NO_OPENMP") else ["-fopenmp"]


class OptionalBuildExt(build_ext):
    """Build the extension, but leave the pure-Python package working if it fails."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any build failure is optional
            self._failed(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self._failed(exc)

    def _failed(self, exc):
        if os.environ.get("FASTXENT_REQUIRE_EXT"):
            raise exc
        sys.stderr.write(
            "WARNING: fastxent._kernels (Cython/OpenMP) was not built: %s\n"
            "fastxent will run on its Numba and NumPy backends.\n" % (exc,)
        )


def extensions():
    try:
        import numpy
        from Cython.Build import cythonize
    except ImportError as exc:  # build deps missing: pure-Python install
        if os.environ.get("FASTXENT_REQUIRE_EXT"):
            raise
        sys.stderr.write("WARNING: cannot cythonize fastxent._kernels: %s\n" % (exc,))
        return []
    ext = Extension(
        "fastxent._kernels",
        ["fastxent/_kernels.pyx"],
        depends=sorted(glob.glob("fastxent/*.h")),  # rebuild when a header changes
        include_dirs=[numpy.get_include(), "fastxent"],
        extra_compile_args=COMPILE_ARGS + OPENMP,
        extra_link_args=OPENMP,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
    try:
        return cythonize(
            [ext],
            compiler_directives={
                "language_level": 3,
                "boundscheck": False,
                "wraparound": False,
                "cdivision": True,
                "initializedcheck": False,
            },
        )
    except Exception as exc:  # noqa: BLE001
        if os.environ.get("FASTXENT_REQUIRE_EXT"):
            raise
        sys.stderr.write("WARNING: cythonize failed: %s\n" % (exc,))
        return []


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
