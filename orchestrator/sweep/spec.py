"""Search-space YAML -> a typed, validated SweepSpec (every error before Ray starts)."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from orchestrator.config import (
    METHOD_KNOBS,
    RECIPE_KNOBS,
    RunConfig,
    TrainRecipe,
    method_preset,
)
from orchestrator.data import ForgetSpec
from orchestrator.errors import UserError
from orchestrator.evaluation import CORE_METRICS, MIA_VARIANTS
from orchestrator.models import model_info

# Metrics every classification trial reports (means over seeds; each also as <name>_std).
CLASSIFICATION_METRICS = (
    *CORE_METRICS,
    *(f"MIA_{v}" for v in MIA_VARIANTS if v != "confidence"),
    "RTE_s",
    "avg_gap",
    *(f"gap_{m}" for m in CORE_METRICS),
    "forget_gap",  # mean of |UA - UA_rt| and |MIA - MIA_rt|: how far from forgetting like retrain
    "retain_gap",  # mean of |RA - RA_rt| and |TA - TA_rt|: how far from keeping utility like retrain
)

# Metrics a diffusion (class erasure) trial reports; gap_* are |metric - retrain generator's|.
DIFFUSION_METRICS = ("forget_acc", "retained_acc", "fid", "RTE_s", "gap_forget_acc", "gap_retained_acc", "gap_fid")
TASK_METRICS = {"classification": CLASSIFICATION_METRICS, "diffusion": DIFFUSION_METRICS}

Strict = ConfigDict(extra="forbid")


class Distribution(BaseModel):
    model_config = Strict
    type: Literal["uniform", "loguniform", "int", "choice"]
    low: float | None = None
    high: float | None = None
    values: list[Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> "Distribution":
        if self.type == "choice":
            if not self.values:
                raise ValueError("choice needs a non-empty 'values' list")
            if self.low is not None or self.high is not None:
                raise ValueError("choice takes 'values', not low/high")
            return self
        if self.low is None or self.high is None or self.values is not None:
            raise ValueError(f"{self.type} needs 'low' and 'high' (and no 'values')")
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low >= self.high:
            raise ValueError(f"bad range: low {self.low} must be < high {self.high}")
        if self.type == "loguniform" and self.low <= 0:
            raise ValueError(f"loguniform needs low > 0, got {self.low}")
        if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError(f"int needs integer bounds, got {self.low}..{self.high}")
        return self

    def tune_domain(self):
        from ray import tune

        if self.type == "uniform":
            return tune.uniform(self.low, self.high)
        if self.type == "loguniform":
            return tune.loguniform(self.low, self.high)
        if self.type == "int":
            return tune.randint(int(self.low), int(self.high) + 1)  # inclusive upper bound in the YAML
        return tune.choice(self.values)

    def contains(self, value) -> bool:
        if self.type == "choice":
            return value in self.values
        return self.low <= value <= self.high


class ObjectiveSpec(BaseModel):
    model_config = Strict
    metric: str
    direction: Literal["min", "max"]


class Resources(BaseModel):
    model_config = Strict
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)


class EarlyStopping(BaseModel):
    """Stop a trial whose repair has collapsed: retain training accuracy below ``min_value``
    after ``after_epoch`` epochs. Recorded as failed (pruned), like a diverged run."""

    model_config = Strict
    metric: Literal["train_acc_retain"] = "train_acc_retain"
    min_value: float = Field(50.0, ge=0, le=100)
    after_epoch: int = Field(0, ge=0)


class SweepSpec(BaseModel):
    model_config = Strict
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    task: Literal["classification", "diffusion"] = "classification"
    dataset: str = "mnist5k"
    data_dir: str | None = None
    model: str = "resnet8"
    width: int | None = Field(None, ge=1)
    forget: str
    split_seed: int = 0
    preset: Literal["auto", "reference"] = "auto"
    recipe: dict[str, Any] = {}  # reference recipe: classifier training, or the generator (diffusion)
    classifier: dict[str, Any] = {}  # diffusion only: the evaluation classifier's recipe
    fixed: dict[str, Any] = {}
    search: dict[str, Distribution]
    objectives: list[ObjectiveSpec] = Field(min_length=1)
    trials: int = Field(ge=1)
    seeds: list[int] = Field([0, 1, 2], min_length=1)  # a result is a mean over seeds
    resources: Resources = Resources()
    max_concurrent: int = Field(1, ge=1)
    early_stopping: EarlyStopping | None = None
    sampler_seed: int = 0
    kernels: Literal["reference", "fused", "triton"] | None = None

    @field_validator("search")
    @classmethod
    def _search_not_empty(cls, v: dict) -> dict:
        if not v:
            raise ValueError("needs at least one searched knob")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "SweepSpec":
        recipe_knobs, method_knobs = task_knobs(self.task)
        _only(self.recipe, recipe_knobs, "recipe")
        if self.task == "diffusion":
            from orchestrator.diffusion.config import ClassifierRecipe

            _only(self.classifier, [f.name for f in dataclasses.fields(ClassifierRecipe)], "classifier")
        elif self.classifier:
            raise ValueError("'classifier' applies to task diffusion only")
        _only(self.fixed, method_knobs, "fixed")
        _only(self.search, method_knobs, "search")
        metrics = TASK_METRICS[self.task]
        for obj in self.objectives:
            if obj.metric not in metrics:
                raise ValueError(f"unknown metric {obj.metric!r} for task {self.task}; allowed: {', '.join(metrics)}")
        if len({o.metric for o in self.objectives}) != len(self.objectives):
            raise ValueError("an objective metric is listed twice")
        both = sorted(set(self.fixed) & set(self.search))
        if both:
            raise ValueError(f"knob(s) {both} are both fixed and searched")
        return self

    # --- derived configs -------------------------------------------------------------
    def base_method(self):
        """Every method knob before the searched ones: preset + fixed (classification) or
        the diffusion config's defaults + fixed."""
        if self.task == "diffusion":
            return self._diffusion_config({}, self.seeds[0])
        size = model_info(self.model).size
        preset = method_preset(self.preset, size, ForgetSpec.parse(self.forget).kind)
        return dataclasses.replace(preset, **_tuples(self.fixed))

    def _diffusion_config(self, searched: dict, seed: int):
        from orchestrator.diffusion.config import ClassifierRecipe, DiffusionRunConfig, GeneratorRecipe

        return DiffusionRunConfig(
            dataset=self.dataset, data_dir=self.data_dir, forget=self.forget, seed=seed, split_seed=self.split_seed,
            generator=GeneratorRecipe(**_tuples(self.recipe)), classifier=ClassifierRecipe(**self.classifier),
            **_tuples(self.fixed), **_tuples(searched),
        )

    def run_config(self, searched: dict, seed: int):
        """The config of one run: RunConfig (classification) or DiffusionRunConfig."""
        if self.task == "diffusion":
            return self._diffusion_config(searched, seed)
        method = dataclasses.replace(self.base_method(), **_tuples(searched))
        return RunConfig(
            dataset=self.dataset, data_dir=self.data_dir, model=self.model, width=self.width, forget=self.forget,
            seed=seed, split_seed=self.split_seed, recipe=TrainRecipe(**self.recipe), method=method,
            kernels=self.kernels,
        )

    def default_point(self) -> dict | None:
        """The preset's values of the searched knobs, when all lie inside the ranges: trial 0."""
        base = dataclasses.asdict(self.base_method())
        point = {k: base[k] for k in self.search}
        return point if all(self.search[k].contains(v) for k, v in point.items()) else None


