"""`scissorhands frontier NAME`: the frontier from the sweep's Parquet table alone (no Ray)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from orchestrator.errors import UserError
from orchestrator.sweep.paths import SweepPaths
from orchestrator.sweep.results import ResultsTable

# Beside the task's table metrics and time: the paired comparison with doing nothing, the tie flag.
SHOWN_FLAGS = ("improvement", "improves_on_original", "tied")


def stored_spec(storage: Path, name: str) -> dict:
    """A stored sweep's resolved spec (a mapping)."""
    paths = SweepPaths(storage, name)
    if not paths.spec_resolved.is_file():
        known = SweepPaths.sweeps(storage)
        raise UserError(f"no sweep named {name!r} in {storage}; sweeps there: {', '.join(known) or 'none'}")
    return json.loads(paths.spec_resolved.read_text())


def load_results(storage: Path, name: str) -> tuple[pd.DataFrame, dict]:
    spec = stored_spec(storage, name)
    return ResultsTable(SweepPaths(storage, name).results).read(), spec


def sweep_task(storage: Path, name: str):
    """The task (``orchestrator.tasks.Task``) of a stored sweep."""
    from orchestrator.tasks import get_task

    return get_task(stored_spec(storage, name)["task"])


def shown_metrics(task) -> tuple[str, ...]:
    """The columns a frontier table shows beside the objectives (where the trials have them)."""
    return (*task.table_metrics, task.time_metric, *SHOWN_FLAGS)


def format_frontier(storage: Path, name: str, show_all: bool = False) -> str:
    df, spec = load_results(storage, name)
    if df.empty:
        return f"sweep {name}: no finished trials yet"
    shown = shown_metrics(sweep_task(storage, name))
    objectives = [(o["metric"], o["direction"]) for o in spec["objectives"]]
    knobs = [c for c in df.columns if c.startswith("config.")]  # a comparison: every method's knobs
    rows = df if show_all else df[df.get("pareto", False).fillna(False).astype(bool)]
    metric_cols = list(dict.fromkeys([m for m, _ in objectives] + [m for m in shown if m in df]))
    cols = ["trial_id", *(["method"] if spec.get("methods") else []), "status", *knobs, *metric_cols]
    if show_all and "pareto" in df:
        cols.append("pareto")
    view = rows[[c for c in cols if c in rows]].rename(columns=lambda c: c.removeprefix("config."))
    if objectives[0][0] in view:
        view = view.sort_values(objectives[0][0], ascending=objectives[0][1] == "min")
    header = (f"sweep {name}: {len(df)} trials, {int((df.get('status') == 'ok').sum())} completed, "
              f"{int(df.get('pareto', pd.Series(dtype=bool)).fillna(False).sum())} on the frontier "
              f"(objectives: {', '.join(f'{d} {m}' for m, d in objectives)})")
    with pd.option_context("display.width", 200, "display.max_columns", 40, "display.float_format", "{:.4g}".format):
        return header + "\n" + view.to_string(index=False)
