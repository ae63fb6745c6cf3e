"""One configuration on one seed, flattened into metrics: sweep trials (search seeds) and
`pick` (held-out seeds) both run it through the spec's task."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from orchestrator.sweep.spec import SweepSpec
from orchestrator.tasks import SeedRun


def run_seed(spec: SweepSpec, searched: dict, seed: int, cache_dir: Path, *, build: bool,
             on_epoch: Callable[[dict], None] | None = None, artifact_dir: Path | None = None,
             progress: bool = False) -> SeedRun:
    """``build=False`` (sweep trials): references must already exist; ``build=True`` (pick's
    held-out seeds): they are trained and cached on first use."""
    return spec.task_contract.run_seed(spec.run_config(searched, seed), cache_dir, build=build, on_epoch=on_epoch,
                                       artifact_dir=artifact_dir, progress=progress)
