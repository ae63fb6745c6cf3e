"""Worker side of a sweep: the Ray trainable. One trial = the searched knobs run on every
seed of the spec through the task's trial function (the code ``scissorhands unlearn`` runs),
logged to an MLflow child run; the seed means (and spreads) go back to Tune."""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from orchestrator.errors import DivergenceError
from orchestrator.stats import aggregate, headline_pair
from orchestrator.sweep import tracking
from orchestrator.sweep.paths import SweepPaths
from orchestrator.sweep.seed_runs import run_seed
from orchestrator.sweep.racing import ERODED, PARTIAL
from orchestrator.sweep.spec import SweepSpec, parse_spec
from orchestrator.sweep.work import references_on_this_node
from orchestrator.tasks import SeedRun


class Pruned(DivergenceError):
    """Early stopping: the repair collapsed below the spec's floor."""


@dataclass(frozen=True)
class TrialContext:
    """What every trial needs, pickled once to the workers."""

    spec: dict
    name: str
    location: str  # --storage: a folder every node sees, or a bucket each node mirrors
    tracking_uri: str
    experiment_id: str
    parent_run_id: str


def run_trial(searched: dict, ctx: TrialContext, report: Callable[[dict], None]) -> None:
    """One sweep trial: the same trial function as `scissorhands unlearn`, on every seed, in
    waves (:func:`seed_waves`): a wave's first seed in this process, the others as child tasks
    in the trial's placement group. After each wave but the last it reports the running seed
    means (``status: partial``), so a scheduler can stop a hopeless configuration; then the
    means over every seed (``ok``; ``eroded`` where the task's guard flags a seed), or ``failed`` / ``pruned`` without objective values (the
    searcher records a failed trial)."""
    from mlflow.tracking import MlflowClient
    from ray import tune

    started = time.perf_counter()
    spec = parse_spec(ctx.spec)
    trial_id = tune.get_context().get_trial_id()
    client = MlflowClient(ctx.tracking_uri)
    run_id = tracking.start_child(client, ctx.experiment_id, ctx.parent_run_id, trial_id, ctx.name)
    for key, value in searched.items():
        client.log_param(run_id, key, value)
    client.log_param(run_id, "seeds", ",".join(map(str, spec.seeds)))
    client.log_param(run_id, "method", spec.method_contract.name)
    paired = headline_pair(spec.task_contract)
    runs: list[SeedRun] = []

    def status(name: str, **extra) -> dict:
        return {"status": name, "seeds_done": len(runs), "seconds": time.perf_counter() - started, "error": "",
                "shared_seconds_saved": sum(r.shared_seconds_saved for r in runs), "mlflow_run_id": run_id,
                **_node(), **extra}

    try:
        for wave in seed_waves(spec):
            runs += _run_wave(wave, searched, ctx, run_id, trial_id)
            if len(runs) < len(spec.seeds):
                report({**aggregate([r.metrics for r in runs], paired=paired), **status(PARTIAL)})
        # The logged model is the first seed's: its forget set is the one tagged forget_digest.
        client.set_tag(run_id, "forget_digest", runs[0].forget_digest)
        metrics = aggregate([r.metrics for r in runs], paired=paired)
        guard = spec.task_contract.guard_metric
        final = ERODED if guard and metrics.get(guard, 0.0) > 0 else "ok"
        client.set_tag(run_id, "eroded", str(final == ERODED).lower())
        client.log_batch(run_id, metrics=[_metric(k, v) for k, v in metrics.items()])
        tracking.log_model(client, run_id, runs[0].model)
        if runs[0].layers:  # the trimmed / projected parameters, named
            client.log_dict(run_id, runs[0].layers, "layers.json")
        client.set_terminated(run_id, "FINISHED")
        report({**metrics, **status(final)})
    except DivergenceError as exc:  # deterministic: recorded as failed, never retried
        client.set_tag(run_id, "error", str(exc))
        client.set_terminated(run_id, "FAILED")
        # NaN objectives: Tune wants the keys; SweepSearch tells the study FAILED, never these values.
        unmeasured = {o.metric: math.nan for o in spec.objectives}
        report({**unmeasured, **status("pruned" if isinstance(exc, Pruned) else "failed", error=str(exc))})
    except SystemExit:  # Tune stopped the trial (racing): not a failure
        client.set_terminated(run_id, "KILLED")
        raise
    except BaseException as exc:  # anything else may be transient (lost node, OOM): Ray retries it
        client.set_tag(run_id, "error", "".join(traceback.format_exception_only(exc)).strip())
        client.set_terminated(run_id, "FAILED")
        raise


