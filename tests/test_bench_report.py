"""The benchmark report's bookkeeping: paired ratios, round-robin runs, dispatch checks."""

import json
import statistics

import pytest

from fastxent import _bench, _dispatch


def test_paired_ratio_is_the_median_of_per_round_ratios():
    mem = {"median_s": 2.0, "samples_s": [1.0, 2.0, 3.0], "rounds": [0, 1, 2]}
    case = {"median_s": 3.0, "samples_s": [2.0, 5.0, 3.0], "rounds": [0, 1, 2]}
    # rounds: 2/1, 5/2, 3/3 -> median 2 (the ratio of the medians would be 1.5)
    assert _bench.paired_ratio(case, mem) == pytest.approx(2.0)
    # a runner sampled in fewer rounds pairs with those rounds only: 2/1, 3/3
    few = {"median_s": 2.5, "samples_s": [2.0, 3.0], "rounds": [0, 2]}
    assert _bench.paired_ratio(few, mem) == pytest.approx(1.5)


def test_paired_ratio_without_rounds_or_memcpy():
    old_mem = {"median_s": 2.0, "samples_s": [2.0]}
    old = {"median_s": 3.0, "samples_s": [3.0]}
    assert _bench.paired_ratio(old, old_mem) == pytest.approx(1.5)
    assert _bench.paired_ratio(old, {}) is None
    assert _bench.paired_ratio({"median_s": None}, old_mem) is None


def _log_cases(monkeypatch):
    """Events of run_all, in order: ("setup", kernel, runner) as a case is set
    up, ("call", kernel, runner) as it runs, ("sample",) as a sample starts."""
    events = []
    real_cases, real_sample = _bench.cases, _bench.sample

    def logged_cases(**kw):
        out = []
        for c in real_cases(**kw):
            def setup(c=c):
                events.append(("setup", c.kernel, c.runner))
                run = c.setup()

                def logged_run():
                    events.append(("call", c.kernel, c.runner))
                    return run()
                return logged_run
            out.append(_bench.Case(c.kernel, c.shape, c.dtype, c.runner, setup))
        return out

    def logged_sample(run, inner):
        events.append(("sample",))
        return real_sample(run, inner)

    monkeypatch.setattr(_bench, "cases", logged_cases)
    monkeypatch.setattr(_bench, "sample", logged_sample)
    return events


def _setups(events):
    return [e[1:] for e in events if e[0] == "setup"]


def test_run_all_round_robin_and_report(tmp_path, monkeypatch):
    monkeypatch.setattr(_bench, "QUICK_SIZES", [("ce_loss_grad", (8, 10), "float32")])
    data = _bench.run_all(quick=True, repeats=4, peers=False)
    res = {r["runner"]: r for r in data["results"]}
    bes = [b for b, v in _dispatch.backends().items() if v["available"]]
    assert set(res) == {"memcpy", *bes}
    for runner, r in res.items():
        assert r["error"] is None
        want = 3 if runner == "numpy" else 4  # numpy: max(3, repeats // 3) rounds
        assert r["rounds"] == list(range(want))
        assert len(r["samples_s"]) == want and all(s > 0 for s in r["samples_s"])
    paths = _bench.write_report(data, str(tmp_path))
    rows = json.load(open(paths["json"]))["rows"]
    for row in rows:
        r = res[row["runner"]]
        assert row["x_memcpy"] == pytest.approx(_bench.paired_ratio(r, res["memcpy"]))
    assert "round-robin" in open(paths["md"]).read()


def test_run_all_passes_spread_each_rows_samples(tmp_path, monkeypatch):
    # two passes over the suite: every case sampled in both, rounds numbered
    # across them, each round's memcpy there to pair with
    monkeypatch.setattr(_bench, "QUICK_SIZES", [("ce_loss_grad", (8, 10), "float32"),
                                                ("ce_loss", (8, 10), "float32")])
    events = _log_cases(monkeypatch)
    data = _bench.run_all(quick=True, repeats=2, peers=False, passes=2)
    assert (data["passes"], data["repeats"]) == (2, 2)
    bes = [b for b, v in _dispatch.backends().items() if v["available"]]
    res = {(r["kernel"], r["runner"]): r for r in data["results"]}
    assert set(res) == {(k, r) for k in ("ce_loss_grad", "ce_loss") for r in ["memcpy", *bes]}
    for (kernel, runner), r in res.items():
        assert r["error"] is None
        # numpy (slow): the first max(3, 2 * 2 // 3) rounds, counted across passes
        want = [0, 1, 2] if runner == "numpy" else [0, 1, 2, 3]
        assert r["rounds"] == want, (kernel, runner)
        assert len(r["samples_s"]) == len(want)  # the median is over both passes
        assert r["median_s"] == statistics.median(r["samples_s"])
    # each case set up once per pass it is timed in, the suite in order each time
    one_pass = [(k, r) for k in ("ce_loss_grad", "ce_loss") for r in ["memcpy", *bes]]
    assert _setups(events) == one_pass + one_pass
    paths = _bench.write_report(data, str(tmp_path))
    assert "2 passes over the suite" in open(paths["md"]).read()
    # a third pass has no round left for numpy: not set up again
    events.clear()
    data = _bench.run_all(quick=True, repeats=1, peers=False, passes=4)
    res = {(r["kernel"], r["runner"]): r for r in data["results"]}
    for (kernel, runner), r in res.items():
        assert r["rounds"] == ([0, 1, 2] if runner == "numpy" else [0, 1, 2, 3])
    setups = _setups(events)
    assert setups.count(("ce_loss", "numpy")) == 3 and setups.count(("ce_loss", "memcpy")) == 4


def test_run_all_calls_each_case_once_before_the_rounds(monkeypatch):
    # after the whole group is set up, one untimed call of each case in round
    # order, then the timed rounds (the first copy after the group's
    # allocations was 2-3x slower than the next ones at 64 MB and more)
    monkeypatch.setattr(_bench, "QUICK_SIZES", [("ce_loss_grad", (8, 10), "float32")])
    events = _log_cases(monkeypatch)
    data = _bench.run_all(quick=True, repeats=2, peers=False)
    order = [r["runner"] for r in data["results"]]
    assert order[0] == "memcpy"
    first = events.index(("sample",))
    last_setup = max(i for i, e in enumerate(events) if e[0] == "setup")
    warm = events[first - len(order):first]
    assert warm == [("call", "ce_loss_grad", r) for r in order]
    assert first - len(order) > last_setup
    # the sampled calls follow: memcpy's first sample is its next call
    assert events[first + 1] == ("call", "ce_loss_grad", "memcpy")
    assert data["warmup"] == 1


def test_check_dispatch_catches_a_misnamed_case():
    wrong = _bench.Case("ce_loss", (8, 10), "float32", "numpy",
                        _bench._fastxent_setup("ce_loss_grad", (8, 10), "float32", "numpy"))
    with pytest.raises(AssertionError, match="dispatched"):
        _bench.check_dispatch(wrong, wrong.setup())
    right = _bench.Case("ce_loss_grad", (8, 10), "float32", "numpy", wrong.setup)
    _bench.check_dispatch(right, right.setup())


@pytest.mark.parametrize("arg", ["--repeats=0", "--passes=0", "--passes=-2", "--repeats=x"])
def test_bench_cli_refuses_non_positive_counts(arg, capsys):
    from fastxent.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(["bench", "--quick", arg])
    assert e.value.code == 2  # argparse's usage error, before anything runs
    assert arg.split("=")[0] in capsys.readouterr().err
