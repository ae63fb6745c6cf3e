"""Pareto math of a multi-objective sweep: non-dominated sorting, front ordering, hypervolume.

Everything is computed in "minimisation space" (max columns negated) so one
dominance rule serves every mix of directions. No plotting here (``sweep/plots.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DIRECTIONS = ("min", "max")


def to_min(values: np.ndarray | Sequence[Sequence[float]], directions: Sequence[str]) -> np.ndarray:
    """Float copy of `values` (n x m) with max columns negated."""
    v = np.array(values, dtype=float, copy=True)
    if v.ndim == 1:
        v = v[:, None] if len(directions) == 1 else v[None, :]
    if v.ndim != 2 or v.shape[1] != len(directions):
        raise ValueError(f"values of shape {v.shape} do not match {len(directions)} directions")
    for k, d in enumerate(directions):
        if d not in DIRECTIONS:
            raise ValueError(f"direction {d!r} is not one of {DIRECTIONS}")
        if d == "max":
            v[:, k] = -v[:, k]
    return v


def _front_min(c: np.ndarray) -> np.ndarray:
    """First-front mask of finite points `c` already in minimisation space.

    Candidate filtering: take the next surviving point, drop every point it
    dominates, repeat. Sorting by row sum first puts strong dominators early so
    the survivor set shrinks fast; each pass is one vectorised comparison.
    """
    n = len(c)
    order = np.argsort(c.sum(axis=1), kind="stable")
    pts, idx = c[order], order
    i = 0
    while i < len(pts):
        p = pts[i]
        # j survives unless p dominates it: p <= j everywhere and p < j somewhere.
        keep = np.any(pts < p, axis=1) | np.all(pts == p, axis=1)
        pts, idx = pts[keep], idx[keep]
        i = int(np.count_nonzero(keep[:i])) + 1
    mask = np.zeros(n, dtype=bool)
    mask[idx] = True
    return mask


def pareto_mask(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Boolean mask of the first Pareto front (non-dominated rows).

    Rows containing NaN are never on the front; identical rows do not dominate
    each other, so duplicates of a front point are all on the front.
    """
    c = to_min(values, directions)
    finite = ~np.isnan(c).any(axis=1)
    mask = np.zeros(len(c), dtype=bool)
    mask[np.flatnonzero(finite)] = _front_min(c[finite])
    return mask


def pareto_ranks(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Front index of every row (0 = Pareto front, 1 = front after removing it, ...).

    Rows containing NaN get rank -1.
    """
    c = to_min(values, directions)
    ranks = np.full(len(c), -1, dtype=int)
    left = np.flatnonzero(~np.isnan(c).any(axis=1))
    r = 0
    while len(left):  # peel fronts off one at a time
        on = _front_min(c[left])
        ranks[left[on]] = r
        left = left[~on]
        r += 1
    return ranks


def front_order(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Row indices of the Pareto front, best first along the first objective (ties: the next).

    In two dimensions this is the staircase order: drawn as a post step (matplotlib
    ``where="post"``, plotly ``"hv"``) the front traces the boundary of the dominated region
    whatever the directions.
    """
    idx = np.flatnonzero(pareto_mask(values, directions))
    c = to_min(np.asarray(values, dtype=float)[idx], directions)
    return idx[np.lexsort(c.T[::-1])] if len(idx) else idx


def _hv2d(p: np.ndarray, ref: np.ndarray) -> float:
    # Sorted by x, a non-dominated set has decreasing y: sum the vertical strips.
    p = p[np.lexsort((p[:, 1], p[:, 0]))]
    best_y = np.minimum.accumulate(p[:, 1])
    widths = np.diff(np.append(p[:, 0], ref[0]))
    return float(np.sum(widths * (ref[1] - best_y)))


def _hv(p: np.ndarray, ref: np.ndarray) -> float:
    """Exact hypervolume of points strictly below `ref` (minimisation)."""
    m = p.shape[1]
    if len(p) == 0:
        return 0.0
    if m == 1:
        return float(ref[0] - p[:, 0].min())
    if m == 2:
        return _hv2d(p, ref)
    # HSO: slice along the last objective; between consecutive z values the
    # covered cross-section is the (m-1)-D hypervolume of the points seen so far.
    p = p[np.argsort(p[:, -1], kind="stable")]
    z = np.append(p[:, -1], ref[-1])
    total = 0.0
    for i in range(len(p)):
        depth = z[i + 1] - z[i]
        if depth > 0:
            sub = p[: i + 1, :-1]
            if m > 3:  # prune dominated points; the 2-D sweep tolerates them anyway
                sub = sub[_front_min(sub)]
            total += depth * _hv(sub, ref[:-1])
    return total


def hypervolume(
    values: np.ndarray, directions: Sequence[str], reference_point: Sequence[float]
) -> float:
    """Exact volume of the region dominated by `values` and bounded by `reference_point`.

    Only points strictly better than the reference point in every objective
    count; NaN rows are ignored. Exact 2-D sweep; HSO slicing for m > 2
    (fine for a few hundred points and m <= 4).
    """
    c = to_min(values, directions)
    ref = to_min(np.asarray(reference_point, dtype=float)[None, :], directions)[0]
    if np.isnan(ref).any():
        raise ValueError(f"reference point {list(reference_point)} contains NaN")
    c = c[~np.isnan(c).any(axis=1)]
    c = c[np.all(c < ref, axis=1)]
    if len(c) == 0:
        return 0.0
    c = np.unique(c[_front_min(c)], axis=0)  # dominated points add no volume
    return _hv(c, ref)
