"""Driver side of a sweep: each finished trial goes into the Parquet table, the Pareto flags are
refreshed and the Optuna study rewritten, as results arrive."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from ray.tune import Callback

from orchestrator.stats import PAIRED_KEYS, STAT_SUFFIXES
from orchestrator.sweep.pareto import pareto_mask
from orchestrator.sweep.racing import ERODED, PARTIAL
from orchestrator.sweep.paths import SweepPaths
from orchestrator.sweep.results import ResultsTable
from orchestrator.sweep.spec import SweepSpec, parse_spec
from orchestrator.sweep.store import SweepStore
from orchestrator.sweep.study import write_study

REPORTED_EXTRA = {"status", "error", "mlflow_run_id", "node_ip", "node_id", "seeds_done", "seconds",
                  "shared_seconds_saved"}
RACED = "raced"  # a trial's status in the table when racing stopped it after some of its seeds


class ResultsCallback(Callback):
    """Upsert each finished trial into Parquet, refresh the Pareto flags and publish the table
    (a bucket gets the whole object). Pickled with the experiment, so a resumed sweep keeps
    writing the same table, on whichever machine resumes it."""

    def __init__(self, spec: SweepSpec, store: SweepStore, rel: str, tracking_uri: str):
        self.spec, self.store, self.rel, self.tracking_uri = spec, store, rel, tracking_uri

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._record(trial, trial.last_result or {}, None)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._record(trial, trial.last_result or {}, _error_text(trial))

    def _record(self, trial, result: dict, error: str | None) -> None:
        task = self.spec.task_contract
        metric_keys = {*task.metrics, *task.baseline_metrics}
        row = {"trial_id": trial.trial_id, "method": self.spec.method_contract.name, "config": dict(trial.config)}
        # A failed or pruned trial has no metrics; a raced one keeps the running means of its
        # first seeds (``seeds_done`` says how many), never compared with complete trials; an
        # eroded one keeps its means, off the frontier (only ``ok`` trials are on it).
        measured = result.get("status") in ("ok", PARTIAL, ERODED)
        for key, value in result.items():
            if key in REPORTED_EXTRA or (measured and (base_metric(key) in metric_keys or key in PAIRED_KEYS)):
                row[key] = value
        if error is not None:
            row.update({"status": "error", "error": error})
        elif result.get("status") == PARTIAL:
            row["status"] = RACED
            self._close_raced_run(result)
        table = ResultsTable(self.store.root / self.rel)
        table.upsert([row])
        refresh_pareto(self.spec, table)
        self.store.push(self.rel)
        paths = SweepPaths(self.store.root, self.spec.name)  # the whole sweep's spec: every method's study
        write_study(parse_spec(json.loads(paths.spec_resolved.read_text())), paths, table.read())
        if paths.study.is_file():  # (a database the user named is not the store's to publish)
            self.store.push(paths.rel(paths.study))


    def _close_raced_run(self, result: dict) -> None:
        """Tune stopped the trial's process mid-run: its MLflow run is closed here."""
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.tracking_uri)
        client.set_tag(result["mlflow_run_id"], "raced_after_seeds", str(result["seeds_done"]))
        client.set_terminated(result["mlflow_run_id"], "KILLED")


def base_metric(key: str) -> str:
    for suffix in STAT_SUFFIXES:
        if key.endswith(suffix):
            return key.removesuffix(suffix)
    return key


def _error_text(trial) -> str:
    path = getattr(trial, "error_file", None)
    if path and os.path.exists(path):
        lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
        return lines[-1][:500] if lines else "error"
    return "error"


def refresh_pareto(spec: SweepSpec, table: ResultsTable) -> np.ndarray:
    """Pareto flags on the seed means, each method against its own trials (a comparison has a
    frontier per method), and ``tied``: a trial off its frontier whose 95% intervals overlap a
    frontier member's in every objective is not distinguishable from it."""
    df = table.read()
    if df.empty:
        return np.zeros(0, dtype=bool)
    ok = (df["status"] == "ok").to_numpy() if "status" in df else np.zeros(len(df), bool)
    values, half = (_columns(df, [f"{o.metric}{suffix}" for o in spec.objectives]) for suffix in ("", "_ci95"))
    values[~ok] = np.nan
    half = np.nan_to_num(half, nan=0.0)
    methods = df["method"].fillna("").to_numpy() if "method" in df else np.full(len(df), "")
    mask, tied = np.zeros(len(df), dtype=bool), np.zeros(len(df), dtype=bool)
    for method in np.unique(methods):
        rows = methods == method
        front = pareto_mask(values[rows], [o.direction for o in spec.objectives])
        v, h = values[rows], half[rows]
        overlap = np.abs(v[:, None, :] - v[None, front, :]) <= h[:, None, :] + h[None, front, :]
        mask[rows] = front
        tied[rows] = ok[rows] & ~front & overlap.all(axis=2).any(axis=1)
    table.set_column("pareto", dict(zip(df["trial_id"], map(bool, mask))))
    table.set_column("tied", dict(zip(df["trial_id"], map(bool, tied))))
    return mask


def _columns(df, names: list[str]) -> np.ndarray:
    """Float matrix of the named columns; a missing column is all NaN."""
    out = np.full((len(df), len(names)), np.nan)
    for j, c in enumerate(names):
        if c in df:
            out[:, j] = df[c].to_numpy(dtype=float)
    return out
