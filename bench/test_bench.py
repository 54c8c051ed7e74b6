"""pytest-benchmark suite, generated from ``fastxent._bench.cases()``.

Run: ``pytest bench --benchmark-enable`` (add ``--benchmark-json=FILE``);
``FASTXENT_BENCH_FULL=1`` for the full sizes of the speed issue. Each case is
checked to dispatch to the kernel it is named after before it is timed.
"""

import os

import pytest

from fastxent import _bench

CASES = _bench.cases(quick=not os.environ.get("FASTXENT_BENCH_FULL"))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bench(benchmark, case):
    benchmark.group = "%s-%s-%s" % (case.kernel, "x".join(map(str, case.shape)), case.dtype)
    run = case.setup()
    _bench.check_dispatch(case, run)
    benchmark(run)
