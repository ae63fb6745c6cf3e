"""Pareto frontier of a multi-objective sweep: non-dominated sorting, hypervolume, plots.

Everything is computed in "minimisation space" (max columns negated) so one
dominance rule serves every mix of directions.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

DIRECTIONS = ("min", "max")
# Trial states (Ray Tune "status", Optuna "state") that mean "no valid metrics".
FAILED_STATES = frozenset({"error", "failed", "fail", "pruned"})


@dataclass(frozen=True)
class Objective:
    """One sweep objective: a metric name and whether lower or higher is better."""

    metric: str
    direction: str = "min"

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(
                f"objective {self.metric!r}: direction {self.direction!r} is not one of {DIRECTIONS}"
            )


ObjectiveLike = Objective | tuple[str, str]


def _as_objective(o: ObjectiveLike) -> Objective:
    return o if isinstance(o, Objective) else Objective(*o)


def _to_min(values: np.ndarray | Sequence[Sequence[float]], directions: Sequence[str]) -> np.ndarray:
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
    c = _to_min(values, directions)
    finite = ~np.isnan(c).any(axis=1)
    mask = np.zeros(len(c), dtype=bool)
    mask[np.flatnonzero(finite)] = _front_min(c[finite])
    return mask


def pareto_ranks(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Front index of every row (0 = Pareto front, 1 = front after removing it, ...).

    Rows containing NaN get rank -1.
    """
    c = _to_min(values, directions)
    ranks = np.full(len(c), -1, dtype=int)
    left = np.flatnonzero(~np.isnan(c).any(axis=1))
    r = 0
    while len(left):  # peel fronts off one at a time
        on = _front_min(c[left])
        ranks[left[on]] = r
        left = left[~on]
        r += 1
    return ranks


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
    c = _to_min(values, directions)
    ref = _to_min(np.asarray(reference_point, dtype=float)[None, :], directions)[0]
    if np.isnan(ref).any():
        raise ValueError(f"reference point {list(reference_point)} contains NaN")
    c = c[~np.isnan(c).any(axis=1)]
    c = c[np.all(c < ref, axis=1)]
    if len(c) == 0:
        return 0.0
    c = np.unique(c[_front_min(c)], axis=0)  # dominated points add no volume
    return _hv(c, ref)


# ----------------------------------------------------------------------------- plots


