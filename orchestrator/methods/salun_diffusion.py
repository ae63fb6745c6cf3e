"""SalUn for Stable Diffusion (Fan et al., "SalUn: Empowering Machine Unlearning via Gradient-based
Weight Saliency", ICLR 2024), as the authors' SD scripts run it (OPTML-Group/Unlearn-Saliency at
a6e89fd, ``SD/train-scripts/generate_mask.py`` and ``random_label.py``).

1. mask (eval mode): G = the sum over ``mask_batches`` forget batches (default: one pass over D_f)
   of the gradient of -MSE(noise, (1 + g) eps(x_t, c_f) - g eps(x_t, "")), g = ``mask_guidance``;
   the mask keeps the ``mask_ratio`` share of all UNet entries with the largest |G| (one global
   threshold, int(mask_ratio * N) entries as the script's rank cut, through ``kernels``).
2. fine-tuning: ``epochs`` passes over D_f, each step a forget and a (cycled) retain batch:
   MSE(eps(x_t_f, c_f), stopgrad eps(x_t_f, c')) + ``alpha`` MSE(eps(x_t_r, c_r), noise_r), c' a
   random retain prompt per sample (``PromptTask.pseudo_cond``; the script maps class k onto the
   fixed class k + 1), Adam, each gradient multiplied by the mask before the step. Adam without
   weight decay never moves an entry whose gradient is always zero, so nothing outside the mask
   moves: no restore as in the classification SalUn (SGD with weight decay) is needed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import kernels
from orchestrator.diffusion.sampling import draw_noise, noise_loss, q_sample
from orchestrator.errors import need_field, need_positive_ints
from orchestrator.methods import Method
from orchestrator.methods.shared import repair_loop
from orchestrator.methods.shared_work import SharedWork


@dataclass(frozen=True)
class SalUnDiffusionConfig:
    """The argparse defaults of the authors' SD scripts (SD v1.4)."""

    mask_ratio: float = 0.5
    mask_guidance: float = 7.5
    mask_batches: int | None = None  # None: one pass over D_f
    epochs: int = 5
    batch_size: int = 8
    lr: float = 1e-5
    alpha: float = 0.1

    HELP = {
        "mask_ratio": "share of all UNet entries the mask lets move: the largest |forget gradient| (SalUn: 0.5)",
        "mask_guidance": "classifier-free guidance g of the prediction whose forget loss scores the entries "
                         "(SalUn: 7.5)",
        "mask_batches": "forget batches summed for the mask (default: one pass over D_f)",
        "epochs": "passes over D_f, one forget and one retain batch per step (SalUn: 5)",
        "batch_size": "forget and retain batch size, of the mask too (SalUn: 8)",
        "lr": "Adam learning rate (SalUn: 1e-5)",
        "alpha": "weight of the retain loss (SalUn: 0.1 in random_label.py, 0.5 in its README's commands)",
    }

    def validate(self) -> None:
        need_positive_ints(self, ("epochs", "batch_size"))
        need_field(self.mask_batches is None or (isinstance(self.mask_batches, int) and self.mask_batches >= 1),
                   self, "mask_batches", "must be an integer >= 1 (or unset: one pass over D_f)")
        need_field(0 < self.mask_ratio <= 1, self, "mask_ratio", "must be in (0, 1]")
        need_field(self.mask_guidance >= 0 and math.isfinite(self.mask_guidance), self, "mask_guidance",
                   "must be >= 0")
        need_field(self.lr > 0 and math.isfinite(self.lr), self, "lr", "must be a positive number")
        need_field(self.alpha >= 0 and math.isfinite(self.alpha), self, "alpha", "must be >= 0")


def forget_gradients(unet, data, cfg: SalUnDiffusionConfig, generator: torch.Generator) -> list[torch.Tensor]:
    """Per parameter, the sum over the mask batches of d/dtheta of -MSE(noise, guided prediction)."""
    params = list(unet.parameters())
    sums = [torch.zeros_like(p) for p in params]
    forget = data.forget_batches(cfg.batch_size, generator)
    g = cfg.mask_guidance
    for _ in range(cfg.mask_batches or -(-len(data.lat_forget) // cfg.batch_size)):
        x0, cond = next(forget)
        t, noise = draw_noise(x0, data.abar, generator)
        x_t = q_sample(x0, t, noise, data.abar)
        guided = ((1 + g) * data.eps(unet, x_t, t, cond)
                  - g * data.eps(unet, x_t, t, data.emb_null.expand(len(x0), -1, -1)))
        grads = torch.autograd.grad(-F.mse_loss(guided, noise), params, allow_unused=True)
        for s, grad in zip(sums, grads):
            if grad is not None:
                s.add_(grad)
    return sums


class SalUnDiffusion(Method):
    name = "salun"
    tasks = ("text_to_image",)
    config_class = SalUnDiffusionConfig

    def unlearn(self, model, data, cfg: SalUnDiffusionConfig, generator: torch.Generator, *, on_epoch, backend,
                shared: SharedWork):
        unet = model.requires_grad_(True)  # a loaded pipeline's UNet may come frozen
        params = list(unet.parameters())
        unet.eval()
        grad_sums = shared("salun_diffusion_gradients",
                           {"batch_size": cfg.batch_size, "mask_batches": cfg.mask_batches,
                            "mask_guidance": cfg.mask_guidance},
                           lambda: forget_gradients(unet, data, cfg, generator), model=unet, generator=generator)
        total = sum(p.numel() for p in params)
        with torch.no_grad():
            threshold = kernels.select_threshold(params, grad_sums, int(cfg.mask_ratio * total), backend=backend,
                                                 score="grad")
            masks = kernels.selection_masks(params, grad_sums, threshold, backend=backend, score="grad")
        del grad_sums

        forget = data.forget_batches(cfg.batch_size, generator)
        retain = data.retain_batches(cfg.batch_size, generator)
        eps = lambda x, t, c: data.eps(unet, x, t, c)  # noqa: E731

        def loss(step: int):
            x0f, cf = next(forget)
            x0r, cr = next(retain)
            t, noise = draw_noise(x0f, data.abar, generator)
            x_t = q_sample(x0f, t, noise, data.abar)
            with torch.no_grad():
                target = eps(x_t, t, data.pseudo_cond(cf, generator))
            loss_f = F.mse_loss(eps(x_t, t, cf), target)
            loss_r = noise_loss(eps, x0r, cr, data.abar, generator)
            return loss_f + cfg.alpha * loss_r, {"loss_forget": loss_f.item(), "loss_retain": loss_r.item()}

        def masked(step: int, batch) -> dict[str, float]:
            for p, m in zip(params, masks):
                if p.grad is not None:
                    p.grad.mul_(m)
            return {}

        steps = -(-len(data.lat_forget) // cfg.batch_size)  # one pass over D_f per epoch
        history = repair_loop(unet, torch.optim.Adam(params, lr=cfg.lr), epochs=cfg.epochs,
                              steps=lambda epoch: range(steps), loss=loss, before_step=masked, on_epoch=on_epoch,
                              where="SalUn fine-tuning", hint=f"lower --lr (now {cfg.lr}) or --alpha (now {cfg.alpha})")
        kept = int(threshold.n_selected)
        return history, {"mask_entries": kept, "mask_ratio": kept / total}


METHOD = SalUnDiffusion()
