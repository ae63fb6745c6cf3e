"""RL: fine-tune on D_f relabelled at random together with D_r (one shuffled set).

As SalUn's RL (Fan et al., ICLR 2024; Unlearn-Saliency ``unlearn/RL.py``, its CIFAR-100 branch)
the random labels, uniform over the classes, are drawn again at the start of every epoch;
``relabel: once`` draws them once per run (this project's behaviour before it followed the
reference). Defaults: 10 epochs at lr 0.01 (SGD, momentum 0.9, weight decay 5e-4); SalUn
searches RL's lr in 0.01-0.1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from orchestrator.errors import need_field
from orchestrator.forget import UnlearnData
from orchestrator.methods import Method
from orchestrator.methods.shared import SGDKnobs, fine_tune

RELABEL = ("epoch", "once")


@dataclass(frozen=True)
class RandomLabelConfig(SGDKnobs):
    epochs: int = 10
    lr: float = 0.01
    relabel: str = "epoch"  # epoch | once

    def validate(self) -> None:
        super().validate()
        need_field(self.relabel in RELABEL, self, "relabel", f"allowed {', '.join(RELABEL)}")


def relabelled(data: UnlearnData, relabel: str,
               generator: torch.Generator) -> Callable[[int], tuple[torch.Tensor, torch.Tensor]]:
    """Per epoch: D_f with random labels, then D_r: the one training set of RL (and SalUn)."""
    x = torch.cat([data.x_forget, data.x_retain])
    labels: list[torch.Tensor] = []  # the current draw

    def epoch_data(epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        if relabel == "epoch" or not labels:
            labels[:] = [torch.randint(0, data.dataset.num_classes, (len(data.y_forget),), generator=generator)]
        return x, torch.cat([labels[0], data.y_retain])

    return epoch_data


class RandomLabel(Method):
    name = "random_label"
    tasks = ("classification",)
    config_class = RandomLabelConfig

    def unlearn(self, model, data, cfg, generator, *, on_epoch, backend, shared):
        history = fine_tune(model, relabelled(data, cfg.relabel, generator), cfg, generator,
                            natural=data.dataset.natural_images, on="relabelled", on_epoch=on_epoch,
                            where="random-label fine-tuning")
        return history, {}


METHOD = RandomLabel()
