"""Errors the CLI turns into one clear line: bad input exits 2, divergence exits 3."""


class UserError(ValueError):
    """Bad input: the message names the bad value and what is allowed (exit code 2)."""


class DivergenceError(RuntimeError):
    """Training diverged: non-finite loss, or accuracy collapsed to chance (exit code 3)."""
