"""Adversarial arrays shared by the robustness tests (after bottleneck's ``tests/util.py``).

Three layers, each usable alone:

* :func:`fill` -- values: NaN / +-inf mixes, huge and tiny magnitudes,
  subnormals, all-equal rows, all ``-inf`` rows, zeros, plain normals.
* :func:`relayout` -- the same values in another memory layout: Fortran order,
  negative strides, non-unit strides, a transposed view, non-native byte
  order, read-only, ``np.memmap``.
* generators of whole cases: :func:`logits_cases` (shapes from 0-d to 3-d
  with an empty batch and a single class, every float dtype, every fill, every
  layout, plus int/bool/object/complex logits), :func:`int_targets` (every
  integer dtype int8..uint64, with ignored entries, values ``>= C``, negatives
  other than ``ignore_index`` and uint64 values above int64's range),
  :func:`soft_targets` and :func:`bce_cases`.

Everything is deterministic given the ``numpy.random.Generator`` passed in.
Nothing here imports fastxent.
"""

from __future__ import annotations

import itertools
import os
import tempfile

import numpy as np

FLOAT_DTYPES = (np.float16, np.float32, np.float64)
#: logits that are not floating: the public functions raise TypeError for them
BAD_LOGIT_DTYPES = (np.int8, np.int32, np.int64, np.uint8, np.uint64, np.bool_,
                    np.complex64, np.complex128, object)
INT_TARGET_DTYPES = (np.int8, np.int16, np.int32, np.int64,
                     np.uint8, np.uint16, np.uint32, np.uint64)
FILLS = ("normal", "zeros", "equal", "nan", "posinf", "neginf", "nonfinite",
         "allneginf", "huge", "tiny", "subnormal", "wide")
LAYOUTS = ("c", "fortran", "negstride", "strided", "transposed", "byteswap",
           "readonly", "memmap")

#: (shape, axis) pairs for logits: 1-d, 2-d, an empty batch, a single class,
#: the PyTorch (N, C, d) layout with axis=1, the class axis first, and 0-d
#: (which every softmax/CE function must refuse).
LOGIT_SHAPES = (((4, 5), -1), ((5,), -1), ((0, 5), -1), ((4, 1), -1), ((1, 1), -1),
                ((2, 5, 3), 1), ((3, 4), 0), ((), -1))


# ------------------------------------------------------------------ values


def fill(rng, shape, dtype, kind="normal"):
    """A C-contiguous array of ``dtype`` and ``shape`` holding values of ``kind``."""
    dtype = np.dtype(dtype)
    shape = tuple(shape)
    if dtype.kind != "f":
        return _non_float(rng, shape, dtype)
    fi = np.finfo(dtype)
    n = int(np.prod(shape))
    base = 3.0 * rng.standard_normal(n)
    mask = rng.random(n)
    if kind == "normal":
        v = base
    elif kind == "zeros":
        v = np.zeros(n)
    elif kind == "equal":  # every row (along any axis) all-equal
        v = np.full(n, float(rng.choice([0.0, -7.5, 1e3, float(fi.max) / 4])))
    elif kind == "nan":
        v = np.where(mask < 0.2, np.nan, base)
    elif kind == "posinf":
        v = np.where(mask < 0.2, np.inf, base)
    elif kind == "neginf":
        v = np.where(mask < 0.3, -np.inf, base)
    elif kind == "nonfinite":
        v = np.select([mask < 0.1, mask < 0.2, mask < 0.35], [np.nan, np.inf, -np.inf], base)
    elif kind == "allneginf":  # whole rows of -inf (last axis), others normal
        v = base.reshape(shape) if shape else base.reshape(())
        if v.ndim:
            rows = rng.random(v.shape[:-1]) < 0.5
            v = np.where(rows[..., None], -np.inf, v)
        else:
            v = np.array(-np.inf)
        v = v.reshape(-1)
    elif kind == "huge":  # near the dtype's max, both signs, some exactly max
        v = np.sign(base) * float(fi.max) * rng.uniform(0.1, 1.0, n)
        v = np.where(mask < 0.2, float(fi.max), v)
    elif kind == "tiny":  # the smallest normals
        v = np.sign(base) * float(fi.tiny) * rng.uniform(1.0, 10.0, n)
    elif kind == "subnormal":
        v = np.sign(base) * float(fi.smallest_subnormal) * rng.integers(1, 100, n)
    elif kind == "wide":  # magnitudes from 1e-30 to 1e30 mixed in one row
        v = np.sign(base) * 10.0 ** rng.uniform(-30, 30, n)
    else:
        raise ValueError("unknown fill %r" % (kind,))
    with np.errstate(over="ignore"):
        return np.ascontiguousarray(np.asarray(v, np.float64).astype(dtype).reshape(shape))


