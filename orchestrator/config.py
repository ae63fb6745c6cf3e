"""Typed run configuration: data, model, reference-training recipe, method knobs, presets."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields, replace

from orchestrator.errors import UserError


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
class ScissorhandsConfig:
    """Every constant of the method (scissorhands.md), reference values where not measured here."""

    trim_ratio: float = 0.03
    projection_strength: float = 0.5  # GEM margin: the smallest coefficient a firing projection applies
    forget_weight: float = 0.05  # lambda in L_r - lambda * L_f
    epochs: int = 10
    lr: float = 5e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256  # retain and forget loaders, and the r batch
    score_batches: int = 1
    score_batch_size: int = 256
    memory_batches: int = 1
    project_every: int = 1
    projection_scope: str = "global"  # global | per_layer
    projection_eps: float = 1e-3
    trim_layers: tuple[str, ...] = ()  # regexes on parameter names; () = the model's late layers
    project_layers: tuple[str, ...] = ()  # regexes; () = the model's late layers (BatchNorm included)
    init: str = "kaiming_uniform"  # kaiming_uniform | zeros
    # BatchNorm mode of the model while scoring, and of the frozen copy that gives r. The
    # reference scores in train mode and takes r in eval mode (running statistics).
    score_bn_mode: str = "train"  # train | eval
    memory_bn_mode: str = "eval"  # eval | train

    def validate(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise UserError(msg)

        need(0.0 < self.trim_ratio < 1.0, f"--trim-ratio {self.trim_ratio}: must be in (0, 1)")
        need(self.projection_strength >= 0, f"--projection-strength {self.projection_strength}: must be >= 0")
        need(self.forget_weight >= 0, f"--forget-weight {self.forget_weight}: must be >= 0")
        need(self.epochs >= 0, f"--epochs {self.epochs}: must be >= 0")
        need(self.lr > 0 and math.isfinite(self.lr), f"--lr {self.lr}: must be a positive number")
        need(0 <= self.momentum < 1, f"--momentum {self.momentum}: must be in [0, 1)")
        need(self.weight_decay >= 0, f"--weight-decay {self.weight_decay}: must be >= 0")
        for name in ("batch_size", "score_batches", "score_batch_size", "memory_batches", "project_every"):
            value = getattr(self, name)
            need(value >= 1, f"--{name.replace('_', '-')} {value}: must be an integer >= 1")
        need(
            self.projection_scope in ("global", "per_layer"),
            f"--projection-scope {self.projection_scope!r}: allowed global, per_layer",
        )
        need(self.projection_eps > 0, f"--projection-eps {self.projection_eps}: must be > 0")
        need(self.init in INITS, f"--init {self.init!r}: allowed {', '.join(INITS)}")
        for name in ("score_bn_mode", "memory_bn_mode"):
            value = getattr(self, name)
            need(value in BN_MODES, f"--{name.replace('_', '-')} {value!r}: allowed {', '.join(BN_MODES)}")


INITS = ("kaiming_uniform", "zeros")
BN_MODES = ("train", "eval")

# The public reference implementation's values (CIFAR-10, ResNet-18, random 10%).
REFERENCE = ScissorhandsConfig()

# CPU defaults for small models (ResNet-8/20), measured on mnist5k over 3 seeds and validated
# on 5 more (README, "How the defaults were chosen"). Keyed by (model size, forget kind).
# Class-wise: the reference values with trim 0.01, margin 0 and 5 epochs match the reference
# preset within noise (Avg. Gap 0.33 vs 0.42) at half its time. Mislabeled: lambda 0.01 and
# 3 epochs. Random: nothing measured beats doing nothing on mnist5k; the gentlest repair
# tried (trim 0.003, lr 2e-3, 2 epochs) at least does no harm on average. Large models (ResNet-18, the paper's CIFAR-10 setting) keep the
# reference values: that is where they were tuned, and it cannot be re-measured on a CPU.
_SMALL_CLASS = replace(REFERENCE, trim_ratio=0.01, projection_strength=0.0, epochs=5)
_SMALL_MISLABELED = replace(_SMALL_CLASS, forget_weight=0.01, epochs=3)
MEASURED_DEFAULTS: dict[tuple[str, str], ScissorhandsConfig] = {
    ("small", "class"): _SMALL_CLASS,
    ("small", "random"): replace(_SMALL_MISLABELED, trim_ratio=0.003, lr=2e-3, epochs=2),
    ("small", "mislabeled"): _SMALL_MISLABELED,
    ("large", "class"): REFERENCE,
    ("large", "random"): REFERENCE,
    ("large", "mislabeled"): REFERENCE,
}

PRESETS = ("auto", "reference")


def method_preset(preset: str, model_size: str, forget_kind: str) -> ScissorhandsConfig:
    if preset == "reference":
        return REFERENCE
    if preset == "auto":
        return MEASURED_DEFAULTS[(model_size, forget_kind)]
    raise UserError(f"--preset {preset!r}: allowed {', '.join(PRESETS)}")


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one unlearning run."""

    dataset: str = "mnist5k"
    data_dir: str | None = None
    model: str = "resnet8"
    width: int | None = None
    forget: str = "class:3"
    seed: int = 0
    split_seed: int = 0
    recipe: TrainRecipe = field(default_factory=TrainRecipe)
    method: ScissorhandsConfig = field(default_factory=ScissorhandsConfig)
    kernels: str | None = None  # kernel backend override (reference | fused | triton)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        d = dict(d)
        recipe = TrainRecipe(**d.pop("recipe", {}))
        method = dict(d.pop("method", {}))
        for key in ("trim_layers", "project_layers"):
            if key in method:
                method[key] = tuple(method[key])
        return cls(recipe=recipe, method=ScissorhandsConfig(**method), **d)


METHOD_KNOBS = tuple(f.name for f in fields(ScissorhandsConfig))
RECIPE_KNOBS = tuple(f.name for f in fields(TrainRecipe))


def with_method(cfg: RunConfig, **knobs) -> RunConfig:
    unknown = sorted(set(knobs) - set(METHOD_KNOBS))
    if unknown:
        raise UserError(f"unknown method knob(s) {unknown}; allowed: {', '.join(METHOD_KNOBS)}")
    return replace(cfg, method=replace(cfg.method, **knobs))
