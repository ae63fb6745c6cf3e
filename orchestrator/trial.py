"""The library entry point: one unlearning run of any task, evaluated against its references.

``run_unlearning`` dispatches a config to its task's ``run``: the same ``Task.run`` that
``scissorhands unlearn`` calls in-process and every sweep trial calls (through ``Task.run_seed``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.tasks import TrialResult, get_task


def run_unlearning(cfg: Any, cache_dir: Path | None = None, **options) -> TrialResult:
    """Run ``cfg`` (a :class:`~orchestrator.config.RunConfig`, a
    :class:`~orchestrator.tasks.class_erasure.config.DiffusionRunConfig`, ...) with its task; ``options``
    are the task's ``run`` options (``progress``, ``on_epoch``, ``artifact_dir``, ...)."""
    from orchestrator.cache import default_cache_dir

    return get_task(cfg.TASK).run(cfg, Path(cache_dir) if cache_dir else default_cache_dir(), **options)
