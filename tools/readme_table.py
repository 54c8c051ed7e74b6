"""Print the README's benchmark table from one or more report.json files.

    python tools/readme_table.py docs/bench/report.json [second-run/report.json]

With two runs, each cell shows both (run 1 / run 2): the speed issue asks for
every target to hold in two runs. The ratio to memcpy is the report's: the
median over rounds of each round's ratio (fastxent._bench.paired_ratio).
"""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from fastxent._bench import paired_ratio  # noqa: E402

WORK = {
    "ce_loss_grad": "cross_entropy_with_grad",
    "ce_loss": "cross_entropy",
    "log_softmax": "log_softmax",
    "softmax": "softmax",
    "bce_logits_loss_grad": "binary_cross_entropy_with_logits_with_grad",
}
RUNNERS = ("memcpy", "cython", "numba", "numpy", "torch", "jax")


def _fmt(s):
    return "%.3g" % (s * 1e3)


def table(paths):
    runs = [json.load(open(p)) for p in paths]
    keyed = []
    for data in runs:
        d = {}
        for r in data["results"]:
            if r.get("error") or r.get("median_s") is None:
                continue
            d[(r["kernel"], tuple(r["shape"]), r["dtype"], r["runner"])] = r
        keyed.append(d)
    order = []
    for r in runs[0]["results"]:
        k = (r["kernel"], tuple(r["shape"]), r["dtype"])
        if k not in order:
            order.append(k)
    lines = ["| work | shape | dtype | memcpy ms | cython ms (x memcpy) | numba ms (x memcpy) "
             "| numpy ms | torch ms | jax ms |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for k in order:
        cells = []
        for runner in RUNNERS:
            vals = []
            for d in keyed:
                r = d.get(k + (runner,))
                m = d.get(k + ("memcpy",))
                if r is None:
                    vals.append("-")
                elif runner in ("cython", "numba") and m:
                    vals.append("%s (%.2f)" % (_fmt(r["median_s"]), paired_ratio(r, m)))
                else:
                    vals.append(_fmt(r["median_s"]))
            cells.append(" / ".join(vals))
        lines.append("| %s | %s | %s | %s |" % (WORK.get(k[0], k[0]), "x".join(map(str, k[1])),
                                                k[2], " | ".join(cells)))
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(sys.argv[1:]))
