"""``run_sweep``: references once (Ray tasks, ``sweep/work.py``), then Ray Tune with OptunaSearch (multi-objective) over the
trainable, the results callback writing Parquet, and the summary (layout: ``sweep/paths.py``)."""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

from orchestrator.errors import UserError
from orchestrator.storage import atomic_write_json
from orchestrator.sweep import tracking
from orchestrator.sweep.callback import ResultsCallback
from orchestrator.sweep.paths import SweepPaths
from orchestrator.sweep.spec import Resources, SweepSpec
from orchestrator.sweep.store import SweepStore, write_text
from orchestrator.sweep.racing import SweepSearch, racing_scheduler
from orchestrator.sweep.summary import code_version, finalize
from orchestrator.sweep.trainable import TrialContext, trainable, trial_resources
from orchestrator.stats import summarize
from orchestrator.sweep import dashboard
from orchestrator.sweep.references import reference_warnings
from orchestrator.sweep.work import build_references, ensure_ray


def run_sweep(spec: SweepSpec, *, storage: str | Path | SweepStore, trials: int | None = None,
              name: str | None = None, address: str | None = None, tracking_uri: str | None = None,
              resume: bool = False, progress: bool = True, spec_text: str | None = None,
              resource_wait_s: float = 300.0) -> dict:
    from mlflow.tracking import MlflowClient

    spec = spec.model_copy(update={k: v for k, v in (("trials", trials), ("name", name)) if v is not None})
    store = storage if isinstance(storage, SweepStore) else SweepStore(storage)
    paths = SweepPaths(store.root, spec.name)
    _check_new_or_resumable(spec, store, resume)
    if not address:
        _check_fits_here(spec)
    ensure_ray(address, runtime_env(spec))
    if address:
        _wait_for_a_fitting_node(spec, address, resource_wait_s)
    if resume:
        store.pull_results(spec.name)
    elif spec_text is not None:
        write_text(store, paths.rel(paths.spec_yaml), spec_text)
    atomic_write_json(paths.spec_resolved, spec.model_dump())
    store.push(paths.rel(paths.spec_resolved))

    tracking_uri = tracking_uri or tracking.default_tracking_uri(store.root)
    if store.remote and tracking_uri.startswith("sqlite:"):
        print(f"note: MLflow store {tracking_uri} is on this machine only; on a cluster pass --tracking-uri "
              "of a tracking server", file=sys.stderr)
    client = MlflowClient(tracking_uri)
    experiment_id = tracking.ensure_experiment(client, spec.name, store.root, tracking_uri)
    parent_run_id = tracking.find_or_create_parent(client, experiment_id, spec.name)
    dashboard.mark_experiment(client, experiment_id)
    dashboard.publish_view(client, experiment_id, spec, parent_run_id)
    if resume:  # trials that were running when the driver died restart: drop their partial runs
        for run in tracking.child_runs(client, experiment_id, parent_run_id):
            if run.info.status == "RUNNING":
                client.delete_run(run.info.run_id)
    t0 = time.perf_counter()
    refs, built = build_references(spec, store.location, progress)
    references_s = time.perf_counter() - t0
    for warning in reference_warnings(spec, refs):  # before the trials: the user may stop and fix it
        print(f"warning: {warning}", file=sys.stderr)
    if not resume:
        _log_parent(client, parent_run_id, paths, spec, spec_text, refs)
    _log_reference_work(client, parent_run_id, built)

    t0 = time.perf_counter()
    for sub in spec.per_method():  # a comparison: one experiment per method, same budget and seeds
        ctx = TrialContext(sub.model_dump(), spec.name, store.location, tracking_uri, experiment_id, parent_run_id)
        tune_dir = paths.tune(sub.method if spec.methods else None)
        restore = resume and store.exists(paths.rel(tune_dir))
        _tuner(sub, store, paths, tune_dir, ctx, restore, progress, tracking_uri).fit()
    timing = {"references_s": references_s, "trials_s": time.perf_counter() - t0}
    summary = finalize(spec, paths, refs, tracking_uri, parent_run_id, timing, built)
    store.push_folder_files(paths.rel(paths.root))
    return summary


def _check_new_or_resumable(spec: SweepSpec, store: SweepStore, resume: bool) -> None:
    started = store.started(spec.name)
    if started and not resume:
        raise UserError(f"sweep {spec.name!r} already exists in {store.uri(spec.name)}; use --resume or another --name")
    if resume and not started:
        raise UserError(f"--resume: no sweep {spec.name!r} in {store.uri(spec.name)} to resume")


def _check_fits_here(spec: SweepSpec) -> None:
    """A local Ray never grows: a trial asking for more than this machine has would wait forever."""
    import torch

    cpus, gpus = len(os.sched_getaffinity(0)), torch.cuda.device_count()
    n = spec.parallel_seeds  # a trial's bundles may lie on several nodes of a cluster, but here on this one
    whole = ("parallel_seeds", f"a trial of {n} seeds at once", Resources(cpu=spec.resources.cpu * n,
                                                                           gpu=spec.resources.gpu * n))
    for key, what, want in [*_requests(spec), whole]:
        if want.gpu > gpus or want.cpu > cpus:
            raise UserError(f"{key}: {what} asks for cpu {want.cpu:g}, gpu {want.gpu:g}; this machine has {cpus} "
                            f"CPUs and {gpus} GPUs (lower {key}, or pass --address of a cluster that has them)")