def seed_waves(spec: SweepSpec) -> list[list[int]]:
    """The seeds in the order a trial runs them, ``parallel_seeds`` at a time; with racing the
    first seed runs alone, so a hopeless configuration is stopped after one seed."""
    seeds, width = list(spec.seeds), spec.parallel_seeds
    head = seeds[:1] if spec.racing and width > 1 else []
    rest = seeds[len(head):]
    return ([head] if head else []) + [rest[i:i + width] for i in range(0, len(rest), width)]


def trial_resources(spec: SweepSpec):
    """What Tune reserves for a trial: one bundle per seed it runs at once (its own process
    takes the first; a wave's other seeds run as child tasks in the others)."""
    from ray import tune

    bundle = {"CPU": spec.resources.cpu, **({"GPU": spec.resources.gpu} if spec.resources.gpu else {})}
    return tune.PlacementGroupFactory([bundle] * spec.parallel_seeds)


def _run_wave(wave: list[int], searched: dict, ctx: TrialContext, run_id: str, trial_id: str) -> list[SeedRun]:
    import ray
    from ray.exceptions import RayTaskError

    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    spec = parse_spec(ctx.spec)
    child = ray.remote(run_one_seed)
    group = ray.util.get_current_placement_group()  # the trial's; bundle 0 is this process's

    def in_bundle(index: int):
        return child.options(num_cpus=spec.resources.cpu, num_gpus=spec.resources.gpu, max_retries=0,
                             scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=index))

    others = [in_bundle(i).remote(ctx, searched, seed, run_id, trial_id) for i, seed in enumerate(wave[1:], start=1)]
    try:
        first = run_one_seed(ctx, searched, wave[0], run_id, trial_id)
        return [first, *ray.get(others)]
    except RayTaskError as exc:  # a child's divergence is the trial's
        raise (exc.cause if isinstance(exc.cause, DivergenceError) else exc) from None
    finally:
        for ref in others:
            ray.cancel(ref, force=True)


def run_one_seed(ctx: TrialContext, searched: dict, seed: int, run_id: str, trial_id: str) -> SeedRun:
    """One seed of a trial, logged to the trial's MLflow run (epochs, the seed's own figures, its
    sample grids): in the trial's process or in a child task, on whichever node holds its bundle."""
    from mlflow.entities import RunTag
    from mlflow.tracking import MlflowClient

    from orchestrator.training import set_threads

    set_threads()
    spec = parse_spec(ctx.spec)
    client = MlflowClient(ctx.tracking_uri)
    _, cache_dir, _ = references_on_this_node(ctx.location, verify_store=False)

    def on_epoch(record: dict) -> None:
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)):
                client.log_metric(run_id, f"{key}/seed{seed}", value, step=record["epoch"])
        rule = spec.early_stopping
        value = record.get(rule.metric) if rule else None
        if value is not None and record["epoch"] >= rule.after_epoch and value < rule.min_value:
            raise Pruned(f"pruned: {rule.metric} {value:.1f} < {rule.min_value} at epoch {record['epoch']}")

    started = time.time()
    run = run_seed(spec, searched, seed, cache_dir, build=False, on_epoch=on_epoch,
                   artifact_dir=SweepPaths.trial_files(cache_dir, trial_id, seed))
    # Where and when each seed ran: a trial's seeds may run at once, on several nodes.
    where = {"node_id": _node()["node_id"], "pid": os.getpid(), "started": started, "finished": time.time()}
    client.log_batch(run_id, tags=[RunTag(f"seed{seed}.{k}", str(v)) for k, v in where.items()]
                     + [RunTag(k, v) for k, v in run.tags.items()])
    client.set_tag(run_id, f"forget_digest.seed{seed}", run.forget_digest)
    # Each seed's own figures beside the means: the logged model is the first seed's, and a
    # mean hides which seed fell short.
    client.log_batch(run_id, metrics=[_metric(f"{k}/seed{seed}", v) for k, v in run.metrics.items()])
    for path in run.artifacts:
        client.log_artifact(run_id, path, "samples")
    return run


def _node() -> dict[str, str]:
    import ray

    return {"node_ip": ray.util.get_node_ip_address(), "node_id": ray.get_runtime_context().get_node_id()}


def _metric(key: str, value: float):
    from mlflow.entities import Metric

    return Metric(key, float(value), int(time.time() * 1000), 0)


def trainable(config: dict, ctx: TrialContext) -> None:
    """The function Tune runs: one trial. Its final report carries a tiny checkpoint, which
    makes Tune snapshot the experiment right away (CheckpointConfig(num_to_keep=1)): a killed
    driver resumes knowing every finished trial."""
    from ray import tune

    def report(result: dict) -> None:
        if result["status"] == PARTIAL:
            tune.report(result)
            return
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "result.json").write_text(json.dumps(result))
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(tmp))

    run_trial(config, ctx, report)
