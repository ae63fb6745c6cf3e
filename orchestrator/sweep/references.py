"""A sweep's references as points in objective space (the plots' markers), and what makes them
poor targets (the task's warnings). (They are built by Ray tasks, ``sweep/work.py``.)"""
from __future__ import annotations

from orchestrator.stats import summarize
from orchestrator.sweep.spec import SweepSpec


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


def reference_warnings(spec: SweepSpec, refs: dict[int, dict]) -> list[str]:
    """The task's warnings about each seed's references (core metrics by seed and role)."""
    task = spec.task_contract
    return [w for seed in sorted(refs) for w in task.reference_warnings(spec.run_config({}, seed), refs[seed])]
