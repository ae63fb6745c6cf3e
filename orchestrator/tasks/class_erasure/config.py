"""Typed configuration of a class-erasure run on a class-conditional generator.

:class:`DiffusionRunConfig` holds the data, the two reference recipes (generator,
classifier), evaluation and hardware settings, and names its method; the method's knobs
are its own config (``knobs``). How the defaults were measured: README,
"`scissorhands unlearn --task diffusion`".
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

from orchestrator.training import TrainRecipe
from orchestrator.diffusion.settings import SamplingSettings
from orchestrator.datasets import dataset_help, dataset_path_prefixes
from orchestrator.errors import FieldError, UserError, need_field, need_positive_ints, within
from orchestrator.fields import run_field
from orchestrator.methods import get_method, method_knobs, tuples

NOISE_SCHEDULES = ("squaredcos_cap_v2", "linear", "scaled_linear")
IMAGE_SIZES = (8, 16, 28, 32)


@dataclass(frozen=True)
class GeneratorRecipe:
    """The class-conditional UNet2DModel and how original / retrain generators are trained.

    AdamW with linear warm-up then cosine decay to zero, and an EMA of the weights (the
    EMA weights are the generator); labels are dropped to the null label with
    ``p_uncond`` so classifier-free guidance works at sampling time.
    """

    widths: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    attention_head_dim: int = 16
    norm_groups: int = 8
    steps: int = 1500
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    ema_decay: float = 0.995
    p_uncond: float = 0.1
    train_timesteps: int = 1000
    noise_schedule: str = "squaredcos_cap_v2"

    def validate(self) -> None:
        need_field(len(self.widths) >= 2 and all(w >= 1 for w in self.widths), self, "widths",
                   "need at least 2 positive channel widths, e.g. 32 64 64")
        need_field(all(w % self.norm_groups == 0 for w in self.widths), self, "norm_groups",
                   f"must divide every width in {self.widths}")
        need_positive_ints(self, ("layers_per_block", "attention_head_dim", "norm_groups", "steps", "batch_size",
                                  "train_timesteps"))
        need_field(self.lr > 0 and math.isfinite(self.lr), self, "lr", "must be a positive number")
        need_field(self.weight_decay >= 0, self, "weight_decay", "must be >= 0")
        need_field(self.warmup_steps >= 0, self, "warmup_steps", "must be >= 0")
        need_field(0.0 <= self.ema_decay < 1.0, self, "ema_decay", "must be in [0, 1) (0 = no EMA)")
        need_field(0.0 <= self.p_uncond < 1.0, self, "p_uncond", "must be in [0, 1)")
        need_field(self.noise_schedule in NOISE_SCHEDULES, self, "noise_schedule",
                   f"allowed {', '.join(NOISE_SCHEDULES)}")


@dataclass(frozen=True)
class ClassifierRecipe(TrainRecipe):
    """The evaluation classifier (orchestrator.models ResNet) on real images at the generator's
    size, trained with the classifier recipe's knobs."""

    epochs: int = 15
    model: str = "resnet8"
    width: int = 16

    def validate(self) -> None:
        from orchestrator.models import get_model_family

        get_model_family(self.model)
        need_positive_ints(self, ("width",))
        super().validate()


