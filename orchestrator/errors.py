"""Errors the CLI turns into one clear line and exit code 2."""


class UserError(ValueError):
    """Bad input: the message names the bad value and what is allowed."""


class DivergenceError(RuntimeError):
    """Training diverged (non-finite loss, or accuracy collapsed to chance)."""
