"""Plots of a sweep: its frontier (``frontier.png`` / ``.html``) and a comparison's methods
(``frontier_methods.png`` / ``.html``).

A plot is first described once (:class:`Chart` of :class:`Panel` of :class:`Series`: what is
drawn, where, in which colour, under which legend label), then rendered by two back ends
(matplotlib PNG, plotly HTML) that only decide how each kind of series looks. The PNG frames
every panel on what a reader compares (the front, the reference models) and pins trials beyond
it on the border; the HTML opens on the same window but keeps every trial.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from orchestrator.storage import atomic_write
from orchestrator.sweep.pareto import front_order, pareto_mask
from orchestrator.sweep.spec import ObjectiveSpec

if TYPE_CHECKING:
    import pandas as pd

# Trial states (Ray Tune "status", Optuna "state") that mean "no valid metrics".
FAILED_STATES = frozenset({"error", "failed", "fail", "pruned"})

ObjectiveLike = ObjectiveSpec | tuple[str, str]
Markers = Mapping[str, Mapping[str, float]]  # a reference model's label -> its metrics (+ "<metric>_ci95")

# Trial groups of the frontier plot: series kind, legend label, colour (a CSS name both back ends know).
GROUPS = (("trials", "trials", "darkgray"), ("tied", "tied with frontier (within noise)", "darkorange"),
          ("front", "Pareto front", "red"))
# Reference models: marker shape (plotly's name), colour kept clear of the trial groups'.
REFERENCE_STYLES = (("star", "royalblue"), ("diamond", "forestgreen"), ("cross", "purple"), ("x", "saddlebrown"),
                    ("triangle-up", "teal"), ("square", "deeppink"), ("triangle-down", "olive"))


def as_objective(o: ObjectiveLike) -> ObjectiveSpec:
    """An objective as the spec declares it; ``(metric, direction)`` is validated the same way."""
    return o if isinstance(o, ObjectiveSpec) else ObjectiveSpec(metric=o[0], direction=o[1])


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


# ----------------------------------------------------------------------------- description


@dataclass(frozen=True)
class Series:
    """Points (or a line) of one panel. ``kind`` names how the back ends draw it (their
    ``_PNG`` / ``_HTML`` tables): trials, tied, front (trial groups), stairs (a front as a
    post step), reference (a reference model), method / method_front (a comparison's trials
    and front)."""

    kind: str
    label: str | None  # legend entry, also what ties an HTML trace to its legend group
    x: np.ndarray
    y: np.ndarray
    color: str
    xerr: np.ndarray | None = None  # 95% CI half-widths, NaN where unknown
    yerr: np.ndarray | None = None
    marker: str | None = None  # a reference's shape (plotly's name)
    hover: np.ndarray | None = None  # per point, HTML only
    clip: bool = False  # trials: the PNG pins those outside the window on its border

    def subset(self, keep: np.ndarray) -> Series:
        pick = lambda a: None if a is None else np.asarray(a)[keep]  # noqa: E731
        return replace(self, x=self.x[keep], y=self.y[keep], xerr=pick(self.xerr), yerr=pick(self.yerr),
                       hover=pick(self.hover))


@dataclass(frozen=True)
class Panel:
    """One objective pair."""

    x_label: str
    y_label: str
    series: list[Series]
    window: np.ndarray | None  # [[x_lo, x_hi], [y_lo, y_hi]], None: autoscale


@dataclass(frozen=True)
class Chart:
    """A figure: panels in a grid of ``ncols`` columns, one legend, one title."""

    title: str
    panels: list[Panel]
    ncols: int
    png_panel_size: tuple[float, float]  # inches
    html_panel_size: tuple[int, int]  # pixels
    legend_cols: int

    @property
    def nrows(self) -> int:
        return -(-len(self.panels) // self.ncols)


def _label(o: ObjectiveSpec) -> str:
    return f"{o.metric} ({o.direction} {'↓' if o.direction == 'min' else '↑'} better)"


def _pairs(m: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(m) for j in range(i + 1, m)]


def _pm(metric: str, value: float, ci: float) -> str:
    return f"{metric}={value:.4g}" + (f" ± {ci:.2g}" if np.isfinite(ci) else "")


def _hover_text(df: pd.DataFrame, metrics: list[str], errs: np.ndarray) -> list[str]:
    """Per trial: id, config, and each objective as seed mean ± CI half-width (`errs`, n x m)."""
    cols = [c for c in ("trial_id",) if c in df.columns] + [c for c in df.columns if c.startswith("config.")]
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    return ["<br>".join([f"{c}={fmt(row[c])}" for c in cols] + list(map(_pm, metrics, vs, es)))
            for (_, row), vs, es in zip(df[cols].iterrows(), df[metrics].to_numpy(dtype=float), errs)]


def _staircase(pts: np.ndarray, ox: ObjectiveSpec, oy: ObjectiveSpec) -> np.ndarray:
    return pts[front_order(pts, [ox.direction, oy.direction])]


def _references(markers: Markers, ox: ObjectiveSpec, oy: ObjectiveSpec, spread: bool) -> list[Series]:
    """The reference models that have both metrics, hollow, with their seed spread if ``spread``."""
    out = []
    for (name, met), (shape, color) in zip(markers.items(), itertools.cycle(REFERENCE_STYLES)):
        if ox.metric not in met or oy.metric not in met:
            continue
        xy = np.array([met[ox.metric], met[oy.metric]], dtype=float)
        ci = np.array([met.get(f"{o.metric}_ci95", np.nan) if spread else np.nan for o in (ox, oy)], dtype=float)
        out.append(Series("reference", name, xy[:1], xy[1:], color, ci[:1], ci[1:], marker=shape,
                          hover=np.array(["<br>".join([name, *map(_pm, (ox.metric, oy.metric), xy, ci)])],
                                         dtype=object)))
    return out


def frontier_chart(df: pd.DataFrame, objectives: Sequence[ObjectiveLike], markers: Markers | None = None) -> Chart:
    """Every successful trial (seed means ± 95% CI) in groups (trials, tied with the front,
    the front), each pair's own front as a staircase, the reference models; one panel per
    objective pair, each framed on its front and the references."""
    objs = [as_objective(o) for o in objectives]
    if len(objs) < 2:
        raise ValueError("plot_frontier needs at least two objectives")
    markers = markers or {}
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

    panels = []
    for i, j in _pairs(len(objs)):
        ox, oy, pts, e = objs[i], objs[j], vals[:, [i, j]], errs[:, [i, j]]
        series = []
        for g, (kind, label, color) in enumerate(GROUPS):
            sel = group == g
            if sel.any():
                series.append(Series(kind, label, pts[sel, 0], pts[sel, 1], color, e[sel, 0], e[sel, 1],
                                     hover=hover[sel], clip=True))
        stairs = _staircase(pts, ox, oy)
        if len(stairs) > 1:
            series.append(Series("stairs", None, stairs[:, 0], stairs[:, 1], "red"))
        refs = _references(markers, ox, oy, spread=True)
        series += refs
        # A reference's seed spread is part of what the reader compares, so it is framed too.
        spans = [np.column_stack([r.x, r.y]) + sign * np.nan_to_num(np.column_stack([r.xerr, r.yerr]))
                 for r in refs for sign in (-1, 1)]
        window = view_window(np.vstack([pts[group == 2], stairs, *spans]))
        panels.append(Panel(_label(ox), _label(oy), series, window))
    title = f"{len(df)} trials, {int(front.sum())} on the Pareto front"
    if (group == 1).any():
        title += f", {int((group == 1).sum())} tied with it within noise"
    return Chart(title, panels, min(len(panels), 3), (5, 4.2), (550, 450), 3)


def methods_chart(df: pd.DataFrame, objectives: Sequence[ObjectiveLike], markers: Markers | None = None) -> Chart:
    """A comparison's trials coloured by their ``method`` column, each method's own front as a
    staircase in its colour, the reference models hollow; one row of panels, each framed on
    the fronts and the references."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    objs = [as_objective(o) for o in objectives]
    df = valid_trials(df, [o.metric for o in objs])
    methods = sorted(df["method"].unique())
    colors = {m: to_hex(colormaps["tab10"](i % 10)) for i, m in enumerate(methods)}
    panels = []
    for i, j in _pairs(len(objs)):
        ox, oy = objs[i], objs[j]
        series, anchors = [], []
        for method in methods:
            pts = df.loc[df["method"] == method, [ox.metric, oy.metric]].to_numpy(dtype=float)
            front = _staircase(pts, ox, oy)
            anchors.append(front)
            series += [Series("method", method, pts[:, 0], pts[:, 1], colors[method]),
                       Series("method_front", method, front[:, 0], front[:, 1], colors[method])]
        refs = _references(markers or {}, ox, oy, spread=False)
        series += refs
        anchors += [np.column_stack([r.x, r.y]) for r in refs]
        window = view_window(np.vstack(anchors)) if anchors else None
        panels.append(Panel(_label(ox), _label(oy), series, window))
    title = f"{len(df)} trials of {len(methods)} methods, each with its own frontier"
    return Chart(title, panels, len(panels), (5.5, 4.5), (560, 480), 4)


