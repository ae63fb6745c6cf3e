"""Pareto frontier of a multi-objective sweep: non-dominated sorting, hypervolume, plots.

Everything is computed in "minimisation space" (max columns negated) so one
dominance rule serves every mix of directions.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from orchestrator.storage import atomic_write

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


def valid_trials(df: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
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


def view_window(anchors: np.ndarray | Sequence[Sequence[float]], margin: float = 0.08,
                min_frac: float = 0.05) -> np.ndarray | None:
    """Axis limits [[x_lo, x_hi], [y_lo, y_hi]] framing the finite rows of `anchors` (k x 2).

    The anchors are what a reader compares (the front, the reference models);
    framing them rather than every trial keeps one far outlier from squashing
    the front into a corner. Each span is padded by `margin` of itself per side
    and is at least `min_frac` of the values' magnitude (1 where they are all
    0), so a front that is flat along an axis still gets a readable window.
    None when there is nothing to frame (the caller then autoscales).
    """
    a = np.asarray(anchors, dtype=float).reshape(-1, 2)
    a = a[np.isfinite(a).all(axis=1)]
    if not len(a):
        return None
    lo, hi = a.min(axis=0), a.max(axis=0)
    span = np.maximum(hi - lo, min_frac * np.maximum(np.abs(lo), np.abs(hi)))
    span[span == 0] = 1.0
    mid, half = (lo + hi) / 2, span * (0.5 + margin)
    return np.column_stack([mid - half, mid + half])


def off_window(pts: np.ndarray, window: np.ndarray | None) -> np.ndarray:
    """Mask of the rows of `pts` (n x 2) outside `window` (as from view_window; None holds all)."""
    if window is None:
        return np.zeros(len(pts), dtype=bool)
    return ((pts < window[:, 0]) | (pts > window[:, 1])).any(axis=1)


# Trial groups, indexed by _PanelData.group: label, colour (a CSS name matplotlib and plotly share).
_GROUPS = (("trials", "darkgray"), ("tied with frontier (within noise)", "darkorange"), ("Pareto front", "red"))
# Reference models: matplotlib marker, plotly symbol, colour kept clear of the trial groups'.
_REF_STYLES = (("*", "star", "royalblue"), ("D", "diamond", "forestgreen"), ("P", "cross", "purple"),
               ("X", "x", "saddlebrown"), ("^", "triangle-up", "teal"), ("s", "square", "deeppink"),
               ("v", "triangle-down", "olive"))
# Off-window trials sit on the border as a triangle pointing to where they really are:
# (axis they are furthest out along, beyond its upper limit) -> marker.
_OUTWARD = {(0, False): "<", (0, True): ">", (1, False): "v", (1, True): "^"}


@dataclass(frozen=True)
class _PanelData:
    """One objective pair, shared by the PNG panel and the HTML subplot so both show the same."""

    ox: Objective
    oy: Objective
    pts: np.ndarray  # n x 2 seed means
    errs: np.ndarray  # n x 2 95% CI half-widths, NaN where unknown
    group: np.ndarray  # index into _GROUPS per trial
    stairs: np.ndarray  # this pair's own front, ordered for a post-step line
    refs: list[tuple[str, tuple[str, str, str], np.ndarray, np.ndarray]]  # name, style, xy, CI xy
    window: np.ndarray | None


def _err(e: np.ndarray) -> np.ndarray | None:
    """`e` if any error bar is known: an all-NaN array would only add empty artists/traces."""
    e = np.asarray(e, dtype=float)
    return e if np.isfinite(e).any() else None


def _panel_data(ox: Objective, oy: Objective, pts: np.ndarray, errs: np.ndarray, group: np.ndarray,
                markers: Mapping[str, Mapping[str, float]]) -> _PanelData:
    pair = pts[pareto_mask(pts, [ox.direction, oy.direction])]
    # Best x first: where="post" (plotly "hv") then traces the boundary of the
    # dominated region whatever the directions.
    sx = 1.0 if ox.direction == "min" else -1.0
    sy = 1.0 if oy.direction == "min" else -1.0
    stairs = pair[np.lexsort((sy * pair[:, 1], sx * pair[:, 0]))]
    refs = [(name, style, np.array([met[ox.metric], met[oy.metric]], dtype=float),
             np.array([met.get(f"{o.metric}_ci95", np.nan) for o in (ox, oy)], dtype=float))
            for (name, met), style in zip(markers.items(), itertools.cycle(_REF_STYLES))
            if ox.metric in met and oy.metric in met]
    # A reference's seed spread is part of what the reader compares, so it is framed too.
    spans = [xy + sign * np.nan_to_num(ci) for _, _, xy, ci in refs for sign in (-1, 1)]
    anchors = np.vstack([pts[group == 2], stairs, *spans])
    return _PanelData(ox, oy, pts, errs, group, stairs, refs, view_window(anchors))


def _panel(ax: Any, p: _PanelData) -> None:
    out = off_window(p.pts, p.window)
    for g, (label, color) in enumerate(_GROUPS):
        sel = (p.group == g) & ~out
        if sel.any():
            ax.errorbar(p.pts[sel, 0], p.pts[sel, 1], xerr=_err(p.errs[sel, 0]), yerr=_err(p.errs[sel, 1]),
                        fmt="o", ms=3 + g, c=color, elinewidth=0.7, alpha=0.85, zorder=3 + g, label=label)
    if len(p.stairs) > 1:
        ax.step(p.stairs[:, 0], p.stairs[:, 1], where="post", c="red", lw=1, alpha=0.7)
    for name, (marker, _, color), xy, ci in p.refs:
        # Hollow: with gap objectives retrain sits at 0, right where the best trials are.
        ax.errorbar([xy[0]], [xy[1]], xerr=_err(ci[:1]), yerr=_err(ci[1:]), fmt=marker, ms=12, mfc="none",
                    mec=color, mew=1.8, ecolor=color, capsize=3, zorder=6, label=name)
    if p.window is not None:
        ax.set_xlim(*p.window[0])
        ax.set_ylim(*p.window[1])
    if out.any():
        edge = np.clip(p.pts[out], p.window[:, 0], p.window[:, 1])
        excess = (p.pts[out] - edge) / (p.window[:, 1] - p.window[:, 0])
        axis = np.abs(excess).argmax(axis=1)
        upper = excess[np.arange(len(edge)), axis] > 0
        colors = np.array([c for _, c in _GROUPS])[p.group[out]]
        for (k, up), marker in _OUTWARD.items():
            sel = (axis == k) & (upper == up)
            # clip_on=False: a marker centred on the border would otherwise be cut in half.
            ax.scatter(edge[sel, 0], edge[sel, 1], marker=marker, s=30, c=colors[sel], clip_on=False, zorder=7)
        ax.set_title(f"{int(out.sum())} trials outside the view", loc="right", fontsize=8)
    ax.set_xlabel(_label(p.ox))
    ax.set_ylabel(_label(p.oy))
    ax.grid(alpha=0.3)


def _html_err(e: np.ndarray) -> dict[str, Any] | None:
    e = _err(e)
    return None if e is None else {"type": "data", "array": e, "thickness": 1}


def _html_panel(fig: Any, row: int, col: int, p: _PanelData, hover: np.ndarray, legend: bool) -> None:
    """Same content as _panel but every trial unclipped: the reader can zoom out in the browser."""
    import plotly.graph_objects as go

    at = {"row": row, "col": col}
    for g, (label, color) in enumerate(_GROUPS):
        sel = p.group == g
        if sel.any():
            fig.add_trace(go.Scatter(
                x=p.pts[sel, 0], y=p.pts[sel, 1], mode="markers", name=label, legendgroup=label,
                showlegend=legend, marker={"color": color, "size": 5 + g}, error_x=_html_err(p.errs[sel, 0]),
                error_y=_html_err(p.errs[sel, 1]), text=hover[sel], hoverinfo="text"), **at)
    if len(p.stairs) > 1:
        fig.add_trace(go.Scatter(x=p.stairs[:, 0], y=p.stairs[:, 1], mode="lines", showlegend=False,
                                 line={"shape": "hv", "color": "red", "width": 1}, hoverinfo="skip"), **at)
    for name, (_, symbol, color), xy, ci in p.refs:
        fig.add_trace(go.Scatter(
            x=[xy[0]], y=[xy[1]], mode="markers", name=name, legendgroup=name, showlegend=legend,
            marker={"symbol": f"{symbol}-open", "size": 14, "color": color, "line": {"width": 2}},
            error_x=_html_err(ci[:1]), error_y=_html_err(ci[1:]), hoverinfo="text",
            text=["<br>".join([name, *map(_pm, (p.ox.metric, p.oy.metric), xy, ci)])]), **at)
    window = [None, None] if p.window is None else p.window.tolist()
    fig.update_xaxes(title_text=_label(p.ox), range=window[0], **at)
    fig.update_yaxes(title_text=_label(p.oy), range=window[1], **at)


def _pm(metric: str, value: float, ci: float) -> str:
    return f"{metric}={value:.4g}" + (f" ± {ci:.2g}" if np.isfinite(ci) else "")


def _hover_text(df: pd.DataFrame, metrics: list[str], errs: np.ndarray) -> list[str]:
    """Per trial: id, config, and each objective as seed mean ± CI half-width (`errs`, n x m)."""
    cols = [c for c in ("trial_id",) if c in df.columns] + [c for c in df.columns if c.startswith("config.")]
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    return ["<br>".join([f"{c}={fmt(row[c])}" for c in cols] + list(map(_pm, metrics, vs, es)))
            for (_, row), vs, es in zip(df[cols].iterrows(), df[metrics].to_numpy(dtype=float), errs)]


def _figures(df: pd.DataFrame, objs: list[Objective],
             markers: Mapping[str, Mapping[str, float]]) -> tuple[Any, Any]:
    """The PNG's matplotlib figure and the HTML's plotly figure, built panel for panel alike."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, Agg canvas
    from plotly.subplots import make_subplots

    metrics = [o.metric for o in objs]
    df = valid_trials(df, metrics)
    vals = df[metrics].to_numpy(dtype=float)
    errs = np.column_stack([df[f"{m}_ci95"].to_numpy(dtype=float) if f"{m}_ci95" in df
                            else np.full(len(df), np.nan) for m in metrics])
    front = pareto_mask(vals, [o.direction for o in objs])
    tied = (df["tied"].astype("boolean").fillna(False).to_numpy(dtype=bool) if "tied" in df
            else np.zeros(len(df), dtype=bool))
    group = np.select([front, tied], [2, 1], 0)  # the front wins over a stale tied flag
    hover = np.array(_hover_text(df, metrics, errs), dtype=object)

    m = len(objs)
    pairs = [(0, 1)] if m == 2 else [(i, j) for i in range(m) for j in range(i + 1, m)]
    ncols = min(len(pairs), 3)
    nrows = -(-len(pairs) // ncols)
    png = Figure(figsize=(5 * ncols, 4.2 * nrows), layout="constrained")
    axes = png.subplots(nrows, ncols, squeeze=False).ravel()
    html = make_subplots(rows=nrows, cols=ncols)
    for k, (i, j) in enumerate(pairs):
        p = _panel_data(objs[i], objs[j], vals[:, [i, j]], errs[:, [i, j]], group, markers)
        _panel(axes[k], p)
        _html_panel(html, k // ncols + 1, k % ncols + 1, p, hover, legend=(k == 0))
    for ax in axes[len(pairs):]:
        ax.set_visible(False)
    # One legend outside the panels: inside, "best" still lands on markers of a crowded panel.
    # Labels gathered over all panels: a reference lacking one pair's metric is missing there.
    legend = {lab: h for ax in axes for h, lab in zip(*ax.get_legend_handles_labels())}
    if legend:
        png.legend(legend.values(), legend.keys(), loc="outside lower center", ncols=3, fontsize=7)
    title = f"{len(df)} trials, {int(front.sum())} on the Pareto front"
    if (group == 1).any():
        title += f", {int((group == 1).sum())} tied with it within noise"
    png.suptitle(title)
    html.update_layout(title=title, height=450 * nrows, width=550 * ncols)
    return png, html


def plot_frontier(
    df: pd.DataFrame,
    objectives: Sequence[ObjectiveLike],
    path_png: str | os.PathLike[str],
    markers: Mapping[str, Mapping[str, float]] | None = None,
    path_html: str | os.PathLike[str] | None = None,
) -> list[Path]:
    """Plot every successful trial (seed means ± 95% CI), highlight the Pareto front; write PNG + HTML.

    Two objectives give one panel; more give a pairwise grid. `markers` maps a
    label (e.g. "original", "retrain") to its metrics (plus optional
    `metric + "_ci95"`), drawn as hollow reference points with error bars.
    `df` may carry `metric + "_ci95"` columns and a boolean `tied` column.
    Each PNG panel is zoomed on the front and the markers (view_window);
    trials beyond sit clipped on the border. The HTML (default: PNG path with
    .html) holds every point but opens on the same window. Returns [png, html].
    """
    objs = [_as_objective(o) for o in objectives]
    if len(objs) < 2:
        raise ValueError("plot_frontier needs at least two objectives")
    png_fig, html_fig = _figures(df, objs, markers or {})
    png = Path(path_png)
    html = Path(path_html) if path_html is not None else png.with_suffix(".html")
    return [atomic_write(png, lambda tmp: png_fig.savefig(tmp, format="png", dpi=120)),
            atomic_write(html, lambda tmp: html_fig.write_html(tmp, include_plotlyjs=True))]


def plot_methods(
    df: pd.DataFrame,
    objectives: Sequence[ObjectiveLike],
    path_png: str | os.PathLike[str],
    markers: Mapping[str, Mapping[str, float]] | None = None,
) -> list[Path]:
    """A comparison's trials coloured by their ``method`` column, each method's own frontier as
    a staircase in its colour, the reference models as hollow markers; PNG + HTML (same name).
    Each panel is framed on the fronts and the markers, as in :func:`plot_frontier`."""
    import plotly.graph_objects as go
    from matplotlib import colormaps
    from matplotlib.colors import to_hex
    from matplotlib.figure import Figure
    from plotly.subplots import make_subplots

    objs = [_as_objective(o) for o in objectives]
    metrics = [o.metric for o in objs]
    df = valid_trials(df, metrics)
    methods = sorted(df["method"].unique())
    colors = {m: to_hex(colormaps["tab10"](i % 10)) for i, m in enumerate(methods)}
    pairs = [(i, j) for i in range(len(objs)) for j in range(i + 1, len(objs))]
    png = Figure(figsize=(5.5 * len(pairs), 4.5), layout="constrained")
    axes = png.subplots(1, len(pairs), squeeze=False).ravel()
    html = make_subplots(rows=1, cols=len(pairs))
    for k, (i, j) in enumerate(pairs):
        ox, oy, anchors = objs[i], objs[j], []
        for method in methods:
            pts = df.loc[df["method"] == method, [ox.metric, oy.metric]].to_numpy(dtype=float)
            front = pts[pareto_mask(pts, [ox.direction, oy.direction])]
            sx, sy = (1.0 if o.direction == "min" else -1.0 for o in (ox, oy))
            front = front[np.lexsort((sy * front[:, 1], sx * front[:, 0]))]
            anchors.append(front)
            axes[k].scatter(pts[:, 0], pts[:, 1], s=12, c=colors[method], alpha=0.5)
            axes[k].step(front[:, 0], front[:, 1], where="post", c=colors[method], lw=1.5, marker="o", ms=4,
                         label=method)
            html.add_trace(go.Scatter(x=pts[:, 0], y=pts[:, 1], mode="markers", name=method, legendgroup=method,
                                      showlegend=k == 0, marker={"color": colors[method], "size": 6}),
                           row=1, col=k + 1)
            html.add_trace(go.Scatter(x=front[:, 0], y=front[:, 1], mode="lines", legendgroup=method,
                                      showlegend=False, line={"shape": "hv", "color": colors[method]}),
                           row=1, col=k + 1)
        for (name, met), (marker, symbol, color) in zip((markers or {}).items(), _REF_STYLES):
            if ox.metric in met and oy.metric in met:
                xy = [met[ox.metric], met[oy.metric]]
                anchors.append(np.array([xy]))
                axes[k].plot(*xy, marker=marker, ms=12, mfc="none", mec=color, mew=1.8, ls="", label=name)
                html.add_trace(go.Scatter(x=[xy[0]], y=[xy[1]], mode="markers", name=name, showlegend=k == 0,
                                          marker={"symbol": f"{symbol}-open", "size": 14, "color": color}),
                               row=1, col=k + 1)
        window = view_window(np.vstack(anchors)) if anchors else None
        if window is not None:
            axes[k].set_xlim(*window[0])
            axes[k].set_ylim(*window[1])
        axes[k].set_xlabel(_label(ox))
        axes[k].set_ylabel(_label(oy))
        axes[k].grid(alpha=0.3)
        html.update_xaxes(title_text=_label(ox), row=1, col=k + 1)
        html.update_yaxes(title_text=_label(oy), row=1, col=k + 1)
    handles = {lab: h for ax in axes for h, lab in zip(*ax.get_legend_handles_labels())}
    png.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=4, fontsize=7)
    png.suptitle(f"{len(df)} trials of {len(methods)} methods, each with its own frontier")
    html.update_layout(title=f"{len(df)} trials of {len(methods)} methods", height=480, width=560 * len(pairs))
    png_path = Path(path_png)
    return [atomic_write(png_path, lambda tmp: png.savefig(tmp, format="png", dpi=120)),
            atomic_write(png_path.with_suffix(".html"), lambda tmp: html.write_html(tmp, include_plotlyjs=True))]
