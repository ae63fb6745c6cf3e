"""Errors the CLI turns into one clear line: bad input exits 2, divergence exits 3."""


class UserError(ValueError):
    """Bad input: the message names the bad value and what is allowed (exit code 2)."""


class DivergenceError(RuntimeError):
    """Training diverged: non-finite loss, or accuracy collapsed to chance (exit code 3)."""


def need(ok: bool, message: str) -> None:
    """Config validation: raise ``UserError(message)`` unless ``ok``."""
    if not ok:
        raise UserError(message)


def need_positive_ints(config, names: tuple[str, ...], flag_prefix: str = "--") -> None:
    """Each named field of ``config`` is an integer >= 1 (the message names its flag)."""
    for name in names:
        value = getattr(config, name)
        need(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
             f"{flag_prefix}{name.replace('_', '-')} {value}: must be an integer >= 1")
