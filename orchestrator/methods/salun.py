"""SalUn (Fan et al., "SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency",
ICLR 2024): a saliency mask keeps the ``mask_ratio`` share of entries with the largest
|sum over D_f batches of dL_f/dtheta| (eval mode; one global threshold, through ``kernels``
in gradient-magnitude score mode), then random-label fine-tuning (RL, labels redrawn every
epoch) updates only those.

Defaults: mask_ratio 0.5 and 10 epochs at lr 0.013 (SGD, momentum 0.9, weight decay 5e-4), the
SalUn repository's CIFAR-10 example; SalUn searches lr in 0.01-0.1. Outside the mask nothing
moves: after every step the masked-out entries and their momentum are restored, as the
reference does since its weight-decay fix (Unlearn-Saliency "Fix weight decay (#33)").
``outside_mask: decay`` lets weight decay and momentum move them (the reference before the fix,
and this project before it followed it).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

import kernels
from orchestrator.errors import need_field
from orchestrator.methods import Method
from orchestrator.methods.random_label import RELABEL, relabelled
from orchestrator.methods.shared_work import SharedWork
from orchestrator.methods.shared import SGDKnobs, cross_entropy, fine_tune
from orchestrator.training import batches


OUTSIDE_MASK = ("restore", "decay")


@dataclass(frozen=True)
class SalUnConfig(SGDKnobs):
    epochs: int = 10
    lr: float = 0.013
    mask_ratio: float = 0.5  # share of all entries RL may update
    outside_mask: str = "restore"  # restore | decay
    relabel: str = "epoch"  # epoch | once

    def validate(self) -> None:
        super().validate()
        need_field(0 < self.mask_ratio <= 1, self, "mask_ratio", "must be in (0, 1]")
        need_field(self.outside_mask in OUTSIDE_MASK, self, "outside_mask", f"allowed {', '.join(OUTSIDE_MASK)}")
        need_field(self.relabel in RELABEL, self, "relabel", f"allowed {', '.join(RELABEL)}")


def forget_gradients(model, data, cfg: SalUnConfig, generator: torch.Generator) -> list[torch.Tensor]:
    """sum over D_f batches of dL_f/dtheta, per parameter."""
    params = list(model.parameters())
    grad_sums = [torch.zeros_like(p) for p in params]
    for x, y in batches(data.x_forget, data.y_forget, cfg.batch_size, generator):
        loss, _ = cross_entropy(model, x, y, data.dataset.natural_images, generator)
        torch._foreach_add_(grad_sums, torch.autograd.grad(loss, params))
    return grad_sums


def saliency_masks(model, data, cfg: SalUnConfig, generator: torch.Generator, backend: str | None,
                   shared: SharedWork):
    """Boolean masks (per parameter) of the most salient entries for forgetting."""
    model.eval()
    params = list(model.parameters())
    grad_sums = shared("forget_gradients", {"batch_size": cfg.batch_size},
                       lambda: forget_gradients(model, data, cfg, generator), model=model, generator=generator)
    total = sum(p.numel() for p in params)
    n_select = min(total, max(1, round(cfg.mask_ratio * total)))
    with torch.no_grad():
        threshold = kernels.select_threshold(params, grad_sums, n_select, backend=backend, score="grad")
        return kernels.selection_masks(params, grad_sums, threshold, backend=backend, score="grad")


class SalUn(Method):
    name = "salun"
    tasks = ("classification",)
    config_class = SalUnConfig

    def unlearn(self, model, data, cfg, generator, *, on_epoch, backend, shared):
        masks = saliency_masks(model, data, cfg, generator, backend, shared)
        params = list(model.parameters())

        def masked(step: int, batch) -> dict[str, float]:
            for p, m in zip(params, masks):
                if p.grad is not None:
                    p.grad.mul_(m)
            return {}

        start = [p.detach().clone() for p in params]

        def restore(optimizer: torch.optim.Optimizer) -> None:
            with torch.no_grad():
                for p, m, p0 in zip(params, masks, start):
                    p.copy_(torch.where(m, p, p0))
                    buf = optimizer.state.get(p, {}).get("momentum_buffer")
                    if buf is not None:
                        buf.mul_(m)

        history = fine_tune(model, relabelled(data, cfg.relabel, generator), cfg, generator,
                            natural=data.dataset.natural_images, on="relabelled", before_step=masked,
                            after_step=restore if cfg.outside_mask == "restore" else None,
                            on_epoch=on_epoch, where="SalUn fine-tuning")
        stats = {"masked": int(sum(int(m.sum()) for m in masks)), "n_params": sum(p.numel() for p in params)}
        return history, stats


METHOD = SalUn()
