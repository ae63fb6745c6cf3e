"""Flags for ``scissorhands unlearn --task diffusion`` (argument parsing only).

``add_diffusion_flags(parser)`` adds one flag per knob of :class:`DiffusionRunConfig`
(``--gen-*`` for the generator recipe, ``--clf-*`` for the classifier recipe). Flags the
parser already has (``--seed``, ``--forget``, ``--lr``, ``--trim-ratio``, ... from the
classifier task) are reused, not added twice: they share the field's ``dest``. Every
default is None so :func:`diffusion_config_from_args` fills in the config's defaults.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing

from orchestrator.diffusion.config import (
    DEVICES, INITS, PROJECTION_SCOPES, REPAIR_MODULES, TRIM_PRESETS,
    ClassifierRecipe, DiffusionRunConfig, GeneratorRecipe,
)

HELP = {
    "dataset": "mnist5k | npz:PATH (class erasure)",
    "forget": "class:K (class erasure; ignored with --pretrained)",
    "image_size": "generator / classifier image size (8, 16, 28, 32)",
    "score_batches": "forget batches for connection sensitivity (reference: 10)",
    "trim_ratio": "share of scored entries re-initialised (reference 0.001-0.005 for diffusion)",
    "trim_modules": f"UNet modules to trim: presets {', '.join(TRIM_PRESETS)} or regexes on parameter names",
    "threshold_scope": "all: one threshold over every UNet parameter (reference) | "
                       "trimmed: scores ranked only within --trim-modules",
    "init": " | ".join(INITS),
    "repair": "anchor: L_r + lambda*L_u (forget condition -> anchor) | ascent: L_r - lambda*L_f",
    "forget_weight": "lambda",
    "anchor_class": "class the forget class is mapped onto (default: a random retained class per sample)",
    "repair_modules": f"{' | '.join(REPAIR_MODULES)}: parameters Adam updates during repair",
    "epochs": "repair epochs (reference 3-5 for diffusion)",
    "steps_per_epoch": "repair steps per epoch (each: one retain + one forget batch)",
    "lr": "repair learning rate (Adam)",
    "projection": "GEM-project repair gradients of the trimmed modules against grad(-L_f)",
    "projection_strength": "GEM margin (reference 0.5)",
    "projection_scope": " | ".join(PROJECTION_SCOPES),
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

# fields whose flag name differs from the field name
FLAG_NAMES = {"forget_prompts": "--forget-prompt", "retain_prompts": "--retain-prompt"}


def _flag(prefix: str, name: str) -> str:
    return FLAG_NAMES.get(name) or f"--{prefix}{name.replace('_', '-')}"


def _base_type(tp) -> type:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


def _add_fields(group, parser, cls, prefix: str = "", skip: tuple[str, ...] = ()) -> None:
    hints = typing.get_type_hints(cls)
    existing = parser._option_string_actions
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = _flag(prefix, f.name)
        if flag in existing:  # shared with the classifier task: same dest, reused
            continue
        dest = f"{prefix.replace('-', '_')}{f.name}"
        tp = hints[f.name]
        kwargs = {"dest": dest, "default": None, "help": None if prefix else HELP.get(f.name)}
        if typing.get_origin(tp) is tuple:
            inner = typing.get_args(tp)[0]
            if f.name in FLAG_NAMES:
                group.add_argument(flag, action="append", type=inner, metavar="TEXT", **kwargs)
            else:
                group.add_argument(flag, nargs="+", type=inner, metavar=f.name.upper()[:8], **kwargs)
        elif tp is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        else:
            group.add_argument(flag, type=_base_type(tp), **kwargs)


def add_diffusion_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("diffusion (--task diffusion)")
    _add_fields(group, parser, DiffusionRunConfig, skip=("generator", "classifier"))
    gen = parser.add_argument_group("diffusion: reference generator recipe")
    _add_fields(gen, parser, GeneratorRecipe, prefix="gen-")
    clf = parser.add_argument_group("diffusion: evaluation classifier recipe")
    _add_fields(clf, parser, ClassifierRecipe, prefix="clf-")


def _picked(args, cls, prefix: str = "", skip: tuple[str, ...] = ()) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        value = getattr(args, f"{prefix}{f.name}", None)
        if value is not None:
            out[f.name] = tuple(value) if isinstance(value, list) else value
    return out


def diffusion_config_from_args(args: argparse.Namespace) -> DiffusionRunConfig:
    """The config the flags describe (defaults where a flag was not given); validated."""
    top = _picked(args, DiffusionRunConfig, skip=("generator", "classifier"))
    gen = dataclasses.replace(GeneratorRecipe(), **_picked(args, GeneratorRecipe, "gen_"))
    clf = dataclasses.replace(ClassifierRecipe(), **_picked(args, ClassifierRecipe, "clf_"))
    cfg = DiffusionRunConfig(generator=gen, classifier=clf, **top)
    cfg.validate()
    return cfg


def format_diffusion_table(report: dict) -> str:
    """The text table ``scissorhands unlearn --task diffusion`` prints."""
    unlearned = report["unlearned"]
    if "forget_acc" in unlearned:
        lines = [f"{'generator':<10} {'forget_acc':>10} {'retained_acc':>12} {'fid':>9} {'RTE_s':>8}"]
        for role in ("original", "retrain", "unlearned"):
            m = report.get(role)
            if not m:
                continue
            rte = f"{m['RTE_s']:>8.1f}" if "RTE_s" in m else f"{'':>8}"
            lines.append(f"{role:<10} {m['forget_acc']:>10.2f} {m['retained_acc']:>12.2f} {m['fid']:>9.3f} {rte}")
        lines.append("forget_acc: % of forget-class samples classified as the forget class (want ~0); "
                     "retained_acc: mean per retained class (want as original)")
        return "\n".join(lines)
    keys = ("forget_anchor_gap", "forget_loss", "retain_loss", "retain_drift")
    lines = [f"{'unet':<10} " + " ".join(f"{k:>17}" for k in keys) + f" {'RTE_s':>8}"]
    for role in ("original", "unlearned"):
        m = report[role]
        cells = " ".join(f"{m[k]:>17.6f}" if k in m else f"{'':>17}" for k in keys)
        rte = f"{m['RTE_s']:>8.1f}" if "RTE_s" in m else f"{'':>8}"
        lines.append(f"{role:<10} {cells} {rte}")
    if "gap_ratio" in unlearned:
        lines.append(f"forget/anchor noise-prediction gap, unlearned / original: {unlearned['gap_ratio']:.3f} (want << 1)")
    return "\n".join(lines)
