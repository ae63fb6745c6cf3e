"""Worker side of a sweep: the Ray trainable. One trial = the searched knobs run on every
seed of the spec through the task's trial function (the code ``scissorhands unlearn`` runs),
logged to an MLflow child run; the seed means (and spreads) go back to Tune."""
from __future__ import annotations

import json
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import DivergenceError
from orchestrator.stats import aggregate, headline_pair
from orchestrator.sweep import tracking
from orchestrator.sweep.paths import SweepPaths
from orchestrator.sweep.seed_runs import run_seed
from orchestrator.sweep.spec import parse_spec
from orchestrator.sweep.store import SweepStore

PENALTY = 1e6  # objective value of a failed (diverged / pruned) trial: the worst the searcher can see


class Pruned(DivergenceError):
    """Early stopping: the repair collapsed below the spec's floor."""


@dataclass(frozen=True)
class TrialContext:
    """What every trial needs, pickled once to the workers."""

    spec: dict
    name: str
    cache_dir: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    bucket: str | None = None  # a bucket as --storage: the references come from there


def references_here(ctx: TrialContext) -> Path:
    """The references on this node: the storage folder, or this node's verified mirror of the bucket."""
    if ctx.bucket is None:
        return Path(ctx.cache_dir)
    store = SweepStore(ctx.bucket)
    paths = SweepPaths(store.root, ctx.name)
    store.pull_references(paths.rel(paths.references), verify_store=False)
    return paths.references


def run_trial(searched: dict, ctx: TrialContext) -> dict:
    """One sweep trial: the same trial function as `scissorhands unlearn`, once per seed."""
    from mlflow.tracking import MlflowClient
    from ray import tune

    from orchestrator.training import set_threads

    set_threads()
    spec = parse_spec(ctx.spec)
    trial_id = tune.get_context().get_trial_id()
    client = MlflowClient(ctx.tracking_uri)
    run_id = tracking.start_child(client, ctx.experiment_id, ctx.parent_run_id, trial_id, ctx.name)
    for key, value in searched.items():
        client.log_param(run_id, key, value)
    client.log_param(run_id, "seeds", ",".join(map(str, spec.seeds)))
    client.log_param(run_id, "method", spec.method_contract.name)
    try:
        cache_dir = references_here(ctx)
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

            runs.append(run_seed(spec, searched, seed, cache_dir, build=False, on_epoch=on_epoch,
                                 artifact_dir=SweepPaths.trial_files(cache_dir, trial_id, seed)))
            client.set_tag(run_id, f"forget_digest.seed{seed}", runs[-1].forget_digest)
            # Each seed's own figures beside the means: the logged model is the first seed's,
            # and a mean hides which seed fell short.
            client.log_batch(run_id, metrics=[_metric(f"{k}/seed{seed}", v) for k, v in runs[-1].metrics.items()])
        # The logged model is the first seed's: its forget set is the one tagged forget_digest.
        client.set_tag(run_id, "forget_digest", runs[0].forget_digest)
        metrics = aggregate([r.metrics for r in runs], paired=headline_pair(spec.task_contract))
        client.log_batch(run_id, metrics=[_metric(k, v) for k, v in metrics.items()])
        tracking.log_model(client, run_id, runs[0].model)
        if runs[0].layers:  # the trimmed / projected parameters, named
            client.log_dict(run_id, runs[0].layers, "layers.json")
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


def trainable(config: dict, ctx: TrialContext) -> None:
    """The function Tune runs: one trial, reported with a tiny checkpoint. Reporting a
    checkpoint makes Tune snapshot the experiment right away (CheckpointConfig(num_to_keep=1)):
    a killed driver resumes knowing every finished trial."""
    from ray import tune

    result = run_trial(config, ctx)
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "result.json").write_text(json.dumps(result))
        tune.report(result, checkpoint=tune.Checkpoint.from_directory(tmp))
