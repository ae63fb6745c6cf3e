"""Ray Tune wiring: references once, OptunaSearch multi-objective, MLflow, Parquet, frontier.

Layout of a sweep under ``--storage`` (default ./runs):
    <storage>/mlflow.db                    default MLflow store (sqlite), artifacts in mlartifacts/
    <storage>/<name>/spec.yaml             the search space as given
    <storage>/<name>/references/           original + retrain models (per seed), built once
    <storage>/<name>/tune/                 Ray Tune experiment state (what --resume restores)
    <storage>/<name>/results.parquet       one row per trial
    <storage>/<name>/frontier.png|.html    trials, frontier, original and retrain marked
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from orchestrator.errors import DivergenceError, UserError
from orchestrator.evaluation import CORE_METRICS
from orchestrator.stats import PAIRED_KEYS, STAT_SUFFIXES, aggregate, summarize
from orchestrator.storage import atomic_write_json
from orchestrator.sweep.frontier import hypervolume, pareto_mask, plot_frontier
from orchestrator.sweep.results import ResultsTable
from orchestrator.sweep import tracking
from orchestrator.sweep.seed_runs import run_seed, trial_metrics
from orchestrator.sweep.spec import CLASSIFICATION_METRICS, DIFFUSION_METRICS, SweepSpec
from ray.tune import Callback

METRIC_KEYS = set(CLASSIFICATION_METRICS) | set(DIFFUSION_METRICS) | {"avg_gap_original"}
REPORTED_EXTRA = {"status", "error", "mlflow_run_id", "node_ip", "node_id"}

PENALTY = 1e6  # objective value of a failed (diverged / pruned) trial: the worst the searcher can see


class Pruned(DivergenceError):
    """Early stopping: the repair collapsed below the spec's floor."""


@dataclass(frozen=True)
class SweepPaths:
    root: Path

    @property
    def references(self) -> Path:
        return self.root / "references"

    @property
    def tune(self) -> Path:
        return self.root / "tune"

    @property
    def results(self) -> Path:
        return self.root / "results.parquet"

    @property
    def plot(self) -> Path:
        return self.root / "frontier.png"


@dataclass(frozen=True)
class TrialContext:
    """What every trial needs, pickled once to the workers."""

    spec: dict
    name: str
    cache_dir: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str


# ----------------------------------------------------------------------------- trial
def run_trial(searched: dict, ctx: TrialContext) -> dict:
    """One sweep trial: the same run_unlearning as `scissorhands unlearn`, once per seed."""
    from mlflow.tracking import MlflowClient
    from ray import tune

    from orchestrator.training import set_threads

    set_threads()
    spec = SweepSpec.model_validate(ctx.spec)
    trial_id = tune.get_context().get_trial_id()
    client = MlflowClient(ctx.tracking_uri)
    run_id = tracking.start_child(client, ctx.experiment_id, ctx.parent_run_id, trial_id, ctx.name)
    for key, value in searched.items():
        client.log_param(run_id, key, value)
    client.log_param(run_id, "seeds", ",".join(map(str, spec.seeds)))
    try:
        runs = []
        for seed in spec.seeds:

            def on_epoch(record: dict, seed=seed) -> None:
                for key, value in record.items():
                    if key != "epoch" and isinstance(value, (int, float)):
                        client.log_metric(run_id, f"{key}/seed{seed}", value, step=record["epoch"])
                rule = spec.early_stopping
                value = record.get(rule.metric) if rule else None
                if value is not None and record["epoch"] >= rule.after_epoch and value < rule.min_value:
                    raise Pruned(f"pruned: {rule.metric} {value:.1f} < {rule.min_value} at epoch {record['epoch']}")

            runs.append(run_seed(spec, searched, seed, Path(ctx.cache_dir), build=False, on_epoch=on_epoch,
                                 artifact_dir=Path(ctx.cache_dir) / "trials" / trial_id / str(seed)))
            client.set_tag(run_id, f"forget_digest.seed{seed}", runs[-1].forget_digest)
        # The logged model is the first seed's: its forget set is the one tagged forget_digest.
        client.set_tag(run_id, "forget_digest", runs[0].forget_digest)
        metrics = aggregate([r.metrics for r in runs])
        client.log_batch(run_id, metrics=[_metric(k, v) for k, v in metrics.items()])
        tracking.log_model(client, run_id, runs[0].model)
        for path in (p for r in runs for p in r.artifacts):
            client.log_artifact(run_id, path, "samples")
        client.set_terminated(run_id, "FINISHED")
        return {**metrics, "status": "ok", "error": "", "mlflow_run_id": run_id, **_node()}
    except DivergenceError as exc:  # deterministic: recorded as failed, never retried
        client.set_tag(run_id, "error", str(exc))
        client.set_terminated(run_id, "FAILED")
        penalty = {o.metric: PENALTY if o.direction == "min" else -PENALTY for o in spec.objectives}
        status = "pruned" if isinstance(exc, Pruned) else "failed"
        return {**penalty, "status": status, "error": str(exc), "mlflow_run_id": run_id, **_node()}
    except BaseException as exc:  # anything else may be transient (lost node, OOM): Ray retries it
        client.set_tag(run_id, "error", "".join(traceback.format_exception_only(exc)).strip())
        client.set_terminated(run_id, "FAILED")
        raise


