"""Pareto front, ranks and hypervolume against brute force; plots write valid PNGs."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from orchestrator.sweep.pareto import front_order, hypervolume, pareto_mask, pareto_ranks
from orchestrator.sweep.plots import as_objective, figures, frontier_chart, off_window, plot_frontier, view_window
from orchestrator.sweep.spec import ObjectiveSpec

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _dominates(a: np.ndarray, b: np.ndarray, dirs: list[str]) -> bool:
    """a dominates b, written out directly in the original directions."""
    better_eq = all((x <= y) if d == "min" else (x >= y) for x, y, d in zip(a, b, dirs))
    strictly = any((x < y) if d == "min" else (x > y) for x, y, d in zip(a, b, dirs))
    return better_eq and strictly


@st.composite
def problems(draw: st.DrawFn, max_m: int = 3, max_n: int = 25, hi: int = 4):
    """Small integer grids (ties and duplicates are common), mixed directions, some NaN rows."""
    m = draw(st.integers(1, max_m))
    n = draw(st.integers(0, max_n))
    vals = draw(arrays(np.float64, (n, m), elements=st.integers(0, hi).map(float)))
    nan_rows = draw(arrays(np.bool_, n, elements=st.integers(0, 4).map(lambda x: x == 0)))
    vals[nan_rows, draw(st.integers(0, m - 1))] = np.nan
    dirs = draw(st.lists(st.sampled_from(["min", "max"]), min_size=m, max_size=m))
    return vals, dirs


@settings(max_examples=150, deadline=None)
@given(problems())
def test_pareto_mask_matches_brute_force(problem: tuple[np.ndarray, list[str]]) -> None:
    vals, dirs = problem
    finite = [i for i in range(len(vals)) if not np.isnan(vals[i]).any()]
    expected = np.zeros(len(vals), dtype=bool)
    for i in finite:
        expected[i] = not any(_dominates(vals[j], vals[i], dirs) for j in finite)
    np.testing.assert_array_equal(pareto_mask(vals, dirs), expected)


@settings(max_examples=100, deadline=None)
@given(problems())
def test_pareto_ranks_are_consistent(problem: tuple[np.ndarray, list[str]]) -> None:
    vals, dirs = problem
    ranks = pareto_ranks(vals, dirs)
    nan = np.isnan(vals).any(axis=1)
    assert (ranks[nan] == -1).all() and (ranks[~nan] >= 0).all()
    np.testing.assert_array_equal(ranks == 0, pareto_mask(vals, dirs))
    for r in range(1, ranks.max() + 1 if len(ranks) else 0):
        prev, cur = vals[ranks == r - 1], vals[ranks == r]
        assert len(cur) > 0  # fronts are contiguous
        for p in cur:
            assert any(_dominates(q, p, dirs) for q in prev)
    for r in set(ranks[~nan].tolist()):
        same = vals[ranks == r]
        for a, b in itertools.permutations(same, 2):
            assert not _dominates(a, b, dirs)


def _hv_cell_count(vals: np.ndarray, dirs: list[str], ref: np.ndarray) -> float:
    """Count unit cells of the integer grid that lie between some point and the reference."""
    vals = vals[~np.isnan(vals).any(axis=1)]
    lo = np.vstack([vals, ref]).min(axis=0).astype(int)
    hi = np.vstack([vals, ref]).max(axis=0).astype(int)
    axes = [np.arange(a, b) for a, b in zip(lo, hi)]
    cells = np.array(list(itertools.product(*axes)), dtype=float).reshape(-1, len(dirs))
    covered = np.zeros(len(cells), dtype=bool)
    for p in vals:
        if not all((x < r) if d == "min" else (x > r) for x, r, d in zip(p, ref, dirs)):
            continue  # not strictly better than the reference: contributes nothing
        inside = np.ones(len(cells), dtype=bool)
        for k, d in enumerate(dirs):
            c = cells[:, k]  # cell [c, c+1]
            inside &= (p[k] <= c) & (c + 1 <= ref[k]) if d == "min" else (ref[k] <= c) & (c + 1 <= p[k])
        covered |= inside
    return float(covered.sum())


@settings(max_examples=120, deadline=None)
@given(problems(max_m=4, max_n=12, hi=5), st.data())
def test_hypervolume_matches_cell_count(problem: tuple[np.ndarray, list[str]], data: st.DataObject) -> None:
    vals, dirs = problem
    # Reference point: mostly beyond the worst value, sometimes inside the cloud.
    ref = np.array([data.draw(st.integers(3, 6)) if d == "min" else data.draw(st.integers(-1, 2)) for d in dirs],
                   dtype=float)
    assert hypervolume(vals, dirs, ref) == pytest.approx(_hv_cell_count(vals, dirs, ref))


def test_hypervolume_known_values() -> None:
    pts = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])
    assert hypervolume(pts, ["min", "min"], [4, 4]) == pytest.approx(6.0)
    # Same points as (min, max) with the second axis mirrored.
    assert hypervolume(pts * [1, -1], ["min", "max"], [4, -4]) == pytest.approx(6.0)
    assert hypervolume(pts, ["min", "min"], [1, 1]) == 0.0  # nothing strictly better
    cube = np.array([[0.5, 0.5, 0.5]])
    assert hypervolume(cube, ["min"] * 3, [1, 1, 1]) == pytest.approx(0.125)


def test_objective_validates_direction() -> None:
    assert as_objective(("UA", "max")).direction == "max"
    assert as_objective(ObjectiveSpec(metric="UA", direction="min")).direction == "min"
    with pytest.raises(ValueError, match=r"'min' or 'max'.*'maximise'"):
        as_objective(("UA", "maximise"))


def test_front_order_is_the_staircase_best_first() -> None:
    pts = np.array([[3.0, 1.0], [1.0, 3.0], [2.0, 2.0], [2.5, 2.5], [np.nan, 0.0]])
    np.testing.assert_array_equal(front_order(pts, ["min", "min"]), [1, 2, 0])
    np.testing.assert_array_equal(front_order(pts, ["max", "min"]), [0])  # (3, 1) dominates every other
    assert front_order(np.empty((0, 2)), ["min", "min"]).tolist() == []


def _trials(n: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "trial_id": [f"t{i:03d}" for i in range(n)],
        "config.trim_ratio": rng.uniform(0.01, 0.3, n),
        "avg_gap": rng.uniform(0, 10, n),
        "rte": rng.uniform(1, 100, n),
        "ta": rng.uniform(80, 95, n),
        "status": ["TERMINATED"] * (n - 3) + ["ERROR"] * 3,
    })
    df.loc[n - 1, "avg_gap"] = -100.0  # failed trial with a would-be-best value must not appear
    df.loc[0, "rte"] = np.nan
    return df


@pytest.mark.parametrize("markers", [None, {"original": {"avg_gap": 8.0, "rte": 0.0, "ta": 94.0},
                                            "retrain": {"avg_gap": 0.0, "rte": 200.0, "ta": 93.5}}])
@pytest.mark.parametrize("objectives", [
    [ObjectiveSpec(metric="avg_gap", direction="min"), ObjectiveSpec(metric="rte", direction="min")],
    [("avg_gap", "min"), ("rte", "min"), ("ta", "max")],
])
def test_plot_frontier_writes_png(tmp_path, objectives, markers) -> None:
    out = tmp_path / "plots" / "frontier.png"
    written = plot_frontier(_trials(), objectives, out, markers=markers, path_html=tmp_path / "f.html")
    assert written[0] == out
    data = out.read_bytes()
    assert len(data) > 1000 and data.startswith(PNG_SIGNATURE)
    assert written == [out, tmp_path / "f.html"]
    leftovers = [p.name for p in out.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_plot_frontier_rejects_unknown_metric(tmp_path) -> None:
    with pytest.raises(KeyError, match="nope"):
        plot_frontier(_trials(), [("avg_gap", "min"), ("nope", "max")], tmp_path / "x.png")


def test_failed_and_pruned_trials_are_left_out_of_the_plot() -> None:
    from orchestrator.sweep.plots import valid_trials

    df = pd.DataFrame({"trial_id": ["a", "b", "c", "d"], "forget_gap": [0.1, 1e6, 0.3, 5.0],
                       "retain_gap": [0.2, 1e6, 0.1, 5.0], "status": ["ok", "pruned", "ok", "failed"]})
    kept = valid_trials(df, ["forget_gap", "retain_gap"])
    assert kept["trial_id"].tolist() == ["a", "c"]


def test_view_window_pads_the_anchors_and_has_a_minimum_span() -> None:
    np.testing.assert_allclose(view_window([[0, 0], [10, 5], [np.nan, 99]]), [[-0.8, 10.8], [-0.4, 5.4]])
    # Flat along x: span 5% of |x| = 0.1; all zero along y: span 1. Both padded 8% per side.
    np.testing.assert_allclose(view_window([[2, 0], [2, 0]]), [[2 - 0.058, 2 + 0.058], [-0.58, 0.58]])
    assert view_window(np.empty((0, 2))) is None
    assert view_window([[np.nan, 1.0]]) is None
    w = np.array([[0.0, 1.0], [0.0, 1.0]])
    pts = np.array([[0.5, 0.5], [1.0, 0.0], [1.01, 0.5], [0.5, -0.01]])
    np.testing.assert_array_equal(off_window(pts, w), [False, False, True, True])
    assert not off_window(pts, None).any()


def _noisy_trials() -> tuple[pd.DataFrame, dict[str, dict[str, float]]]:
    """Seed means with CI half-widths; t0-t2 are the front, t4 is one far outlier, t3 is tied."""
    df = pd.DataFrame({
        "trial_id": ["t0", "t1", "t2", "t3", "t4", "t5"],
        "avg_gap": [1.0, 2.0, 4.0, 2.2, 900.0, 3.0],
        "rte": [30.0, 20.0, 10.0, 21.0, 25.0, 40.0],
        "avg_gap_ci95": [0.2, 0.3, np.nan, 0.5, 1.0, 0.1],
        "rte_ci95": [2.0, 1.0, 1.5, 3.0, 2.0, 1.0],
        "tied": [False, True, False, True, False, None],  # t1's flag is stale: front membership wins
    })
    markers = {"original": {"avg_gap": 6.0, "rte": 5.0, "avg_gap_ci95": 0.4, "rte_ci95": 1.0},
               "retrain": {"avg_gap": 0.0, "rte": 50.0, "rte_ci95": 4.0}}
    return df, markers


def test_png_zooms_on_front_and_references_and_clips_the_outlier() -> None:
    from matplotlib.collections import PathCollection

    df, markers = _noisy_trials()
    png, html = figures(frontier_chart(df, [("avg_gap", "min"), ("rte", "min")], markers))
    ax = png.axes[0]
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    # Original (6, 5 ± 1), retrain (0, 50 ± 4) and the front (1..4, 10..30) are inside ...
    assert x0 < 0.0 and x1 > 6.0 and y0 < 4.0 and y1 > 54.0
    # ... and the window is that region plus a margin, not stretched to the outlier at 900.
    assert x1 < 7.0 and y0 > 0.0 and y1 < 60.0
    assert ax.get_title(loc="right") == "1 trials outside the view"
    # The outlier is drawn once, on the right border at its own height, pointing outward.
    clipped = np.vstack([c.get_offsets() for c in ax.collections if isinstance(c, PathCollection)])
    np.testing.assert_allclose(clipped, [[x1, 25.0]])
    # The HTML opens on the same window but keeps every trial.
    assert tuple(html.layout.xaxis.range) == pytest.approx((x0, x1))
    assert tuple(html.layout.yaxis.range) == pytest.approx((y0, y1))
    by_name = {t.name: t for t in html.data if t.name}
    assert sorted(np.concatenate([by_name[n].x for n in ("trials", "tied with frontier (within noise)",
                                                         "Pareto front")])) == sorted(df["avg_gap"])
    assert list(by_name["tied with frontier (within noise)"].x) == [2.2]
    assert list(by_name["Pareto front"].x) == [1.0, 2.0, 4.0]
    np.testing.assert_array_equal(by_name["Pareto front"].error_x.array, [0.2, 0.3, np.nan])
    assert list(by_name["retrain"].error_y.array) == [4.0] and by_name["retrain"].error_x.array is None
    assert "avg_gap=2.2 ± 0.5" in by_name["tied with frontier (within noise)"].text[0]
    labels = [t.get_text() for t in png.legends[0].get_texts()]
    assert labels == ["trials", "tied with frontier (within noise)", "Pareto front", "original", "retrain"]


def test_every_pair_panel_gets_its_own_window() -> None:
    df, markers = _noisy_trials()
    df["ta"] = [90.0, 91.0, 92.0, 89.0, 50.0, 10.0]  # t4, t5 far below the front in ta
    png, html = figures(frontier_chart(df, [("avg_gap", "min"), ("rte", "min"), ("ta", "max")], markers))
    titles = [ax.get_title(loc="right") for ax in png.axes if ax.get_visible()]
    # avg_gap-rte: t4; avg_gap-ta and rte-ta: t4 and t5 (ta), the references have no ta.
    assert titles == ["1 trials outside the view"] + ["2 trials outside the view"] * 2
    assert png.axes[1].get_ylim()[0] > 80.0 and png.axes[2].get_xlim()[1] < 35.0
    assert html.layout.xaxis2.range is not None and html.layout.yaxis3.range is not None


def test_html_carries_error_bars_only_when_known(tmp_path) -> None:
    df, markers = _noisy_trials()
    objs = [("avg_gap", "min"), ("rte", "min")]
    png, html = plot_frontier(df, objs, tmp_path / "a.png", markers=markers)
    assert html == tmp_path / "a.html"
    assert '"error_y":{"array"' in html.read_text()
    bare = df.drop(columns=["avg_gap_ci95", "rte_ci95", "tied"])
    png, html = plot_frontier(bare, objs, tmp_path / "b.png", path_html=tmp_path / "b.html")
    assert png.read_bytes().startswith(PNG_SIGNATURE)
    assert '"error_y":{"array"' not in html.read_text()
