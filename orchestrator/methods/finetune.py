"""FT: fine-tune on the retain set only, so the model forgets D_f by catastrophic forgetting.

Defaults: 10 epochs at lr 0.01 (SGD, momentum 0.9, weight decay 5e-4), the FT baseline of the
Unlearn-Sparse (Jia et al., NeurIPS 2023) and Scissorhands reference scripts; their searched
range is lr 0.01-0.1.
"""
from __future__ import annotations

from dataclasses import dataclass

from orchestrator.methods.shared import OneSetFineTuning, SGDKnobs


@dataclass(frozen=True)
class FinetuneConfig(SGDKnobs):
    epochs: int = 10
    lr: float = 0.01


class Finetune(OneSetFineTuning):
    name = "finetune"
    config_class = FinetuneConfig


METHOD = Finetune()
