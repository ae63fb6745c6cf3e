"""Scissorhands class / concept erasure for diffusers models (issue 6).

Public entry points (heavy imports stay lazy: ``import orchestrator.diffusion`` is cheap):
- ``DiffusionRunConfig`` (config.py): every knob, ``validate()``, ``to_dict()`` / ``from_dict()``
- ``run_diffusion_unlearning(cfg, cache_dir, progress=..., on_epoch=...)`` (run.py) -> TrialResult
- ``add_diffusion_flags`` / ``diffusion_config_from_args`` / ``format_diffusion_table`` (cli.py)
"""
from orchestrator.diffusion.config import ClassifierRecipe, DiffusionRunConfig, GeneratorRecipe, with_knobs

__all__ = [
    "ClassifierRecipe", "DiffusionRunConfig", "GeneratorRecipe", "with_knobs",
    "run_diffusion_unlearning", "add_diffusion_flags", "diffusion_config_from_args", "format_diffusion_table",
]


def __getattr__(name):
    if name == "run_diffusion_unlearning":
        from orchestrator.diffusion.run import run_diffusion_unlearning

        return run_diffusion_unlearning
    if name in ("add_diffusion_flags", "diffusion_config_from_args", "format_diffusion_table"):
        from orchestrator.diffusion import cli

        return getattr(cli, name)
    raise AttributeError(name)