def _node() -> dict[str, str]:
    import ray

    return {"node_ip": ray.util.get_node_ip_address(), "node_id": ray.get_runtime_context().get_node_id()}


def _metric(key: str, value: float):
    from mlflow.entities import Metric

    return Metric(key, float(value), int(time.time() * 1000), 0)


def _trainable(config: dict, ctx: TrialContext) -> None:
    from ray import tune

    result = run_trial(config, ctx)
    # Reporting a (tiny) checkpoint makes Tune snapshot the experiment right away
    # (CheckpointConfig(num_to_keep=1)): a killed driver resumes knowing every finished trial,
    # while the periodic snapshot stays at Tune's cheap default period.
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "result.json").write_text(json.dumps(result))
        tune.report(result, checkpoint=tune.Checkpoint.from_directory(tmp))


# ----------------------------------------------------------------------------- driver side
class ResultsCallback(Callback):
    """Driver-side: upsert each finished trial into Parquet and refresh the Pareto flags.
    Pickled with the experiment, so a resumed sweep keeps writing the same table."""

    def __init__(self, spec: SweepSpec, results_path: Path):
        self.spec, self.results_path = spec, Path(results_path)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._record(trial, trial.last_result or {}, None)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._record(trial, trial.last_result or {}, _error_text(trial))

    def _record(self, trial, result: dict, error: str | None) -> None:
        row = {"trial_id": trial.trial_id, "config": dict(trial.config)}
        # A failed or pruned trial reports PENALTY to the searcher only: its table row has no metrics.
        measured = result.get("status") == "ok"
        for key, value in result.items():
            if key in REPORTED_EXTRA or (measured and (_base_metric(key) in METRIC_KEYS or key in PAIRED_KEYS)):
                row[key] = value
        if error is not None:
            row.update({"status": "error", "error": error})
        table = ResultsTable(self.results_path)
        table.upsert([row])
        refresh_pareto(self.spec, table)


def _base_metric(key: str) -> str:
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
    """Pareto flags on the seed means, and ``tied``: a trial off the frontier whose 95% intervals
    overlap a frontier member's in every objective is not distinguishable from it."""
    df = table.read()
    if df.empty:
        return np.zeros(0, dtype=bool)
    ok = (df["status"] == "ok").to_numpy() if "status" in df else np.zeros(len(df), bool)
    values, half = (_columns(df, [f"{o.metric}{suffix}" for o in spec.objectives]) for suffix in ("", "_ci95"))
    values[~ok] = np.nan
    mask = pareto_mask(values, [o.direction for o in spec.objectives])
    half = np.nan_to_num(half, nan=0.0)
    overlap = np.abs(values[:, None, :] - values[None, mask, :]) <= half[:, None, :] + half[None, mask, :]
    tied = ok & ~mask & overlap.all(axis=2).any(axis=1)
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


