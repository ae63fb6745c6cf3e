"""SSD: selective synaptic dampening (Foster et al., "Fast Machine Unlearning Without Retraining
Through Selective Synaptic Dampening", AAAI 2024). No training: the diagonal Fisher importance
(mean over batches of squared gradients, accumulated through ``kernels``) on D_f and on the
whole training set D; every entry with imp_f > alpha * imp_D is multiplied by
min(lambda * imp_D / imp_f, 1).

Defaults: alpha (selection weighting) 10, lambda (dampening constant) 1, the paper's values.
Gradients are taken in eval mode on augmented batches, so BatchNorm statistics do not move.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

import kernels
from orchestrator.errors import need_field, need_positive_ints
from orchestrator.methods import Method
from orchestrator.methods.shared import cross_entropy
from orchestrator.training import batches


@dataclass(frozen=True)
class SSDConfig:
    alpha: float = 10.0  # selection weighting
    dampening: float = 1.0  # lambda
    batch_size: int = 256

    def validate(self) -> None:
        need_field(self.alpha > 0, self, "alpha", "must be > 0")
        need_field(self.dampening > 0, self, "dampening", "must be > 0")
        need_positive_ints(self, ("batch_size",))


def importance(model, x, y, cfg: SSDConfig, natural: bool, generator: torch.Generator, backend: str | None):
    """Diagonal Fisher: the mean over batches of the squared gradient of the cross-entropy."""
    params = list(model.parameters())
    imp = [torch.zeros_like(p) for p in params]
    n = 0
    for xb, yb in batches(x, y, cfg.batch_size, generator):
        loss, _ = cross_entropy(model, xb, yb, natural, generator)
        kernels.accumulate_sq_grad_(imp, list(torch.autograd.grad(loss, params)), backend=backend)
        n += 1
    torch._foreach_div_(imp, max(1, n))
    return imp


class SSD(Method):
    name = "ssd"
    tasks = ("classification",)
    config_class = SSDConfig

    def unlearn(self, model, data, cfg, generator, *, on_epoch, backend, shared):
        model.eval()
        natural, ds = data.dataset.natural_images, data.dataset
        def both() -> list[torch.Tensor]:
            return [*importance(model, data.x_forget, data.y_forget, cfg, natural, generator, backend),
                    *importance(model, ds.x_train, ds.y_train, cfg, natural, generator, backend)]

        imps = shared("importance", {"batch_size": cfg.batch_size}, both, model=model, generator=generator)
        n = len(imps) // 2
        imp_forget, imp_all = imps[:n], imps[n:]
        dampened = 0
        with torch.no_grad():
            for p, f, d in zip(model.parameters(), imp_forget, imp_all):
                selected = f > cfg.alpha * d
                factor = (cfg.dampening * d / f).clamp(max=1.0)
                p[selected] *= factor[selected]
                dampened += int(selected.sum())
        stats = {"dampened": dampened, "n_params": sum(p.numel() for p in model.parameters())}
        return [], stats


METHOD = SSD()
