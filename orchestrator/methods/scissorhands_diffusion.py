"""Scissorhands for diffusion models: class / concept erasure (Wu & Harandi, ECCV 2024, the SD experiments).

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

The method knows nothing of labels or prompts: a :class:`DiffusionData` supplies data
batches, conditions and the network call, so the class-conditional UNet2DModel and a
Stable Diffusion UNet2DConditionModel share this one implementation.
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import torch
import torch.nn.functional as F
from torch import nn

import kernels
from orchestrator.diffusion.sampling import draw_noise, noise_loss, q_sample
from orchestrator.diffusion.unet import TRIM_PRESETS, select_parameters
from orchestrator.errors import FieldError, need_field, need_positive_ints
from orchestrator.methods.shared_work import SharedWork
from orchestrator.methods import Method
from orchestrator.methods.shared import GradientProjection, init_specs, repair_loop

REPAIRS = ("anchor", "ascent")
REPAIR_MODULES = ("all", "trimmed")
THRESHOLD_SCOPES = ("all", "trimmed")
PROJECTION_SCOPES = ("global", "per_layer")
INITS = ("kaiming_uniform", "zeros")


@dataclass(frozen=True)
class ScissorhandsDiffusionConfig:
    """The method's knobs; defaults measured on mnist5k class:3 (README, "`scissorhands unlearn --task diffusion`")."""

    # stage 1: scoring
    score_batches: int = 10
    score_batch_size: int = 64
    # stage 2: trimming
    trim_ratio: float = 0.005
    trim_modules: tuple[str, ...] = ("attn1_up",)  # presets (attn1_up | attn2 | attn | all) or regexes
    # all: one threshold over every UNet parameter (reference SD code) | trimmed: rank within trim_modules only
    threshold_scope: str = "all"
    init: str = "kaiming_uniform"
    # stage 3: repair
    repair: str = "anchor"  # anchor: L_r + lambda * L_u | ascent: L_r - lambda * L_f
    forget_weight: float = 1.0  # lambda
    anchor_class: int | None = None  # None: a random retained class per sample
    repair_modules: str = "all"  # which parameters Adam updates: all | trimmed
    epochs: int = 3
    steps_per_epoch: int = 40
    batch_size: int = 64
    lr: float = 1e-4  # Adam
    projection: bool = False
    projection_strength: float = 0.5
    projection_eps: float = 1e-3
    projection_scope: str = "global"
    project_every: int = 1
    memory_batches: int = 1

    HELP = {
        "score_batches": "forget batches for connection sensitivity (reference: 10)",
        "trim_ratio": "share of scored entries re-initialised (reference 0.001-0.005 for diffusion)",
        "trim_modules": f"UNet modules to trim: presets {', '.join(TRIM_PRESETS)} or regexes on parameter names",
        "threshold_scope": "all: one threshold over every UNet parameter (reference) | "
                           "trimmed: scores ranked only within --trim-modules",
        "init": " | ".join(INITS),
        "repair": "anchor: L_r + lambda*L_u (forget condition -> anchor) | ascent: L_r - lambda*L_f",
        "forget_weight": "lambda",
        "anchor_class": "class the forget class is mapped onto (default: a random retained class per sample)",
        "repair_modules": f"{' | '.join(REPAIR_MODULES)}: parameters Adam updates during repair",
        "epochs": "repair epochs (reference 3-5 for diffusion)",
        "steps_per_epoch": "repair steps per epoch (each: one retain + one forget batch)",
        "lr": "repair learning rate (Adam)",
        "projection": "GEM-project repair gradients of the trimmed modules against grad(-L_f)",
        "projection_strength": "GEM margin (reference 0.5)",
        "projection_scope": " | ".join(PROJECTION_SCOPES),
    }

    def validate(self) -> None:
        need_positive_ints(self, ("score_batches", "score_batch_size", "steps_per_epoch", "batch_size",
                                  "project_every", "memory_batches"))
        need_field(self.epochs >= 0, self, "epochs", "must be >= 0 (0: trim without repair)")
        need_field(0.0 < self.trim_ratio < 1.0, self, "trim_ratio", "must be in (0, 1)")
        need_field(len(self.trim_modules) > 0, self, "trim_modules",
                   f"give at least one of {', '.join(TRIM_PRESETS)} or a regex on parameter names")
        for item in self.trim_modules:
            if item in TRIM_PRESETS:
                continue
            try:
                re.compile(item)
            except re.error as exc:
                raise FieldError("trim_modules", item, f"not a preset ({', '.join(TRIM_PRESETS)}) "
                                 f"and not a valid regex ({exc})") from None
        need_field(self.threshold_scope in THRESHOLD_SCOPES, self, "threshold_scope",
                   f"allowed {', '.join(THRESHOLD_SCOPES)}")
        need_field(self.init in INITS, self, "init", f"allowed {', '.join(INITS)}")
        need_field(self.repair in REPAIRS, self, "repair", f"allowed {', '.join(REPAIRS)}")
        need_field(self.forget_weight >= 0 and math.isfinite(self.forget_weight), self, "forget_weight",
                   "must be >= 0")
        need_field(self.anchor_class is None or self.anchor_class >= 0, self, "anchor_class",
                   "must be a class index >= 0 (or unset: random retained class)")
        need_field(self.repair_modules in REPAIR_MODULES, self, "repair_modules",
                   f"allowed {', '.join(REPAIR_MODULES)}")
        need_field(self.lr > 0 and math.isfinite(self.lr), self, "lr", "must be a positive number")
        need_field(self.projection_strength >= 0, self, "projection_strength", "must be >= 0")
        need_field(self.projection_eps > 0, self, "projection_eps", "must be > 0")
        need_field(self.projection_scope in PROJECTION_SCOPES, self, "projection_scope",
                   f"allowed {', '.join(PROJECTION_SCOPES)}")


