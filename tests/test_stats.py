"""Seed statistics, paired comparisons with doing nothing, and ties with the frontier."""
import math

import numpy as np
import pytest

from orchestrator.stats import aggregate, paired_improvement, summarize
from orchestrator.sweep.results import ResultsTable
from orchestrator.sweep.spec import parse_spec
from orchestrator.sweep.callback import refresh_pareto


def test_summary_is_the_t_interval_over_seeds():
    s = summarize([1.0, 2.0, 3.0])
    assert (s.mean, s.std, s.n) == (2.0, 1.0, 3)
    assert s.se == pytest.approx(1 / math.sqrt(3))
    assert s.ci95 == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)  # t(0.975, 2) = 4.3027
    assert (s.ci95_low, s.ci95_high) == pytest.approx((2 - s.ci95, 2 + s.ci95))


def test_one_seed_or_undefined_values_give_no_interval():
    one = summarize([0.7])
    assert one.mean == 0.7 and one.n == 1 and math.isnan(one.ci95_low)
    assert summarize([1.0, float("nan"), 3.0]).n == 2  # an undefined metric is left out, not zero
    assert summarize([]).n == 0 and math.isnan(summarize([]).mean)


def test_improvement_counts_only_when_the_interval_excludes_zero():
    s, better = paired_improvement([5.0, 5.1, 4.9, 5.0], [1.0, 1.2, 0.9, 1.1])
    assert better and s.mean == pytest.approx(3.95) and s.ci95_low > 3
    # Mean improvement positive, but the seeds disagree: not an improvement.
    s, better = paired_improvement([1.0, 0.6, 0.9], [0.5, 0.9, 0.8])
    assert s.mean > 0 and not better
    s, better = paired_improvement([1.0], [0.1])  # one seed proves nothing
    assert not better


def test_aggregate_columns_for_every_metric_and_the_paired_comparison():
    per_seed = [{"avg_gap": 1.0, "avg_gap_original": 3.0, "UA": 10.0},
                {"avg_gap": 2.0, "avg_gap_original": 3.5, "UA": 12.0},
                {"avg_gap": 1.5, "avg_gap_original": 3.2, "UA": 11.0}]
    out = aggregate(per_seed, paired=("avg_gap", "avg_gap_original"))
    for m in ("avg_gap", "avg_gap_original", "UA"):
        assert {m, f"{m}_std", f"{m}_se", f"{m}_n", f"{m}_ci95"} <= set(out) and out[f"{m}_n"] == 3
    assert out["UA"] == 11.0 and out["UA_std"] == 1.0
    assert out["improvement"] == pytest.approx(np.mean([2.0, 1.5, 1.7]))
    assert out["improves_on_original"] is (out["improvement_ci95_low"] > 0) is True


def test_trials_whose_intervals_overlap_a_frontier_member_are_tied(tmp_path):
    spec = parse_spec({
        "name": "t", "forget": "class:3", "trials": 4,
        "search": {"lr": {"type": "uniform", "low": 0.001, "high": 0.01}},
        "objectives": [{"metric": "gap_UA", "direction": "min"}, {"metric": "RA", "direction": "max"}]})
    rows = [  # (id, gap_UA, ci, RA, ci)
        ("front", 1.0, 0.5, 99.0, 0.2),
        ("close", 1.3, 0.5, 98.9, 0.2),   # dominated, but within noise of "front" in both objectives
        ("far", 5.0, 0.5, 95.0, 0.2),     # dominated and clearly worse
        ("noisy", 1.2, math.nan, 98.0, math.nan),  # dominated; no interval, RA too far off
    ]
    table = ResultsTable(tmp_path / "r.parquet")
    table.upsert([{"trial_id": t, "status": "ok", "gap_UA": g, "gap_UA_ci95": gc, "RA": ra, "RA_ci95": rc}
                  for t, g, gc, ra, rc in rows])
    mask = refresh_pareto(spec, table)
    df = table.read().set_index("trial_id")
    assert mask.tolist() == [True, False, False, False]
    assert df["tied"].to_dict() == {"front": False, "close": True, "far": False, "noisy": False}
