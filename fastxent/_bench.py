"""Benchmark cases and the ``fastxent bench`` report.

The cases come from one table, :data:`WORKS`, keyed by the *kernel name* of
the dispatch registry. Each case calls the public function with a forced
backend, and :func:`check_dispatch` runs every case once under a spy on
``_dispatch.call`` to prove it reaches the kernel it is named after: no case
can name one function and time another. ``bench/test_bench.py``
(pytest-benchmark) and ``fastxent bench`` share these cases.

Beside each (shape, dtype) the roofline runs: ``np.copyto`` of the logits into
a same-sized buffer, the least memory traffic a loss-and-gradient can have.
PyTorch and JAX/optax doing the same work run when they are importable.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from . import _api, _dispatch

# ------------------------------------------------------------------ works


def _ce_inputs(shape, dtype, rng):
    N, C = shape
    x = rng.standard_normal(shape, dtype=np.float32).astype(dtype) * 3
    t = rng.integers(0, C, N)
    return x, t


def _run_ce_loss_grad(backend, x, t, out):
    return lambda: _api.cross_entropy_with_grad(x, t, out=out, backend=backend)


def _run_ce_loss(backend, x, t, out):
    return lambda: _api.cross_entropy(x, t, backend=backend)


def _run_softmax(backend, x, t, out):
    return lambda: _api.softmax(x, out=out, backend=backend)


def _run_log_softmax(backend, x, t, out):
    return lambda: _api.log_softmax(x, out=out, backend=backend)


def _run_bce_logits_loss_grad(backend, x, t, out):
    y = (t[:, None] % 2 == np.arange(x.shape[1]) % 2).astype(x.dtype)
    return lambda: _api.binary_cross_entropy_with_logits_with_grad(
        x, y, out=out, backend=backend)


@dataclass(frozen=True)
class Work:
    """One kind of work: the kernel it must reach, how to run it, how much it moves."""

    kernel: str
    make: Callable
    writes_full: bool  # writes an N x C result (so the roofline is a memcpy)
    label: str


WORKS: Dict[str, Work] = {
    w.kernel: w
    for w in (
        Work("ce_loss_grad", _run_ce_loss_grad, True, "cross_entropy_with_grad(out=)"),
        Work("ce_loss", _run_ce_loss, False, "cross_entropy"),
        Work("softmax", _run_softmax, True, "softmax(out=)"),
        Work("log_softmax", _run_log_softmax, True, "log_softmax(out=)"),
        Work("bce_logits_loss_grad", _run_bce_logits_loss_grad, True,
             "binary_cross_entropy_with_logits_with_grad(out=)"),
    )
}

#: (kernel, shape, dtype): the speed issue's target rows, and two more.
FULL_SIZES: List[Tuple[str, Tuple[int, int], str]] = [
    ("ce_loss_grad", (4096, 32000), "float32"),
    ("ce_loss_grad", (1024, 128256), "float32"),
    ("ce_loss_grad", (8192, 1000), "float32"),
    ("ce_loss_grad", (262144, 10), "float32"),
    ("ce_loss", (4096, 32000), "float32"),
    ("ce_loss_grad", (4096, 16000), "float64"),
    ("log_softmax", (4096, 32000), "float32"),
    ("softmax", (4096, 32000), "float32"),
    ("bce_logits_loss_grad", (4096, 4096), "float32"),
    ("ce_loss_grad", (8, 10), "float32"),
    # not targets of the speed issue: few-class softmax, where a per-row path
    # lost to PyTorch
    ("softmax", (262144, 10), "float32"),
    ("log_softmax", (262144, 10), "float32"),
]

QUICK_SIZES: List[Tuple[str, Tuple[int, int], str]] = [
    ("ce_loss_grad", (1024, 32000), "float32"),
    ("ce_loss_grad", (65536, 10), "float32"),
    ("ce_loss", (1024, 32000), "float32"),
    ("ce_loss_grad", (1024, 16000), "float64"),
    ("log_softmax", (1024, 32000), "float32"),
    ("bce_logits_loss_grad", (2048, 2048), "float32"),
    ("ce_loss_grad", (8, 10), "float32"),
]

PEERS = ("torch", "jax")


@dataclass
class Case:
    """One timed thing: a fastxent backend, the memcpy roofline, or a peer."""

    kernel: str
    shape: Tuple[int, int]
    dtype: str
    runner: str  # "cython" | "numba" | "numpy" | "memcpy" | "torch" | "jax"
    setup: Callable[[], Callable[[], object]] = field(repr=False)

    @property
    def id(self) -> str:
        return "%s-%s-%s-%s" % (self.kernel, "x".join(map(str, self.shape)),
                                self.dtype, self.runner)


def _fastxent_setup(kernel, shape, dtype, backend):
    def setup():
        rng = np.random.default_rng(0)
        x, t = _ce_inputs(shape, np.dtype(dtype), rng)
        out = np.empty_like(x) if WORKS[kernel].writes_full else None
        return WORKS[kernel].make(backend, x, t, out)
    return setup


def _memcpy_setup(shape, dtype):
    def setup():
        src = np.random.default_rng(0).standard_normal(shape, dtype=np.float32).astype(dtype)
        dst = np.empty_like(src)
        np.copyto(dst, src)  # touch the pages first
        return lambda: np.copyto(dst, src)
    return setup


def _torch_setup(kernel, shape, dtype, threads):
    import torch
    import torch.nn.functional as F

    def setup():
        torch.set_num_threads(threads)
        rng = np.random.default_rng(0)
        x, t = _ce_inputs(shape, np.dtype(dtype), rng)
        xt = torch.from_numpy(x)
        tt = torch.from_numpy(t)
        if kernel == "ce_loss_grad":
            xg = xt.clone().requires_grad_(True)

            def run():
                xg.grad = None
                loss = F.cross_entropy(xg, tt)
                loss.backward()
                return xg.grad
            return run
        if kernel == "ce_loss":
            return lambda: F.cross_entropy(xt, tt)
        if kernel == "softmax":
            return lambda: torch.softmax(xt, -1)
        if kernel == "log_softmax":
            return lambda: torch.log_softmax(xt, -1)
        y = torch.from_numpy((t[:, None] % 2 == np.arange(shape[1]) % 2).astype(dtype))
        xg = xt.clone().requires_grad_(True)

        def run_bce():
            xg.grad = None
            F.binary_cross_entropy_with_logits(xg, y).backward()
            return xg.grad
        return run_bce
    return setup


def _jax_setup(kernel, shape, dtype):
    import jax
    import jax.numpy as jnp
    import optax

    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)

    def setup():
        rng = np.random.default_rng(0)
        x, t = _ce_inputs(shape, np.dtype(dtype), rng)
        xj = jnp.asarray(x)
        tj = jnp.asarray(t.astype(np.int32))
        if kernel in ("ce_loss_grad", "ce_loss"):
            def loss(v):
                return optax.softmax_cross_entropy_with_integer_labels(v, tj).mean()
            f = jax.jit(jax.value_and_grad(loss) if kernel == "ce_loss_grad" else loss)
        elif kernel == "softmax":
            f = jax.jit(jax.nn.softmax)
        elif kernel == "log_softmax":
            f = jax.jit(jax.nn.log_softmax)
        else:
            yj = jnp.asarray((t[:, None] % 2 == np.arange(shape[1]) % 2).astype(dtype))

            def bloss(v):
                return optax.sigmoid_binary_cross_entropy(v, yj).mean()
            f = jax.jit(jax.value_and_grad(bloss))
        return lambda: jax.block_until_ready(f(xj))
    return setup


def _peer_available(name: str) -> bool:
    try:
        if name == "torch":
            import torch  # noqa: F401
        else:
            import jax  # noqa: F401
            import optax  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


def cases(quick: bool = False, peers: bool = True,
          backends: Optional[List[str]] = None) -> List[Case]:
    """Every case: each size x each available backend, the memcpy, the peers."""
    sizes = QUICK_SIZES if quick else FULL_SIZES
    info = _dispatch.backends()
    bes = [b for b in (backends or _dispatch.BACKENDS) if info[b]["available"]]
    threads = _dispatch.get_num_threads()
    out: List[Case] = []
    for kernel, shape, dtype in sizes:
        out.append(Case(kernel, shape, dtype, "memcpy", _memcpy_setup(shape, dtype)))
        for b in bes:
            out.append(Case(kernel, shape, dtype, b, _fastxent_setup(kernel, shape, dtype, b)))
        if peers:
            for p in PEERS:
                if _peer_available(p):
                    setup = (_torch_setup(kernel, shape, dtype, threads) if p == "torch"
                             else _jax_setup(kernel, shape, dtype))
                    out.append(Case(kernel, shape, dtype, p, setup))
    return out


def check_dispatch(case: Case, run: Callable[[], object]) -> None:
    """Run ``run`` once and prove it reached ``case.kernel`` on ``case.runner``."""
    if case.runner not in _dispatch.BACKENDS:
        run()
        return
    seen = []
    real = _dispatch.call

    def spy(name, backend, *args, work):
        seen.append((name, backend))
        return real(name, backend, *args, work=work)

    _dispatch.call = spy
    try:
        run()
    finally:
        _dispatch.call = real
    if seen != [(case.kernel, case.runner)]:
        raise AssertionError("case %s dispatched %s" % (case.id, seen))


# ------------------------------------------------------------------ timing


def calibrate(run: Callable[[], object], min_seconds: float = 0.02) -> int:
    """Calls per sample so that one sample lasts about ``min_seconds`` (after a warm-up)."""
    run()
    t0 = time.perf_counter()
    run()
    once = time.perf_counter() - t0
    return max(1, int(min_seconds / max(once, 1e-9)))


def sample(run: Callable[[], object], inner: int) -> float:
    """Seconds per call, averaged over ``inner`` calls."""
    t0 = time.perf_counter()
    for _ in range(inner):
        run()
    return (time.perf_counter() - t0) / inner


def machine() -> dict:
    from .__main__ import info

    d = info()
    versions = {"fastxent": d["fastxent"], "numpy": d["numpy"], "python": d["python"]}
    for mod in ("numba", "Cython", "torch", "jax", "optax"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            pass
    return {
        "cpu": d["cpu"],
        "cores": d["cores_available"],
        "threads": d["threads"],
        "platform": platform.platform(),
        "cython_isa": d["backends"]["cython"].get("isa"),
        "versions": versions,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def _groups(cs: List[Case]) -> List[List[Case]]:
    """Cases grouped by (kernel, shape, dtype), in order."""
    out: List[List[Case]] = []
    for c in cs:
        if out and (out[-1][0].kernel, out[-1][0].shape, out[-1][0].dtype) == (
                c.kernel, c.shape, c.dtype):
            out[-1].append(c)
        else:
            out.append([c])
    return out


def _slow_rounds(repeats: int, passes: int) -> int:
    """Rounds (counted across passes) in which NumPy and the peers are timed."""
    return max(3, repeats * passes // 3)


def run_all(quick: bool, repeats: int, progress=None, backends=None, peers=True,
            passes: int = 1) -> dict:
    """Time every case, the cases of one (kernel, shape, dtype) round-robin.

    Each round takes one sample of every case of the group in turn, the memcpy
    first, so a case's ratio to memcpy can be taken per round (``_derive``):
    on a shared machine whose speed drifts over seconds, a memcpy timed a
    moment before is a fairer floor than one timed a minute earlier.  The
    rounds start after one untimed call of every case of the group, in round
    order, once all of them are set up: on the 2-core AVX2 machine the first
    memcpy after a group's allocations took 2-3x the time of the next ones
    (its median over three runs' first rounds 0.17-0.20 ms per MB, 0.081-0.083
    in the later rounds; the kernels were slowed less), which made the first
    round's ratios of the large rows about half what the later rounds gave.

    With ``passes`` > 1 the whole suite runs that many times, ``repeats``
    rounds of each group per pass (rounds numbered across passes), and a
    case's median is over all its samples: a row's samples then come from
    moments minutes apart, so that a slow stretch of the machine shorter than
    about half the run moves a minority of them, instead of every sample of
    the rows timed during it. The NumPy path and the peers (slow, and there
    for the speed-ups, not the targets) take part in the first ``max(3,
    repeats * passes // 3)`` rounds only (counted across passes: set up
    again only in a pass that samples them).
    """
    cs = cases(quick=quick, peers=peers, backends=backends)
    passes = max(1, int(passes))
    slow_total = _slow_rounds(repeats, passes)
    recs = {case.id: {"kernel": case.kernel, "shape": list(case.shape), "dtype": case.dtype,
                      "runner": case.runner, "samples_s": [], "rounds": [],
                      "median_s": None, "error": None} for case in cs}
    done, total = 0, len(cs) * passes
    for p in range(passes):
        for group in _groups(cs):
            runs = []
            for case in group:
                if progress:
                    progress(done, total, ("pass %d/%d " % (p + 1, passes) if passes > 1
                                           else "") + case.id)
                done += 1
                rec = recs[case.id]
                slow = case.runner in ("numpy",) + PEERS
                reps = (min(repeats, max(0, slow_total - p * repeats)) if slow
                        else repeats)
                run, inner = None, 0
                if rec["error"] is None and reps > 0:
                    try:
                        run = case.setup()
                        check_dispatch(case, run)
                        inner = calibrate(run)
                    except Exception as exc:  # noqa: BLE001 - a peer failing must not stop the report
                        run = None
                        rec["error"] = "%s: %s" % (type(exc).__name__, exc)
                runs.append((run, inner, reps, rec))
            # round -1: one untimed call of each, once all are set up (the
            # first copy after the group's allocations ran 2-3x slower than
            # the next ones at 64 MB and more, the kernels less so, which
            # halved that round's memcpy ratios)
            for k in range(-1, repeats):
                for run, inner, reps, rec in runs:
                    if run is None or k >= reps:
                        continue
                    try:
                        if k < 0:
                            run()
                            continue
                        rec["samples_s"].append(sample(run, inner))
                        rec["rounds"].append(p * repeats + k)
                    except Exception as exc:  # noqa: BLE001
                        rec["error"] = "%s: %s" % (type(exc).__name__, exc)
            runs = None  # free this group's arrays before the next group's
    results = []
    for case in cs:
        rec = recs[case.id]
        if rec["error"]:
            rec["samples_s"], rec["rounds"] = [], []
        elif rec["samples_s"]:
            rec["median_s"] = statistics.median(rec["samples_s"])
        results.append(rec)
    if progress:
        progress(total, total, "done")
    return {"machine": machine(), "quick": quick, "repeats": repeats, "passes": passes,
            "warmup": 1, "results": results}


# ------------------------------------------------------------------ report


def paired_ratio(r: dict, mem: dict) -> Optional[float]:
    """Median over rounds of (this case's sample / the memcpy sample of the same round).

    Reports without rounds (older ones) give the ratio of the medians.
    """
    if not mem.get("median_s") or not r.get("median_s"):
        return None
    if "rounds" not in r or "rounds" not in mem:
        return r["median_s"] / mem["median_s"]
    m = dict(zip(mem["rounds"], mem["samples_s"]))
    q = [t / m[k] for k, t in zip(r["rounds"], r["samples_s"]) if k in m]
    return statistics.median(q) if q else None


def _derive(data: dict) -> List[dict]:
    rows = []
    res = data["results"]
    by_key: Dict[tuple, Dict[str, dict]] = {}
    for r in res:
        by_key.setdefault((r["kernel"], tuple(r["shape"]), r["dtype"]), {})[r["runner"]] = r
    for (kernel, shape, dtype), group in by_key.items():
        n_el = shape[0] * shape[1]
        item = np.dtype(dtype).itemsize
        moved = n_el * item * (2 if WORKS[kernel].writes_full else 1)
        mem = group.get("memcpy", {})
        base = {k: group.get(k, {}).get("median_s") for k in ("numpy",) + PEERS}
        for runner, r in group.items():
            t = r["median_s"]
            row = {"work": WORKS[kernel].label, "kernel": kernel, "shape": shape,
                   "dtype": dtype, "runner": runner, "ms": t * 1e3 if t else None,
                   "error": r["error"]}
            if t:
                row["Gelem_s"] = n_el / t / 1e9
                row["GB_s"] = moved / t / 1e9
                row["x_memcpy"] = paired_ratio(r, mem)
                for k, v in base.items():
                    ok = v and runner not in ("memcpy", k)
                    row["speedup_vs_" + k] = v / t if ok else None
            rows.append(row)
    return rows


def _fmt(v, spec):
    return "" if v is None else format(v, spec)


def _sampling(data: dict) -> str:
    """How the samples were taken, from a report's own fields (older reports
    have none)."""
    if "passes" not in data:
        return "one pass"
    p, r = data["passes"], data["repeats"]
    if p == 1:
        return "one pass of %d rounds per row" % r
    return ("%d passes over the suite, %d rounds per row in each: %d samples per fastxent "
            "runner and memcpy, taken minutes apart; NumPy and the peers in the first %d "
            "rounds only" % (p, r, p * r, _slow_rounds(r, p)))


def write_report(data: dict, outdir: str) -> Dict[str, str]:
    os.makedirs(outdir, exist_ok=True)
    rows = _derive(data)
    data = dict(data, rows=rows)
    m = data["machine"]
    head = ("Machine: %s, %s cores, %s fastxent threads; cython ISA %s; %s. Versions: %s. %s."
            % (m["cpu"], m["cores"], m["threads"], m["cython_isa"], m["platform"],
               ", ".join("%s %s" % kv for kv in m["versions"].items()), m["date"]))
    lines = [
        "# fastxent benchmark report", "", head, "",
        "Median of repeated calls (%s mode; %s); the runners of one row group are timed "
        "round-robin, one sample each per round%s. `x memcpy` is the median over rounds of "
        "the time over that round's `np.copyto` of the same logits into a same-sized "
        "buffer: the floor for any work that reads the logits and writes an N x C result "
        "(for loss-only work, the floor is half of it). Speed-ups are the other runner's "
        "median time over this row's."
        % ("quick" if data["quick"] else "full", _sampling(data),
           " (after one untimed call of each)" if data.get("warmup") else ""), "",
        "| work | shape | dtype | runner | ms | Gelem/s | GB/s | x memcpy | vs numpy | vs torch | vs jax |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if r["error"]:
            lines.append("| %s | %s | %s | %s | failed: %s | | | | | | |" % (
                r["work"], "x".join(map(str, r["shape"])), r["dtype"], r["runner"],
                r["error"].replace("|", "/")[:80]))
            continue
        lines.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            r["work"], "x".join(map(str, r["shape"])), r["dtype"], r["runner"],
            _fmt(r["ms"], ".3f"), _fmt(r.get("Gelem_s"), ".2f"), _fmt(r.get("GB_s"), ".1f"),
            _fmt(r.get("x_memcpy"), ".2f"), _fmt(r.get("speedup_vs_numpy"), ".1f"),
            _fmt(r.get("speedup_vs_torch"), ".1f"), _fmt(r.get("speedup_vs_jax"), ".1f")))
    paths = {"md": os.path.join(outdir, "report.md"),
             "json": os.path.join(outdir, "report.json"),
             "png": os.path.join(outdir, "report.png")}
    with open(paths["md"], "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(paths["json"], "w") as f:
        json.dump(data, f, indent=1)
    if not _plot(rows, head, paths["png"]):
        del paths["png"]
    return paths


def _plot(rows: List[dict], head: str, path: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.stderr.write("matplotlib not installed: no plot (pip install 'fastxent[bench]')\n")
        return False
    groups = []
    for r in rows:
        g = "%s\n%s %s" % (r["kernel"], "x".join(map(str, r["shape"])), r["dtype"])
        if g not in groups:
            groups.append(g)
    runners = [x for x in ("cython", "numba", "numpy", "torch", "jax")
               if any(r["runner"] == x for r in rows)]
    fig, ax = plt.subplots(figsize=(max(8, 1.3 * len(groups)), 5))
    width = 0.8 / max(1, len(runners))
    for j, rn in enumerate(runners):
        vals = []
        for g in groups:
            v = [r.get("x_memcpy") for r in rows
                 if r["runner"] == rn and "%s\n%s %s" % (
                     r["kernel"], "x".join(map(str, r["shape"])), r["dtype"]) == g]
            vals.append(v[0] if v and v[0] else np.nan)
        ax.bar(np.arange(len(groups)) + j * width, vals, width, label=rn)
    ax.axhline(1.0, color="k", lw=1, ls="--", label="memcpy")
    ax.set_yscale("log")
    ax.set_ylabel("time / memcpy of the same array (lower is better)")
    ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2)
    ax.set_xticklabels(groups, fontsize=7)
    ax.legend(fontsize=8)
    ax.set_title(head, fontsize=6, wrap=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def progress_bar(i: int, n: int, label: str) -> None:
    width = 30
    filled = int(width * i / max(n, 1))
    sys.stderr.write("\r[%s%s] %d/%d %-60s" % ("#" * filled, "." * (width - filled), i, n,
                                               label[:60]))
    if i >= n:
        sys.stderr.write("\n")
    sys.stderr.flush()
