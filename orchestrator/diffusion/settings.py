"""Sampling and hardware settings every diffusion task's run config has."""
from __future__ import annotations

import math
from dataclasses import dataclass

from orchestrator.errors import need_field, need_positive_ints

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class SamplingSettings:
    """DDIM sampling of the evaluation samples and grids, from fixed noise (``eval_seed``)."""

    HELP = {
        "guidance_scale": "classifier-free guidance scale for sampling (1 = none)",
        "ddim_steps": "DDIM sampling steps",
        "eval_seed": "seed of the fixed evaluation noise",
        "grid_columns": "samples per row of the PNG grids",
        "device": " | ".join(DEVICES),
    }

    guidance_scale: float = 2.0
    ddim_steps: int = 20
    eval_seed: int = 0
    grid_columns: int = 10
    device: str = "auto"  # auto | cpu | cuda

    def validate_sampling(self) -> None:
        need_positive_ints(self, ("ddim_steps", "grid_columns"))
        need_field(self.guidance_scale >= 0 and math.isfinite(self.guidance_scale), self, "guidance_scale",
                   "must be >= 0 (1 = no guidance, 0 = unconditional)")
        need_field(self.device in DEVICES, self, "device", f"allowed {', '.join(DEVICES)}")
