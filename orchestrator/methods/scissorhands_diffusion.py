"""Scissorhands for diffusion models: class / concept erasure (scissorhands.md, "Diffusion variant").

1. score: G = sum over ``score_batches`` forget batches of |dL_f/dtheta|, with L_f the
   noise-prediction MSE on forget samples under the forget condition; s = |theta * G|.
2. trim: one threshold, the top ``trim_ratio`` share of the scores of the whole UNet (as
   the reference's SD code; ``threshold_scope="trimmed"``: of the trimmed modules only),
   re-initialises the conv / linear entries above it in the selected modules only
   (default: self-attention of ``attentions.1`` of two up-blocks).
3. repair with Adam, each step pairing a retain batch with a forget batch drawn from
   freshly shuffled passes over both sets (not the reference's one reused batch):
     anchor: L_r + lambda * L_u, L_u = MSE(eps(x_t, c_forget, t), stopgrad eps(x_t, c_anchor, t))
     ascent: L_r - lambda * L_f
   optionally GEM-projecting the gradient of the trimmed modules against
   r = grad(-L_f) of a frozen copy taken at the start of every epoch.
All scoring / threshold / re-init / projection math goes through ``kernels``.

The method knows nothing of labels or prompts: a :class:`DiffusionTask` supplies data
batches, conditions and the network call, so the class-conditional UNet2DModel and a
Stable Diffusion UNet2DConditionModel share this one implementation.
"""
from __future__ import annotations

import copy
import math
import time
from typing import Callable, Iterator, Protocol

import torch
import torch.nn.functional as F
from torch import nn

import kernels
from orchestrator.diffusion.sampling import draw_noise, noise_loss, q_sample
from orchestrator.diffusion.unet import select_parameters
from orchestrator.methods import MethodResult, register
from orchestrator.methods.scissorhands import init_specs
from orchestrator.training import check_finite


class DiffusionTask(Protocol):
    """What the method needs to know about the data and the conditioning."""

    abar: torch.Tensor  # alphas_cumprod of the training noise schedule

    def eps(self, unet: nn.Module, x_t: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor: ...

    def forget_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, object]]:
        """Endless (x0, forget condition) batches, reshuffled at every pass over D_f."""

    def retain_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, object]]:
        """Endless (x0, condition) batches over D_r (conditions already dropped to null where trained so)."""

    def anchor_cond(self, forget_cond, generator: torch.Generator):
        """The anchor condition that each forget sample is mapped onto."""


def cycle(make_epoch: Callable[[], Iterator]) -> Iterator:
    """Endless batches: a new shuffled pass each time the previous one is exhausted."""
    while True:
        empty = True
        for item in make_epoch():
            empty = False
            yield item
        if empty:
            return


def _forget_grads(unet, task: DiffusionTask, batch, params, generator) -> list[torch.Tensor]:
    x0, cond = batch
    loss = noise_loss(lambda x, t, c: task.eps(unet, x, t, c), x0, cond, task.abar, generator)
    return list(torch.autograd.grad(loss, params, allow_unused=True))