@dataclass(frozen=True)
class DiffusionRunConfig(SamplingSettings):
    """Everything that defines one class-erasure run: a class-conditional generator trained on
    ``dataset`` forgets ``forget = "class:K"``."""

    TASK = "diffusion"
    NESTED = {"generator": ("gen_", "reference generator recipe"),
              "classifier": ("clf_", "evaluation classifier recipe")}
    FLAG_NAMES = {}

    # data and references
    dataset: str = run_field("mnist5k", spec=True, paths=dataset_path_prefixes(), help=dataset_help())
    data_dir: str | None = run_field(None, spec=True, paths=("",), help="dataset folder (CIFAR-10 batches)")
    forget: str = run_field("class:3", spec=True, required=True, help="class:K")
    seed: int = 0
    split_seed: int = run_field(0, spec=True, help="train/test split seed (kept fixed)")
    image_size: int = run_field(16, help=f"generator / classifier image size ({', '.join(map(str, IMAGE_SIZES))})")
    generator: GeneratorRecipe = field(default_factory=GeneratorRecipe)
    classifier: ClassifierRecipe = field(default_factory=ClassifierRecipe)
    # the method and its knobs (None: the method's defaults)
    method: str = "scissorhands_diffusion"
    knobs: Any = None
    # evaluation (sampling: SamplingSettings)
    samples_per_class: int = run_field(
        50, help="generated samples per class for evaluation (same noise for every model)")

    def __post_init__(self) -> None:
        object.__setattr__(self, "knobs", method_knobs(self.method, self.knobs, self.TASK))

    def forget_class(self) -> int:
        from orchestrator.forget import ForgetSpec

        spec = ForgetSpec.parse(self.forget)
        if spec.forget_class is None:
            raise FieldError("forget", self.forget, "class erasure needs one class, e.g. class:3")
        return spec.forget_class

    def validate(self) -> None:
        """Every check that needs no data or model, so bad input fails before any training."""
        need_positive_ints(self, ("samples_per_class",))
        self.validate_sampling()
        self.knobs.validate()
        if "attn2" in getattr(self.knobs, "trim_modules", ()):
            raise FieldError("trim_modules", "attn2", "the class-conditional UNet2DModel has no cross-attention "
                             "(labels enter through the time embedding); allowed here: attn1_up, attn, all or "
                             "regexes. attn2 applies to the text_to_image task's Stable Diffusion UNets")
        need_field(self.image_size in IMAGE_SIZES, self, "image_size", f"allowed {', '.join(map(str, IMAGE_SIZES))}")
        down = 2 ** (len(self.generator.widths) - 1)
        need_field(self.image_size % down == 0, self, "image_size", f"must be divisible by {down} for "
                   f"{len(self.generator.widths)} UNet levels (generator widths {self.generator.widths})")
        forget_class = self.forget_class()
        anchor_class = getattr(self.knobs, "anchor_class", None)
        if anchor_class is not None and anchor_class == forget_class:
            raise FieldError("anchor_class", anchor_class, f"must differ from the forgotten class ({self.forget})")
        with within("generator"):
            self.generator.validate()
        with within("classifier"):
            self.classifier.validate()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DiffusionRunConfig":
        d = dict(d)
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise UserError(f"unknown diffusion config key(s) {unknown}; allowed: {', '.join(DIFFUSION_KNOBS)}")
        gen = dict(d.pop("generator", None) or {})
        clf = dict(d.pop("classifier", None) or {})
        try:
            return cls(generator=GeneratorRecipe(**tuples(gen)), classifier=ClassifierRecipe(**clf), **d)
        except TypeError as exc:
            raise UserError(f"bad diffusion config: {exc}") from None


DIFFUSION_KNOBS = tuple(f.name for f in fields(DiffusionRunConfig))
GENERATOR_KNOBS = tuple(f.name for f in fields(GeneratorRecipe))
CLASSIFIER_KNOBS = tuple(f.name for f in fields(ClassifierRecipe))


def with_knobs(cfg: DiffusionRunConfig, **knobs) -> DiffusionRunConfig:
    """``replace`` that names unknown knobs: ``gen_X`` / ``clf_X`` set recipe fields, run
    fields set themselves, anything else is a knob of the config's method."""
    top, gen, clf, method = {}, {}, {}, {}
    for key, value in knobs.items():
        if key.startswith("gen_") and key[4:] in GENERATOR_KNOBS:
            gen[key[4:]] = value
        elif key.startswith("clf_") and key[4:] in CLASSIFIER_KNOBS:
            clf[key[4:]] = value
        elif key in DIFFUSION_KNOBS and key not in ("generator", "classifier", "knobs", "method"):
            top[key] = value
        else:
            method[key] = value
    names = get_method(cfg.method).knob_names()
    unknown = sorted(set(method) - set(names))
    if unknown:
        raise UserError(f"unknown diffusion knob(s) {unknown}; allowed: {', '.join(names)} "
                        f"(and any of {', '.join(DIFFUSION_KNOBS)}, gen_*, clf_*)")
    return replace(cfg, generator=replace(cfg.generator, **tuples(gen)), classifier=replace(cfg.classifier, **clf),
                   knobs=replace(cfg.knobs, **tuples(method)), **top)
