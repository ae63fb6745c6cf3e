"""The heavy work of sweeps and picks as Ray tasks, spread over the cluster: each (seed, role)
reference, and each held-out seed's validation run. The driver (a head node without GPUs, the
laptop a user types ``pick`` on) submits them and waits; it trains nothing.

Every task finds the shared references folder on its own node (``references_on_this_node``):
the storage folder itself, or the node's mirror of the bucket, verified against the checksum
manifests; what it builds it publishes back. The entries are content-keyed and built under a
lock, so two sweeps (or two picks) that need the same reference build it once.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from orchestrator.errors import DivergenceError, UserError
from orchestrator.sweep.paths import REFERENCES
from orchestrator.sweep.spec import Resources, SweepSpec, parse_spec
from orchestrator.sweep.store import SweepStore


def where() -> dict:
    """The node and process this runs in (recorded with every piece of work)."""
    import ray

    return {"node_id": ray.get_runtime_context().get_node_id(), "node_ip": ray.util.get_node_ip_address(),
            "pid": os.getpid()}


def references_on_this_node(location: str, *, verify_store: bool) -> tuple[SweepStore, Path, tuple[set, set]]:
    """The store, the references folder on this node, and the entries whose stored copy is
    intact and those whose copy failed its checksum (a bucket's: pulled into this node's
    mirror, each checked against its manifest)."""
    store = SweepStore(location)
    pulled = store.pull_references(REFERENCES, verify_store=verify_store)
    return store, store.root / REFERENCES, pulled


def ensure_ray(address: str | None, runtime_env: dict | None = None) -> None:
    """Connect to the cluster at ``address``, or start a local Ray (the same code path: tasks
    scheduled by resources, on whichever node has them)."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False, runtime_env=runtime_env)
    else:
        ray.init(include_dashboard=False, log_to_driver=False, runtime_env=runtime_env)


# ----------------------------------------------------------------------------- the tasks
def _build_reference(spec: dict, seed: int, role: str, location: str) -> dict:
    """One reference of one seed: found in the store, or trained (or loaded from the user's
    weights) here and published."""
    from orchestrator.training import set_threads

    set_threads()
    started = time.perf_counter()
    sweep = parse_spec(spec)
    store, folder, (intact, rejected) = references_on_this_node(location, verify_store=True)
    cached, metrics = sweep.task_contract.build_reference(sweep.run_config({}, seed), role, folder, progress=False)
    store.push_references(REFERENCES, intact)
    return {"seed": seed, "role": role, "entry": cached.path.name, "built": cached.built, "metrics": metrics,
            "corrupt_copy_replaced": cached.path.name in rejected, "seconds": round(time.perf_counter() - started, 3),
            **where()}


def _validation_run(spec: dict, searched: dict, seed: int, location: str, *references: dict) -> dict:
    """One held-out seed of a pick: the trial function on that seed, against the references its
    ``references`` tasks built (Ray starts this task once they are done). A divergence is a
    result (a failure of the pick), not an error."""
    from orchestrator.sweep.seed_runs import run_seed
    from orchestrator.training import set_threads

    set_threads()
    started = time.perf_counter()
    _, folder, _ = references_on_this_node(location, verify_store=False)
    out = {"seed": seed, **where()}
    try:
        out["metrics"] = run_seed(parse_spec(spec), searched, seed, folder, build=False).metrics
    except DivergenceError as exc:
        out["diverged"] = str(exc)
    return {**out, "seconds": round(time.perf_counter() - started, 3)}


def _remote(function, resources: Resources):
    import ray

    # A lost node is retried; an exception of the work itself (bad input) is not.
    return ray.remote(function).options(num_cpus=resources.cpu, num_gpus=resources.gpu, max_retries=2,
                                        retry_exceptions=False)


# ----------------------------------------------------------------------------- the driver's side
def submit_references(spec: SweepSpec, location: str) -> list[tuple[int, str, object]]:
    """(seed, role, ObjectRef) for every (seed, role) of ``spec``'s seeds: one task per distinct
    reference (seeds whose references are trained with the same seed share its task, e.g. the
    bundled text-to-image pipeline's ``pipeline_seed``)."""
    build = _remote(_build_reference, spec.reference_request)
    task, raw = spec.task_contract, spec.model_dump()
    tasks: dict[tuple[int, str], object] = {}
    out = []
    for seed in spec.seeds:
        cfg = spec.run_config({}, seed)
        for role in task.reference_roles(cfg):
            key = (task.reference_seed(cfg), role)
            if key not in tasks:
                tasks[key] = build.remote(raw, seed, role, location)
            out.append((seed, role, tasks[key]))
    return out


def gather_references(submitted: list[tuple[int, str, object]], desc: str, progress: bool) -> dict:
    """:func:`gather` of :func:`submit_references`' tasks, each waited for once: the record of every (seed, role)."""
    first: dict[object, tuple[int, str]] = {}
    for seed, role, ref in submitted:
        first.setdefault(ref, (seed, role))
    records = gather({label: ref for ref, label in first.items()}, describe_reference, desc, progress)
    return {(seed, role): records[first[ref]] for seed, role, ref in submitted}


def distinct_records(records: dict) -> list[dict]:
    """One record per reference task of :func:`gather_references`' result (seeds sharing a task share its record)."""
    return list({id(records[key]): records[key] for key in sorted(records)}.values())


def submit_validation(spec: SweepSpec, searched: dict, seed: int, location: str, references: list) -> object:
    return _remote(_validation_run, spec.resources).remote(spec.model_dump(), searched, seed, location, *references)


def gather(pending: dict, describe, desc: str, progress: bool) -> dict:
    """Wait for every task of ``pending`` (label -> ObjectRef), one line each as it finishes
    (``describe(record)``; also without ``progress``, which shows a bar); the records by label. The first that raised cancels the
    rest and is raised as its own error (a bad input reads as a one-line error)."""
    import ray
    from ray.exceptions import RayTaskError
    from tqdm.auto import tqdm

    labels = {ref: label for label, ref in pending.items()}
    done, waiting = {}, list(pending.values())
    with tqdm(total=len(waiting), desc=desc, unit="task", disable=not progress, leave=False) as bar:
        while waiting:
            ready, waiting = ray.wait(waiting, num_returns=1)
            try:
                record = ray.get(ready[0])
            except RayTaskError as exc:
                for ref in waiting:
                    ray.cancel(ref, force=True)
                cause = exc.cause
                raise (cause if isinstance(cause, (UserError, DivergenceError)) else exc) from None
            done[labels[ready[0]]] = record
            bar.update()
            tqdm.write(describe(record), file=sys.stderr)
    return done


def describe_reference(record: dict) -> str:
    how = f"trained in {record['seconds']:.1f} s" if record["built"] else "found in the store"
    if record["corrupt_copy_replaced"]:
        how = f"the stored copy does not match its checksum (not used); {how}"
    return f"reference {record['role']} seed {record['seed']}: {how} on node {record['node_id'][:8]} ({record['node_ip']})"


def build_references(spec: SweepSpec, location: str, progress: bool) -> tuple[dict[int, dict], list[dict]]:
    """Every reference of every seed, as Ray tasks across the cluster, before any trial; their
    metrics by seed and role, and one record per reference (node, pid, seconds, built or found)."""
    records = gather_references(submit_references(spec, location), "references", progress)
    metrics: dict[int, dict] = {}
    for (seed, role), record in sorted(records.items()):
        if record["metrics"] is not None:
            metrics.setdefault(seed, {})[role] = record["metrics"]
    return metrics, distinct_records(records)
