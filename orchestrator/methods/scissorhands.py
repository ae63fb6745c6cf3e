"""Scissorhands for classifiers (Wu & Harandi, ECCV 2024), as ../shared/docs/scissorhands.md says.

1. score (train mode, as the reference): G = sum over forget batches of |dL_f/dtheta|;
   s = |theta * G| (SNIP sensitivity)
2. trim: the reference's global cut over all parameters (k-th smallest score, guard);
   re-initialise the selected entries of eligible layers from the layer's init distribution
3. repair: SGD on L_r - lambda * L_f; on steps that pair a retain with a forget batch, GEM-project
   the gradient on the projected set S against r = grad(-L_f) of a frozen eval-mode copy taken
   at the start of every epoch. Retain-only steps (D_f ran out) are plain SGD, as there.
All tensor math goes through ``kernels``.
"""
from __future__ import annotations

import copy
import math
import re
import time
from itertools import zip_longest
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

import kernels
from orchestrator.config import ScissorhandsConfig
from orchestrator.data import UnlearnData
from orchestrator.methods import MethodResult, register
from orchestrator.training import augment, batches, check_finite


def matching(model: nn.Module, patterns: tuple[str, ...]) -> list[tuple[str, nn.Parameter]]:
    regex = [re.compile(p) for p in patterns]
    return [(n, p) for n, p in model.named_parameters() if any(r.search(n) for r in regex)]


