"""GA: gradient ascent on the forget set (maximise its cross-entropy).

Defaults: 5 epochs at lr 1e-4 (SGD, momentum 0.9, weight decay 5e-4), the GA baseline of the
Unlearn-Sparse (Jia et al., NeurIPS 2023) and Scissorhands reference scripts; their searched
range is lr 1e-6-1e-3.
"""
from __future__ import annotations

from dataclasses import dataclass

from orchestrator.methods.shared import OneSetFineTuning, SGDKnobs


@dataclass(frozen=True)
class GradAscentConfig(SGDKnobs):
    epochs: int = 5
    lr: float = 1e-4


class GradAscent(OneSetFineTuning):
    name = "grad_ascent"
    config_class = GradAscentConfig
    on = "forget"
    sign = -1.0


METHOD = GradAscent()
