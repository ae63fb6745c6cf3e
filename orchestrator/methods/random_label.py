"""RL: fine-tune on D_f relabelled at random together with D_r (one shuffled set).

Labels are drawn once per run, uniformly over the classes, as SalUn's RL (Fan et al., ICLR 2024).
Defaults: 10 epochs at lr 0.01 (SGD, momentum 0.9, weight decay 5e-4); SalUn searches RL's lr
in 0.01-0.1.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from orchestrator.forget import UnlearnData
from orchestrator.methods import Method
from orchestrator.methods.shared import SGDKnobs, fine_tune


@dataclass(frozen=True)
class RandomLabelConfig(SGDKnobs):
    epochs: int = 10
    lr: float = 0.01


def relabelled(data: UnlearnData, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """D_f with random labels, then D_r: the one training set of RL (and SalUn)."""
    y_random = torch.randint(0, data.dataset.num_classes, (len(data.y_forget),), generator=generator)
    return torch.cat([data.x_forget, data.x_retain]), torch.cat([y_random, data.y_retain])


class RandomLabel(Method):
    name = "random_label"
    tasks = ("classification",)
    config_class = RandomLabelConfig

    def unlearn(self, model, data, cfg, generator, *, on_epoch, backend, shared):
        x, y = relabelled(data, generator)
        history = fine_tune(model, x, y, cfg, generator, natural=data.dataset.natural_images, on="relabelled",
                            on_epoch=on_epoch, where="random-label fine-tuning")
        return history, {}


METHOD = RandomLabel()
