"""Typed configuration of a classification unlearning run: data, model, reference recipe, method."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from kernels.dispatch import BACKENDS
from orchestrator.datasets import dataset_help, dataset_path_prefixes
from orchestrator.errors import need_field, within
from orchestrator.fields import run_field
from orchestrator.methods import method_knobs, tuples
from orchestrator.models import NORMALIZE_HELP, model_help, parse_normalize
from orchestrator.training import TrainRecipe


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one classification unlearning run."""

    TASK = "classification"
    NESTED = {"recipe": ("train_", "reference training recipe")}
    FLAG_NAMES = {}

    dataset: str = run_field("mnist5k", spec=True, paths=dataset_path_prefixes(), help=dataset_help())
    data_dir: str | None = run_field(None, spec=True, paths=("",), help="CIFAR-10 python batch folder")
    image_size: int | None = run_field(None, spec=True, help="resize every image to S x S")
    max_data_gb: float | None = run_field(
        None, spec=True, help="memory the uint8 images may take (default: half the machine's memory)")
    image_column: str = run_field("image", spec=True, help="Parquet image column (default image)")
    label_column: str = run_field("label", spec=True, help="Parquet label column (default label)")
    id_column: str = run_field("id", spec=True, help="Parquet sample-id column (default id; absent: the row index)")
    model: str = run_field("resnet8", spec=True, help=model_help())
    code_dir: str | None = run_field(None, spec=True, paths=("",),
                                     help="folder holding your model's module (shipped to Ray workers)")
    width: int | None = run_field(None, spec=True, help="base channel width of the built-in ResNets (default per model)")
    normalize: str | None = run_field(None, spec=True, help=NORMALIZE_HELP)
    original: str | None = run_field(
        None, spec=True, paths=("",), help="your trained weights (.pt / .safetensors state_dict, runs:/..., "
        "models:/NAME@ALIAS); evaluated, not trained (default: trained with the recipe; hf:DIR models: the "
        "folder's weights)")
    retrain: str = run_field("train", spec=True, paths=("",), help="train (built with the recipe, cached) | PATH or "
                             "URI of your retrained weights | none")
    forget: str = run_field("class:3", spec=True, required=True, paths=("ids:",),
                            help="class:K[,K...], random:FRACTION, mislabeled:FRACTION or ids:FILE")
    seed: int = 0
    split_seed: int = run_field(0, spec=True, help="train/test split seed (kept fixed)")
    recipe: TrainRecipe = field(default_factory=TrainRecipe)
    method: str = "scissorhands"
    knobs: Any = None  # the method's config; None: its defaults
    kernels: str | None = run_field(None, spec=True, help=f"kernel backend: {' | '.join(BACKENDS)}")

    def __post_init__(self) -> None:
        object.__setattr__(self, "knobs", method_knobs(self.method, self.knobs, self.TASK))

    def validate(self) -> None:
        """Checks that need no data (the dataset and forget set are checked on loading)."""
        from orchestrator.models import check_model

        check_model(self.model, self.code_dir, self.width)
        parse_normalize(self.normalize)
        need_field(self.image_size is None or self.image_size >= 1, self, "image_size", "must be an integer >= 1")
        need_field(self.max_data_gb is None or self.max_data_gb > 0, self, "max_data_gb", "must be > 0")
        need_field(self.kernels is None or self.kernels in BACKENDS, self, "kernels", f"allowed {', '.join(BACKENDS)}")
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