def _non_float(rng, shape, dtype):
    v = rng.integers(-3, 4, shape) if shape else np.int64(rng.integers(-3, 4))
    if dtype.kind == "b":
        return (np.asarray(v) > 0).astype(dtype)
    if dtype.kind == "u":
        return np.abs(np.asarray(v)).astype(dtype)
    if dtype.kind == "O":
        out = np.empty(shape, object)
        out[...] = np.asarray(v, np.float64)
        return out
    return np.asarray(v).astype(dtype)


# ------------------------------------------------------------------ layouts

_MEMMAP_DIR = None


def _memmap_dir():
    global _MEMMAP_DIR
    if _MEMMAP_DIR is None:
        _MEMMAP_DIR = tempfile.mkdtemp(prefix="fastxent-adv-")
    return _MEMMAP_DIR


def relayout(a, layout, tmp_path=None):
    """``a``'s values in another memory layout (``None`` when the layout does not apply).

    ``memmap`` writes a file in ``tmp_path`` (or a private temporary directory)
    and returns a read-only ``np.memmap`` on it; it does not apply to empty or
    object arrays.
    """
    a = np.asarray(a)
    if layout == "c":
        return a.copy()
    if layout == "fortran":
        return np.asfortranarray(a) if a.ndim else None  # asfortranarray makes 0-d 1-d
    if layout == "negstride":  # every axis reversed, viewed back
        if a.ndim == 0:
            return None
        return np.flip(np.flip(a).copy())
    if layout == "strided":  # every axis strided by 2, the last by 3
        if a.ndim == 0:
            return None
        steps = (2,) * (a.ndim - 1) + (3,)
        big = np.zeros(tuple(d * s for d, s in zip(a.shape, steps)), a.dtype)
        view = big[tuple(slice(None, None, s) for s in steps)]
        view[...] = a
        return view
    if layout == "transposed":  # a view of a transposed contiguous array
        if a.ndim < 2:
            return None
        return np.ascontiguousarray(a.T).T
    if layout == "byteswap":
        if a.dtype.kind == "O" or a.dtype.itemsize == 1:
            return None
        return a.astype(a.dtype.newbyteorder())
    if layout == "readonly":
        r = a.copy()
        r.setflags(write=False)
        return r
    if layout == "memmap":
        if a.size == 0 or a.dtype.kind == "O":
            return None
        d = str(tmp_path) if tmp_path is not None else _memmap_dir()
        fd, path = tempfile.mkstemp(suffix=".dat", dir=d)
        os.close(fd)
        mm = np.memmap(path, dtype=a.dtype, mode="w+", shape=a.shape)
        mm[...] = a
        mm.flush()
        del mm
        return np.memmap(path, dtype=a.dtype, mode="r", shape=a.shape)
    raise ValueError("unknown layout %r" % (layout,))


# ------------------------------------------------------------------ cases


