"""ESD, Erasing Concepts from Diffusion Models (Gandikota et al., ICCV 2023), as the authors'
diffusers script runs it (rohitgandikota/erasing ``esd_sd.py`` at 25613d2): negative-guidance
fine-tuning of the UNet on its own samples.

Each iteration: a forget prompt c and a step k < ``sample_steps`` are drawn; the frozen original
UNet samples c from fresh noise with guidance ``start_guidance`` (DDIM) for k steps, giving x_t
at t = the k-th DDIM timestep; then, with the frozen UNet's e_c = eps(x_t, c) and
e_0 = eps(x_t, "") (the empty prompt), the trained UNet is pulled towards
e_c - ``negative_guidance`` (e_c - e_0) under c: MSE(eps_theta(x_t, c), that target), Adam,
batch 1. ``esd_x`` trains the cross-attention modules (``attn2`` in the name: the prompt's
effect only), ``esd_u`` every other conv / linear module (the concept unconditionally).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from orchestrator.diffusion.sampling import ddim_sample, ddim_timesteps
from orchestrator.errors import need_field, need_positive_ints
from orchestrator.methods import Method
from orchestrator.methods.shared_work import SharedWork
from orchestrator.training import check_finite

LOG_EVERY = 10  # iterations per history record (ESD has no epochs)


@dataclass(frozen=True)
class ESDConfig:
    """The published defaults of ``esd_sd.py`` (SD v1.4)."""

    iterations: int = 200
    lr: float = 5e-5
    negative_guidance: float = 2.0
    start_guidance: float = 3.0  # of the frozen UNet's sampling of x_t (the CompVis script's name)
    sample_steps: int = 50  # DDIM steps of that sampling (the run's own ddim_steps are for its data and grids)

    HELP = {
        "iterations": "Adam steps, one sample each (ESD: 200)",
        "lr": "Adam learning rate (ESD: 5e-5)",
        "negative_guidance": "eta in the target e_c - eta (e_c - e_0) (ESD: 2)",
        "start_guidance": "classifier-free guidance of the sampling that gives x_t (ESD: 3)",
        "sample_steps": "DDIM steps of that sampling; x_t stops after a random number of them (ESD: 50)",
    }

    def validate(self) -> None:
        need_positive_ints(self, ("iterations", "sample_steps"))
        need_field(self.lr > 0, self, "lr", "must be > 0")
        need_field(self.negative_guidance >= 0, self, "negative_guidance", "must be >= 0")
        need_field(self.start_guidance >= 1, self, "start_guidance", "must be >= 1")


def trained_modules(unet: nn.Module, cross_attention: bool) -> list[str]:
    """The conv / linear modules ESD trains: those with ``attn2`` in the name (esd-x) or the rest (esd-u)."""
    return [name for name, m in unet.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv2d)) and ("attn2" in name) == cross_attention]


class ESD(Method):
    tasks = ("text_to_image",)
    config_class = ESDConfig

    def __init__(self, name: str, cross_attention: bool):
        self.name, self.cross_attention = name, cross_attention

    def _parameters(self, unet: nn.Module) -> dict[str, nn.Parameter]:
        modules = set(trained_modules(unet, self.cross_attention))
        return {name: p for name, p in unet.named_parameters() if name.rpartition(".")[0] in modules}

    def history_length(self, cfg: ESDConfig) -> int:
        return -(-cfg.iterations // LOG_EVERY)

    def layers(self, model: nn.Module, cfg: ESDConfig) -> dict[str, list[str]]:
        return {"train": list(self._parameters(model))}

    def unlearn(self, model: nn.Module, data, cfg: ESDConfig, generator: torch.Generator, *,
                on_epoch: Callable[[dict], None] | None, backend: str | None,
                shared: SharedWork) -> tuple[list[dict], dict]:
        frozen = copy.deepcopy(model).requires_grad_(False).eval()
        params = self._parameters(model)
        model.requires_grad_(False)
        for p in params.values():
            p.requires_grad_(True)
        optimizer = torch.optim.Adam(params.values(), lr=cfg.lr)
        device = data.lat_forget.device
        timesteps = ddim_timesteps(len(data.abar), cfg.sample_steps)
        base = lambda x, t, c: frozen(x, t, encoder_hidden_states=c).sample  # noqa: E731
        history, losses = [], []
        model.train()
        for iteration in range(1, cfg.iterations + 1):
            k = int(torch.randint(len(timesteps), (1,), generator=generator))
            c = data.forget_prompts[int(torch.randint(len(data.forget_prompts), (1,), generator=generator))][None]
            noise = torch.randn((1, *data.lat_forget.shape[1:]), generator=generator).to(device)
            t = torch.full((1,), timesteps[k], device=device, dtype=torch.long)
            with torch.no_grad():
                x_t = ddim_sample(base, noise, c, data.emb_null, data.abar, cfg.sample_steps, cfg.start_guidance,
                                  clip=None, stop_after=k)
                e_c, e_0 = base(x_t, t, c), base(x_t, t, data.emb_null)  # two calls, as the authors
                target = e_c - cfg.negative_guidance * (e_c - e_0)
            loss = F.mse_loss(model(x_t, t, encoder_hidden_states=c).sample, target)
            check_finite(loss, f"at ESD iteration {iteration}", "lower --lr or --negative-guidance")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss))
            if iteration % LOG_EVERY == 0 or iteration == cfg.iterations:
                record = {"epoch": len(history), "loss_esd": sum(losses) / len(losses)}
                history.append(record)
                losses = []
                if on_epoch:
                    on_epoch(record)
        model.requires_grad_(True)
        return history, {"trained_entries": sum(p.numel() for p in params.values())}


ESD_X = ESD("esd_x", cross_attention=True)
ESD_U = ESD("esd_u", cross_attention=False)
