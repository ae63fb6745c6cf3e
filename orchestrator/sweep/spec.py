"""Search-space YAML -> a typed, validated SweepSpec (every error before Ray starts)."""
from __future__ import annotations

import dataclasses
import functools
import math
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from orchestrator.errors import UserError
from orchestrator.fields import default_of, spec_fields
from orchestrator.methods import list_methods, method_for, tuples
from orchestrator.tasks import get_task, list_tasks

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


class Racing(BaseModel):
    """Stop a configuration early: after each of its seeds but the last, if a completed trial of
    the frontier beats its running seed means in every objective by more than ``margin`` seed
    standard deviations (each objective's median per-seed std over the completed trials).
    Checked again after every seed (successive halving over seeds); nothing is stopped before
    ``min_trials`` trials have completed."""

    model_config = Strict
    margin: float = Field(1.0, gt=0)
    min_trials: int = Field(3, ge=1)


class MethodSpace(BaseModel):
    """One method's part of a comparison sweep (``methods:``)."""

    model_config = Strict
    preset: str = "auto"
    fixed: dict[str, Any] = {}
    search: dict[str, Distribution]
    start: list[dict[str, Any]] = []


class SweepSpec(BaseModel):
    """The keys every search space has. A task's run fields (its config's fields declared
    ``spec``, e.g. dataset, forget) are added by :func:`spec_model`, one model per task, with the
    config's defaults; :func:`parse_spec` picks the model by the ``task`` key."""

    model_config = Strict
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    task: str = "classification"
    method: str | None = None  # default: the task's default method
    preset: str = "auto"
    recipe: dict[str, Any] = {}  # the reference recipe (classifier training, or the generator for diffusion)
    classifier: dict[str, Any] = {}  # diffusion: the evaluation classifier's recipe
    fixed: dict[str, Any] = {}
    search: dict[str, Distribution] = {}
    # Points the searcher runs first (after the preset's, when it lies in the ranges): known
    # settings, e.g. a paper's, each giving every searched knob a value inside its range.
    start: list[dict[str, Any]] = []
    # A comparison: each method its own space, the same trial budget (``trials`` each) and seeds.
    methods: dict[str, MethodSpace] | None = None
    # The sweep's Optuna study (sweep/study.py): an RDB URL (default: sqlite in the sweep folder, optuna.db).
    study_storage: str | None = None
    objectives: list[ObjectiveSpec] = Field(min_length=1)
    trials: int = Field(ge=1)
    seeds: list[int] = Field([0, 1, 2], min_length=1)  # a result is a mean over seeds
    resources: Resources = Resources()
    reference_resources: Resources | None = None  # one reference's Ray task; default: a trial's
    max_concurrent: int = Field(1, ge=1)
    parallel_seeds: int = Field(1, ge=1)  # seeds a trial runs at once (it reserves resources for each)
    early_stopping: EarlyStopping | None = None
    racing: Racing | None = None
    sampler_seed: int = 0

    @model_validator(mode="after")
    def _consistent(self) -> "SweepSpec":
        if self.methods is not None:
            if self.method or self.search or self.fixed or self.start or self.preset != "auto":
                raise ValueError("'methods' replaces method, preset, fixed, search and start; give those per method")
            if not self.methods:
                raise ValueError("'methods' needs at least one method")
            self.per_method()  # validates each method's space
            return self
        if not self.search:
            raise ValueError("search: needs at least one searched knob")
        task = get_task(self.task)
        method_name = self.method or task.default_method
        if method_name not in list_methods(self.task):
            raise ValueError(f"unknown method {method_name!r} for task {self.task}; "
                             f"allowed: {', '.join(list_methods(self.task))}")
        hints = typing.get_type_hints(task.config_class)
        for key in ("recipe", "classifier"):
            if key in task.spec_recipes:
                _only(getattr(self, key), [f.name for f in dataclasses.fields(hints[task.spec_recipes[key]])], key)
            elif getattr(self, key):
                raise ValueError(f"{key!r} does not apply to task {self.task}")
        knobs = (*method_for(method_name, self.task).knob_names(), *run_settings(task))
        _only(self.fixed, knobs, "fixed")
        _only(self.search, knobs, "search")
        for obj in self.objectives:
            if obj.metric not in task.metrics:
                raise ValueError(f"unknown metric {obj.metric!r} for task {self.task}; "
                                 f"allowed: {', '.join(task.metrics)}")
            if getattr(self, "retrain", None) == "none" and obj.metric in task.gap_metrics:
                raw = [m for m in task.metrics if m not in task.gap_metrics]
                raise ValueError(f"objective {obj.metric!r} is a gap to the retrain model, and retrain: none has "
                                 f"no retrain model; use raw metrics: {', '.join(raw)}")
        if len({o.metric for o in self.objectives}) != len(self.objectives):
            raise ValueError("an objective metric is listed twice")
        for i, point in enumerate(self.start):
            if set(point) != set(self.search):
                raise ValueError(f"start.{i}: give exactly the searched knobs {sorted(self.search)}, "
                                 f"got {sorted(point)}")
            outside = [k for k, v in point.items() if not self.search[k].contains(v)]
            if outside:
                k = outside[0]
                raise ValueError(f"start.{i}.{k}: {point[k]!r} lies outside its search range")
        both = sorted(set(self.fixed) & set(self.search))
        if both:
            raise ValueError(f"knob(s) {both} are both fixed and searched")
        return self

    def per_method(self) -> list["SweepSpec"]:
        """One single-method spec per method of a comparison (the spec itself otherwise)."""
        if self.methods is None:
            return [self]
        base, out = self.model_dump(), []
        for name, space in self.methods.items():
            try:
                out.append(type(self).model_validate({**base, "method": name, "methods": None, **space.model_dump()}))
            except ValidationError as exc:
                err = exc.errors()[0]
                raise ValueError(f"methods.{name}: {err['msg'].removeprefix('Value error, ')}") from None
        return out

    @property
    def reference_request(self) -> Resources:
        return self.reference_resources or self.resources

    @property
    def task_contract(self):
        return get_task(self.task)

    @property
    def method_contract(self):
        return method_for(self.method or self.task_contract.default_method, self.task)

    # --- derived configs -------------------------------------------------------------
    def run_config(self, searched: dict, seed: int):
        """The run config of one trial on one seed: the preset's knobs, then fixed, then searched
        (``fixed`` / ``search`` keys that are run settings, e.g. diffusion's image_size, set those)."""
        task, method = self.task_contract, self.method_contract
        hints = typing.get_type_hints(task.config_class)
        fields = {k: getattr(self, k) for k in task.spec_fields}
        recipes = {field: hints[field](**tuples(getattr(self, key))) for key, field in task.spec_recipes.items()}
        chosen = {**self.fixed, **searched}
        settings = {k: v for k, v in chosen.items() if k in run_settings(task)}
        cfg = task.config_class(**fields, **recipes, **tuples(settings), seed=seed, method=method.name)
        preset = method.preset(self.preset, **task.preset_context(cfg))
        knobs = {k: v for k, v in chosen.items() if k not in settings}
        return dataclasses.replace(cfg, knobs=method.config(preset, **knobs))

    def first_points(self) -> list[dict]:
        """What the searcher runs before it samples: the preset's point (when inside the ranges), then ``start``."""
        default = self.default_point()
        return [default] * (default is not None and default not in self.start) + list(self.start)

    def default_point(self) -> dict | None:
        """The preset's values of the searched knobs, when all lie inside the ranges: trial 0."""
        cfg = self.run_config({}, self.seeds[0])
        base = {**dataclasses.asdict(cfg), **dataclasses.asdict(cfg.knobs)}
        point = {k: base[k] for k in self.search}
        return point if all(self.search[k].contains(v) for k, v in point.items()) else None


