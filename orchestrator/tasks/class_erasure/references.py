"""Reference generators (original, retrain) and the evaluation classifier, kept in the
reference cache (``orchestrator.cache``)."""
from __future__ import annotations

import copy
import math
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from orchestrator.cache import Cached, cached_model
from orchestrator.datasets import Dataset
from orchestrator.datasets.images import resize_uint8
from orchestrator.diffusion.images import to_signed
from orchestrator.diffusion.sampling import Eps, alphas_cumprod, noise_loss
from orchestrator.diffusion.unet import build_class_unet
from orchestrator.forget import UnlearnData
from orchestrator.models import build_model, preprocessing
from orchestrator.tasks.class_erasure.config import ClassifierRecipe, GeneratorRecipe
from orchestrator.tasks.class_erasure.data import drop_labels
from orchestrator.training import accuracy, check_finite, cycle, shuffled, to_float, train_classifier

GENERATOR_CODE_VERSION = 1  # bump when train_generator changes what a recipe produces
CLASSIFIER_CODE_VERSION = 1


# ----------------------------------------------------------------------------- classifier


def get_classifier(
    dataset: Dataset, image_size: int, recipe: ClassifierRecipe, seed: int, cache_dir: Path, progress: bool = True,
    build: bool = True,
) -> Cached:
    """The project's ResNet trained on the real training split resized to ``image_size``."""
    x_train, x_test = resize_uint8(dataset.x_train, image_size), resize_uint8(dataset.x_test, image_size)
    spec = {"role": "diffusion-classifier", "dataset": dataset.name, "data": dataset.fingerprint(),
            "image_size": image_size, "recipe": asdict(recipe), "seed": seed, "code": CLASSIFIER_CODE_VERSION}

    def make() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_model(recipe.model, dataset.channels, dataset.num_classes, recipe.width)
        model.preprocess_as(preprocessing("dataset", recipe.model, to_float(x_train)))
        return model

    def train(model: nn.Module) -> dict:
        generator = torch.Generator().manual_seed(seed)
        hist = train_classifier(
            model, x_train, dataset.y_train, epochs=recipe.epochs, lr=recipe.lr, batch_size=recipe.batch_size,
            momentum=recipe.momentum, weight_decay=recipe.weight_decay, natural=dataset.natural_images,
            generator=generator, augmentation=recipe.augment, desc="train classifier", progress=progress,
        )
        return {"test_acc": accuracy(model, x_test, dataset.y_test), "train_acc": hist[-1]["train_acc"]}

    return cached_model("diffusion-classifier", spec, cache_dir, make, train, allow_build=build)


# ----------------------------------------------------------------------------- generators


def class_conditioned(unet: nn.Module) -> Eps:
    return lambda xt, t, c: unet(xt, t, class_labels=c).sample


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train_generator(
    unet: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    recipe: GeneratorRecipe,
    null_label: int,
    generator: torch.Generator,
    desc: str = "train generator",
    progress: bool = True,
    conditioned: Callable[[nn.Module], Eps] = class_conditioned,
) -> tuple[nn.Module, list[dict]]:
    """Denoising training with label dropout; returns the EMA model (the generator) and a loss log.

    ``x`` float images in [-1, 1] (or latents) and ``y`` labels, both on the UNet's device; a
    label becomes ``null_label`` with probability ``p_uncond``. ``conditioned(unet)`` is the
    noise prediction of a label (class embedding; text-to-image: the caption's embedding).
    AdamW, warm-up + cosine lr, grad-norm clip 1, EMA with the usual (1 + n) / (10 + n) warm-up
    of the decay.
    """
    device = x.device
    abar = alphas_cumprod(recipe.noise_schedule, recipe.train_timesteps).to(device)
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    params = list(unet.parameters())
    ema_params = list(ema.parameters())
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, recipe.warmup_steps, recipe.steps))

    def epoch():
        for idx in shuffled(len(x), recipe.batch_size, generator):
            idx = idx.to(device)
            yield x[idx], drop_labels(y[idx], recipe.p_uncond, null_label, generator)

    batches = cycle(epoch)
    eps = conditioned(unet)
    history, window = [], []
    unet.train()
    bar = tqdm(range(recipe.steps), desc=desc, unit="step", disable=not progress, leave=False, mininterval=2)
    for step in bar:
        xb, yb = next(batches)
        loss = noise_loss(eps, xb, yb, abar, generator)
        check_finite(loss, f"in {desc} step {step}", f"lower --gen-lr (now {recipe.lr})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        decay = min(recipe.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        window.append(loss.item())
        if len(window) == 100 or step == recipe.steps - 1:
            history.append({"step": step + 1, "loss": sum(window) / len(window)})
            bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
            window = []
    with torch.no_grad():  # buffers (none in UNet2DModel today) follow the live model
        for b_ema, b in zip(ema.buffers(), unet.buffers()):
            b_ema.copy_(b)
    return ema, history


def generator_spec(role: str, data: UnlearnData, image_size: int, recipe: GeneratorRecipe, seed: int) -> dict:
    spec = {"role": f"diffusion-{role}", "dataset": data.dataset.name, "data": data.dataset.fingerprint(),
            "image_size": image_size, "recipe": asdict(recipe), "seed": seed, "code": GENERATOR_CODE_VERSION}
    if role == "retrain":  # the original does not depend on the forget set
        spec["forget"] = str(data.forget)
        spec["forget_idx"] = data.forget_digest()
    return spec


def get_generator(
    role: str,
    data: UnlearnData,
    image_size: int,
    recipe: GeneratorRecipe,
    seed: int,
    cache_dir: Path,
    device: torch.device,
    progress: bool = True,
    build: bool = True,
) -> Cached:
    spec = generator_spec(role, data, image_size, recipe, seed)
    ds = data.dataset
    if role == "original":
        x, y = ds.x_train, ds.y_train
    else:
        x, y = data.x_retain, data.y_retain

    def make() -> nn.Module:
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
            torch.manual_seed(seed)
            return build_class_unet(recipe, image_size, ds.channels, ds.num_classes)

    def train(unet: nn.Module) -> dict:
        generator = torch.Generator().manual_seed(seed)
        xs = to_signed(resize_uint8(x, image_size)).to(device)
        ema, hist = train_generator(
            unet.to(device), xs, y.to(device), recipe, ds.num_classes, generator,
            desc=f"train {role} generator", progress=progress,
        )
        unet.load_state_dict(ema.state_dict())
        return {"loss": hist}

    cached = cached_model(f"diffusion-{role}", spec, cache_dir, make, train, allow_build=build)
    cached.model.to(device)
    return cached