class DiffusionData(Protocol):
    """What the method needs to know about the data and the conditioning."""

    abar: torch.Tensor  # alphas_cumprod of the training noise schedule

    def eps(self, unet: nn.Module, x_t: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor: ...

    def forget_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, object]]:
        """Endless (x0, forget condition) batches, reshuffled at every pass over D_f."""

    def retain_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, object]]:
        """Endless (x0, condition) batches over D_r (conditions already dropped to null where trained so)."""

    def anchor_cond(self, forget_cond, generator: torch.Generator):
        """The anchor condition that each forget sample is mapped onto."""


def _forget_grads(unet, task: DiffusionData, batch, params, generator) -> list[torch.Tensor]:
    x0, cond = batch
    loss = noise_loss(lambda x, t, c: task.eps(unet, x, t, c), x0, cond, task.abar, generator)
    return list(torch.autograd.grad(loss, params, allow_unused=True))


class ScissorhandsDiffusion(Method):
    name = "scissorhands_diffusion"
    tasks = ("diffusion", "text_to_image")
    config_class = ScissorhandsDiffusionConfig

    def unlearn(self, model: nn.Module, data: DiffusionData, cfg: ScissorhandsDiffusionConfig,
                generator: torch.Generator, *, on_epoch: Callable[[dict], None] | None,
                backend: str | None, shared: SharedWork) -> tuple[list[dict], dict]:
        """``generator`` (CPU) drives batches, timesteps and noise; the fresh values of trimmed
        entries come from a generator on the UNet's device seeded with its seed + 1."""
        unet, task = model, data
        start = time.perf_counter()
        device = next(unet.parameters()).device
        reinit_generator = torch.Generator(device=device).manual_seed(generator.initial_seed() + 1)
        named = dict(unet.named_parameters())
        trim_names = select_parameters(unet, tuple(cfg.trim_modules))
        inits_all = dict(zip(named, init_specs(unet, set(trim_names), cfg.init)))
        trimmable = [n for n in trim_names if inits_all[n] is not None]
        if not trimmable:
            raise FieldError("trim_modules", " ".join(cfg.trim_modules), "selects no conv / linear weight to trim "
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
            trimmed = kernels.masked_reinit_(scored, grad_sums, threshold, inits, reinit_generator, backend=backend)
        del grad_sums
        score_seconds = time.perf_counter() - start

        # Stage 3: repair.
        train_names = list(named) if cfg.repair_modules == "all" else trim_names
        train_params = [named[n] for n in train_names]
        train_ids = {id(p) for p in train_params}
        for p in unet.parameters():
            p.requires_grad_(id(p) in train_ids)
        projection = GradientProjection(
            unet, [n for n in trim_names if id(named[n]) in train_ids], strength=cfg.projection_strength,
            eps=cfg.projection_eps, scope=cfg.projection_scope, every=cfg.project_every, backend=backend,
            memory_mode="sum")  # the reference never projects here (its flag is unused): no columns to follow
        retain_iter = task.retain_batches(cfg.batch_size, generator)
        forget_iter = task.forget_batches(cfg.batch_size, generator)

        def remember(epoch: int) -> None:
            projection.remember(lambda frozen, params: _forget_grads(frozen, task, next(forget_iter), params,
                                                                     generator), cfg.memory_batches, train_mode=True)

        def loss(step: int):
            # Batches are drawn here, in this order, so the random stream is the method's own.
            x0r, cr = next(retain_iter)
            loss_r = noise_loss(lambda x, t, c: task.eps(unet, x, t, c), x0r, cr, task.abar, generator)
            stats = {"loss_retain": loss_r.item(), "loss_unlearn": 0.0}
            if cfg.forget_weight == 0:
                return loss_r, stats
            x0f, cf = next(forget_iter)
            t, noise = draw_noise(x0f, task.abar, generator)
            x_t = q_sample(x0f, t, noise, task.abar)
            if cfg.repair == "anchor":
                with torch.no_grad():
                    target = task.eps(unet, x_t, t, task.anchor_cond(cf, generator))
                loss_u = F.mse_loss(task.eps(unet, x_t, t, cf), target)
                value = loss_r + cfg.forget_weight * loss_u
            else:
                loss_u = F.mse_loss(task.eps(unet, x_t, t, cf), noise)
                value = loss_r - cfg.forget_weight * loss_u
            return value, {**stats, "loss_unlearn": loss_u.item()}

        opt = torch.optim.Adam(train_params, lr=cfg.lr)
        history = repair_loop(
            unet, opt, epochs=cfg.epochs, steps=lambda epoch: range(cfg.steps_per_epoch), loss=loss,
            before_step=lambda step, _: projection(step) if cfg.projection else {"projection_rate": 0.0},
            start_epoch=remember if cfg.projection else None, on_epoch=on_epoch, where="diffusion repair",
            hint=f"lower --lr (now {cfg.lr}) or --forget-weight (now {cfg.forget_weight})",
        )
        for p in unet.parameters():
            p.requires_grad_(True)
        stats = {
            "trimmed": int(trimmed), "n_scored": int(total),
            "n_trimmable": int(sum(named[n].numel() for n in trimmable)),
            "tau": float(threshold.tau), "score_trim_s": round(score_seconds, 3),
            "trimmed_params": trimmable,
        }
        return history, stats


METHOD = ScissorhandsDiffusion()
