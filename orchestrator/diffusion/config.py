"""Typed configuration of a diffusion unlearning run (class erasure or text-concept erasure).

One flat frozen dataclass holds every method and evaluation knob, so a sweep can
``dataclasses.replace(cfg, **knobs)`` (or :func:`with_knobs`, which names unknown knobs);
the two reference recipes (generator, classifier) are nested dataclasses.

How the defaults were chosen (mnist5k, forget class:3, 2-core CPU shared with other jobs,
50 samples per class from fixed noise; full numbers in the issue-6 report):
- Generator: UNet2DModel 32/64/64, 1 layer per block, attention at the two low-resolution
  levels (1.16M parameters), AdamW 2e-3 with 100 warm-up steps then cosine decay to 0, EMA
  0.995, label dropout 0.1. With guidance 2.0 its samples are recognised by the classifier at
  98.9% (2,000 steps) and 99.1% (1,500 steps; 93% unguided): 1,500 steps is the default, as
  the cold run (two generators) must fit in 30 minutes.
- Evaluation: guidance 2.0 (3.0: 99.8% but FID 1.75 vs 0.98), 20 DDIM steps (15 and 25 give
  the same accuracy).
- Repair: Adam lr 1e-4 (2e-4 left speckle noise, retained_acc 95.8 vs 99.6), 3 epochs x 40
  steps, lambda 1, anchor = a random retained class per sample: forget_acc 2-4%, retained_acc
  within 1 point of the original. A fixed anchor (8) gives 0% (every sample becomes an 8);
  repairing only the trimmed modules (lr 1e-3) left 12%; ascent with lambda 0.05 did nothing
  (forget_acc 100%); projection changed little (4%, FID 1.5).
- trim_ratio 0.005 (the reference's 0.001-0.005), 10 score batches (reference).
These numbers predate two fixes that made the defaults the reference's (threshold over the
whole UNet, not the trimmed modules; attn1_up = attentions.1 only, not every attention).
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from orchestrator.errors import UserError

TRIM_PRESETS = ("attn1_up", "attn2", "attn", "all")
REPAIRS = ("anchor", "ascent")
REPAIR_MODULES = ("all", "trimmed")
THRESHOLD_SCOPES = ("all", "trimmed")
PROJECTION_SCOPES = ("global", "per_layer")
INITS = ("kaiming_uniform", "zeros")
DEVICES = ("auto", "cpu", "cuda")
NOISE_SCHEDULES = ("squaredcos_cap_v2", "linear", "scaled_linear")
IMAGE_SIZES = (8, 16, 28, 32)


def _need(ok: bool, msg: str) -> None:
    if not ok:
        raise UserError(msg)


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
        _need(len(self.widths) >= 2 and all(w >= 1 for w in self.widths),
              f"--gen-widths {self.widths}: need at least 2 positive channel widths, e.g. 32 64 64")
        _need(all(w % self.norm_groups == 0 for w in self.widths),
              f"--gen-norm-groups {self.norm_groups}: must divide every width in {self.widths}")
        for name in ("layers_per_block", "attention_head_dim", "norm_groups", "steps", "batch_size", "train_timesteps"):
            value = getattr(self, name)
            _need(isinstance(value, int) and value >= 1, f"--gen-{name.replace('_', '-')} {value}: must be an integer >= 1")
        _need(self.lr > 0 and math.isfinite(self.lr), f"--gen-lr {self.lr}: must be a positive number")
        _need(self.weight_decay >= 0, f"--gen-weight-decay {self.weight_decay}: must be >= 0")
        _need(self.warmup_steps >= 0, f"--gen-warmup-steps {self.warmup_steps}: must be >= 0")
        _need(0.0 <= self.ema_decay < 1.0, f"--gen-ema-decay {self.ema_decay}: must be in [0, 1) (0 = no EMA)")
        _need(0.0 <= self.p_uncond < 1.0, f"--gen-p-uncond {self.p_uncond}: must be in [0, 1)")
        _need(self.noise_schedule in NOISE_SCHEDULES,
              f"--gen-noise-schedule {self.noise_schedule!r}: allowed {', '.join(NOISE_SCHEDULES)}")


@dataclass(frozen=True)
class ClassifierRecipe:
    """The evaluation classifier (orchestrator.models ResNet) on real images at the generator's size."""

    model: str = "resnet8"
    width: int = 16
    epochs: int = 15
    lr: float = 0.1
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4

    def validate(self) -> None:
        from orchestrator.models import model_info

        model_info(self.model)
        for name in ("width", "epochs", "batch_size"):
            value = getattr(self, name)
            _need(isinstance(value, int) and value >= 1, f"--clf-{name.replace('_', '-')} {value}: must be an integer >= 1")
        _need(self.lr > 0 and math.isfinite(self.lr), f"--clf-lr {self.lr}: must be a positive number")
        _need(0 <= self.momentum < 1, f"--clf-momentum {self.momentum}: must be in [0, 1)")
        _need(self.weight_decay >= 0, f"--clf-weight-decay {self.weight_decay}: must be >= 0")


