"""scissorhands-sweep: Scissorhands unlearning, sweeps, tracking.

What a user calls from Python, imported on first use (``import orchestrator`` stays cheap)::

    from orchestrator import RunConfig, run_unlearning, get_method
    result = run_unlearning(RunConfig(forget="class:3", knobs=get_method("scissorhands").config(epochs=2)))
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "run_unlearning": "orchestrator.trial",
    "TrialResult": "orchestrator.tasks",
    "RunConfig": "orchestrator.config",
    "TrainRecipe": "orchestrator.config",
    "DiffusionRunConfig": "orchestrator.diffusion.config",
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


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
