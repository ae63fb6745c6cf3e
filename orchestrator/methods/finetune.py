"""FT: fine-tune on the retain set only, so the model forgets D_f by catastrophic forgetting.

Defaults: 10 epochs at lr 0.01 (SGD, momentum 0.9, weight decay 5e-4), the FT baseline of the
Unlearn-Sparse (Jia et al., NeurIPS 2023) and Scissorhands reference scripts; their searched
range is lr 0.01-0.1.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from orchestrator.methods import Method, MethodResult
from orchestrator.methods.shared import SGDKnobs, fine_tune


@dataclass(frozen=True)
class FinetuneConfig(SGDKnobs):
    epochs: int = 10
    lr: float = 0.01


class Finetune(Method):
    name = "finetune"
    task = "classification"
    config_class = FinetuneConfig

    def run(self, model, data, cfg, generator, *, on_epoch=None, backend=None) -> MethodResult:
        cfg.validate()
        start = time.perf_counter()
        history = fine_tune(model, data.x_retain, data.y_retain, cfg, generator, natural=data.dataset.natural_images,
                            on_epoch=on_epoch, where="fine-tuning")
        return MethodResult(model, time.perf_counter() - start, history)


METHOD = Finetune()
