"""Unlearning methods behind a small registry: name -> function(model, data, config, generator)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import nn

METHODS: dict[str, Callable] = {}


@dataclass
class MethodResult:
    model: nn.Module
    seconds: float  # RTE: scoring + trimming + repair, no evaluation
    history: list[dict] = field(default_factory=list)  # per-epoch training statistics
    stats: dict = field(default_factory=dict)  # e.g. how many entries were trimmed


def register(name: str):
    def deco(fn):
        METHODS[name] = fn
        return fn

    return deco


from orchestrator.methods import scissorhands  # noqa: E402,F401  (registers itself)