@register("scissorhands_diffusion")
def scissorhands_diffusion(
    unet: nn.Module,
    task: DiffusionTask,
    cfg,
    generator: torch.Generator,
    *,
    reinit_generator: torch.Generator | None = None,
    backend: str | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> MethodResult:
    """``cfg`` is an ``orchestrator.diffusion.config.DiffusionRunConfig`` (its method knobs).

    ``generator`` (CPU) drives batches, timesteps and noise; ``reinit_generator`` (on the
    UNet's device; default ``generator``) draws the fresh values of trimmed entries.
    """
    start = time.perf_counter()
    named = dict(unet.named_parameters())
    trim_names = select_parameters(unet, tuple(cfg.trim_modules))
    inits_all = dict(zip(named, init_specs(unet, set(trim_names), cfg.init)))
    trimmable = [n for n in trim_names if inits_all[n] is not None]
    if not trimmable:
        from orchestrator.errors import UserError

        raise UserError(f"--trim-modules {' '.join(cfg.trim_modules)}: selects no conv / linear weight to trim "
                        f"(selected: {', '.join(trim_names[:6])}...)")
    scored_names = trim_names if cfg.threshold_scope == "trimmed" else list(named)
    scored = [named[n] for n in scored_names]
    forget_iter = task.forget_batches(cfg.score_batch_size, generator)

    # Stage 1: connection sensitivity of the forget loss.
    unet.eval()
    grad_sums = [torch.zeros_like(p) for p in scored]
    for _ in range(cfg.score_batches):
        grads = _forget_grads(unet, task, next(forget_iter), scored, generator)
        grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, scored)]
        kernels.accumulate_abs_grad_(grad_sums, grads, backend=backend)

    # Stage 2: one threshold over the scored entries; re-initialise the selected trimmable ones.
    total = sum(p.numel() for p in scored)
    n_select = total - math.floor((1.0 - cfg.trim_ratio) * total)
    inits = [inits_all[n] for n in scored_names]
    with torch.no_grad():
        threshold = kernels.select_threshold(scored, grad_sums, n_select, backend=backend)
        trimmed = kernels.masked_reinit_(
            scored, grad_sums, threshold, inits, reinit_generator or generator, backend=backend
        )
    del grad_sums
    score_seconds = time.perf_counter() - start

    # Stage 3: repair.
    train_names = list(named) if cfg.repair_modules == "all" else trim_names
    train_params = [named[n] for n in train_names]
    train_ids = {id(p) for p in train_params}
    for p in unet.parameters():
        p.requires_grad_(id(p) in train_ids)
    projected_names = [n for n in trim_names if id(named[n]) in train_ids]
    projected = [named[n] for n in projected_names]
    opt = torch.optim.Adam(train_params, lr=cfg.lr)
    retain_iter = task.retain_batches(cfg.batch_size, generator)
    forget_iter = task.forget_batches(cfg.batch_size, generator)
    eps = lambda net: (lambda x, t, c: task.eps(net, x, t, c))  # noqa: E731
    history = []
    unet.train()
    for epoch in range(cfg.epochs):
        ref = None
        if cfg.projection:
            frozen = copy.deepcopy(unet)
            frozen_named = dict(frozen.named_parameters())
            frozen_projected = [frozen_named[n].requires_grad_(True) for n in projected_names]
            ref = [torch.zeros_like(p) for p in projected]
            for _ in range(cfg.memory_batches):
                g = _forget_grads(frozen, task, next(forget_iter), frozen_projected, generator)
                torch._foreach_add_(ref, [-t if t is not None else torch.zeros_like(r) for t, r in zip(g, ref)])
            del frozen, frozen_named, frozen_projected
        sums = {"loss_retain": 0.0, "loss_unlearn": 0.0, "projected": 0}
        for step in range(cfg.steps_per_epoch):
            x0r, cr = next(retain_iter)
            loss_r = noise_loss(eps(unet), x0r, cr, task.abar, generator)
            loss = loss_r
            if cfg.forget_weight > 0:
                x0f, cf = next(forget_iter)
                t, noise = draw_noise(x0f, task.abar, generator)
                x_t = q_sample(x0f, t, noise, task.abar)
                if cfg.repair == "anchor":
                    with torch.no_grad():
                        target = task.eps(unet, x_t, t, task.anchor_cond(cf, generator))
                    loss_u = F.mse_loss(task.eps(unet, x_t, t, cf), target)
                    loss = loss_r + cfg.forget_weight * loss_u
                else:
                    loss_u = F.mse_loss(task.eps(unet, x_t, t, cf), noise)
                    loss = loss_r - cfg.forget_weight * loss_u
                sums["loss_unlearn"] += loss_u.item()
            check_finite(
                loss, f"in diffusion repair epoch {epoch} step {step}",
                f"lower --lr (now {cfg.lr}) or --forget-weight (now {cfg.forget_weight})",
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if ref is not None and step % cfg.project_every == 0:
                grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in projected]
                for p, g in zip(projected, grads):
                    p.grad = g
                coef = kernels.project_(
                    grads, ref, cfg.projection_strength, cfg.projection_eps, cfg.projection_scope, backend=backend
                )
                sums["projected"] += int(bool((coef != 0).any()))
            opt.step()
            sums["loss_retain"] += loss_r.item()
        n = max(1, cfg.steps_per_epoch)
        record = {
            "epoch": float(epoch),
            "loss_retain": sums["loss_retain"] / n,
            "loss_unlearn": sums["loss_unlearn"] / n,
            "projection_rate": sums["projected"] / n,
        }
        history.append(record)
        if on_epoch:
            on_epoch(dict(record))
    for p in unet.parameters():
        p.requires_grad_(True)
    unet.eval()
    seconds = time.perf_counter() - start
    stats = {
        "trimmed": int(trimmed), "n_scored": int(total), "n_trimmable": int(sum(named[n].numel() for n in trimmable)),
        "tau": float(threshold.tau), "score_trim_s": round(score_seconds, 3),
        "trimmed_params": trimmable,
    }
    return MethodResult(unet, seconds, history, stats)
