"""The trial function: one unlearning run of any task, evaluated against its references.

``scissorhands unlearn`` calls it in-process; every sweep trial runs the same task code.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.tasks import TrialResult, get_task


def run_unlearning(cfg: Any, cache_dir: Path | None = None, **options) -> TrialResult:
    """Run ``cfg`` (a :class:`~orchestrator.config.RunConfig`, a
    :class:`~orchestrator.diffusion.config.DiffusionRunConfig`, ...) with its task; ``options``
    are the task's ``run`` options (``progress``, ``on_epoch``, ``artifact_dir``, ...)."""
    from orchestrator.cache import default_cache_dir

    return get_task(cfg.TASK).run(cfg, Path(cache_dir) if cache_dir else default_cache_dir(), **options)