def _valid_trials(df: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Drop failed trials: a failed status/state, a missing objective column value."""
    missing = [m for m in metrics if m not in df.columns]
    if missing:
        raise KeyError(f"objective columns {missing} not in results (have {list(df.columns)})")
    ok = df[metrics].notna().all(axis=1)
    for col in ("status", "state"):
        if col in df.columns:
            ok = ok & ~df[col].astype(str).str.lower().isin(FAILED_STATES)
    return df[ok]


def _label(o: Objective) -> str:
    return f"{o.metric} ({o.direction} {'↓' if o.direction == 'min' else '↑'} better)"


def _atomic_write(path: Path, write: Callable[[str], None]) -> Path:
    """Write via `write(tmp_path)` to a sibling temp file, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name rather than mkstemp: mkstemp's 0600 mode would leak into the result.
    tmp = str(path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"))
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


_MARKER_STYLES = ("*", "D", "P", "X", "^", "s", "v")


def _panel(ax: Any, pts: np.ndarray, front: np.ndarray, ox: Objective, oy: Objective,
           markers: Mapping[str, Mapping[str, float]], legend: bool) -> None:
    ax.scatter(pts[~front, 0], pts[~front, 1], s=14, c="0.65", label="trials")
    ax.scatter(pts[front, 0], pts[front, 1], s=30, c="tab:red", zorder=5, label="Pareto front")
    # Staircase along this pair's own front, best x first (where="post" then
    # traces the boundary of the dominated region whatever the directions).
    pair = pts[pareto_mask(pts, [ox.direction, oy.direction])]
    if len(pair) > 1:
        sx = 1.0 if ox.direction == "min" else -1.0
        sy = 1.0 if oy.direction == "min" else -1.0
        pair = pair[np.lexsort((sy * pair[:, 1], sx * pair[:, 0]))]
        ax.step(pair[:, 0], pair[:, 1], where="post", c="tab:red", lw=1, alpha=0.7)
    for k, (name, met) in enumerate(markers.items()):
        if ox.metric in met and oy.metric in met:
            # Hollow: with gap objectives retrain sits at 0, right where the best trials are.
            ax.scatter([met[ox.metric]], [met[oy.metric]], marker=_MARKER_STYLES[k % len(_MARKER_STYLES)],
                       s=140, facecolors="none", edgecolors=f"C{k}", linewidths=1.8, zorder=4, label=name)
    ax.set_xlabel(_label(ox))
    ax.set_ylabel(_label(oy))
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=7, loc="best")


def _hover_text(df: pd.DataFrame) -> list[str]:
    cols = [c for c in ("trial_id",) if c in df.columns] + [c for c in df.columns if c.startswith("config.")]
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    return ["<br>".join(f"{c}={fmt(row[c])}" for c in cols) for _, row in df[cols].iterrows()]


def _write_html(df: pd.DataFrame, objs: list[Objective], front: np.ndarray,
                markers: Mapping[str, Mapping[str, float]], path: Path) -> Path:
    import plotly.graph_objects as go

    text = np.array(_hover_text(df), dtype=object)
    groups = [("trials", ~front, "lightgray"), ("Pareto front", front, "red")]
    fig = go.Figure()
    if len(objs) == 2:
        x, y = (df[o.metric].to_numpy() for o in objs)
        for name, sel, color in groups:
            fig.add_trace(go.Scatter(x=x[sel], y=y[sel], mode="markers", name=name,
                                     marker={"color": color}, text=text[sel], hoverinfo="text+x+y"))
        for name, met in markers.items():
            if all(o.metric in met for o in objs):
                fig.add_trace(go.Scatter(x=[met[objs[0].metric]], y=[met[objs[1].metric]], name=name,
                                         mode="markers", marker={"symbol": "star", "size": 14}))
        fig.update_layout(xaxis_title=_label(objs[0]), yaxis_title=_label(objs[1]))
    else:
        for name, sel, color in groups:
            dims = [{"label": _label(o), "values": df[o.metric].to_numpy()[sel]} for o in objs]
            fig.add_trace(go.Splom(dimensions=dims, name=name, text=text[sel], marker={"color": color}))
    return _atomic_write(path, lambda tmp: fig.write_html(tmp, include_plotlyjs=True))


def plot_frontier(
    df: pd.DataFrame,
    objectives: Sequence[ObjectiveLike],
    path_png: str | os.PathLike[str],
    markers: Mapping[str, Mapping[str, float]] | None = None,
    path_html: str | os.PathLike[str] | None = None,
) -> list[Path]:
    """Scatter every successful trial, highlight the Pareto front, write PNG (+ HTML).

    Two objectives give one panel; more give a pairwise grid. `markers` maps a
    label (e.g. "original", "retrain") to its metrics, drawn as reference
    points. The HTML (default: PNG path with .html) is written only if plotly
    is importable. Returns the paths written.
    """
    from matplotlib.figure import Figure  # no pyplot: no global backend state, Agg canvas

    objs = [_as_objective(o) for o in objectives]
    if len(objs) < 2:
        raise ValueError("plot_frontier needs at least two objectives")
    markers = markers or {}
    df = _valid_trials(df, [o.metric for o in objs])
    vals = df[[o.metric for o in objs]].to_numpy(dtype=float)
    front = pareto_mask(vals, [o.direction for o in objs])

    m = len(objs)
    pairs = [(0, 1)] if m == 2 else [(i, j) for i in range(m) for j in range(i + 1, m)]
    ncols = min(len(pairs), 3)
    nrows = -(-len(pairs) // ncols)
    fig = Figure(figsize=(5 * ncols, 4.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for k, (i, j) in enumerate(pairs):
        _panel(axes[k], vals[:, [i, j]], front, objs[i], objs[j], markers, legend=(k == 0))
    for ax in axes[len(pairs):]:
        ax.set_visible(False)
    fig.suptitle(f"{len(df)} trials, {int(front.sum())} on the Pareto front")

    png = Path(path_png)
    written = [_atomic_write(png, lambda tmp: fig.savefig(tmp, format="png", dpi=120))]
    try:
        import plotly  # noqa: F401
    except ImportError:
        return written
    html = Path(path_html) if path_html is not None else png.with_suffix(".html")
    written.append(_write_html(df, objs, front, markers, html))
    return written
