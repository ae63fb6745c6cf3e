"""Original and retrain reference classifiers, trained once and kept in the reference cache."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from orchestrator.cache import Cached, cached_model
from orchestrator.config import RunConfig
from orchestrator.data import Dataset, UnlearnData
from orchestrator.evaluation import evaluate
from orchestrator.models import build_model
from orchestrator.training import to_float, train_classifier

TRAINING_CODE_VERSION = 1  # bump when the training loop changes what a recipe produces
ROLES = ("original", "retrain")


def make_model(cfg: RunConfig, dataset: Dataset) -> nn.Module:
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, dataset.channels, dataset.num_classes, cfg.width)
    x = to_float(dataset.x_train)
    model.set_normalization(x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3)))
    return model


def reference_spec(role: str, cfg: RunConfig, data: UnlearnData) -> dict:
    spec = {
        "role": role,
        "dataset": data.dataset.name,
        "data": data.dataset.fingerprint(),
        "model": cfg.model,
        "width": cfg.width,
        "recipe": asdict(cfg.recipe),
        "seed": cfg.seed,
        "code": TRAINING_CODE_VERSION,
    }
    if role == "retrain":  # the original does not depend on the forget set: shared across forget specs
        spec["forget"] = str(data.forget)
        spec["forget_idx"] = data.forget_digest()
    return spec


def reference_metrics(ref: Cached, data: UnlearnData) -> dict[str, float]:
    """Metrics of a reference on this forget split, computed once and cached beside it."""
    key = {"forget": str(data.forget), "forget_idx": data.forget_digest()}
    return ref.metrics(key, lambda: evaluate(ref.model, data))


@dataclass
class References:
    original: Cached
    retrain: Cached


def get_reference(
    role: str, cfg: RunConfig, data: UnlearnData, cache_dir: Path, progress: bool = True, build: bool = True
) -> Cached:
    """The cached reference, or train and cache it (``build=False``: a missing one is an error)."""

    def train(model: nn.Module) -> dict:
        x, y = (data.dataset.x_train, data.dataset.y_train) if role == "original" else (data.x_retain, data.y_retain)
        r = cfg.recipe
        history = train_classifier(
            model, x, y, epochs=r.epochs, lr=r.lr, batch_size=r.batch_size, momentum=r.momentum,
            weight_decay=r.weight_decay, natural=data.dataset.natural_images,
            generator=torch.Generator().manual_seed(cfg.seed), augmentation=r.augment,
            desc=f"train {role}", progress=progress,
        )
        return {"train_acc": history[-1]["train_acc"] if history else None}

    spec = reference_spec(role, cfg, data)
    return cached_model(role, spec, cache_dir, lambda: make_model(cfg, data.dataset), train, allow_build=build)


def get_references(
    cfg: RunConfig, data: UnlearnData, cache_dir: Path, progress: bool = True, build: bool = True
) -> References:
    return References(*(get_reference(role, cfg, data, cache_dir, progress, build) for role in ROLES))