# ----------------------------------------------------------------------------- back ends

# matplotlib: how each kind is drawn (artist, keyword arguments; "legend": it gets its label).
_PNG: dict[str, tuple[str, dict[str, Any]]] = {
    "trials": ("errorbar", {"fmt": "o", "ms": 3, "elinewidth": 0.7, "alpha": 0.85, "zorder": 3, "legend": True}),
    "tied": ("errorbar", {"fmt": "o", "ms": 4, "elinewidth": 0.7, "alpha": 0.85, "zorder": 4, "legend": True}),
    "front": ("errorbar", {"fmt": "o", "ms": 5, "elinewidth": 0.7, "alpha": 0.85, "zorder": 5, "legend": True}),
    "stairs": ("step", {"where": "post", "lw": 1, "alpha": 0.7}),
    # Hollow: with gap objectives retrain sits at 0, right where the best trials are.
    "reference": ("errorbar", {"ms": 12, "mfc": "none", "mew": 1.8, "capsize": 3, "zorder": 6, "legend": True}),
    "method": ("scatter", {"s": 12, "alpha": 0.5}),
    "method_front": ("step", {"where": "post", "lw": 1.5, "marker": "o", "ms": 4, "legend": True}),
}
_MPL_MARKERS = {"star": "*", "diamond": "D", "cross": "P", "x": "X", "triangle-up": "^", "square": "s",
                "triangle-down": "v"}
