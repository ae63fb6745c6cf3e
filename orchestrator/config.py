"""Typed configuration of a classification unlearning run: data, model, reference recipe, method."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from orchestrator.methods import method_knobs, tuples


@dataclass(frozen=True)
class TrainRecipe:
    """How the original and retrain reference models are trained (same recipe for both)."""

    epochs: int = 12
    lr: float = 0.1
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: bool = True  # random shifts (and flips for natural images); off lets a model memorise


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one classification unlearning run."""

    TASK = "classification"
    NESTED = {"recipe": ("train_", "reference training recipe")}
    HELP = {
        "dataset": "mnist5k | cifar10 | npz:PATH",
        "data_dir": "CIFAR-10 python batch folder",
        "model": "resnet8 | resnet20 | resnet18",
        "width": "base channel width (default per model)",
        "forget": "class:K, random:FRACTION or mislabeled:FRACTION",
        "split_seed": "train/test split seed (kept fixed)",
        "kernels": "kernel backend: reference | fused | triton",
    }
    FLAG_NAMES = {}

    dataset: str = "mnist5k"
    data_dir: str | None = None
    model: str = "resnet8"
    width: int | None = None
    forget: str = "class:3"
    seed: int = 0
    split_seed: int = 0
    recipe: TrainRecipe = field(default_factory=TrainRecipe)
    method: str = "scissorhands"
    knobs: Any = None  # the method's config; None: its defaults
    kernels: str | None = None  # kernel backend override (reference | fused | triton)

    def __post_init__(self) -> None:
        object.__setattr__(self, "knobs", method_knobs(self.method, self.knobs, self.TASK))

    def validate(self) -> None:
        """Checks that need no data (the dataset, model and forget set are checked on loading)."""
        self.knobs.validate()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        d = dict(d)
        return cls(recipe=TrainRecipe(**d.pop("recipe", {})), knobs=tuples(d.pop("knobs", None) or {}), **d)