def default_patterns(layers: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(rf"^{name}\." for name in layers)


def init_specs(model: nn.Module, trim_names: set[str], init: str) -> list[kernels.InitSpec | None]:
    """Per parameter (model order): None if not trimmable, else the layer's default init.

    Only conv / linear parameters are trimmable (the reference excludes BatchNorm).
    kaiming_uniform(a=sqrt(5)) has bound 1/sqrt(fan_in); biases start at zero.
    """
    specs: dict[str, kernels.InitSpec | None] = {}
    for mod_name, module in model.named_modules():
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        for pname, p in module.named_parameters(recurse=False):
            full = f"{mod_name}.{pname}" if mod_name else pname
            if full not in trim_names:
                continue
            if init == "zeros" or pname == "bias":
                specs[full] = kernels.InitSpec(0.0, 0.0)
            else:
                bound = 1.0 / math.sqrt(p[0].numel())
                specs[full] = kernels.InitSpec(-bound, bound)
    return [specs.get(n) for n, _ in model.named_parameters()]


def _forget_loss_grad(model, xf, yf, params, natural, generator) -> list[torch.Tensor]:
    loss = F.cross_entropy(model(augment(xf, natural, generator)), yf)
    return list(torch.autograd.grad(loss, params))


def _forget_batch(n: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """The first batch of a freshly shuffled forget loader (the reference's next(iter(loader)))."""
    return torch.randperm(n, generator=generator)[:batch_size]


def sensitivity(
    model: nn.Module, data: UnlearnData, cfg: ScissorhandsConfig, generator: torch.Generator, backend: str | None
) -> list[torch.Tensor]:
    """Stage 1: G = sum over score batches of |dL_f/dtheta|. By default train mode as in the
    reference: batch statistics, and BN running statistics see the forget batches."""
    model.train(cfg.score_bn_mode == "train")
    xf, yf = data.x_forget, data.y_forget
    params = list(model.parameters())
    grad_sums = [torch.zeros_like(p) for p in params]
    for _ in range(cfg.score_batches):
        idx = _forget_batch(len(yf), cfg.score_batch_size, generator)
        grads = _forget_loss_grad(model, xf[idx], yf[idx], params, data.dataset.natural_images, generator)
        kernels.accumulate_abs_grad_(grad_sums, grads, backend=backend)
    return grad_sums


def trim(
    model: nn.Module,
    grad_sums: list[torch.Tensor],
    cfg: ScissorhandsConfig,
    late_layers: tuple[str, ...],
    generator: torch.Generator,
    backend: str | None,
) -> tuple[kernels.Threshold, int]:
    """Stage 2: one global threshold over ALL parameters, applied to eligible ones only."""
    params = list(model.parameters())
    trim_names = {n for n, _ in matching(model, cfg.trim_layers or default_patterns(late_layers))}
    inits = init_specs(model, trim_names, cfg.init)
    with torch.no_grad():
        threshold = kernels.snip_threshold(params, grad_sums, cfg.trim_ratio, backend=backend)
        trimmed = kernels.masked_reinit_(params, grad_sums, threshold, inits, generator, backend=backend)
    return threshold, trimmed


@register("scissorhands")
def scissorhands(
    model: nn.Module,
    data: UnlearnData,
    cfg: ScissorhandsConfig,
    generator: torch.Generator,
    *,
    late_layers: tuple[str, ...],
    backend: str | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> MethodResult:
    cfg.validate()
    natural = data.dataset.natural_images
    xf, yf, xr, yr = data.x_forget, data.y_forget, data.x_retain, data.y_retain
    params = list(model.parameters())
    start = time.perf_counter()
    grad_sums = sensitivity(model, data, cfg, generator, backend)
    threshold, trimmed = trim(model, grad_sums, cfg, late_layers, generator, backend)
    del grad_sums

    # Stage 3: repair with projected gradients.
    projected = [p for _, p in matching(model, cfg.project_layers or default_patterns(late_layers))]
    projected_ids = {id(p) for p in projected}
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    history = []
    for epoch in range(cfg.epochs):
        frozen = copy.deepcopy(model).train(cfg.memory_bn_mode == "train")
        frozen_projected = [p for p, q in zip(frozen.parameters(), params) if id(q) in projected_ids]
        ref = [torch.zeros_like(p) for p in projected]
        for _ in range(cfg.memory_batches):
            idx = _forget_batch(len(yf), cfg.batch_size, generator)
            g = _forget_loss_grad(frozen, xf[idx], yf[idx], frozen_projected, natural, generator)
            torch._foreach_add_(ref, [-t for t in g])  # r = grad of (-L_f)
        del frozen

        model.train()
        sums = {"loss_retain": 0.0, "loss_forget": 0.0, "correct": 0, "seen": 0, "steps": 0, "projected": 0}
        pairs = zip_longest(batches(xr, yr, cfg.batch_size, generator), batches(xf, yf, cfg.batch_size, generator))
        for step, (retain, forget) in enumerate(pairs):
            if retain is None:  # D_r ran out: the epoch ends
                break
            logits = model(augment(retain[0], natural, generator))
            loss_r = F.cross_entropy(logits, retain[1])
            loss = loss_r
            if forget is not None and cfg.forget_weight > 0:
                loss_f = F.cross_entropy(model(augment(forget[0], natural, generator)), forget[1])
                loss = loss_r - cfg.forget_weight * loss_f
                sums["loss_forget"] += loss_f.item()
            check_finite(
                loss,
                f"in Scissorhands repair epoch {epoch} step {step}",
                f"lower --lr (now {cfg.lr}) or --forget-weight (now {cfg.forget_weight})",
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            # Only paired steps project (the reference): retain-only steps must not be pushed
            # along the forget-ascent direction r.
            if forget is not None and step % cfg.project_every == 0:
                grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in projected]
                coef = kernels.project_(
                    grads, ref, cfg.projection_strength, cfg.projection_eps, cfg.projection_scope, backend=backend
                )
                sums["projected"] += int(bool((coef != 0).any()))
            opt.step()
            sums["loss_retain"] += loss_r.item()
            sums["correct"] += int((logits.argmax(1) == retain[1]).sum())
            sums["seen"] += len(retain[1])
            sums["steps"] += 1
        record = {
            "epoch": epoch,
            "loss_retain": sums["loss_retain"] / max(1, sums["steps"]),
            "loss_forget": sums["loss_forget"] / max(1, sums["steps"]),
            "train_acc_retain": 100.0 * sums["correct"] / max(1, sums["seen"]),
            "projection_rate": sums["projected"] / max(1, sums["steps"]),
        }
        history.append(record)
        if on_epoch:
            on_epoch(record)
    model.eval()
    seconds = time.perf_counter() - start
    stats = {"trimmed": trimmed, "n_params": sum(p.numel() for p in params), "tau": threshold.tau}
    return MethodResult(model, seconds, history, stats)