@dataclass(frozen=True)
class DiffusionRunConfig:
    """Everything that defines one diffusion unlearning run.

    Class erasure (``pretrained is None``): a class-conditional generator trained on
    ``dataset`` forgets ``forget = "class:K"``. Concept erasure (``pretrained = DIR``): a
    local diffusers StableDiffusionPipeline forgets ``forget_prompts`` by mapping them onto
    ``anchor_prompt``.
    """

    # data and references
    dataset: str = "mnist5k"
    data_dir: str | None = None
    forget: str = "class:3"
    seed: int = 0
    split_seed: int = 0
    image_size: int = 16
    generator: GeneratorRecipe = field(default_factory=GeneratorRecipe)
    classifier: ClassifierRecipe = field(default_factory=ClassifierRecipe)
    # stage 1: scoring
    score_batches: int = 10
    score_batch_size: int = 64
    # stage 2: trimming
    trim_ratio: float = 0.005
    trim_modules: tuple[str, ...] = ("attn1_up",)  # presets (attn1_up | attn2 | attn | all) or regexes
    # all: one threshold over every UNet parameter (reference SD code) | trimmed: rank within trim_modules only
    threshold_scope: str = "all"
    init: str = "kaiming_uniform"
    # stage 3: repair
    repair: str = "anchor"  # anchor: L_r + lambda * L_u | ascent: L_r - lambda * L_f
    forget_weight: float = 1.0  # lambda
    anchor_class: int | None = None  # None: a random retained class per sample
    repair_modules: str = "all"  # which parameters Adam updates: all | trimmed
    epochs: int = 3
    steps_per_epoch: int = 40
    batch_size: int = 64
    lr: float = 1e-4  # Adam
    projection: bool = False
    projection_strength: float = 0.5
    projection_eps: float = 1e-3
    projection_scope: str = "global"
    project_every: int = 1
    memory_batches: int = 1
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

    @property
    def mode(self) -> str:
        return "prompt" if self.pretrained else "class"

    def forget_class(self) -> int:
        from orchestrator.data import ForgetSpec

        spec = ForgetSpec.parse(self.forget)
        if spec.kind != "class":
            raise UserError(f"--forget {self.forget!r}: diffusion erasure needs a class, e.g. --forget class:3")
        return spec.forget_class

    def validate(self) -> None:
        """Every check that needs no data or model, so bad input fails before any training."""
        ints_ge1 = ("score_batches", "score_batch_size", "epochs", "steps_per_epoch", "batch_size", "project_every",
                    "memory_batches", "samples_per_class", "ddim_steps", "grid_columns", "sd_samples_per_prompt")
        for name in ints_ge1:
            value = getattr(self, name)
            _need(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                  f"--{name.replace('_', '-')} {value}: must be an integer >= 1")
        _need(0.0 < self.trim_ratio < 1.0, f"--trim-ratio {self.trim_ratio}: must be in (0, 1)")
        _need(len(self.trim_modules) > 0, "--trim-modules: give at least one of "
              f"{', '.join(TRIM_PRESETS)} or a regex on parameter names")
        for item in self.trim_modules:
            if item in TRIM_PRESETS:
                continue
            try:
                re.compile(item)
            except re.error as exc:
                raise UserError(f"--trim-modules {item!r}: not a preset ({', '.join(TRIM_PRESETS)}) "
                                f"and not a valid regex ({exc})") from None
        if self.mode == "class":
            _need("attn2" not in self.trim_modules,
                  "--trim-modules attn2: the class-conditional UNet2DModel has no cross-attention "
                  "(labels enter through the time embedding); allowed there: attn1_up, attn, all or regexes. "
                  "attn2 applies to --pretrained Stable Diffusion UNets")
        _need(self.threshold_scope in THRESHOLD_SCOPES,
              f"--threshold-scope {self.threshold_scope!r}: allowed {', '.join(THRESHOLD_SCOPES)}")
        _need(self.init in INITS, f"--init {self.init!r}: allowed {', '.join(INITS)}")
        _need(self.repair in REPAIRS, f"--repair {self.repair!r}: allowed {', '.join(REPAIRS)}")
        _need(self.forget_weight >= 0 and math.isfinite(self.forget_weight),
              f"--forget-weight {self.forget_weight}: must be >= 0")
        _need(self.repair_modules in REPAIR_MODULES,
              f"--repair-modules {self.repair_modules!r}: allowed {', '.join(REPAIR_MODULES)}")
        _need(self.lr > 0 and math.isfinite(self.lr), f"--lr {self.lr}: must be a positive number")
        _need(self.projection_strength >= 0, f"--projection-strength {self.projection_strength}: must be >= 0")
        _need(self.projection_eps > 0, f"--projection-eps {self.projection_eps}: must be > 0")
        _need(self.projection_scope in PROJECTION_SCOPES,
              f"--projection-scope {self.projection_scope!r}: allowed {', '.join(PROJECTION_SCOPES)}")
        _need(self.guidance_scale >= 0 and math.isfinite(self.guidance_scale),
              f"--guidance-scale {self.guidance_scale}: must be >= 0 (1 = no guidance, 0 = unconditional)")
        _need(self.device in DEVICES, f"--device {self.device!r}: allowed {', '.join(DEVICES)}")
        if self.mode == "class":
            _need(self.image_size in IMAGE_SIZES, f"--image-size {self.image_size}: allowed "
                  f"{', '.join(map(str, IMAGE_SIZES))}")
            down = 2 ** (len(self.generator.widths) - 1)
            _need(self.image_size % down == 0, f"--image-size {self.image_size}: must be divisible by {down} "
                  f"for {len(self.generator.widths)} UNet levels (--gen-widths {self.generator.widths})")
            self.forget_class()
            _need(self.anchor_class is None or self.anchor_class >= 0,
                  f"--anchor-class {self.anchor_class}: must be a class index >= 0 (or unset: random retained class)")
            _need(self.anchor_class is None or self.anchor_class != self.forget_class(),
                  f"--anchor-class {self.anchor_class}: must differ from the forgotten class ({self.forget})")
            self.generator.validate()
            self.classifier.validate()
        else:
            path = Path(self.pretrained)
            _need(path.is_dir(), f"--pretrained {self.pretrained}: no such directory")
            _need((path / "model_index.json").is_file(),
                  f"--pretrained {self.pretrained}: not a diffusers pipeline folder (no model_index.json)")
            _need(len(self.forget_prompts) > 0, "--pretrained needs at least one --forget-prompt TEXT")
            _need(all(p.strip() for p in self.forget_prompts), "--forget-prompt: prompts must not be empty")
            _need(bool(self.anchor_prompt.strip()),
                  "--pretrained needs --anchor-prompt TEXT (the concept the forget prompts are mapped onto)")
            _need(self.anchor_prompt not in self.forget_prompts,
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
        if "widths" in gen:
            gen["widths"] = tuple(gen["widths"])
        clf = dict(d.pop("classifier", None) or {})
        for key in ("trim_modules", "forget_prompts", "retain_prompts"):
            if key in d and d[key] is not None:
                d[key] = (d[key],) if isinstance(d[key], str) else tuple(d[key])
        try:
            return cls(generator=GeneratorRecipe(**gen), classifier=ClassifierRecipe(**clf), **d)
        except TypeError as exc:
            raise UserError(f"bad diffusion config: {exc}") from None


DIFFUSION_KNOBS = tuple(f.name for f in fields(DiffusionRunConfig))
GENERATOR_KNOBS = tuple(f.name for f in fields(GeneratorRecipe))
CLASSIFIER_KNOBS = tuple(f.name for f in fields(ClassifierRecipe))
# Knobs that change only the unlearning run (not the cached references): what a sweep searches.
METHOD_KNOBS = (
    "score_batches", "score_batch_size", "trim_ratio", "trim_modules", "threshold_scope", "init", "repair",
    "forget_weight", "anchor_class", "repair_modules", "epochs", "steps_per_epoch", "batch_size", "lr",
    "projection", "projection_strength", "projection_eps", "projection_scope", "project_every", "memory_batches",
)


def with_knobs(cfg: DiffusionRunConfig, **knobs) -> DiffusionRunConfig:
    """``replace`` that names unknown knobs; ``gen_X`` / ``clf_X`` set recipe fields."""
    top, gen, clf = {}, {}, {}
    for key, value in knobs.items():
        if key.startswith("gen_") and key[4:] in GENERATOR_KNOBS:
            gen[key[4:]] = value
        elif key.startswith("clf_") and key[4:] in CLASSIFIER_KNOBS:
            clf[key[4:]] = value
        elif key in DIFFUSION_KNOBS and key not in ("generator", "classifier"):
            top[key] = value
        else:
            raise UserError(f"unknown diffusion knob {key!r}; allowed: {', '.join(METHOD_KNOBS)} "
                            f"(and any of {', '.join(DIFFUSION_KNOBS)}, gen_*, clf_*)")
    for key in ("trim_modules", "forget_prompts", "retain_prompts"):
        if key in top and isinstance(top[key], (list, str)):
            top[key] = (top[key],) if isinstance(top[key], str) else tuple(top[key])
    return replace(cfg, generator=replace(cfg.generator, **gen), classifier=replace(cfg.classifier, **clf), **top)