@functools.cache
def spec_model(task_name: str) -> type[SweepSpec]:
    """The search-space model of one task: :class:`SweepSpec` plus the task's run fields."""
    config = get_task(task_name).config_class
    hints = typing.get_type_hints(config)
    run = {f.name: (hints[f.name], ... if f.metadata["required"] else default_of(f)) for f in spec_fields(config)}
    return create_model(f"SweepSpec_{task_name}", __base__=SweepSpec, __module__=__name__, **run)


def parse_spec(raw: dict) -> SweepSpec:
    """A search space as a mapping, validated with its task's model (pydantic errors, as ``model_validate``)."""
    task = raw.get("task", "classification")
    if task not in list_tasks():
        raise UserError(f"task: unknown task {task!r}; allowed: {', '.join(list_tasks())}")
    return spec_model(task).model_validate(raw)


def run_settings(task) -> tuple[str, ...]:
    """Run-config fields a search space may fix or search beside the method's knobs."""
    taken = {*task.spec_fields, *task.spec_recipes.values(), "seed", "method", "knobs"}
    return tuple(f.name for f in dataclasses.fields(task.config_class) if f.name not in taken)


def _only(keys, allowed, where: str) -> None:
    unknown = sorted(set(keys) - set(allowed))
    if unknown:
        raise ValueError(f"unknown {where} key(s) {unknown}; allowed: {', '.join(allowed)}")


def absolute_paths(raw: dict) -> dict:
    """Relative paths that exist here, made absolute: trials run in other folders (and nodes).
    Which values are paths, behind which prefixes, the task's run fields declare (``paths``)."""
    out = dict(raw)
    task = out.get("task", "classification")
    if task not in list_tasks():
        return out
    for f in spec_fields(get_task(task).config_class):
        value = out.get(f.name)
        prefix = next((p for p in f.metadata["paths"] if isinstance(value, str) and value.startswith(p)), None)
        if prefix is None or value in ("train", "none"):  # retrain's words, not paths
            continue
        path = Path(value.removeprefix(prefix))
        if not path.is_absolute() and path.exists():
            out[f.name] = prefix + str(path.resolve())
    return out


def _unknown_key(key: str, task: str) -> str:
    """Why a top-level key is refused: another task's run field, or no key at all."""
    takes = [t for t in list_tasks() if t != task and key in get_task(t).spec_fields]
    return f"does not apply to task {task} (a key of {', '.join(takes)})" if takes else "unknown key"


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
        spec = parse_spec(absolute_paths(raw))
    except UserError as exc:
        raise UserError(f"search space {path}: {exc}") from None
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = _unknown_key(loc, raw.get("task", "classification"))
        raise UserError(f"search space {path}: {loc}: {msg}") from None
    try:  # semantic checks that need the project's registries (model, forget spec, knob values)
        for sub in spec.per_method():
            for point in [sub.default_point() or {}, *sub.start]:
                sub.run_config(point, sub.seeds[0]).validate()
    except (UserError, TypeError) as exc:
        raise UserError(f"search space {path}: {exc}") from None
    return spec
