"""Noise schedule, the noise-prediction loss and a DDIM sampler with classifier-free guidance.

Written out here because diffusers' DDPMPipeline refuses class labels; the same code
serves the class-conditional UNet2DModel and a Stable Diffusion UNet2DConditionModel
(through the ``eps`` callable, which hides how the condition enters the network).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

Eps = Callable[[torch.Tensor, torch.Tensor, object], torch.Tensor]  # (x_t, t, cond) -> predicted noise


def alphas_cumprod(schedule: str, timesteps: int) -> torch.Tensor:
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=timesteps, beta_schedule=schedule).alphas_cumprod.float().clone()


def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    a = abar.to(x0.device)[t].view(-1, *([1] * (x0.dim() - 1)))
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def draw_noise(x0: torch.Tensor, abar: torch.Tensor, generator: torch.Generator):
    """(t, noise) for a batch, drawn on the CPU from ``generator`` (device-independent streams)."""
    t = torch.randint(0, len(abar), (len(x0),), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    return t.to(x0.device), noise.to(x0.device)


def noise_loss(eps: Eps, x0: torch.Tensor, cond, abar: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The denoising objective: MSE between the predicted and the true noise at a random t."""
    t, noise = draw_noise(x0, abar, generator)
    return F.mse_loss(eps(q_sample(x0, t, noise, abar), t, cond), noise)


def ddim_timesteps(train_timesteps: int, steps: int) -> list[int]:
    ts = torch.linspace(train_timesteps - 1, 0, steps).round().long().tolist()
    return list(dict.fromkeys(ts))  # unique, descending


@torch.no_grad()
def ddim_sample(
    eps: Eps,
    noise: torch.Tensor,
    cond,
    null_cond,
    abar: torch.Tensor,
    steps: int,
    guidance_scale: float,
    clip: float | None = 1.0,
    stop_after: int | None = None,
) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) from ``noise``; guidance eps_u + w (eps_c - eps_u).

    ``cond`` / ``null_cond`` are batched conditions (tensors with the batch first); both
    branches run in one forward. ``clip`` bounds the predicted x0 (pixel space: 1.0;
    latents: None). Returns x0; with ``stop_after=k`` (< the number of timesteps), the sample
    after the first k steps instead, at noise level ``ddim_timesteps(len(abar), steps)[k]``.
    """
    x = noise
    abar = abar.to(noise.device)
    ts = ddim_timesteps(len(abar), steps)
    guided = guidance_scale != 1.0
    for i, t in enumerate(ts[:stop_after]):
        tt = torch.full((len(x),), t, device=x.device, dtype=torch.long)
        if guided:
            both = eps(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([cond, null_cond]))
            e_c, e_u = both.chunk(2)
            e = e_u + guidance_scale * (e_c - e_u)
        else:
            e = eps(x, tt, cond)
        a = abar[t]
        a_prev = abar[ts[i + 1]] if i + 1 < len(ts) else torch.ones((), device=x.device)
        x0 = (x - (1 - a).sqrt() * e) / a.sqrt()
        if clip is not None:
            x0 = x0.clamp(-clip, clip)
            e = (x - a.sqrt() * x0) / (1 - a).sqrt()  # keep eps consistent with the clipped x0
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * e
    return x