def build_references(spec: SweepSpec, cache_dir: Path, progress: bool) -> dict[int, dict]:
    """Original + retrain for every seed, before any trial; returns their metrics per seed."""
    from orchestrator.references import get_references
    from orchestrator.training import set_threads
    from orchestrator.trial import core, prepare

    set_threads()
    out = {}
    for seed in spec.seeds:
        cfg = spec.run_config({}, seed)
        if spec.task == "diffusion":
            from orchestrator.diffusion.run import build_references as build_generators

            build_generators(cfg, cache_dir, progress)
            continue  # generator metrics come with every trial's report
        data = prepare(cfg)
        refs = get_references(cfg, data, cache_dir, progress=progress)
        out[seed] = {"original": core(refs.original.metrics(data)), "retrain": core(refs.retrain.metrics(data))}
    return out


GAP_METRICS = ("avg_gap", "forget_gap", "retain_gap", *(f"gap_{k}" for k in CORE_METRICS))


def reference_point(spec: SweepSpec, markers: dict[str, dict[str, float]], observed: np.ndarray) -> list[float]:
    """Hypervolume reference: each objective as the retrain model scores it; for a gap metric
    (0 for retrain by definition) the original model's gap instead; for a metric the
    references do not have (RTE_s) the worst value observed in the sweep."""
    point = []
    for j, obj in enumerate(spec.objectives):
        role = "original" if obj.metric in GAP_METRICS else "retrain"
        value = markers.get(role, {}).get(obj.metric, math.nan)
        if math.isnan(value):
            value = float(np.nanmax(observed[:, j]) if obj.direction == "min" else np.nanmin(observed[:, j]))
        point.append(value)
    return point


def _markers(refs: dict[int, dict]) -> dict[str, dict[str, float]]:
    """Original and retrain as points in objective space (gap metrics: retrain is 0): the mean
    over seeds, and ``<metric>_ci95`` their seed spread."""
    out = {}
    for role in ("original", "retrain") if refs else ():
        rows = []
        for r in refs.values():
            gap = float(np.mean([abs(r[role][k] - r["retrain"][k]) for k in CORE_METRICS]))
            rows.append(trial_metrics({"unlearned": {**r[role], "RTE_s": math.nan}, "retrain": r["retrain"],
                                       "avg_gap": gap, "avg_gap_original": gap}))
        out[role] = {}
        for key in rows[0]:
            s = summarize(m[key] for m in rows)
            out[role].update({key: s.mean, f"{key}_ci95": s.ci95})
    return out


def finalize(spec: SweepSpec, paths: SweepPaths, refs: dict[int, dict], tracking_uri: str,
             experiment_id: str, parent_run_id: str, timing: dict[str, float]) -> dict:
    """Frontier flags, hypervolume, plot; logged to the parent run and tagged on children."""
    from mlflow.tracking import MlflowClient

    table = ResultsTable(paths.results)
    mask = refresh_pareto(spec, table)
    df = table.read()
    client = MlflowClient(tracking_uri)
    summary = {"trials": int(len(df)), "completed": int((df.get("status") == "ok").sum()) if len(df) else 0,
               "frontier": int(mask.sum()), "timing": timing}
    if len(df) and mask.any():
        cols = [o.metric for o in spec.objectives]
        front = df.loc[mask, cols].to_numpy(dtype=float)
        ok_mask = (df["status"] == "ok").to_numpy()
        markers = _markers(refs)
        ref_point = reference_point(spec, markers, df.loc[ok_mask, cols].to_numpy(dtype=float))
        summary["hypervolume"] = hypervolume(front, [o.direction for o in spec.objectives], ref_point)
        summary["hypervolume_reference_point"] = ref_point
        ok = df[ok_mask]
        plotted = plot_frontier(df, [(o.metric, o.direction) for o in spec.objectives], paths.plot,
                                markers=markers or None)
        summary["plots"] = [str(p) for p in plotted]
        for p in plotted:
            client.log_artifact(parent_run_id, str(p))
        client.log_metric(parent_run_id, "hypervolume", summary["hypervolume"])
        if "avg_gap" in ok:
            client.log_metric(parent_run_id, "best_avg_gap", float(ok["avg_gap"].min()))
    for row, on_front in zip(df.itertuples(), mask):
        run_id = getattr(row, "mlflow_run_id", None)
        if isinstance(run_id, str) and run_id:
            client.set_tag(run_id, "pareto", "true" if on_front else "false")
    client.log_artifact(parent_run_id, str(paths.results))
    atomic_write_json(paths.root / "summary.json", summary)
    client.set_terminated(parent_run_id, "FINISHED")
    return summary