def logits_cases(rng, tmp_path=None, shapes=LOGIT_SHAPES, dtypes=FLOAT_DTYPES,
                 fills=FILLS, layouts=LAYOUTS, bad_dtypes=BAD_LOGIT_DTYPES):
    """Yield ``(name, x, axis)``.

    Every fill x every float dtype on a (4, 5) C-order array; every shape x
    layout x float dtype with the ``nonfinite`` fill (and plain ``normal``
    values, so that finite-only code paths see odd layouts too); every bad
    (non-floating) dtype in two shapes.
    """
    for dt, kind in itertools.product(dtypes, fills):
        yield "%s/%s/(4, 5)/c" % (np.dtype(dt).name, kind), fill(rng, (4, 5), dt, kind), -1
    for (shape, axis), lay, dt, kind in itertools.product(shapes, layouts, dtypes, ("normal", "nonfinite")):
        x = relayout(fill(rng, shape, dt, kind), lay, tmp_path)
        if x is not None:
            yield "%s/%s/%s/%s" % (np.dtype(dt).name, kind, shape, lay), x, axis
    for dt, shape in itertools.product(bad_dtypes, ((3, 4), (4,))):
        yield "%s/normal/%s/c" % (np.dtype(dt).name, shape), fill(rng, shape, dt), -1


def int_targets(rng, row_shape, C, dtypes=INT_TARGET_DTYPES):
    """Yield ``(name, target, ignore_index)``: every integer dtype, valid and not.

    Variants: all valid; some entries ignored (``ignore_index=-100`` for signed
    dtypes, ``C + 2`` -- a value beyond ``C`` -- for unsigned ones); one
    entry ``>= C``; one negative entry that is not ``ignore_index``; for uint64
    one entry above int64's range; for signed, an ``ignore_index`` other
    than -100 that makes -100 itself out of range.
    """
    n = int(np.prod(row_shape))
    for dt in dtypes:
        dt = np.dtype(dt)
        signed = dt.kind == "i"
        ig = -100 if signed else C + 2
        if not signed and C + 2 > np.iinfo(dt).max:
            ig = None
        base = rng.integers(0, C, n)
        yield "%s/valid" % dt.name, base.astype(dt).reshape(row_shape), -100
        if n == 0:
            continue
        if ig is not None:
            t = base.copy()
            t[rng.random(n) < 0.4] = ig
            yield "%s/ignored" % dt.name, t.astype(dt).reshape(row_shape), ig
            allign = np.full(n, ig)
            yield "%s/all-ignored" % dt.name, allign.astype(dt).reshape(row_shape), ig
        pos = int(rng.integers(0, n))
        t = base.copy()
        t[pos] = min(C + int(rng.integers(0, 3)), int(np.iinfo(dt).max))
        if t[pos] >= C:
            yield "%s/ge-C" % dt.name, t.astype(dt).reshape(row_shape), -100
        t = base.astype(dt)
        t[pos] = np.iinfo(dt).max
        if int(np.iinfo(dt).max) >= C:
            yield "%s/dtype-max" % dt.name, t.reshape(row_shape), -100
        if signed:
            for neg in (-1, -101, int(np.iinfo(dt).min)):
                t = base.astype(dt)
                t[pos] = neg
                yield "%s/negative%d" % (dt.name, neg), t.reshape(row_shape), -100
            t = base.copy()
            t[pos] = -100
            yield "%s/minus100-not-ignored" % dt.name, t.astype(dt).reshape(row_shape), -1
        if dt == np.uint64:
            t = base.astype(np.uint64)
            t[pos] = np.uint64(2**63 + 5)
            yield "uint64/above-int64", t.reshape(row_shape), -100


