"""Original and retrain reference models, trained once and cached by content hash.

A cache entry is ``<cache>/<role>-<key>/model.pt`` plus ``meta.json`` holding the file's
sha256; an entry whose checksum does not match (truncated, corrupt, half-written) is
rebuilt, never loaded. Evaluated metrics are cached beside the model per forget set.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from orchestrator.config import RunConfig
from orchestrator.data import Dataset, UnlearnData
from orchestrator.evaluation import evaluate
from orchestrator.models import build_model
from orchestrator.storage import atomic_write_json, content_key, file_lock, load_checkpoint, save_checkpoint
from orchestrator.training import to_float, train_classifier

TRAINING_CODE_VERSION = 1  # bump when the training loop changes what a recipe produces


def default_cache_dir() -> Path:
    return Path(os.environ.get("SCISSORHANDS_CACHE") or Path.home() / ".cache" / "scissorhands-sweep")


def make_model(cfg: RunConfig, dataset: Dataset) -> nn.Module:
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


@dataclass
class Reference:
    role: str
    model: nn.Module
    path: Path

    def metrics(self, data: UnlearnData) -> dict[str, float]:
        """Metrics on this forget split, computed once and cached beside the model."""
        file = self.path / f"metrics-{data.forget_digest()}-{data.forget}.json".replace(":", "_")
        if file.is_file():
            try:
                return json.loads(file.read_text())
            except json.JSONDecodeError:
                pass  # a corrupt metrics file is recomputed
        result = evaluate(self.model, data)
        atomic_write_json(file, result)
        return result


@dataclass
class References:
    original: Reference
    retrain: Reference


def get_reference(
    role: str, cfg: RunConfig, data: UnlearnData, cache_dir: Path, progress: bool = True, build: bool = True
) -> Reference:
    """Load the cached reference, or train and cache it (``build=False``: a missing one is an error,
    so a sweep trial can never train references itself)."""
    spec = reference_spec(role, cfg, data)
    entry = Path(cache_dir) / f"{role}-{content_key(spec)}"
    model = make_model(cfg, data.dataset)
    with file_lock(Path(cache_dir) / f".{entry.name}.lock"):
        if load_checkpoint(entry, model) is not None:
            return Reference(role, model.eval(), entry)
        if not build:
            raise RuntimeError(f"{role} reference {entry} is missing; it must be built before the trials")
        for stale in entry.glob("metrics-*.json"):
            stale.unlink()
        torch.manual_seed(cfg.seed)
        model = make_model(cfg, data.dataset)
        generator = torch.Generator().manual_seed(cfg.seed)
        x, y = (data.dataset.x_train, data.dataset.y_train) if role == "original" else (data.x_retain, data.y_retain)
        r = cfg.recipe
        train_classifier(
            model, x, y, epochs=r.epochs, lr=r.lr, batch_size=r.batch_size, momentum=r.momentum,
            weight_decay=r.weight_decay, natural=data.dataset.natural_images, generator=generator,
            augmentation=r.augment,
            desc=f"train {role}", progress=progress,
        )
        save_checkpoint(role, entry, model, {"spec": spec})
    return Reference(role, model.eval(), entry)


def get_references(
    cfg: RunConfig, data: UnlearnData, cache_dir: Path, progress: bool = True, build: bool = True
) -> References:
    return References(
        get_reference("original", cfg, data, cache_dir, progress, build),
        get_reference("retrain", cfg, data, cache_dir, progress, build),
    )