# Trials pinned on the border: a triangle pointing to where they really are,
# (axis they are furthest out along, beyond its upper limit) -> marker.
_OUTWARD = {(0, False): "<", (0, True): ">", (1, False): "v", (1, True): "^"}

# plotly: trace keyword arguments per kind ("legend": named and shown in the legend once).
_HTML: dict[str, dict[str, Any]] = {
    "trials": {"mode": "markers", "marker": {"size": 5}, "legend": True},
    "tied": {"mode": "markers", "marker": {"size": 6}, "legend": True},
    "front": {"mode": "markers", "marker": {"size": 7}, "legend": True},
    "stairs": {"mode": "lines", "line": {"shape": "hv", "width": 1}, "hoverinfo": "skip"},
    "reference": {"mode": "markers", "marker": {"size": 14, "line": {"width": 2}}, "legend": True},
    "method": {"mode": "markers", "marker": {"size": 6}, "legend": True},
    "method_front": {"mode": "lines", "line": {"shape": "hv"}},
}


def _err(e: np.ndarray | None) -> np.ndarray | None:
    """`e` if any error bar is known: an all-NaN array would only add empty artists/traces."""
    if e is None:
        return None
    e = np.asarray(e, dtype=float)
    return e if np.isfinite(e).any() else None


def _png_series(ax: Any, s: Series) -> None:
    artist, style = _PNG[s.kind]
    kw = {k: v for k, v in style.items() if k != "legend"}
    if style.get("legend"):
        kw["label"] = s.label
    if artist == "errorbar":
        if s.marker is not None:
            kw.update(fmt=_MPL_MARKERS[s.marker], mec=s.color, ecolor=s.color)
        else:
            kw["c"] = s.color
        ax.errorbar(s.x, s.y, xerr=_err(s.xerr), yerr=_err(s.yerr), **kw)
    elif artist == "step":
        ax.step(s.x, s.y, c=s.color, **kw)
    else:
        ax.scatter(s.x, s.y, c=s.color, **kw)


def _png_panel(ax: Any, p: Panel) -> None:
    pinned, pinned_colors = [], []
    for s in p.series:
        if s.clip:
            out = off_window(np.column_stack([s.x, s.y]), p.window)
            pinned.append(np.column_stack([s.x, s.y])[out])
            pinned_colors += [s.color] * int(out.sum())
            s = s.subset(~out)
            if not len(s.x):
                continue
        _png_series(ax, s)
    if p.window is not None:
        ax.set_xlim(*p.window[0])
        ax.set_ylim(*p.window[1])
    if pinned_colors:
        outside = np.vstack(pinned)
        edge = np.clip(outside, p.window[:, 0], p.window[:, 1])
        excess = (outside - edge) / (p.window[:, 1] - p.window[:, 0])
        axis = np.abs(excess).argmax(axis=1)
        upper = excess[np.arange(len(edge)), axis] > 0
        colors = np.array(pinned_colors)
        for (k, up), marker in _OUTWARD.items():
            sel = (axis == k) & (upper == up)
            # clip_on=False: a marker centred on the border would otherwise be cut in half.
            ax.scatter(edge[sel, 0], edge[sel, 1], marker=marker, s=30, c=colors[sel], clip_on=False, zorder=7)
        ax.set_title(f"{len(outside)} trials outside the view", loc="right", fontsize=8)
    ax.set_xlabel(p.x_label)
    ax.set_ylabel(p.y_label)
    ax.grid(alpha=0.3)


