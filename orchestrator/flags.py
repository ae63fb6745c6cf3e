"""Command-line flags built from config dataclasses: one flag per field, for every task,
recipe and method config. Every default is None, so the config (or a preset) fills in what
the user did not set. Help comes from a field's declaration (``orchestrator.fields.run_field``)
or the class's ``HELP``; a class may name repeatable flags
(``FLAG_NAMES``) and nested recipes with their flag prefix (``NESTED``). ``flag_for`` names the
flag of a config field, so a ``FieldError`` reads as the flag the user typed."""
from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

from orchestrator.fields import field_help

SKIPPED = ("method", "knobs")  # chosen by --method, filled from the method's own flags


def parse_bool(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"{text!r}: allowed true or false")
    return text.lower() in ("true", "1", "yes")


def _base_type(tp) -> type:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


def add_config_flags(parser: argparse.ArgumentParser, cls: type, title: str, prefix: str = "",
                     skip: tuple[str, ...] = ()) -> None:
    """Flags for ``cls``'s fields in an argument group; nested recipes get their own groups."""
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(cls)
    nested = getattr(cls, "NESTED", {})
    names = getattr(cls, "FLAG_NAMES", {})
    for f in dataclasses.fields(cls):
        if f.name in skip or f.name in SKIPPED:
            continue
        if f.name in nested:
            sub_prefix, sub_title = nested[f.name]
            add_config_flags(parser, hints[f.name], sub_title, prefix=sub_prefix)
            continue
        flag = names.get(f.name) or f"--{prefix}{f.name}".replace("_", "-")
        kwargs: dict[str, Any] = {"dest": f"{prefix}{f.name}", "default": None, "help": field_help(cls, f.name)}
        tp = hints[f.name]
        if typing.get_origin(tp) is tuple:
            inner = typing.get_args(tp)[0]
            if f.name in names:
                group.add_argument(flag, action="append", type=inner, metavar="TEXT", **kwargs)
            else:
                group.add_argument(flag, nargs="+", type=inner, metavar=f.name.upper()[:8], **kwargs)
        elif tp is bool:
            group.add_argument(flag, type=parse_bool, nargs="?", const=True, metavar="BOOL", **kwargs)
        else:
            group.add_argument(flag, type=_base_type(tp), **kwargs)


def picked(args: argparse.Namespace, cls: type, prefix: str = "") -> dict:
    """The fields of ``cls`` the user set on the command line (nested recipes not included)."""
    out = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f"{prefix}{f.name}", None)
        if value is not None and f.name not in SKIPPED:
            out[f.name] = tuple(value) if isinstance(value, list) else value
    return out


def config_from_args(args: argparse.Namespace, cls: type, **fields) -> Any:
    """``cls`` from the flags: its own fields, each nested recipe from its prefixed flags, plus ``fields``."""
    hints = typing.get_type_hints(cls)
    values = {k: v for k, v in picked(args, cls).items() if k not in getattr(cls, "NESTED", {})}
    for name, (prefix, _) in getattr(cls, "NESTED", {}).items():
        values[name] = dataclasses.replace(hints[name](), **picked(args, hints[name], prefix))
    return cls(**{**values, **fields})


def flag_for(field: str, *classes: type) -> str:
    """The flag ``add_config_flags`` gives a config field (how the CLI names a ``FieldError``).

    ``field`` is a field name or a dotted path through ``NESTED`` recipes ("trim_ratio",
    "recipe.lr" -> "--train-lr"), looked up in the first of ``classes`` that has it; a
    ``FLAG_NAMES`` entry wins. A field none of them has reads ``--`` plus its name with dashes."""
    for cls in classes:
        flag = _flag_in(cls, field.split("."), "")
        if flag:
            return flag
    return "--" + field.replace(".", "-").replace("_", "-")


def _flag_in(cls: type, path: list[str], prefix: str) -> str | None:
    if not dataclasses.is_dataclass(cls) or path[0] in SKIPPED:
        return None
    if path[0] not in {f.name for f in dataclasses.fields(cls)}:
        return None
    nested = getattr(cls, "NESTED", {})
    if len(path) > 1:
        if path[0] not in nested:
            return None
        return _flag_in(typing.get_type_hints(cls)[path[0]], path[1:], prefix + nested[path[0]][0])
    if path[0] in nested:
        return None
    return getattr(cls, "FLAG_NAMES", {}).get(path[0]) or f"--{prefix}{path[0]}".replace("_", "-")