def task_knobs(task: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(reference-recipe knobs, method knobs) a task accepts."""
    if task == "diffusion":
        from orchestrator.diffusion.config import DiffusionRunConfig, GeneratorRecipe

        fixed_by_spec = {"dataset", "data_dir", "forget", "seed", "split_seed", "generator", "classifier"}
        method = tuple(f.name for f in dataclasses.fields(DiffusionRunConfig) if f.name not in fixed_by_spec)
        return tuple(f.name for f in dataclasses.fields(GeneratorRecipe)), method
    return RECIPE_KNOBS, METHOD_KNOBS


def _only(keys, allowed, where: str) -> None:
    unknown = sorted(set(keys) - set(allowed))
    if unknown:
        raise ValueError(f"unknown {where} key(s) {unknown}; allowed: {', '.join(allowed)}")


def _tuples(d: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def load_spec(path: str | Path) -> SweepSpec:
    """Parse and validate; every problem becomes one UserError line naming file, key and rule."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"search space {path}: file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"search space {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise UserError(f"search space {path}: expected a mapping of keys, got {type(raw).__name__}")
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        raise UserError(f"search space {path}: {loc}: {msg}") from None
    try:  # semantic checks that need the project's registries (model, forget spec, knob values)
        spec.base_method().validate()
        spec.run_config(spec.default_point() or {}, spec.seeds[0])
        if spec.task == "classification":
            model_info(spec.model)
    except (UserError, TypeError) as exc:
        raise UserError(f"search space {path}: {exc}") from None
    return spec