def render_png(chart: Chart) -> Any:
    """The chart as a matplotlib Figure (no pyplot: no global backend state, Agg canvas)."""
    from matplotlib.figure import Figure

    w, h = chart.png_panel_size
    png = Figure(figsize=(w * chart.ncols, h * chart.nrows), layout="constrained")
    axes = png.subplots(chart.nrows, chart.ncols, squeeze=False).ravel()
    for ax, panel in zip(axes, chart.panels):
        _png_panel(ax, panel)
    for ax in axes[len(chart.panels):]:
        ax.set_visible(False)
    # One legend outside the panels: inside, "best" still lands on markers of a crowded panel.
    # Labels gathered over all panels: a reference lacking one pair's metric is missing there.
    legend = {lab: h for ax in axes for h, lab in zip(*ax.get_legend_handles_labels())}
    if legend:
        png.legend(legend.values(), legend.keys(), loc="outside lower center", ncols=chart.legend_cols, fontsize=7)
    png.suptitle(chart.title)
    return png


def _html_err(e: np.ndarray | None) -> dict[str, Any] | None:
    e = _err(e)
    return None if e is None else {"type": "data", "array": e, "thickness": 1}


def render_html(chart: Chart) -> Any:
    """The chart as a plotly Figure: every trial unclipped (the reader can zoom out), each
    legend label shown once."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    html = make_subplots(rows=chart.nrows, cols=chart.ncols)
    shown: set[str] = set()
    for k, p in enumerate(chart.panels):
        at = {"row": k // chart.ncols + 1, "col": k % chart.ncols + 1}
        for s in p.series:
            style = {key: v for key, v in _HTML[s.kind].items() if key != "legend"}
            kw: dict[str, Any] = {"x": s.x, "y": s.y, **style}
            if s.label is not None:
                kw["legendgroup"] = s.label
            if _HTML[s.kind].get("legend"):
                kw.update(name=s.label, showlegend=s.label not in shown)
                shown.add(s.label)
            else:
                kw["showlegend"] = False
            if "marker" in kw:
                kw["marker"] = {**kw["marker"], "color": s.color}
                if s.marker is not None:
                    kw["marker"]["symbol"] = f"{s.marker}-open"
            if "line" in kw:
                kw["line"] = {**kw["line"], "color": s.color}
            if _err(s.xerr) is not None or _err(s.yerr) is not None:
                kw.update(error_x=_html_err(s.xerr), error_y=_html_err(s.yerr))
            if s.hover is not None:
                kw.update(text=s.hover, hoverinfo="text")
            html.add_trace(go.Scatter(**kw), **at)
        window = [None, None] if p.window is None else p.window.tolist()
        html.update_xaxes(title_text=p.x_label, range=window[0], **at)
        html.update_yaxes(title_text=p.y_label, range=window[1], **at)
    w, h = chart.html_panel_size
    html.update_layout(title=chart.title, height=h * chart.nrows, width=w * chart.ncols)
    return html


def figures(chart: Chart) -> tuple[Any, Any]:
    """The chart's PNG (matplotlib) and HTML (plotly) figures."""
    return render_png(chart), render_html(chart)


def write(chart: Chart, path_png: str | os.PathLike[str], path_html: str | os.PathLike[str] | None = None
          ) -> list[Path]:
    """PNG and HTML (default: the PNG's path with .html), each written atomically; [png, html]."""
    png_fig, html_fig = figures(chart)
    png = Path(path_png)
    html = Path(path_html) if path_html is not None else png.with_suffix(".html")
    return [atomic_write(png, lambda tmp: png_fig.savefig(tmp, format="png", dpi=120)),
            atomic_write(html, lambda tmp: html_fig.write_html(tmp, include_plotlyjs=True))]


def plot_frontier(
    df: pd.DataFrame,
    objectives: Sequence[ObjectiveLike],
    path_png: str | os.PathLike[str],
    markers: Markers | None = None,
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
    return write(frontier_chart(df, objectives, markers), path_png, path_html)


def plot_methods(
    df: pd.DataFrame,
    objectives: Sequence[ObjectiveLike],
    path_png: str | os.PathLike[str],
    markers: Markers | None = None,
) -> list[Path]:
    """A comparison's trials by method, each method's own frontier, the reference models;
    PNG + HTML (same name). Framed as :func:`plot_frontier` frames its panels."""
    return write(methods_chart(df, objectives, markers), path_png)