def run_sweep(
    spec: SweepSpec,
    *,
    storage: Path,
    trials: int | None = None,
    name: str | None = None,
    address: str | None = None,
    tracking_uri: str | None = None,
    resume: bool = False,
    progress: bool = True,
    spec_text: str | None = None,
) -> dict:
    import ray
    from mlflow.tracking import MlflowClient
    from optuna.samplers import TPESampler
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    if trials is not None:
        spec = spec.model_copy(update={"trials": trials})
    if name is not None:
        spec = spec.model_copy(update={"name": name})
    storage = Path(storage).resolve() if "://" not in str(storage) else storage
    paths = SweepPaths(Path(storage) / spec.name)
    started = paths.tune.exists()
    if started and not resume:
        raise UserError(f"sweep {spec.name!r} already exists in {paths.root}; use --resume or another --name")
    if resume and not started:
        raise UserError(f"--resume: no sweep {spec.name!r} in {paths.root} to resume")
    paths.root.mkdir(parents=True, exist_ok=True)
    if spec_text is not None and not resume:
        (paths.root / "spec.yaml").write_text(spec_text)
    atomic_write_json(paths.root / "spec.resolved.json", spec.model_dump())

    tracking_uri = tracking_uri or tracking.default_tracking_uri(Path(storage))
    client = MlflowClient(tracking_uri)
    experiment_id = tracking.ensure_experiment(client, spec.name, Path(storage), tracking_uri)
    parent_run_id = tracking.find_or_create_parent(client, experiment_id, spec.name)

    if resume:  # trials that were running when the driver died restart: drop their partial runs
        for run in tracking.child_runs(client, experiment_id, parent_run_id):
            if run.info.status == "RUNNING":
                client.delete_run(run.info.run_id)
    t0 = time.perf_counter()
    refs = build_references(spec, paths.references, progress)
    references_s = time.perf_counter() - t0
    if not resume:
        from mlflow.entities import Param

        params = {"space": json.dumps(spec.model_dump()["search"])[:6000],
                  "objectives": json.dumps([o.model_dump() for o in spec.objectives]),
                  "trials": spec.trials, "seeds": ",".join(map(str, spec.seeds)), "code_version": _code_version()}
        client.log_batch(parent_run_id, params=[Param(k, str(v)) for k, v in params.items()])
        client.log_dict(parent_run_id, spec.model_dump(), "spec.resolved.json")
        if spec_text is not None:
            client.log_text(parent_run_id, spec_text, "spec.yaml")
        for seed, r in refs.items():
            for role, metrics in r.items():
                for k, v in metrics.items():
                    client.log_metric(parent_run_id, f"{role}.{k}", v, step=seed)

    ctx = TrialContext(spec.model_dump(), spec.name, str(paths.references), tracking_uri, experiment_id,
                       parent_run_id)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(include_dashboard=False, log_to_driver=False)
    trainable = tune.with_resources(
        tune.with_parameters(_trainable, ctx=ctx), {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    )
    callbacks = [ResultsCallback(spec, paths.results)]
    failure = tune.FailureConfig(max_failures=2)
    if resume:
        tuner = tune.Tuner.restore(str(paths.tune), trainable, resume_errored=False, restart_errored=True)
    else:
        default = spec.default_point()
        searcher = OptunaSearch(
            metric=[o.metric for o in spec.objectives],
            mode=[o.direction for o in spec.objectives],
            points_to_evaluate=[default] if default else None,
            sampler=TPESampler(seed=spec.sampler_seed, n_startup_trials=min(6, spec.trials), multivariate=True),
        )
        tuner = tune.Tuner(
            trainable,
            param_space={k: d.tune_domain() for k, d in spec.search.items()},
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=spec.trials,
                                        max_concurrent_trials=spec.max_concurrent, reuse_actors=True),
            run_config=tune.RunConfig(name="tune", storage_path=str(paths.root), failure_config=failure,
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                      callbacks=callbacks, verbose=1 if progress else 0),
        )
    t0 = time.perf_counter()
    tuner.fit()
    timing = {"references_s": references_s, "trials_s": time.perf_counter() - t0}
    return finalize(spec, paths, refs, tracking_uri, experiment_id, parent_run_id, timing)


def _code_version() -> str:
    import subprocess

    from orchestrator import __version__

    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__
