"""Which searched knob matters, per objective: Optuna's PED-ANOVA and fANOVA over the completed
trials of the sweep's study (``sweep/study.py``; one study per method in a comparison), as a
table and a bar plot (PNG + HTML) beside the frontier."""
from __future__ import annotations

from pathlib import Path

from orchestrator.storage import atomic_write
from orchestrator.sweep.paths import SweepPaths
from orchestrator.sweep.spec import SweepSpec

# PED-ANOVA compares the best 10% of trials with all of them: below 20 completed trials that is
# one trial, and fANOVA's forest is fit on as few points; the table says so.
MEANINGFUL_TRIALS = 20
EVALUATORS = ("ped_anova", "fanova")


def _evaluator(name: str):
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator

    return PedAnovaImportanceEvaluator() if name == "ped_anova" else FanovaImportanceEvaluator(seed=0)


def _single_objective(trials, index: int, direction: str):
    """The completed trials as a study of objective ``index`` alone (its own direction)."""
    import optuna

    study = optuna.create_study(direction="minimize" if direction == "min" else "maximize")
    study.add_trials([optuna.trial.create_trial(params=t.params, distributions=t.distributions,
                                                value=t.values[index]) for t in trials])
    return study


def study_importance(spec: SweepSpec, study_url: str, study_name: str) -> dict:
    """``{"trials": n, "objectives": {metric: {evaluator: {knob: importance}}}}`` of one study
    (``objectives`` empty with fewer than two completed trials, or no knob that varied; a
    metric's entry None where every trial scored the same)."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=study_name, storage=study_url)
    except KeyError:  # a sweep from before the study had a database
        return {"study": study_name, "trials": 0, "objectives": {}}
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    out = {"study": study_name, "trials": len(done), "objectives": {}}
    varied = {k for t in done for k in t.params if len({u.params.get(k) for u in done}) > 1}
    if len(done) < 2 or not varied:
        return out
    for i, objective in enumerate(spec.objectives):
        if len({t.values[i] for t in done}) < 2:  # every trial scored the same: no knob moved it
            out["objectives"][objective.metric] = None
            continue
        single = _single_objective(done, i, objective.direction)
        out["objectives"][objective.metric] = {
            name: {k: round(float(v), 4) for k, v in optuna.importance.get_param_importances(
                single, evaluator=_evaluator(name), normalize=True).items()}
            for name in EVALUATORS}
    return out


def sweep_importance(spec: SweepSpec, paths: SweepPaths) -> list[dict]:
    """One entry per study (a comparison: per method, with its ``method``)."""
    url = paths.study_url(spec.study_storage)
    methods = list(spec.methods) if spec.methods else [None]
    return [{**({"method": m} if m else {}), **study_importance(spec, url, paths.study_name(m))} for m in methods]


def format_importance(entries: list[dict]) -> str:
    lines = []
    for entry in entries:
        rough = " (rough below %d)" % MEANINGFUL_TRIALS if entry["trials"] < MEANINGFUL_TRIALS else ""
        title = f"method {entry['method']}: " if "method" in entry else ""
        lines.append(f"{title}knob importance per objective, PED-ANOVA | fANOVA, over {entry['trials']} completed "
                     f"trials{rough}")
        objectives = entry["objectives"]
        if not objectives:
            lines.append("  (needs two completed trials and a knob that varied)")
            continue
        scored = {m: o for m, o in objectives.items() if o is not None}
        knobs = list(dict.fromkeys(k for o in scored.values() for e in o.values() for k in e))
        width = max([len(k) for k in knobs] + [8]) + 2
        lines.append(" " * width + "".join(f"{m:>21}" for m in scored))
        for k in knobs:
            cells = "".join(f"{o['ped_anova'].get(k, 0.0):>13.3f} | {o['fanova'].get(k, 0.0):.3f}" for o in
                            scored.values())
            lines.append(f"{k:<{width}}{cells}")
        lines += [f"  {m}: the same for every trial, no knob moved it" for m, o in objectives.items() if o is None]
    return "\n".join(lines)


def plot_importance(entries: list[dict], path_png: Path) -> list[Path]:
    """Bars of each knob's importance, one panel per (study, objective), both evaluators side by
    side; PNG (matplotlib) and HTML (plotly), written atomically. [] when there is nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    panels = [(f"{e['method']}: {m}" if "method" in e else m, scores)
              for e in entries for m, scores in e["objectives"].items() if scores is not None]
    if not panels:
        return []
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.2), squeeze=False)
    html = make_subplots(rows=1, cols=len(panels), subplot_titles=[t for t, _ in panels])
    labels = {"ped_anova": "PED-ANOVA", "fanova": "fANOVA"}
    for j, (title, scores) in enumerate(panels):
        knobs = list(dict.fromkeys(k for e in scores.values() for k in e))
        x = np.arange(len(knobs))
        for offset, (name, color) in zip((-0.2, 0.2), (("ped_anova", "tab:blue"), ("fanova", "tab:orange"))):
            values = [scores[name].get(k, 0.0) for k in knobs]
            axes[0, j].bar(x + offset, values, width=0.4, label=labels[name], color=color)
            html.add_trace(go.Bar(x=knobs, y=values, name=labels[name], marker_color=color.removeprefix("tab:"),
                                  showlegend=j == 0), row=1, col=j + 1)
        axes[0, j].set_xticks(x, knobs, rotation=30, ha="right")
        axes[0, j].set_ylim(0, 1)
        axes[0, j].set_title(title)
    axes[0, 0].set_ylabel("importance (sums to 1)")
    axes[0, 0].legend()
    fig.tight_layout()
    html.update_layout(barmode="group", title="Knob importance per objective", yaxis_range=[0, 1])
    png, page = Path(path_png), Path(path_png).with_suffix(".html")
    written = [atomic_write(png, lambda tmp: fig.savefig(tmp, format="png", dpi=120)),
               atomic_write(page, lambda tmp: html.write_html(tmp, include_plotlyjs=True))]
    plt.close(fig)
    return written
