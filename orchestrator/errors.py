"""Errors the CLI turns into one clear line (bad input exits 2, divergence exits 3), and the
checks config ``validate()`` methods raise them with.

A bad config value raises :class:`FieldError`, which names the config *field*, so a Python or
YAML user reads ``trim_ratio 2.0: must be in (0, 1)``; the CLI prints the same error with the
field's flag, ``--trim-ratio 2.0: must be in (0, 1)`` (``orchestrator.flags.flag_for``). API:

- ``need_field(ok, config, field, rule)``: raise ``FieldError(field, getattr(config, field), rule)``
  unless ``ok``;
- ``need_positive_ints(config, names)``: each named field is an integer >= 1;
- ``need_sgd(config)``: the ``lr`` / ``momentum`` / ``weight_decay`` of an SGD recipe or method;
- ``with within("recipe"): self.recipe.validate()``: a parent config validating a nested recipe,
  so the recipe's ``lr`` error names ``recipe.lr`` (the CLI: ``--train-lr``);
- ``need(ok, message)``: any other check; its message is printed as written.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator


class UserError(ValueError):
    """Bad input: the message names the bad value and what is allowed (exit code 2)."""


class DivergenceError(RuntimeError):
    """Training diverged: non-finite loss, or accuracy collapsed to chance (exit code 3)."""


class FieldError(UserError):
    """A config field holds a bad value.

    ``field``: the field's name, dotted through nested recipes ("trim_ratio", "recipe.lr");
    ``value``: the bad value; ``rule``: what is allowed ("must be in (0, 1)").
    ``str()`` is ``f"{field} {value}: {rule}"``, a string value in repr quotes;
    ``named(flag)`` is the same message with ``flag`` in place of the field.
    """

    def __init__(self, field: str, value: Any, rule: str):
        self.field, self.value, self.rule = field, value, rule
        super().__init__(self.named(field))

    def named(self, name: str) -> str:
        """The message with ``name`` (e.g. the field's CLI flag) naming the field."""
        value = repr(self.value) if isinstance(self.value, str) else self.value
        return f"{name} {value}: {self.rule}"

    def __reduce__(self):  # pickles (e.g. across Ray workers) with its three parts
        return type(self), (self.field, self.value, self.rule)


def need(ok: bool, message: str) -> None:
    """Config validation: raise ``UserError(message)`` unless ``ok``."""
    if not ok:
        raise UserError(message)


def need_field(ok: bool, config: Any, field: str, rule: str) -> None:
    """Raise ``FieldError(field, getattr(config, field), rule)`` unless ``ok``."""
    if not ok:
        raise FieldError(field, getattr(config, field), rule)


@contextmanager
def within(field: str) -> Iterator[None]:
    """Re-raise a nested recipe's FieldError with its field under ``field`` ("lr" -> "recipe.lr")."""
    try:
        yield
    except FieldError as exc:
        raise FieldError(f"{field}.{exc.field}", exc.value, exc.rule) from None


def need_positive_ints(config: Any, names: tuple[str, ...]) -> None:
    """Each named field of ``config`` is an integer >= 1 (a FieldError names the first that is not)."""
    for name in names:
        value = getattr(config, name)
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            raise FieldError(name, value, "must be an integer >= 1")


def need_sgd(config: Any) -> None:
    """The SGD fields ``lr`` (positive, finite), ``momentum`` (in [0, 1)) and ``weight_decay`` (>= 0)."""
    need_field(config.lr > 0 and math.isfinite(config.lr), config, "lr", "must be a positive number")
    need_field(0 <= config.momentum < 1, config, "momentum", "must be in [0, 1)")
    need_field(config.weight_decay >= 0, config, "weight_decay", "must be >= 0")
