"""A name -> object registry whose built-in entries are imported on first use."""
from __future__ import annotations

import importlib
from typing import Generic, TypeVar

from orchestrator.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, builtin: dict[str, str]):
        self.kind, self.builtin = kind, builtin  # builtin: name -> "module:attribute"
        self.loaded: dict[str, T] = {}

    def names(self) -> list[str]:
        return sorted(set(self.builtin) | set(self.loaded))

    def get(self, name: str) -> T:
        if name not in self.loaded:
            if name not in self.builtin:
                raise UserError(f"--{self.kind} {name!r}: unknown; known {self.kind}s: {', '.join(self.names())}")
            module, attr = self.builtin[name].split(":")
            self.loaded[name] = getattr(importlib.import_module(module), attr)
        return self.loaded[name]

    def add(self, name: str, obj: T) -> T:
        self.loaded[name] = obj
        return obj

    def remove(self, name: str) -> None:
        """Forget an entry added at run time (a built-in one comes back on the next lookup)."""
        self.loaded.pop(name, None)
