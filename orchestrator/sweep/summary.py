"""What a sweep knows after its trials: the hypervolume reference point, the plots and the
final summary (``summary.json``); the references it starts from are in ``sweep/references.py``."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np

from orchestrator.storage import atomic_write_json
from orchestrator.sweep.callback import RACED, refresh_pareto
from orchestrator.sweep.racing import ERODED
from orchestrator.sweep.dashboard import log_reference_runs
from orchestrator.sweep.importance import format_importance, plot_importance, sweep_importance
from orchestrator.sweep.pareto import hypervolume, pareto_mask
from orchestrator.sweep.paths import SweepPaths
from orchestrator.sweep.plots import plot_frontier, plot_methods
from orchestrator.sweep.references import markers as reference_markers, reference_warnings
from orchestrator.sweep.results import ResultsTable
from orchestrator.sweep.spec import SweepSpec
from orchestrator.sweep.study import write_study


def reference_point(spec: SweepSpec, markers: dict[str, dict[str, float]], observed: np.ndarray) -> list[float]:
    """Hypervolume reference: each objective as the retrain model scores it; for a gap metric
    (0 for retrain by definition), or without a retrain model, the original model's value
    instead; for a metric the references do not have (the task's time metric) the worst value
    observed."""
    point = []
    for j, obj in enumerate(spec.objectives):
        gap = obj.metric in spec.task_contract.gap_metrics
        role = "original" if gap or "retrain" not in markers else "retrain"
        value = markers.get(role, {}).get(obj.metric, math.nan)
        if math.isnan(value):
            value = float(np.nanmax(observed[:, j]) if obj.direction == "min" else np.nanmin(observed[:, j]))
        point.append(value)
    return point


def finalize(spec: SweepSpec, paths: SweepPaths, refs: dict[int, dict], tracking_uri: str, parent_run_id: str,
             timing: dict[str, float], references: list[dict]) -> dict:
    """Frontier flags, hypervolume, plots (and per method, for a comparison); logged to the
    parent run, with the frontier flag tagged on every child. ``references``: where each was
    built (the Ray tasks' records)."""
    from mlflow.tracking import MlflowClient

    table = ResultsTable(paths.results)
    mask = refresh_pareto(spec, table)
    df = table.read()
    write_study(spec, paths, df)
    client = MlflowClient(tracking_uri)
    summary = {"trials": int(len(df)), "completed": int((df.get("status") == "ok").sum()) if len(df) else 0,
               "frontier": int(mask.sum()), "timing": timing, "references": references}
    if spec.task_contract.guard_metric:  # measured, but flagged by the task's guard: never on the frontier
        summary["eroded"] = sorted(map(str, df.loc[df.get("status") == ERODED, "trial_id"])) if len(df) else []
    summary["warnings"] = reference_warnings(spec, refs)
    if summary["warnings"]:
        client.set_tag(parent_run_id, "warnings", " | ".join(summary["warnings"])[:5000])
    if "shared_seconds_saved" in df:  # scores / saliency / importances found instead of computed
        summary["shared_seconds_saved"] = round(float(df["shared_seconds_saved"].fillna(0).sum()), 1)
    if spec.racing:
        summary["racing"] = racing_savings(df, len(spec.seeds))
        for key, value in summary["racing"].items():
            client.log_metric(parent_run_id, f"racing.{key}", value)
    ok = (df["status"] == "ok").to_numpy() if len(df) else np.zeros(0, dtype=bool)
    points = reference_markers(spec, refs)
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    log_reference_runs(client, experiment_id, parent_run_id, spec.name, points)
    if ok.any():
        cols, directions = [o.metric for o in spec.objectives], [o.direction for o in spec.objectives]
        values = df.loc[ok, cols].to_numpy(dtype=float)
        ref_point = reference_point(spec, points, values)
        summary["hypervolume"] = hypervolume(values[pareto_mask(values, directions)], directions, ref_point)
        summary["hypervolume_reference_point"] = ref_point
        # One objective has no trade-off to draw: its "frontier" is the best trial.
        plottable = len(spec.objectives) >= 2
        plotted = plot_frontier(df, spec.objectives, paths.plot, markers=points or None) if plottable else []
        if spec.methods:
            # One reference point for every method: the worst value any method's trial reached
            # (the original model would give most of them zero volume: nothing dominates it).
            nadir = [float(np.nanmax(values[:, j]) if d == "min" else np.nanmin(values[:, j]))
                     for j, d in enumerate(directions)]
            summary["methods_reference_point"] = nadir
            summary["methods"] = {m: method_summary(df[ok & (df["method"] == m).to_numpy()], spec, nadir)
                                  for m in spec.methods}
            if plottable:
                plotted += plot_methods(df[ok], spec.objectives, paths.methods_plot, markers=points or None)
        summary["plots"] = [str(p) for p in plotted]
        for p in plotted:
            client.log_artifact(parent_run_id, str(p))
        client.log_metric(parent_run_id, "hypervolume", summary["hypervolume"])
        headline = spec.task_contract.headline_metric
        if headline is not None and headline in df:
            client.log_metric(parent_run_id, f"best_{headline}", float(df.loc[ok, headline].min()))
    summary["importance"] = sweep_importance(spec, paths)
    client.log_dict(parent_run_id, summary["importance"], "importance.json")
    client.log_text(parent_run_id, format_importance(summary["importance"]), "importance.txt")
    for p in plot_importance(summary["importance"], paths.importance_plot):
        summary.setdefault("plots", []).append(str(p))
        client.log_artifact(parent_run_id, str(p))
    _drop_orphan_runs(client, parent_run_id, set(df["trial_id"]) if len(df) else set())
    _tag_frontier(client, df, mask, tracking_uri)
    client.log_artifact(parent_run_id, str(paths.results))
    atomic_write_json(paths.summary, summary)
    client.set_terminated(parent_run_id, "FINISHED")
    return summary


def racing_savings(df, seeds: int) -> dict[str, float]:
    """What racing saved: the seed runs the stopped trials left out, and their seconds at the
    mean seconds per seed of the trials that ran every seed."""
    if df.empty or "status" not in df:
        return {"raced_trials": 0, "seed_runs_saved": 0, "seconds_saved": 0.0}
    raced = df[df["status"] == RACED]
    left_out = int((seeds - raced["seeds_done"]).sum()) if len(raced) else 0
    ok = df[df["status"] == "ok"]
    per_seed = float((ok["seconds"] / ok["seeds_done"]).mean()) if len(ok) and "seconds" in ok else math.nan
    return {"raced_trials": int(len(raced)), "seed_runs_saved": left_out,
            "seed_runs_run": int(df["seeds_done"].fillna(0).sum()) if "seeds_done" in df else 0,
            "seconds_saved": round(left_out * per_seed, 1) if left_out else 0.0}


def _tag_frontier(client, df, mask: np.ndarray, tracking_uri: str) -> None:
    """``pareto`` and ``tied`` (``true|false``) on every trial's run. Runs another MLflow store
    holds (a sweep resumed from a bucket on a machine with its own local store) are skipped,
    with a note."""
    from mlflow.exceptions import MlflowException

    elsewhere = 0
    tied = df["tied"].astype("boolean").fillna(False).to_numpy(dtype=bool) if "tied" in df else np.zeros(len(df), bool)
    for row, on_front, close in zip(df.itertuples(), mask, tied):
        run_id = getattr(row, "mlflow_run_id", None)
        if isinstance(run_id, str) and run_id:
            try:
                client.set_tag(run_id, "pareto", "true" if on_front else "false")
                client.set_tag(run_id, "tied", "true" if close and not on_front else "false")
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                elsewhere += 1
    if elsewhere:
        print(f"note: {elsewhere} trial run(s) of this sweep are not in the MLflow store {tracking_uri} (they "
              "logged to another one); use one --tracking-uri for every machine that runs or resumes it",
              file=sys.stderr)


def _drop_orphan_runs(client, parent_run_id: str, recorded: set[str]) -> None:
    """A trial that ran on after its driver died, unknown to the resumed sweep, left a run that
    no table row stands for: one run per recorded trial, and no other."""
    from orchestrator.sweep.tracking import TRIAL_TAG, child_runs

    experiment_id = client.get_run(parent_run_id).info.experiment_id
    for run in child_runs(client, experiment_id, parent_run_id):
        if run.data.tags.get("role") == "trial" and run.data.tags.get(TRIAL_TAG) not in recorded:
            client.delete_run(run.info.run_id)


def method_summary(df, spec: SweepSpec, ref_point: list[float]) -> dict:
    """One method of a comparison: its frontier, its hypervolume against the common reference
    point, and its best trial by the task's headline metric (seed mean, 95% half-width, time)
    where reported."""
    out: dict = {"completed": int(len(df))}
    if df.empty:
        return out
    cols, directions = [o.metric for o in spec.objectives], [o.direction for o in spec.objectives]
    front = pareto_mask(df[cols].to_numpy(dtype=float), directions)
    out["frontier"] = int(front.sum())
    out["hypervolume"] = hypervolume(df[cols].to_numpy(dtype=float)[front], directions, ref_point)
    task = spec.task_contract
    headline, seconds = task.headline_metric, task.time_metric
    if headline is not None and headline in df:
        best = df.loc[df[headline].idxmin()]
        out["best"] = {"trial_id": str(best["trial_id"]), headline: float(best[headline]),
                       f"{headline}_ci95": float(best.get(f"{headline}_ci95", math.nan)),
                       seconds: float(best[seconds])}
    return out


def code_version() -> str:
    from orchestrator import __version__

    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__