def _requests(spec: SweepSpec):
    """(YAML key, what, resources) of each kind of Ray task a sweep starts."""
    yield "resources", "a trial", spec.resources
    yield ("reference_resources" if spec.reference_resources else "resources"), "a reference", spec.reference_request


def runtime_env(spec: SweepSpec) -> dict | None:
    """The user's model code reaches every node through Ray's runtime environment."""
    code_dir = getattr(spec, "code_dir", None)  # a run field of the tasks that take the user's model code
    return {"working_dir": code_dir} if code_dir else None


def _wait_for_a_fitting_node(spec: SweepSpec, address: str, wait_s: float) -> None:
    """A trial no node can hold would wait forever: give an autoscaler ``wait_s`` to add such
    a node, then refuse in one line."""
    import ray

    deadline = time.monotonic() + wait_s
    for key, what, want in _requests(spec):
        while True:
            nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
            if any(n.get("CPU", 0) >= want.cpu and n.get("GPU", 0) >= want.gpu for n in nodes):
                break
            if time.monotonic() >= deadline:
                largest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), default={})
                raise UserError(f"{key}: {what} asks for cpu {want.cpu:g}, gpu {want.gpu:g}; no node of the cluster "
                                f"at {address} has that after {wait_s:g} s (largest: cpu {largest.get('CPU', 0):g}, "
                                f"gpu {largest.get('GPU', 0):g}); lower {key}, add such a node, or raise "
                                "--resource-wait")
            time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))


def _log_parent(client, run_id: str, paths: SweepPaths, spec: SweepSpec, spec_text: str | None,
                refs: dict[int, dict]) -> None:
    from mlflow.entities import Param

    space = spec.model_dump(include={"methods"}) if spec.methods else spec.model_dump()["search"]
    params = {"space": json.dumps(space)[:6000],
              "objectives": json.dumps([o.model_dump() for o in spec.objectives]),
              "trials": spec.trials, "seeds": ",".join(map(str, spec.seeds)), "code_version": code_version()}
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    client.log_dict(run_id, spec.model_dump(), paths.spec_resolved.name)
    if spec_text is not None:
        client.log_text(run_id, spec_text, paths.spec_yaml.name)
    # One figure per reference metric (its mean over seeds, and the 95% half-width), not a line over seeds.
    roles = {role for r in refs.values() for role in r}
    for role in sorted(roles):
        for k in next(r[role] for r in refs.values() if role in r):
            s = summarize(r[role][k] for r in refs.values() if role in r)
            client.log_metric(run_id, f"{role}.{k}", s.mean)
            if math.isfinite(s.ci95):
                client.log_metric(run_id, f"{role}.{k}_ci95", s.ci95)


def _log_reference_work(client, run_id: str, built: list[dict]) -> None:
    """Where each reference was built (or found): node, process, seconds, as parent-run tags."""
    for r in built:
        prefix = f"reference.seed{r['seed']}.{r['role']}"
        for key in ("node_id", "node_ip", "pid", "seconds", "built"):
            client.set_tag(run_id, f"{prefix}.{key}", str(r[key]))


def _tuner(spec: SweepSpec, store: SweepStore, paths: SweepPaths, tune_dir: Path, ctx: TrialContext,
           resume: bool, progress: bool, tracking_uri: str):
    """A new Tuner, or the interrupted one restored from the store (a bucket: on any machine)."""
    from optuna.samplers import TPESampler
    from ray import tune

    run = tune.with_resources(tune.with_parameters(trainable, ctx=ctx), trial_resources(spec))
    if resume:
        return tune.Tuner.restore(store.uri(paths.rel(tune_dir)), run, resume_errored=False,
                                  restart_errored=True)
    first = spec.first_points()
    searcher = SweepSearch(
        metric=[o.metric for o in spec.objectives],
        mode=[o.direction for o in spec.objectives],
        points_to_evaluate=first or None,
        sampler=TPESampler(seed=spec.sampler_seed, n_startup_trials=min(6, spec.trials), multivariate=True),
    )
    return tune.Tuner(
        run,
        param_space={k: d.tune_domain() for k, d in spec.search.items()},
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=racing_scheduler(spec), num_samples=spec.trials,
                                    max_concurrent_trials=spec.max_concurrent, reuse_actors=True),
        run_config=tune.RunConfig(name=tune_dir.name, storage_path=store.uri(paths.rel(paths.root)),
                                  failure_config=tune.FailureConfig(max_failures=2),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                  callbacks=[ResultsCallback(spec, store, paths.rel(paths.results), tracking_uri)],
                                  verbose=1 if progress else 0),
    )
