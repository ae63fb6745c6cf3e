"""Seed statistics: a result is a mean over seeds with its spread, and a comparison with doing
nothing is paired on the same seeds (README, "Search-space format": seed statistics)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Mapping

import numpy as np
from scipy import stats

STAT_SUFFIXES = ("_std", "_se", "_n", "_ci95")
PAIRED_KEYS = ("improvement", "improvement_ci95_low", "improvement_ci95_high", "improves_on_original")


@dataclass(frozen=True)
class Summary:
    """Mean over seeds, sample std, standard error, n and the 95% t-interval (NaN below n = 2)."""

    mean: float
    std: float
    se: float
    n: int
    ci95_low: float
    ci95_high: float

    @property
    def ci95(self) -> float:
        """Half-width of the 95% interval."""
        return self.mean - self.ci95_low

    def as_dict(self) -> dict:
        return asdict(self)


def summarize(values: Iterable[float]) -> Summary:
    """Undefined values (NaN, e.g. an MIA whose feature was constant) are left out of n."""
    v = np.asarray(list(values), dtype=float)
    v = v[np.isfinite(v)]
    n = len(v)
    if n == 0:
        return Summary(math.nan, math.nan, math.nan, 0, math.nan, math.nan)
    mean = float(v.mean())
    if n < 2:
        return Summary(mean, math.nan, math.nan, n, math.nan, math.nan)
    std = float(v.std(ddof=1))
    se = std / math.sqrt(n)
    half = float(stats.t.ppf(0.975, n - 1)) * se
    return Summary(mean, std, se, n, mean - half, mean + half)


def paired_improvement(baseline: Iterable[float], treated: Iterable[float]) -> tuple[Summary, bool]:
    """Mean of (baseline - treated) per seed with its 95% interval; an improvement (lower is
    better) counts only when the whole interval lies above zero."""
    diff = np.asarray(list(baseline), dtype=float) - np.asarray(list(treated), dtype=float)
    s = summarize(diff)
    return s, bool(s.ci95_low > 0)


def aggregate(per_seed: list[Mapping[str, float]], paired: tuple[str, str] | None = None) -> dict[str, float]:
    """Flat columns for every metric: ``m`` (mean), ``m_std``, ``m_se``, ``m_n``, ``m_ci95``;
    with ``paired=(metric, baseline)`` (a task's headline and the untouched original's, both
    reported) also the paired improvement ``baseline - metric`` over doing nothing (``PAIRED_KEYS``)."""
    out: dict[str, float] = {}
    for key in per_seed[0]:
        s = summarize(m[key] for m in per_seed)
        out.update({key: s.mean, f"{key}_std": s.std, f"{key}_se": s.se, f"{key}_n": s.n, f"{key}_ci95": s.ci95})
    if paired is not None and all(key in out for key in paired):
        metric, baseline = paired
        s, better = paired_improvement([m[baseline] for m in per_seed], [m[metric] for m in per_seed])
        out.update(zip(PAIRED_KEYS, (s.mean, s.ci95_low, s.ci95_high, better)))
    return out


def headline_pair(task) -> tuple[str, str] | None:
    """``(headline, baseline)`` of a task (``orchestrator.tasks.Task``) that has both, else None."""
    if task.headline_metric is None or task.headline_baseline is None:
        return None
    return task.headline_metric, task.headline_baseline


def interval_text(s: Summary, digits: int = 3) -> str:
    if s.n < 2:
        return f"{s.mean:.{digits}f} (n={s.n})"
    return f"{s.mean:.{digits}f} [{s.ci95_low:.{digits}f}, {s.ci95_high:.{digits}f}]"
