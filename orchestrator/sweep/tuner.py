"""``run_sweep``: references once, then Ray Tune with OptunaSearch (multi-objective) over the
trainable, the results callback writing Parquet, and the summary (layout: ``sweep/paths.py``)."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from orchestrator.errors import UserError
from orchestrator.storage import atomic_write_json
from orchestrator.sweep import tracking
from orchestrator.sweep.callback import ResultsCallback
from orchestrator.sweep.paths import SweepPaths
from orchestrator.sweep.spec import SweepSpec
from orchestrator.sweep.summary import build_references, code_version, finalize
from orchestrator.sweep.trainable import TrialContext, trainable


def run_sweep(spec: SweepSpec, *, storage: Path, trials: int | None = None, name: str | None = None,
              address: str | None = None, tracking_uri: str | None = None, resume: bool = False,
              progress: bool = True, spec_text: str | None = None) -> dict:
    from mlflow.tracking import MlflowClient

    spec = spec.model_copy(update={k: v for k, v in (("trials", trials), ("name", name)) if v is not None})
    storage = Path(storage).resolve()
    paths = SweepPaths(storage / spec.name)
    _check_new_or_resumable(spec, paths, resume)
    if not address:
        _check_fits_here(spec)
    paths.root.mkdir(parents=True, exist_ok=True)
    if spec_text is not None and not resume:
        (paths.root / "spec.yaml").write_text(spec_text)
    atomic_write_json(paths.root / "spec.resolved.json", spec.model_dump())

    tracking_uri = tracking_uri or tracking.default_tracking_uri(storage)
    client = MlflowClient(tracking_uri)
    experiment_id = tracking.ensure_experiment(client, spec.name, storage, tracking_uri)
    parent_run_id = tracking.find_or_create_parent(client, experiment_id, spec.name)
    if resume:  # trials that were running when the driver died restart: drop their partial runs
        for run in tracking.child_runs(client, experiment_id, parent_run_id):
            if run.info.status == "RUNNING":
                client.delete_run(run.info.run_id)
    t0 = time.perf_counter()
    refs = build_references(spec, paths.references, progress)
    references_s = time.perf_counter() - t0
    if not resume:
        _log_parent(client, parent_run_id, spec, spec_text, refs)

    t0 = time.perf_counter()
    for sub in spec.per_method():  # a comparison: one experiment per method, same budget and seeds
        ctx = TrialContext(sub.model_dump(), spec.name, str(paths.references), tracking_uri, experiment_id,
                           parent_run_id)
        tune_dir = paths.tune_dir(sub.method if spec.methods else None)
        _tuner(sub, paths, tune_dir, ctx, address, resume and tune_dir.exists(), progress).fit()
    timing = {"references_s": references_s, "trials_s": time.perf_counter() - t0}
    return finalize(spec, paths, refs, tracking_uri, parent_run_id, timing)


def _check_new_or_resumable(spec: SweepSpec, paths: SweepPaths, resume: bool) -> None:
    started = paths.started()
    if started and not resume:
        raise UserError(f"sweep {spec.name!r} already exists in {paths.root}; use --resume or another --name")
    if resume and not started:
        raise UserError(f"--resume: no sweep {spec.name!r} in {paths.root} to resume")


def _check_fits_here(spec: SweepSpec) -> None:
    """A local Ray never grows: a trial asking for more than this machine has would wait forever."""
    import torch

    cpus, gpus = len(os.sched_getaffinity(0)), torch.cuda.device_count()
    want = spec.resources
    if want.gpu > gpus or want.cpu > cpus:
        raise UserError(f"resources: a trial asks for cpu {want.cpu:g}, gpu {want.gpu:g}; this machine has "
                        f"{cpus} CPUs and {gpus} GPUs (lower resources, or pass --address of a cluster that has them)")


def _log_parent(client, run_id: str, spec: SweepSpec, spec_text: str | None, refs: dict[int, dict]) -> None:
    from mlflow.entities import Param

    space = spec.model_dump(include={"methods"}) if spec.methods else spec.model_dump()["search"]
    params = {"space": json.dumps(space)[:6000],
              "objectives": json.dumps([o.model_dump() for o in spec.objectives]),
              "trials": spec.trials, "seeds": ",".join(map(str, spec.seeds)), "code_version": code_version()}
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    client.log_dict(run_id, spec.model_dump(), "spec.resolved.json")
    if spec_text is not None:
        client.log_text(run_id, spec_text, "spec.yaml")
    for seed, r in refs.items():
        for role, metrics in r.items():
            for k, v in metrics.items():
                client.log_metric(run_id, f"{role}.{k}", v, step=seed)


def _tuner(spec: SweepSpec, paths: SweepPaths, tune_dir: Path, ctx: TrialContext, address: str | None,
           resume: bool, progress: bool):
    """A new Tuner, or the interrupted one restored from ``tune_dir``."""
    import ray
    from optuna.samplers import TPESampler
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not ray.is_initialized():
        # The user's model code reaches every node through the runtime environment.
        runtime_env = {"working_dir": spec.code_dir} if spec.code_dir else None
        if address:
            ray.init(address=address, log_to_driver=False, runtime_env=runtime_env)
        else:
            ray.init(include_dashboard=False, log_to_driver=False, runtime_env=runtime_env)
    run = tune.with_resources(tune.with_parameters(trainable, ctx=ctx),
                              {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})
    if resume:
        return tune.Tuner.restore(str(tune_dir), run, resume_errored=False, restart_errored=True)
    default = spec.default_point()
    searcher = OptunaSearch(
        metric=[o.metric for o in spec.objectives],
        mode=[o.direction for o in spec.objectives],
        points_to_evaluate=[default] if default else None,
        sampler=TPESampler(seed=spec.sampler_seed, n_startup_trials=min(6, spec.trials), multivariate=True),
    )
    return tune.Tuner(
        run,
        param_space={k: d.tune_domain() for k, d in spec.search.items()},
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=spec.trials,
                                    max_concurrent_trials=spec.max_concurrent, reuse_actors=True),
        run_config=tune.RunConfig(name=tune_dir.name, storage_path=str(paths.root),
                                  failure_config=tune.FailureConfig(max_failures=2),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                  callbacks=[ResultsCallback(spec, paths.results)], verbose=1 if progress else 0),
    )
