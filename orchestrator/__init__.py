"""scissorhands-sweep: Scissorhands unlearning, sweeps, tracking.

What a user calls from Python, imported on first use (``import orchestrator`` stays cheap)::

    from orchestrator import RunConfig, run_unlearning, get_method
    result = run_unlearning(RunConfig(forget="class:3", knobs=get_method("scissorhands").config(epochs=2)))
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_PUBLIC = {
    "run_unlearning": "orchestrator.trial",
    "TrialResult": "orchestrator.tasks",
    "RunConfig": "orchestrator.tasks.classification.config",
    "TrainRecipe": "orchestrator.training",
    "DiffusionRunConfig": "orchestrator.tasks.class_erasure.config",
    "TextToImageRunConfig": "orchestrator.tasks.text_to_image.config",
    "ScissorhandsConfig": "orchestrator.methods.scissorhands",
    "ScissorhandsDiffusionConfig": "orchestrator.methods.scissorhands_diffusion",
    "Method": "orchestrator.methods",
    "MethodResult": "orchestrator.methods",
    "get_method": "orchestrator.methods",
    "list_methods": "orchestrator.methods",
    "register": "orchestrator.methods",
    "get_task": "orchestrator.tasks",
    "list_tasks": "orchestrator.tasks",
    "load_spec": "orchestrator.sweep.spec",
    "run_sweep": "orchestrator.sweep.tuner",
    "UserError": "orchestrator.errors",
    "DivergenceError": "orchestrator.errors",
}
__all__ = sorted(_PUBLIC)

if TYPE_CHECKING:  # what editors and type checkers resolve; at run time __getattr__ imports on first use
    from orchestrator.tasks.classification.config import RunConfig
    from orchestrator.errors import DivergenceError, UserError
    from orchestrator.methods import Method, MethodResult, get_method, list_methods, register
    from orchestrator.methods.scissorhands import ScissorhandsConfig
    from orchestrator.methods.scissorhands_diffusion import ScissorhandsDiffusionConfig
    from orchestrator.sweep.spec import load_spec
    from orchestrator.sweep.tuner import run_sweep
    from orchestrator.tasks import TrialResult, get_task, list_tasks
    from orchestrator.tasks.class_erasure.config import DiffusionRunConfig
    from orchestrator.tasks.text_to_image.config import TextToImageRunConfig
    from orchestrator.training import TrainRecipe
    from orchestrator.trial import run_unlearning


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
