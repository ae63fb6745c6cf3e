"""Typed configuration of a text-to-image concept-erasure run on a local Stable Diffusion pipeline."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from orchestrator.diffusion.settings import SamplingSettings
from orchestrator.fields import run_field
from orchestrator.errors import FieldError, UserError, need_field, need_positive_ints
from orchestrator.methods import method_knobs, tuples


@dataclass(frozen=True)
class TextToImageRunConfig(SamplingSettings):
    """Everything that defines one concept-erasure run: the UNet of the diffusers
    StableDiffusionPipeline in ``pretrained`` forgets ``forget_prompts`` by mapping them onto
    ``anchor_prompt``, keeping ``retain_prompts``."""

    TASK = "text_to_image"
    NESTED = {}
    FLAG_NAMES = {"forget_prompts": "--forget-prompt", "retain_prompts": "--retain-prompt"}  # repeatable

    pretrained: str | None = run_field(None, spec=True, required=True, paths=("",),
                                       help="local diffusers StableDiffusionPipeline folder (read, never written)")
    forget_prompts: tuple[str, ...] = run_field((), spec=True, required=True, help="prompt to erase (repeatable)")
    anchor_prompt: str = run_field("", spec=True, required=True, help="prompt the forget prompts are mapped onto")
    retain_prompts: tuple[str, ...] = run_field(
        (), spec=True, help="prompt to preserve (repeatable; default: the anchor prompt)")
    samples_per_prompt: int = run_field(4, help="self-generated latents per prompt (the data the repair trains on)")
    seed: int = 0
    method: str = "scissorhands_diffusion"
    knobs: Any = None  # the method's config; None: its defaults

    def __post_init__(self) -> None:
        for name in ("forget_prompts", "retain_prompts"):  # one prompt (YAML or Python) is a 1-tuple
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        object.__setattr__(self, "knobs", method_knobs(self.method, self.knobs, self.TASK))

    def validate(self) -> None:
        """Every check that needs no model, so bad input fails before the pipeline loads."""
        need_field(self.pretrained is not None, self, "pretrained", "required: a local StableDiffusionPipeline folder")
        path = Path(self.pretrained)
        need_field(path.is_dir(), self, "pretrained", "no such directory")
        need_field((path / "model_index.json").is_file(), self, "pretrained",
                   "not a diffusers pipeline folder (no model_index.json)")
        need_field(len(self.forget_prompts) > 0, self, "forget_prompts", "give at least one prompt to erase")
        for name in ("forget_prompts", "retain_prompts"):
            need_field(all(p.strip() for p in getattr(self, name)), self, name, "prompts must not be empty")
        need_field(bool(self.anchor_prompt.strip()), self, "anchor_prompt",
                   "required: the concept the forget prompts are mapped onto")
        need_field(self.anchor_prompt not in self.forget_prompts, self, "anchor_prompt",
                   "must differ from every forget prompt")
        need_positive_ints(self, ("samples_per_prompt",))
        self.validate_sampling()
        self.knobs.validate()
        anchor_class = getattr(self.knobs, "anchor_class", None)
        if anchor_class is not None:
            raise FieldError("anchor_class", anchor_class, "a class-erasure knob; here the forget prompts are "
                             "mapped onto the anchor prompt")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TextToImageRunConfig":
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise UserError(f"unknown text_to_image config key(s) {unknown}; allowed: "
                            f"{', '.join(f.name for f in fields(cls))}")
        d = dict(d)
        return cls(knobs=tuples(d.pop("knobs", None) or {}), **d)
