"""One configuration on one seed: the trial function of `scissorhands unlearn`, flattened into
metrics. Sweep trials (search seeds) and `pick` (held-out seeds) both run it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from orchestrator.evaluation import CORE_METRICS
from orchestrator.sweep.spec import SweepSpec


def trial_metrics(report: dict) -> dict[str, float]:
    """Flat metrics of one seed's run: the contract's values plus gaps to retrain, and the
    untouched original's Avg. Gap on the same seed (for the paired comparison)."""
    u, rt = report["unlearned"], report["retrain"]
    m = {k: float(u[k]) for k in (*CORE_METRICS, "RTE_s")}
    m["avg_gap"] = float(report["avg_gap"])
    m["avg_gap_original"] = float(report["avg_gap_original"])
    for k in CORE_METRICS:
        m[f"gap_{k}"] = abs(u[k] - rt[k])
    m["forget_gap"] = (m["gap_UA"] + m["gap_MIA"]) / 2
    m["retain_gap"] = (m["gap_RA"] + m["gap_TA"]) / 2
    return m


def diffusion_metrics(report: dict) -> dict[str, float]:
    u, rt = report["unlearned"], report["retrain"]
    m = {k: float(u[k]) for k in ("forget_acc", "retained_acc", "fid", "RTE_s")}
    for k in ("forget_acc", "retained_acc", "fid"):
        m[f"gap_{k}"] = abs(u[k] - rt[k])
    return m


@dataclass
class SeedRun:
    metrics: dict[str, float]
    model: object
    forget_digest: str
    artifacts: list[str]


def run_seed(spec: SweepSpec, searched: dict, seed: int, cache_dir: Path, *, build: bool,
             on_epoch: Callable[[dict], None] | None = None, artifact_dir: Path | None = None,
             progress: bool = False) -> SeedRun:
    """``build=False`` (sweep trials): classifier references must already exist; ``build=True``
    (pick's held-out seeds): they are trained and cached on first use. Diffusion references are
    always built on first use."""
    cfg = spec.run_config(searched, seed)
    if spec.task == "diffusion":
        from orchestrator.diffusion.run import run_diffusion_unlearning

        result = run_diffusion_unlearning(cfg, cache_dir, progress=progress, on_epoch=on_epoch,
                                          artifact_dir=artifact_dir)
        return SeedRun(diffusion_metrics(result.report), result.model, cfg.forget,
                       result.extras.get("artifacts", []))
    from orchestrator.references import get_references
    from orchestrator.trial import prepare, run_unlearning

    data = prepare(cfg)
    refs = get_references(cfg, data, cache_dir, progress=progress, build=build)
    result = run_unlearning(cfg, cache_dir, data=data, references=refs, progress=progress, on_epoch=on_epoch)
    return SeedRun(trial_metrics(result.report), result.model, data.forget_digest(), [])
