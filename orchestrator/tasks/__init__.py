"""The task contract (classification, diffusion class erasure, text-to-image) and its registry.

A task knows its run config class, how to build and cache its references, how to run one
configuration on one seed (through the method registry) and what metrics that yields. The
CLI, the trial and the sweep call these, never a task by name.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from torch import nn

from orchestrator.cache import Cached
from orchestrator.errors import DivergenceError
from orchestrator.fields import spec_fields
from orchestrator.registry import Registry
from orchestrator.storage import content_key

BUILTIN: dict[str, str] = {
    "classification": "orchestrator.tasks.classification.task:TASK",
    "diffusion": "orchestrator.tasks.class_erasure.task:TASK",
    "text_to_image": "orchestrator.tasks.text_to_image.task:TASK",
}


@dataclass
class TrialResult:
    report: dict  # the JSON contract: original / retrain / unlearned (+ task summaries) / config
    model: nn.Module
    history: list[dict]
    extras: dict  # every metric, method statistics, artifacts


@dataclass
class SeedRun:
    """One configuration on one seed, flattened for a sweep: metrics and what to log."""

    metrics: dict[str, float]
    model: nn.Module
    forget_digest: str
    artifacts: list[str]
    layers: dict[str, list[str]]  # the parameters the method chose to change (logged with the trial)
    shared_seconds_saved: float = 0.0  # work found in the shared cache instead of computed (methods/shared_work.py)
    tags: dict[str, str] = field(default_factory=dict)  # for the trial's MLflow run (preprocessing, warnings)


class Task(ABC):
    name: ClassVar[str]
    config_class: ClassVar[type]
    default_method: ClassVar[str]
    core_metrics: ClassVar[tuple[str, ...]]  # the report's columns
    metrics: ClassVar[tuple[str, ...]]  # what a sweep trial reports: the objectives allowed
    gap_metrics: ClassVar[tuple[str, ...]]  # objectives that are 0 for retrain by definition
    baseline_metrics: ClassVar[tuple[str, ...]] = ()  # the untouched original's, for paired comparisons
    utility_metric: ClassVar[str | None]  # accuracy that must stay clear of chance (the collapse check)
    # What the sweep layer (stats, pick, summary, frontier table) reads instead of naming metrics:
    headline_metric: ClassVar[str | None] = None
    """The one figure (lower is better) a pick's verdict and the paired comparison with doing
    nothing use; a trial reports it only where it can be measured (classification: ``avg_gap``,
    needs a retrain model). None: the task has none, and ``pick`` cannot validate."""
    headline_baseline: ClassVar[str | None] = None
    """The untouched original's headline on the same seed (one of ``baseline_metrics``)."""
    headline_label: ClassVar[str | None] = None
    """The headline as people read it (``Avg. Gap``)."""
    guard_metric: ClassVar[str | None] = None
    """A per-seed 0 / 1 metric that is 1 where the run destroyed what it should keep (text-to-image:
    ``eroded``); a sweep trial with any such seed is ``eroded``: off the frontier, never picked."""
    time_metric: ClassVar[str] = "RTE_s"
    """The unlearning's wall-clock seconds (references have none)."""
    table_metrics: ClassVar[tuple[str, ...]] = ()
    """Columns of the comparison and frontier tables beside the objectives (``scissorhands
    frontier``, pick's search-vs-held-out table), where a trial has them."""
    # search-space keys that set a nested recipe of the run config: YAML key -> config field
    spec_recipes: ClassVar[dict[str, str]]

    @property
    def spec_fields(self) -> tuple[str, ...]:
        """Search-space keys copied into the run config: the config's fields declared ``spec``."""
        return tuple(f.name for f in spec_fields(self.config_class))

    def artifact_dir(self, cfg: Any, cache_dir: Path) -> Path:
        """Where a run's files (sample grids) go unless the caller names a folder: one per config."""
        return Path(cache_dir) / f"{self.name}-runs" / content_key(cfg.to_dict())

    def preset_context(self, cfg: Any) -> dict[str, str]:
        """What a method's preset depends on (model size, kind of forget set)."""
        return {}

    @abstractmethod
    def reference_roles(self, cfg: Any) -> tuple[str, ...]:
        """The references ``cfg`` needs; each is built on its own (one Ray task in a sweep)."""

    def reference_seed(self, cfg: Any) -> int:
        """The seed ``cfg``'s references are trained with: runs of one reference seed share them."""
        return cfg.seed

    @abstractmethod
    def build_reference(self, cfg: Any, role: str, cache_dir: Path, progress: bool = True) -> tuple[Cached, dict | None]:
        """Train or load one reference; its core metrics (None: a role with no metrics of its own)."""

    def build_references(self, cfg: Any, cache_dir: Path, progress: bool = True) -> dict[str, dict]:
        """Every reference ``cfg`` needs, one after another in this process (``scissorhands train``);
        their core metrics by role (may be empty)."""
        built = {role: self.build_reference(cfg, role, cache_dir, progress)[1] for role in self.reference_roles(cfg)}
        return {role: metrics for role, metrics in built.items() if metrics is not None}

    def reference_warnings(self, cfg: Any, references: dict[str, dict]) -> list[str]:
        """Why a reference (core metrics by role) makes a poor target for ``cfg``, one line each
        (empty: none): the report, the sweep summary and ``pick`` carry them."""
        return []

    @abstractmethod
    def run(self, cfg: Any, cache_dir: Path, *, progress: bool = True,
            on_epoch: Callable[[dict], None] | None = None, artifact_dir: Path | None = None,
            build: bool = True) -> TrialResult:
        """One unlearning run, evaluated against its references (``build=False``: they must exist)."""

    def run_seed(self, cfg: Any, cache_dir: Path, *, build: bool, on_epoch: Callable[[dict], None] | None = None,
                 artifact_dir: Path | None = None, progress: bool = False) -> SeedRun:
        """``run`` flattened into sweep metrics."""
        result = self.run(cfg, cache_dir, progress=progress, on_epoch=on_epoch, artifact_dir=artifact_dir,
                          build=build)
        return SeedRun(self.trial_metrics(result.report), result.model, result.extras["forget_digest"],
                       result.extras.get("artifacts", []), result.report.get("layers", {}),
                       result.extras.get("shared_seconds_saved", 0.0), self.run_tags(result.report))

    def run_tags(self, report: dict) -> dict[str, str]:
        """What a sweep trial's MLflow run is tagged with from one seed's report."""
        return {}

    @abstractmethod
    def trial_metrics(self, report: dict) -> dict[str, float]:
        """The flat metrics of one report (what ``metrics`` names)."""

    @abstractmethod
    def format_table(self, report: dict) -> str:
        """The text table ``scissorhands unlearn`` prints."""

    def core(self, metrics: dict | None, keys: tuple[str, ...] | None = None, digits: int = 4) -> dict | None:
        """The named metrics (default: the core ones) a model has, rounded."""
        if metrics is None:
            return None
        return {k: round(float(metrics[k]), digits) for k in keys or self.core_metrics if k in metrics}

    def report(self, metrics: dict[str, dict | None], seconds: float, cfg: Any,
               keys: tuple[str, ...] | None = None, digits: int = 4) -> dict:
        """The one report shape: each role's core metrics (rounded; None where a role has no
        model), RTE, the task's summary figures, and the config (with its task)."""
        out = {role: self.core(metrics.get(role), keys, digits) for role in ("original", "retrain")}
        out["unlearned"] = self.core(metrics["unlearned"], keys, digits) | {"RTE_s": round(seconds, 3)}
        out.update(self.summary(metrics))
        if cfg is not None:
            out["config"] = {"task": self.name, **cfg.to_dict()}
        return out

    def summary(self, metrics: dict[str, dict | None]) -> dict[str, float]:
        return {}

    def marker(self, metrics: dict, retrain: dict | None) -> dict[str, float]:
        """A reference model as a point in objective space (no RTE)."""
        return self.trial_metrics(self.report({"original": metrics, "retrain": retrain, "unlearned": metrics},
                                              math.nan, None))

    def check_collapse(self, original: dict, unlearned: dict, classes: int, hint: str) -> None:
        """A model that was clearly working and now sits at chance has been destroyed, not unlearned."""
        chance = 100.0 / classes
        key = self.utility_metric
        if original[key] >= 3 * chance and unlearned[key] <= 1.5 * chance:
            raise DivergenceError(
                f"unlearned model collapsed: {key} {unlearned[key]:.1f}% is at chance level ({chance:.1f}% for "
                f"{classes} classes; original {original[key]:.1f}%); {hint}"
            )


REGISTRY: Registry[Task] = Registry("task", BUILTIN)


def list_tasks() -> list[str]:
    return REGISTRY.names()


def get_task(name: str) -> Task:
    return REGISTRY.get(name)
