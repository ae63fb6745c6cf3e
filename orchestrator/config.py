"""Typed configuration of a classification unlearning run: data, model, reference recipe, method."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from orchestrator.errors import need_positive_ints, need_sgd, within
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

    def validate(self) -> None:
        need_positive_ints(self, ("epochs", "batch_size"))
        need_sgd(self)


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one classification unlearning run."""

    TASK = "classification"
    NESTED = {"recipe": ("train_", "reference training recipe")}
    HELP = {
        "dataset": "mnist5k | cifar10 | npz:PATH | imagefolder:DIR | parquet:PATH",
        "data_dir": "CIFAR-10 python batch folder",
        "image_size": "resize every image to S x S",
        "max_data_gb": "memory the uint8 images may take (default: half the machine's memory)",
        "image_column": "Parquet image column (default image)",
        "label_column": "Parquet label column (default label)",
        "id_column": "Parquet sample-id column (default id; absent: the row index)",
        "model": "resnet8 | resnet20 | resnet18 | MODULE:FUNCTION (your factory) | hf:DIR (local Hugging Face model)",
        "code_dir": "folder holding your model's module (shipped to Ray workers)",
        "width": "base channel width of the built-in ResNets (default per model)",
        "original": "your trained weights (.pt / .safetensors state_dict, runs:/..., models:/NAME@ALIAS); "
                    "evaluated, not trained (default: trained with the recipe; hf:DIR models: the folder's weights)",
        "retrain": "train (built with the recipe, cached) | PATH or URI of your retrained weights | none",
        "forget": "class:K[,K...], random:FRACTION, mislabeled:FRACTION or ids:FILE",
        "split_seed": "train/test split seed (kept fixed)",
        "kernels": "kernel backend: reference | fused | triton",
    }
    FLAG_NAMES = {}

    dataset: str = "mnist5k"
    data_dir: str | None = None
    image_size: int | None = None
    max_data_gb: float | None = None
    image_column: str = "image"
    label_column: str = "label"
    id_column: str = "id"
    model: str = "resnet8"
    code_dir: str | None = None
    width: int | None = None
    original: str | None = None  # None: trained with the recipe
    retrain: str = "train"  # train | PATH or URI | none
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
        """Checks that need no data (the dataset and forget set are checked on loading)."""
        from orchestrator.models import check_model

        check_model(self.model, self.code_dir, self.width)
        with within("recipe"):
            self.recipe.validate()
        self.knobs.validate()

    def data_options(self) -> dict:
        """``load_dataset``'s options beyond name, folder and split seed."""
        return {"image_size": self.image_size, "max_gb": self.max_data_gb, "image_column": self.image_column,
                "label_column": self.label_column, "id_column": self.id_column}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        d = dict(d)
        return cls(recipe=TrainRecipe(**d.pop("recipe", {})), knobs=tuples(d.pop("knobs", None) or {}), **d)
