"""Command line: ``fastxent info`` and ``fastxent bench`` (or ``python -m fastxent ...``)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from typing import List, Optional


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def info() -> dict:
    """Backends, versions, threads and machine, as a dict."""
    import numpy

    import fastxent

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    return {
        "fastxent": fastxent.__version__,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "cpu": _cpu_name(),
        "cores_available": cores,
        "threads": fastxent.get_num_threads(),
        "backends": fastxent.backends(),
    }


def _print_info(as_json: bool) -> None:
    d = info()
    if as_json:
        print(json.dumps(d, indent=2))
        return
    print("fastxent %s  (Python %s, NumPy %s)" % (d["fastxent"], d["python"], d["numpy"]))
    print("cpu: %s, %s cores available, fastxent threads: %d"
          % (d["cpu"], d["cores_available"], d["threads"]))
    for name, b in d["backends"].items():
        if b["available"]:
            extra = ""
            if name == "cython":
                extra = "  openmp=%s isa=%s" % (b["openmp"], b["isa"])
            print("  %-7s available  version %s%s" % (name, b["version"], extra))
        else:
            print("  %-7s UNAVAILABLE: %s" % (name, b["reason"]))


def _positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not an integer" % text) from None
    if v < 1:
        raise argparse.ArgumentTypeError("must be at least 1, got %d" % v)
    return v


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="fastxent", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    p_info = sub.add_parser("info", help="print backends, versions and threads")
    p_info.add_argument("--json", action="store_true", help="print JSON")
    p_bench = sub.add_parser("bench", help="run the benchmark suite and write a report")
    p_bench.add_argument("--quick", action="store_true", help="smaller sizes, about a minute")
    p_bench.add_argument("--out", default="fastxent-bench", help="report folder (default: %(default)s)")
    p_bench.add_argument("--repeats", type=_positive, default=None,
                         help="rounds per row in each pass (default 2, quick 5); the median "
                              "over all passes' samples is reported")
    p_bench.add_argument("--passes", type=_positive, default=None,
                         help="passes over the whole suite (default 5, quick 1): a row's "
                              "samples then come from moments minutes apart")
    p_bench.add_argument("--no-peers", action="store_true", help="skip PyTorch and JAX")
    p_bench.add_argument("--backend", action="append", choices=["cython", "numba", "numpy"],
                         help="only these fastxent backends (repeatable)")
    args = parser.parse_args(argv)
    if args.command == "info":
        _print_info(args.json)
        return 0
    if args.command == "bench":
        from . import _bench

        reps = args.repeats or (5 if args.quick else 2)
        passes = args.passes or (1 if args.quick else 5)
        data = _bench.run_all(args.quick, reps, progress=_bench.progress_bar,
                              backends=args.backend, peers=not args.no_peers,
                              passes=passes)
        paths = _bench.write_report(data, args.out)
        with open(paths["md"]) as f:
            print(f.read())
        print("wrote " + ", ".join(paths.values()))
        return 0
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