def soft_targets(rng, shape, dtype, axis=-1):
    """Yield ``(name, P)``: probability rows (Dirichlet), one-hot, zeros, with NaN, with negatives, huge."""
    dtype = np.dtype(dtype)
    shape = tuple(shape)
    if not shape:
        return
    moved = shape[:axis % len(shape)] + shape[axis % len(shape) + 1:] + (shape[axis],)
    n = int(np.prod(moved[:-1]))
    C = moved[-1]
    d = rng.dirichlet(np.ones(C), n).reshape(moved) if C else np.zeros(moved)

    def back(v):
        return np.ascontiguousarray(np.moveaxis(np.asarray(v), -1, axis % len(shape)).astype(dtype))

    yield "dirichlet", back(d)
    oh = np.zeros(moved)
    if n and C:
        oh.reshape(-1, C)[np.arange(n), rng.integers(0, C, n)] = 1.0
    yield "onehot", back(oh)
    yield "zeros", back(np.zeros(moved))
    if d.size:
        v = d.copy().reshape(-1)
        v[rng.integers(0, v.size)] = np.nan
        yield "with-nan", back(v.reshape(moved))
        yield "negative", back(d - 0.5)
        yield "huge", back(d * float(np.finfo(dtype).max))


def bce_cases(rng, tmp_path=None, dtypes=FLOAT_DTYPES, layouts=LAYOUTS):
    """Yield ``(name, p_or_x, y, kind)`` for the binary losses; ``kind`` is ``"prob"`` or ``"logits"``.

    Probabilities include exact 0 and 1, subnormals, NaN, values outside
    [0, 1]; logits get every :data:`FILLS` kind; labels are hard, soft, NaN
    and broadcast (a single row, a scalar); shapes 0-d, 1-d, empty, 2-d, 3-d.
    """
    shapes = ((), (7,), (0,), (3, 4), (2, 3, 4))
    for dt, shape in itertools.product(dtypes, shapes):
        dt = np.dtype(dt)
        fi = np.finfo(dt)
        n = int(np.prod(shape))
        u = rng.random(n)
        probs = {
            "uniform": u,
            "edges": np.select([u < 0.3, u < 0.6], [0.0, 1.0], u),
            "tiny": np.where(u < 0.5, float(fi.smallest_subnormal), 1 - float(fi.eps) / 2),
            "with-nan": np.where(u < 0.2, np.nan, u),
            "outside": np.where(u < 0.2, 1.5, np.where(u > 0.9, -0.25, u)),
        }
        hard = (rng.random(n) < 0.5).astype(np.float64)
        labels = {"hard": hard, "soft": rng.random(n), "nan": np.where(u < 0.2, np.nan, hard)}
        for (pn, p), (yn, y) in itertools.product(probs.items(), labels.items()):
            yield ("%s/%s/p=%s/y=%s" % (dt.name, shape, pn, yn),
                   p.astype(dt).reshape(shape), y.astype(dt).reshape(shape), "prob")
        for kind in FILLS:
            yield ("%s/%s/x=%s" % (dt.name, shape, kind), fill(rng, shape, dt, kind),
                   hard.astype(dt).reshape(shape), "logits")
        if shape and n:
            row = hard.reshape(shape)[(0,) * (len(shape) - 1)].astype(dt)
            yield "%s/%s/y-broadcast-row" % (dt.name, shape), fill(rng, shape, dt), row, "logits"
            yield "%s/%s/y-scalar" % (dt.name, shape), fill(rng, shape, dt), np.array(1.0, dt), "logits"
            for lay in layouts:
                x = relayout(fill(rng, shape, dt, "nonfinite"), lay, tmp_path)
                y = relayout(hard.astype(dt).reshape(shape), lay, tmp_path)
                if x is not None and y is not None:
                    yield "%s/%s/x=nonfinite/%s" % (dt.name, shape, lay), x, y, "logits"
                    p = relayout(u.astype(dt).reshape(shape), lay, tmp_path)
                    yield "%s/%s/p=uniform/%s" % (dt.name, shape, lay), p, y, "prob"
    for bad in (np.int64, np.bool_, np.complex128, object):
        yield "%s/logits" % np.dtype(bad).name, fill(rng, (3, 4), bad), np.ones((3, 4)), "logits"
        yield "%s/prob" % np.dtype(bad).name, fill(rng, (3, 4), bad), np.ones((3, 4)), "prob"
        yield "%s/labels" % np.dtype(bad).name, np.full((3, 4), 0.5), fill(rng, (3, 4), bad), "prob"
