"""A sweep's references: built once for every seed before any trial (into the sweep's
references folder, ``SweepPaths.references``), and their metrics as the plots' markers."""
from __future__ import annotations

from pathlib import Path

from orchestrator.stats import summarize
from orchestrator.sweep.spec import SweepSpec


def build_references(spec: SweepSpec, cache_dir: Path, progress: bool) -> dict[int, dict]:
    """Every reference of every seed, before any trial; their metrics by seed and role."""
    from orchestrator.training import set_threads

    set_threads()
    out = {}
    for seed in spec.seeds:
        metrics = spec.task_contract.build_references(spec.run_config({}, seed), cache_dir, progress)
        if metrics:
            out[seed] = metrics
    return out


def markers(spec: SweepSpec, refs: dict[int, dict]) -> dict[str, dict[str, float]]:
    """Original and retrain (where there is one) as points in objective space (gap metrics:
    retrain is 0): the mean over seeds, and ``<metric>_ci95`` their seed spread."""
    task = spec.task_contract
    out = {}
    for role in next(iter(refs.values())) if refs else ():
        rows = [task.marker(r[role], r.get("retrain")) for r in refs.values()]
        out[role] = {}
        for key in rows[0]:
            s = summarize(m[key] for m in rows)
            out[role].update({key: s.mean, f"{key}_ci95": s.ci95})
    return out
