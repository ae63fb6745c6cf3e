"""Original and retrain reference classifiers: trained once with the recipe, or the user's own
weights (evaluated, never trained), kept in the reference cache either way."""
from __future__ import annotations

import weakref
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from orchestrator.cache import Cached, cached_model
from orchestrator.errors import UserError
from orchestrator.tasks.classification.config import RunConfig
from orchestrator.datasets import Dataset
from orchestrator.tasks.classification.evaluation import evaluate
from orchestrator.forget import UnlearnData
from orchestrator.models import (Preprocessing, build_model, load_weights, model_source, preprocessing,
                                 read_state_dict, state_digest)
from orchestrator.training import to_float, train_classifier

TRAINING_CODE_VERSION = 1  # bump when the training loop changes what a recipe produces
ROLES = ("original", "retrain")
CHANCE_MARGIN = 10.0  # points above chance a user's original must clear on its own training split


_PREPROCESSING: dict[tuple, tuple] = {}  # (id(dataset), normalize, model) -> (weakref to dataset, Preprocessing)


def input_preprocessing(cfg: RunConfig, dataset: Dataset) -> Preprocessing:
    """Computed once per dataset object: the split's statistics take a pass over every image, and
    a run asks for them for each model it builds, each reference's cache key and its report."""
    key = (id(dataset), cfg.normalize, cfg.model)
    hit = _PREPROCESSING.get(key)
    if hit is None or hit[0]() is not dataset:  # (an id may be reused once its dataset is gone)
        hit = (weakref.ref(dataset), preprocessing(cfg.normalize, cfg.model, to_float(dataset.x_train)))
        _PREPROCESSING[key] = hit
    return hit[1]


def make_model(cfg: RunConfig, dataset: Dataset) -> nn.Module:
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, dataset.channels, dataset.num_classes, cfg.width, cfg.code_dir)
    model.preprocess_as(input_preprocessing(cfg, dataset))
    return model


def weights_source(role: str, cfg: RunConfig) -> str | None:
    """Where a reference's weights come from: None when it is trained with the recipe."""
    source = cfg.original if role == "original" else cfg.retrain
    if source is None and role == "original" and cfg.model.startswith("hf:"):
        return cfg.model.removeprefix("hf:")  # a Hugging Face folder's own weights are the original
    return None if source in (None, "train") else source


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
    source = model_source(cfg.model, cfg.code_dir)
    if source:  # a user's model: its code is part of what the reference is
        spec["model_source"] = source
    if role == "retrain":  # the original does not depend on the forget set: shared across forget specs
        spec["forget"] = str(data.forget)
        spec["forget_idx"] = data.forget_digest()
    prep = input_preprocessing(cfg, data.dataset)
    if prep.rule != "dataset":  # (the default keeps the keys references were cached under before)
        spec["preprocessing"] = prep.as_dict()
    weights = weights_source(role, cfg)
    if weights:  # the user's weights: neither recipe nor seed shape them
        spec.update(weights=weights, recipe=None, seed=None)
    return spec


def reference_metrics(ref: Cached, data: UnlearnData) -> dict[str, float]:
    """Metrics of a reference on this forget split, computed once and cached beside it."""
    key = {"forget": str(data.forget), "forget_idx": data.forget_digest()}
    return ref.metrics(key, lambda: evaluate(ref.model, data))


@dataclass
class References:
    original: Cached
    retrain: Cached | None  # None: --retrain none


def get_reference(
    role: str, cfg: RunConfig, data: UnlearnData, cache_dir: Path, progress: bool = True, build: bool = True
) -> Cached:
    """The cached reference, or train (or load the user's weights) and cache it
    (``build=False``: a missing one is an error)."""
    spec = reference_spec(role, cfg, data)

    def fresh() -> nn.Module:
        return make_model(cfg, data.dataset)

    source = weights_source(role, cfg)
    if source is not None:
        if not build:  # trials load the copy in the cache: the user's path may not exist on their node
            return cached_model(role, spec, cache_dir, fresh, None, allow_build=False)
        flag = "--original" if role == "original" else "--retrain"
        state = read_state_dict(source, flag)
        digest = state_digest(state)
        load_weights(fresh(), state, flag, source)  # a misfit fails before anything is written

        def load(model: nn.Module) -> dict:
            load_weights(model, state, flag, source)
            return {"weights_digest": digest}

        # Weights changed at the same path or alias: the cached copy is stale.
        ref = cached_model(role, spec, cache_dir, fresh, load,
                           valid=lambda meta: meta.get("info", {}).get("weights_digest") == digest)
        if role == "original":
            check_beats_chance(ref, cfg, data, source)
        return ref

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

    return cached_model(role, spec, cache_dir, fresh, train, allow_build=build)


def check_beats_chance(ref: Cached, cfg: RunConfig, data: UnlearnData, source: str) -> None:
    """A user's original near chance on the very images it was trained on was fed other inputs
    than it was trained on (before any training: a wrong preprocessing would make every figure
    after it meaningless)."""
    m = reference_metrics(ref, data)
    n_forget, n_retain = len(data.y_forget), len(data.y_retain)
    train_acc = ((100.0 - m["UA"]) * n_forget + m["RA"] * n_retain) / (n_forget + n_retain)
    chance = 100.0 / data.dataset.num_classes
    if train_acc < chance + CHANCE_MARGIN:
        prep = input_preprocessing(cfg, data.dataset)
        raise UserError(f"--original {source}: {train_acc:.1f}% accuracy on its own training split, within "
                        f"{CHANCE_MARGIN:g} points of chance ({chance:.1f}% for {data.dataset.num_classes} classes), "
                        f"with inputs {prep.describe()}; was it trained on other inputs? pass --normalize none "
                        "(x / 255), --normalize MEAN,STD or --normalize dataset as you trained it")


def reference_roles(cfg: RunConfig) -> tuple[str, ...]:
    return tuple(r for r in ROLES if not (r == "retrain" and cfg.retrain == "none"))


def get_references(
    cfg: RunConfig, data: UnlearnData, cache_dir: Path, progress: bool = True, build: bool = True
) -> References:
    refs = {role: get_reference(role, cfg, data, cache_dir, progress, build) for role in reference_roles(cfg)}
    return References(refs["original"], refs.get("retrain"))
