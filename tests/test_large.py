"""Large arrays (slow): more than 2**31 elements, loss only, float32, on the compiled backends.

Every kernel must index with 64-bit arithmetic: a (rows, C) float32 array with
rows * C > 2**31 (8.6 GB) must give the same loss as the same rows processed in
chunks of < 2**31 elements. Memory: one 8.6 GB array plus per-row vectors.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest

import fastxent
from conftest import skip_unless_available

C = 1024
ROWS = (1 << 31) // C + 4099  # 2**31 + 4099 * 1024 elements, ~8.6 GB in float32
CHUNK = 1 << 19               # rows per chunk: 2**29 elements


@pytest.fixture(scope="module")
def big():
    x = np.empty((ROWS, C), np.float32)
    rng = np.random.default_rng(0)
    block = (3 * rng.standard_normal((CHUNK, C))).astype(np.float32)
    for i in range(0, ROWS, CHUNK):  # tiled values: cheap to make, different per row within a tile
        n = min(CHUNK, ROWS - i)
        x[i:i + n] = block[:n]
        x[i + n - 1, (i // CHUNK) % C] = 40.0  # the tile's last row differs per tile
    del block
    t = (np.arange(ROWS, dtype=np.int64) * 7919) % C
    t[-5:] = -100
    t[-7] = C - 1
    x[-7, C - 1] = 25.0  # a row past 2**31 elements with a distinctive value
    yield x, t
    del x
    gc.collect()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cython", "numba"])
def test_more_than_2_31_elements_equals_chunks(name, big):
    skip_unless_available(name)
    x, t = big
    assert x.size > 2**31
    per_row = fastxent.cross_entropy(x, t, reduction="none", backend=name)
    assert per_row.shape == (ROWS,)
    parts = [fastxent.cross_entropy(x[i:i + CHUNK], t[i:i + CHUNK], reduction="none", backend=name)
             for i in range(0, ROWS, CHUNK)]
    chunked = np.concatenate(parts)
    np.testing.assert_array_equal(per_row, chunked)
    assert per_row[-1] == 0 and per_row[-7] > 0
    # the rows beyond 2**31 elements were really computed from their own logits
    lse = np.logaddexp.reduce(x[-7].astype(np.float64))
    assert abs(per_row[-7] - (lse - 25.0)) <= 1e-5 * max(1.0, abs(lse - 25.0))
    s = fastxent.cross_entropy(x, t, reduction="sum", backend=name)
    ref = float(np.sum([np.sum(p, dtype=np.float64) for p in parts]))
    assert abs(float(s) - ref) <= 1e-6 * abs(ref)
    m = fastxent.cross_entropy(x, t, reduction="mean", backend=name)
    assert abs(float(m) - ref / (ROWS - 5)) <= 1e-6 * abs(ref / (ROWS - 5))
