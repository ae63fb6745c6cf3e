"""Class erasure data for the diffusion method: images and class labels of a class-conditional UNet2DModel."""
from __future__ import annotations

import torch
from torch import nn

from orchestrator.training import cycle, shuffled


def drop_labels(y: torch.Tensor, p_uncond: float, null_label: int, generator: torch.Generator) -> torch.Tensor:
    """Classifier-free guidance training: each label becomes the null label with probability p_uncond."""
    if p_uncond <= 0:
        return y
    drop = (torch.rand(len(y), generator=generator) < p_uncond).to(y.device)
    return torch.where(drop, torch.full_like(y, null_label), y)


class ClassTask:
    """Class erasure on a class-conditional UNet2DModel; images are floats in [-1, 1] on the UNet's device."""

    def __init__(
        self,
        x_forget: torch.Tensor,
        forget_class: int,
        x_retain: torch.Tensor,
        y_retain: torch.Tensor,
        num_classes: int,
        abar: torch.Tensor,
        p_uncond: float,
        anchor_class: int | None,
    ):
        self.x_forget, self.forget_class = x_forget, forget_class
        self.x_retain, self.y_retain = x_retain, y_retain
        self.null_label = num_classes
        self.abar = abar.to(x_forget.device)
        self.p_uncond = p_uncond
        self.anchor_class = anchor_class
        self.retained = torch.unique(y_retain.cpu())

    def eps(self, unet: nn.Module, x_t, t, cond):
        return unet(x_t, t, class_labels=cond).sample

    def forget_batches(self, batch_size, generator):
        dev = self.x_forget.device

        def epoch():
            for idx in shuffled(len(self.x_forget), batch_size, generator):
                yield self.x_forget[idx.to(dev)], torch.full((len(idx),), self.forget_class, device=dev)

        return cycle(epoch)

    def retain_batches(self, batch_size, generator):
        dev = self.x_retain.device

        def epoch():
            for idx in shuffled(len(self.x_retain), batch_size, generator):
                idx = idx.to(dev)
                yield self.x_retain[idx], drop_labels(self.y_retain[idx], self.p_uncond, self.null_label, generator)

        return cycle(epoch)

    def anchor_cond(self, forget_cond, generator):
        if self.anchor_class is not None:
            return torch.full_like(forget_cond, self.anchor_class)
        pick = torch.randint(0, len(self.retained), (len(forget_cond),), generator=generator)
        return self.retained[pick].to(forget_cond.device)
