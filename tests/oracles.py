"""Slow, obviously right versions of the frontier math, to check the sweep's answers against."""
from __future__ import annotations

import itertools

import numpy as np


def brute_force_pareto(values, directions) -> np.ndarray:
    signs = np.array([1 if d == "min" else -1 for d in directions])
    v = np.asarray(values, dtype=float) * signs
    return np.array([not any((o <= p).all() and (o < p).any() for o in v) for p in v])


def brute_force_hypervolume(values, directions, ref) -> float:
    """The volume dominated by ``values`` and bounded by ``ref``, summed over the grid cells that
    every point's and the reference's coordinates cut the space into."""
    signs = np.array([1 if d == "min" else -1 for d in directions])
    v, r = np.asarray(values, dtype=float) * signs, np.asarray(ref, dtype=float) * signs
    v = v[(v < r).all(axis=1)]
    if not len(v):
        return 0.0
    cuts = [np.unique(np.append(v[:, k], r[k])) for k in range(v.shape[1])]
    total = 0.0
    for cell in itertools.product(*(range(len(c) - 1) for c in cuts)):
        low = np.array([cuts[k][i] for k, i in enumerate(cell)])
        if (v <= low).all(axis=1).any():
            total += float(np.prod([cuts[k][i + 1] - cuts[k][i] for k, i in enumerate(cell)]))
    return total
