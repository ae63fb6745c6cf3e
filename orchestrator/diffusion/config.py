"""Typed configuration of a diffusion unlearning run (class erasure or text-concept erasure).

:class:`DiffusionRunConfig` holds the data, the two reference recipes (generator,
classifier), evaluation and hardware settings, and names its method; the method's knobs
are its own config (``knobs``). How the defaults were measured: README, "Diffusion".
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from orchestrator.config import TrainRecipe
from orchestrator.errors import UserError, need, need_positive_ints
from orchestrator.methods import get_method, method_knobs, tuples

DEVICES = ("auto", "cpu", "cuda")
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
        need(len(self.widths) >= 2 and all(w >= 1 for w in self.widths),
              f"--gen-widths {self.widths}: need at least 2 positive channel widths, e.g. 32 64 64")
        need(all(w % self.norm_groups == 0 for w in self.widths),
              f"--gen-norm-groups {self.norm_groups}: must divide every width in {self.widths}")
        need_positive_ints(self, ("layers_per_block", "attention_head_dim", "norm_groups", "steps", "batch_size",
                                  "train_timesteps"), "--gen-")
        need(self.lr > 0 and math.isfinite(self.lr), f"--gen-lr {self.lr}: must be a positive number")
        need(self.weight_decay >= 0, f"--gen-weight-decay {self.weight_decay}: must be >= 0")
        need(self.warmup_steps >= 0, f"--gen-warmup-steps {self.warmup_steps}: must be >= 0")
        need(0.0 <= self.ema_decay < 1.0, f"--gen-ema-decay {self.ema_decay}: must be in [0, 1) (0 = no EMA)")
        need(0.0 <= self.p_uncond < 1.0, f"--gen-p-uncond {self.p_uncond}: must be in [0, 1)")
        need(self.noise_schedule in NOISE_SCHEDULES,
              f"--gen-noise-schedule {self.noise_schedule!r}: allowed {', '.join(NOISE_SCHEDULES)}")


@dataclass(frozen=True)
class ClassifierRecipe(TrainRecipe):
    """The evaluation classifier (orchestrator.models ResNet) on real images at the generator's
    size, trained with the classifier recipe's knobs."""

    epochs: int = 15
    model: str = "resnet8"
    width: int = 16

    def validate(self) -> None:
        from orchestrator.models import model_info

        model_info(self.model)
        need_positive_ints(self, ("width", "epochs", "batch_size"), "--clf-")
        need(self.lr > 0 and math.isfinite(self.lr), f"--clf-lr {self.lr}: must be a positive number")
        need(0 <= self.momentum < 1, f"--clf-momentum {self.momentum}: must be in [0, 1)")
        need(self.weight_decay >= 0, f"--clf-weight-decay {self.weight_decay}: must be >= 0")


