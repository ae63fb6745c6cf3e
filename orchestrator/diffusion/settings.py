"""Sampling and hardware settings every diffusion task's run config has."""
from __future__ import annotations

import math
from dataclasses import dataclass

from orchestrator.errors import need_field, need_positive_ints
from orchestrator.fields import run_field

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class SamplingSettings:
    """DDIM sampling of the evaluation samples and grids, from fixed noise (``eval_seed``)."""

    guidance_scale: float = run_field(2.0, help="classifier-free guidance scale for sampling (1 = none)")
    ddim_steps: int = run_field(20, help="DDIM sampling steps")
    eval_seed: int = run_field(0, help="seed of the fixed evaluation noise")
    grid_columns: int = run_field(10, help="samples per row of the PNG grids")
    device: str = run_field("auto", help=" | ".join(DEVICES))

    def validate_sampling(self) -> None:
        need_positive_ints(self, ("ddim_steps", "grid_columns"))
        need_field(self.guidance_scale >= 0 and math.isfinite(self.guidance_scale), self, "guidance_scale",
                   "must be >= 0 (1 = no guidance, 0 = unconditional)")
        need_field(self.device in DEVICES, self, "device", f"allowed {', '.join(DEVICES)}")
