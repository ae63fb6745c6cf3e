"""SSD: selective synaptic dampening (Foster et al., "Fast Machine Unlearning Without Retraining
Through Selective Synaptic Dampening", AAAI 2024). No training: the diagonal Fisher importance
(mean over batches of squared gradients of the mean cross-entropy, accumulated through
``kernels``) on D_f and on the whole training set D; every entry with imp_f > alpha * imp_D is
multiplied by min(lambda * imp_D / imp_f, 1).

Defaults: alpha (selection weighting) 10, lambda (dampening constant) 1, the paper's values, and
the reference code's importance data (if-loops/selective-synaptic-dampening,
``forget_random_main.py``): eval mode, no augmentation, D_f then D = ConcatDataset(D_r, D_f) in
order, batches of 128. ``importance_data: augmented`` takes them from augmented, shuffled batches
instead (this project's behaviour before it followed the reference; README, "Baselines").
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

import kernels
from orchestrator.errors import need_field, need_positive_ints
from orchestrator.methods import Method
from orchestrator.methods.shared import cross_entropy
from orchestrator.training import batches, to_float

IMPORTANCE_DATA = ("reference", "augmented")


@dataclass(frozen=True)
class SSDConfig:
    alpha: float = 10.0  # selection weighting
    dampening: float = 1.0  # lambda
    batch_size: int = 128
    importance_data: str = "reference"  # reference | augmented

    def validate(self) -> None:
        need_field(self.alpha > 0, self, "alpha", "must be > 0")
        need_field(self.dampening > 0, self, "dampening", "must be > 0")
        need_positive_ints(self, ("batch_size",))
        need_field(self.importance_data in IMPORTANCE_DATA, self, "importance_data",
                   f"allowed {', '.join(IMPORTANCE_DATA)}")


def importance(model, x, y, cfg: SSDConfig, natural: bool, generator: torch.Generator, backend: str | None):
    """Diagonal Fisher: the mean over batches of the squared gradient of the cross-entropy."""
    params = list(model.parameters())
    imp = [torch.zeros_like(p) for p in params]
    n = 0
    augmented = cfg.importance_data == "augmented"
    for xb, yb in batches(x, y, cfg.batch_size, generator, shuffle=augmented):
        if augmented:
            loss, _ = cross_entropy(model, xb, yb, natural, generator)
        else:
            loss = F.cross_entropy(model(to_float(xb)), yb)
        kernels.accumulate_sq_grad_(imp, list(torch.autograd.grad(loss, params)), backend=backend)
        n += 1
    torch._foreach_div_(imp, max(1, n))
    return imp


class SSD(Method):
    name = "ssd"
    tasks = ("classification",)
    config_class = SSDConfig

    def seeded(self, cfg: SSDConfig) -> bool:
        return cfg.importance_data == "augmented"

    def unlearn(self, model, data, cfg, generator, *, on_epoch, backend, shared):
        model.eval()
        natural, ds = data.dataset.natural_images, data.dataset
        # D in the reference's order: the retain set, then the forget set (augmented: the
        # training set as stored, shuffled anyway, as this project did before).
        if cfg.importance_data == "reference":
            x_all, y_all = torch.cat([data.x_retain, data.x_forget]), torch.cat([data.y_retain, data.y_forget])
        else:
            x_all, y_all = ds.x_train, ds.y_train

        def both() -> list[torch.Tensor]:
            return [*importance(model, data.x_forget, data.y_forget, cfg, natural, generator, backend),
                    *importance(model, x_all, y_all, cfg, natural, generator, backend)]

        imps = shared("importance", {"batch_size": cfg.batch_size, "importance_data": cfg.importance_data}, both,
                      model=model, generator=generator)
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