@dataclass(frozen=True)
class DiffusionRunConfig:
    """Everything that defines one diffusion unlearning run.

    Class erasure (``pretrained is None``): a class-conditional generator trained on
    ``dataset`` forgets ``forget = "class:K"``. Concept erasure (``pretrained = DIR``): a
    local diffusers StableDiffusionPipeline forgets ``forget_prompts`` by mapping them onto
    ``anchor_prompt``.
    """

    TASK = "diffusion"
    NESTED = {"generator": ("gen_", "reference generator recipe"),
              "classifier": ("clf_", "evaluation classifier recipe")}
    HELP = {
        "dataset": "mnist5k | npz:PATH (class erasure)",
        "forget": "class:K (class erasure; ignored with --pretrained)",
        "image_size": "generator / classifier image size (8, 16, 28, 32)",
        "samples_per_class": "generated samples per class for evaluation (same noise for every model)",
        "guidance_scale": "classifier-free guidance scale for sampling (1 = none)",
        "ddim_steps": "DDIM sampling steps",
        "eval_seed": "seed of the fixed evaluation noise",
        "pretrained": "local diffusers StableDiffusionPipeline folder: erase a text concept instead of a class",
        "forget_prompts": "prompt to erase (repeatable; with --pretrained)",
        "anchor_prompt": "prompt the forget prompts are mapped onto (with --pretrained)",
        "retain_prompts": "prompt to preserve (repeatable; default: the anchor prompt)",
        "sd_samples_per_prompt": "self-generated latents per prompt (Stable Diffusion data)",
        "device": " | ".join(DEVICES),
    }
    FLAG_NAMES = {"forget_prompts": "--forget-prompt", "retain_prompts": "--retain-prompt"}  # repeatable

    # data and references
    dataset: str = "mnist5k"
    data_dir: str | None = None
    forget: str = "class:3"
    seed: int = 0
    split_seed: int = 0
    image_size: int = 16
    generator: GeneratorRecipe = field(default_factory=GeneratorRecipe)
    classifier: ClassifierRecipe = field(default_factory=ClassifierRecipe)
    # the method and its knobs (None: the method's defaults)
    method: str = "scissorhands_diffusion"
    knobs: Any = None
    # evaluation
    samples_per_class: int = 50
    guidance_scale: float = 2.0
    ddim_steps: int = 20
    eval_seed: int = 0
    grid_columns: int = 10
    # Stable Diffusion (text-concept erasure)
    pretrained: str | None = None
    forget_prompts: tuple[str, ...] = ()
    anchor_prompt: str = ""
    retain_prompts: tuple[str, ...] = ()  # () = the anchor prompt alone
    sd_samples_per_prompt: int = 4  # self-generated latents per prompt (the data SD repair trains on)
    # hardware
    device: str = "auto"  # auto | cpu | cuda

    def __post_init__(self) -> None:
        object.__setattr__(self, "knobs", method_knobs(self.method, self.knobs, self.TASK))

    @property
    def mode(self) -> str:
        return "prompt" if self.pretrained else "class"

    def forget_class(self) -> int:
        from orchestrator.data import ForgetSpec

        spec = ForgetSpec.parse(self.forget)
        if spec.forget_class is None:
            raise UserError(f"--forget {self.forget!r}: diffusion erasure needs one class, e.g. --forget class:3")
        return spec.forget_class

    def validate(self) -> None:
        """Every check that needs no data or model, so bad input fails before any training."""
        need_positive_ints(self, ("samples_per_class", "ddim_steps", "grid_columns", "sd_samples_per_prompt"))
        self.knobs.validate()
        need(self.guidance_scale >= 0 and math.isfinite(self.guidance_scale),
              f"--guidance-scale {self.guidance_scale}: must be >= 0 (1 = no guidance, 0 = unconditional)")
        need(self.device in DEVICES, f"--device {self.device!r}: allowed {', '.join(DEVICES)}")
        anchor_class = getattr(self.knobs, "anchor_class", None)
        if self.mode == "class":
            need("attn2" not in getattr(self.knobs, "trim_modules", ()),
                  "--trim-modules attn2: the class-conditional UNet2DModel has no cross-attention "
                  "(labels enter through the time embedding); allowed there: attn1_up, attn, all or regexes. "
                  "attn2 applies to --pretrained Stable Diffusion UNets")
            need(self.image_size in IMAGE_SIZES, f"--image-size {self.image_size}: allowed "
                  f"{', '.join(map(str, IMAGE_SIZES))}")
            down = 2 ** (len(self.generator.widths) - 1)
            need(self.image_size % down == 0, f"--image-size {self.image_size}: must be divisible by {down} "
                  f"for {len(self.generator.widths)} UNet levels (--gen-widths {self.generator.widths})")
            self.forget_class()
            need(anchor_class is None or anchor_class != self.forget_class(),
                  f"--anchor-class {anchor_class}: must differ from the forgotten class ({self.forget})")
            self.generator.validate()
            self.classifier.validate()
        else:
            path = Path(self.pretrained)
            need(path.is_dir(), f"--pretrained {self.pretrained}: no such directory")
            need((path / "model_index.json").is_file(),
                  f"--pretrained {self.pretrained}: not a diffusers pipeline folder (no model_index.json)")
            need(len(self.forget_prompts) > 0, "--pretrained needs at least one --forget-prompt TEXT")
            need(all(p.strip() for p in self.forget_prompts), "--forget-prompt: prompts must not be empty")
            need(bool(self.anchor_prompt.strip()),
                  "--pretrained needs --anchor-prompt TEXT (the concept the forget prompts are mapped onto)")
            need(self.anchor_prompt not in self.forget_prompts,
                  f"--anchor-prompt {self.anchor_prompt!r}: must differ from every --forget-prompt")

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
        for key in ("forget_prompts", "retain_prompts"):
            if key in d and d[key] is not None:
                d[key] = (d[key],) if isinstance(d[key], str) else tuple(d[key])
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
    for key in ("forget_prompts", "retain_prompts"):
        if key in top and isinstance(top[key], (list, str)):
            top[key] = (top[key],) if isinstance(top[key], str) else tuple(top[key])
    names = get_method(cfg.method).knob_names()
    unknown = sorted(set(method) - set(names))
    if unknown:
        raise UserError(f"unknown diffusion knob(s) {unknown}; allowed: {', '.join(names)} "
                        f"(and any of {', '.join(DIFFUSION_KNOBS)}, gen_*, clf_*)")
    return replace(cfg, generator=replace(cfg.generator, **tuples(gen)), classifier=replace(cfg.classifier, **clf),
                   knobs=replace(cfg.knobs, **tuples(method)), **top)
