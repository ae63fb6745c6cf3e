"""Typed configuration of a text-to-image concept-erasure run: the bundled digits pipeline (trained
here, ``orchestrator.tasks.text_to_image.digits``) or a local Stable Diffusion pipeline."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from orchestrator.datasets import dataset_help
from orchestrator.diffusion.settings import SamplingSettings
from orchestrator.fields import run_field
from orchestrator.errors import FieldError, UserError, need_field, need_positive_ints, within
from orchestrator.methods import method_knobs, tuples
from orchestrator.models import parse_normalize
from orchestrator.tasks.class_erasure.config import ClassifierRecipe
from orchestrator.tasks.text_to_image.digits import GENERIC, IMAGE_SIZES, WORDS, AutoencoderRecipe, UNetRecipe, concept_prompts


@dataclass(frozen=True)
class TextToImageRunConfig(SamplingSettings):
    """Everything that defines one concept-erasure run: a pipeline's UNet forgets
    ``forget_prompts`` (mapping them onto ``anchor_prompt``), keeping ``retain_prompts``.

    Without ``pretrained`` the pipeline is the bundled one, trained on ``dataset``'s digits; the
    concept is the digit ``concept`` (its phrasings are the forget prompts, the other digits' the
    retained ones) and a retrain pipeline (trained without its images) is the reference."""

    TASK = "text_to_image"
    NESTED = {"generator": ("gen_", "bundled pipeline: UNet recipe"),
              "autoencoder": ("vae_", "bundled pipeline: autoencoder recipe"),
              "classifier": ("clf_", "bundled pipeline: evaluation classifier recipe")}
    FLAG_NAMES = {"forget_prompts": "--forget-prompt", "retain_prompts": "--retain-prompt"}  # repeatable

    pretrained: str | None = run_field(None, spec=True, paths=("",),
                                       help="local diffusers StableDiffusionPipeline folder (read, never written; "
                                            "default: the bundled digits pipeline)")
    concept: str = run_field("three", spec=True, help=f"bundled pipeline: the digit to erase ({', '.join(WORDS)})")
    dataset: str = run_field("mnist5k", spec=True, help="bundled pipeline: " + dataset_help())
    split_seed: int = run_field(0, spec=True, help="bundled pipeline: train/test split seed (kept fixed)")
    forget_prompts: tuple[str, ...] = run_field(
        (), spec=True, help="prompt to erase (repeatable; bundled pipeline: the concept's phrasings)")
    anchor_prompt: str = run_field("", spec=True, help="prompt the forget prompts are mapped onto "
                                                       f"(bundled pipeline: {GENERIC!r})")
    retain_prompts: tuple[str, ...] = run_field(
        (), spec=True, help="prompt to preserve (repeatable; default: the anchor prompt; bundled pipeline: the "
                            "other digits' phrasings)")
    forget_prompts_file: str | None = run_field(None, spec=True, paths=("",),
                                                help="file of prompts to erase, one per line (added to --forget-prompt)")
    retain_prompts_file: str | None = run_field(None, spec=True, paths=("",),
                                                help="file of prompts to preserve, one per line (added to --retain-prompt)")
    eval_classifier: str | None = run_field(
        None, spec=True, paths=("hf:",), help="local pipeline: image classifier that labels the samples: hf:DIR, "
                                              "MODULE:FUNCTION or a built-in ResNet (with --eval-classifier-weights)")
    eval_classifier_weights: str | None = run_field(None, spec=True, paths=("",),
                                                    help="its state_dict (.pt / .safetensors); hf:DIR has its own")
    eval_classes: int | None = run_field(None, spec=True, help="its number of outputs (hf:DIR: from its config)")
    eval_width: int | None = run_field(None, spec=True, help="a built-in ResNet classifier's width")
    eval_image_size: int | None = run_field(None, spec=True, help="resize samples to this size for the classifier "
                                                                  "(default: as generated)")
    eval_normalize: str = run_field("none", spec=True, help="its input after x / 255: none or MEAN,STD "
                                                            "(hf:DIR: its preprocessor_config.json)")
    forget_label: int | None = run_field(None, spec=True, help="local pipeline: the class the classifier gives "
                                                               "the concept")
    retain_labels: tuple[int, ...] = run_field((), spec=True, help="local pipeline: the class each retained prompt "
                                                                   "should show, in order")
    image_size: int = run_field(16, help=f"bundled pipeline: image size ({', '.join(map(str, IMAGE_SIZES))})")
    generator: UNetRecipe = dataclasses.field(default_factory=UNetRecipe)
    autoencoder: AutoencoderRecipe = dataclasses.field(default_factory=AutoencoderRecipe)
    classifier: ClassifierRecipe = dataclasses.field(default_factory=ClassifierRecipe)
    eval_samples_per_prompt: int = run_field(
        20, help="bundled pipeline: samples per prompt the evaluation classifier labels (same noise for every model)")
    samples_per_prompt: int = run_field(4, help="self-generated latents per prompt (the data the repair trains on)")
    pipeline_seed: int = run_field(
        0, spec=True, help="bundled pipeline: the seed its components are trained with; fixed across a sweep's seeds, "
                           "as a pretrained pipeline is (--seed varies the unlearning)")
    seed: int = 0
    method: str = "scissorhands_diffusion"
    knobs: Any = None  # the method's config; None: its defaults

    def __post_init__(self) -> None:
        for name in ("forget_prompts", "retain_prompts", "retain_labels"):  # one prompt (YAML, Python): a 1-tuple
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, (str, int)) else tuple(value))
        object.__setattr__(self, "knobs", method_knobs(self.method, self.knobs, self.TASK))

    @property
    def bundled(self) -> bool:
        return self.pretrained is None

    def concept_label(self) -> int:
        return WORDS.index(self.concept)

    def prompts(self) -> tuple[list[str], str, list[str]]:
        """(forget prompts, anchor prompt, retain prompts) as the run uses them."""
        if self.bundled:
            k = self.concept_label()
            retained = [p for j in range(len(WORDS)) if j != k for p in concept_prompts(j)]
            return concept_prompts(k), GENERIC, retained
        forget = [*self.forget_prompts, *_read_prompts(self.forget_prompts_file)]
        retain = [*self.retain_prompts, *_read_prompts(self.retain_prompts_file)]
        return forget, self.anchor_prompt, retain or [self.anchor_prompt]

    def missing_evaluation(self) -> str | None:
        """What a local pipeline's run cannot measure without an evaluation classifier (None: nothing)."""
        if self.bundled or self.eval_classifier:
            return None
        return ("no --eval-classifier: forget_acc, retained_acc, fid and the erosion guard are not measured, only "
                "the noise-prediction figures (give --eval-classifier, --forget-label and --retain-labels)")

    def validate(self) -> None:
        """Every check that needs no model, so bad input fails before the pipeline loads."""
        if self.bundled:
            self._validate_bundled()
        else:
            self._validate_pretrained()
        need_positive_ints(self, ("samples_per_prompt", "eval_samples_per_prompt"))
        self.validate_sampling()
        self.knobs.validate()
        anchor_class = getattr(self.knobs, "anchor_class", None)
        if anchor_class is not None:
            raise FieldError("anchor_class", anchor_class, "a class-erasure knob; here the forget prompts are "
                             "mapped onto the anchor prompt")

    def _validate_bundled(self) -> None:
        need_field(self.concept in WORDS, self, "concept", f"allowed {', '.join(WORDS)}")
        for name in ("forget_prompts", "retain_prompts", "anchor_prompt", "forget_prompts_file", "retain_prompts_file",
                     "eval_classifier", "forget_label", "retain_labels"):
            need_field(not getattr(self, name), self, name, "the bundled pipeline's prompts and classifier follow "
                       "from --concept (give --pretrained DIR to choose them)")
        need_field(self.image_size in IMAGE_SIZES, self, "image_size", f"allowed {', '.join(map(str, IMAGE_SIZES))}")
        for name in ("generator", "autoencoder", "classifier"):
            with within(name):
                getattr(self, name).validate()
        down = 2 ** (len(self.autoencoder.widths) - 1 + len(self.generator.widths) - 1)
        need_field(self.image_size % down == 0, self, "image_size", f"must be divisible by {down} for "
                   f"{len(self.autoencoder.widths)} autoencoder and {len(self.generator.widths)} UNet levels")

    def _validate_pretrained(self) -> None:
        path = Path(self.pretrained)
        need_field(path.is_dir(), self, "pretrained", "no such directory")
        need_field((path / "model_index.json").is_file(), self, "pretrained",
                   "not a diffusers pipeline folder (no model_index.json)")
        for name in ("forget_prompts_file", "retain_prompts_file", "eval_classifier_weights"):
            value = getattr(self, name)
            need_field(value is None or Path(value).is_file(), self, name, "no such file")
        forget, _, retain = self.prompts()
        need_field(len(forget) > 0, self, "forget_prompts", "give at least one prompt to erase (--forget-prompt or "
                   "--forget-prompts-file)")
        for name in ("forget_prompts", "retain_prompts"):
            need_field(all(p.strip() for p in getattr(self, name)), self, name, "prompts must not be empty")
        if self.eval_classifier:
            need_field(self.eval_normalize != "dataset", self, "eval_normalize",
                       "allowed none or MEAN,STD (a generated image set has no training split to take it from)")
            parse_normalize(self.eval_normalize)
            need_field(self.forget_label is not None, self, "forget_label", "required with --eval-classifier: the "
                       "class the classifier gives the concept")
            need_field(len(self.retain_labels) == len(retain), self, "retain_labels",
                       f"give one label per retained prompt ({len(retain)}: {'; '.join(retain)[:200]})")
            need_field(self.eval_classifier.startswith("hf:") or self.eval_classifier_weights is not None, self,
                       "eval_classifier_weights", f"required for --eval-classifier {self.eval_classifier}")
            need_field(self.eval_classifier.startswith("hf:") or self.eval_classes, self, "eval_classes",
                       f"required for --eval-classifier {self.eval_classifier}: its number of outputs")
        else:
            for name in ("forget_label", "retain_labels", "eval_classifier_weights"):
                need_field(not getattr(self, name), self, name, "needs --eval-classifier")
        need_field(bool(self.anchor_prompt.strip()), self, "anchor_prompt",
                   "required: the concept the forget prompts are mapped onto")
        need_field(self.anchor_prompt not in self.forget_prompts, self, "anchor_prompt",
                   "must differ from every forget prompt")

    def to_dict(self) -> dict:  # (prompt files are read at run time: their path is the config)
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TextToImageRunConfig":
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise UserError(f"unknown text_to_image config key(s) {unknown}; allowed: "
                            f"{', '.join(f.name for f in fields(cls))}")
        d = dict(d)
        recipes = {name: hint(**tuples(d.pop(name, None) or {})) for name, hint in
                   (("generator", UNetRecipe), ("autoencoder", AutoencoderRecipe), ("classifier", ClassifierRecipe))}
        return cls(knobs=tuples(d.pop("knobs", None) or {}), **recipes, **d)


def _read_prompts(path: str | None) -> list[str]:
    """A prompts file: one prompt per line; blank lines and lines starting with # are skipped."""
    if path is None or not Path(path).is_file():
        return []
    lines = (line.strip() for line in Path(path).read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]
