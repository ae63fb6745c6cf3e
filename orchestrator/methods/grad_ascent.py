"""GA: gradient ascent on the forget set (maximise its cross-entropy).

Defaults: 5 epochs at lr 1e-4 (SGD, momentum 0.9, weight decay 5e-4), the GA baseline of the
Unlearn-Sparse (Jia et al., NeurIPS 2023) and Scissorhands reference scripts; their searched
range is lr 1e-6-1e-3.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from orchestrator.methods import Method, MethodResult
from orchestrator.methods.shared import SGDKnobs, fine_tune


@dataclass(frozen=True)
class GradAscentConfig(SGDKnobs):
    epochs: int = 5
    lr: float = 1e-4


class GradAscent(Method):
    name = "grad_ascent"
    task = "classification"
    config_class = GradAscentConfig

    def run(self, model, data, cfg, generator, *, on_epoch=None, backend=None) -> MethodResult:
        cfg.validate()
        start = time.perf_counter()
        history = fine_tune(model, data.x_forget, data.y_forget, cfg, generator, natural=data.dataset.natural_images,
                            on="forget", sign=-1.0, on_epoch=on_epoch, where="gradient ascent")
        return MethodResult(model, time.perf_counter() - start, history)


METHOD = GradAscent()
