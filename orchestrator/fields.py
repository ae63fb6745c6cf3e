"""One declaration per run field.

A task's run config declares each field once, with :func:`run_field`: its default, its help
text, whether a search space takes it as a top-level key (``spec``; ``required`` there), and
the prefixes behind which its value names a local path. The CLI flags and their ``--help``
(``orchestrator.flags``), the search-space schema and its path resolution
(``orchestrator.sweep.spec``) are derived from these declarations.
"""
from __future__ import annotations

import dataclasses
from typing import Any


def run_field(default: Any = dataclasses.MISSING, *, help: str, spec: bool = False, required: bool = False,
              paths: tuple[str, ...] = (), default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field of a run config. ``paths``: prefixes behind which the value is a local
    file or folder ("" = the whole value), made absolute when a search space names it."""
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={"help": help, "spec": spec, "required": required, "paths": paths})


def field_help(cls: type, name: str) -> str | None:
    """A field's help: its declaration's, else the class's ``HELP`` entry (method knobs, recipes)."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.metadata.get("help") or getattr(cls, "HELP", {}).get(name)


def spec_fields(cls: type) -> tuple[dataclasses.Field, ...]:
    """The fields of ``cls`` a search space takes as top-level keys."""
    return tuple(f for f in dataclasses.fields(cls) if f.metadata.get("spec"))


def default_of(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default
