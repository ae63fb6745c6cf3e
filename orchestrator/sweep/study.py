"""The sweep as an Optuna study in a real database, for optuna-dashboard and the importances:
one study per method (the sweep's name; ``NAME.METHOD`` in a comparison), rewritten from the
results table after every trial. The table is what a resumed sweep (on any machine) goes on
with, so the study goes on with it too; written whole each time (a new sqlite file renamed
over the old one), it is never half-written, and a bucket gets it beside the table.

Each trial: its searched knobs, the objectives' seed means (COMPLETE), or FAIL (failed) /
PRUNED (raced), with the Tune trial id and MLflow run as user attributes.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

from orchestrator.storage import temp_sibling
from orchestrator.sweep.paths import SweepPaths
from orchestrator.sweep.spec import SweepSpec


def _distribution(d):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if d.type == "choice":
        return CategoricalDistribution(d.values)
    if d.type == "int":
        return IntDistribution(int(d.low), int(d.high))
    return FloatDistribution(d.low, d.high, log=d.type == "loguniform")


def _trial(spec: SweepSpec, row):
    import optuna
    from optuna.trial import TrialState

    distributions = {k: _distribution(d) for k, d in spec.search.items()}
    params = {}
    for k, d in spec.search.items():
        value = row[f"config.{k}"]
        params[k] = value if d.type == "choice" else (int(value) if d.type == "int" else float(value))
    values = [float(row.get(o.metric, math.nan)) for o in spec.objectives]
    status = row.get("status")
    state = (TrialState.COMPLETE if status == "ok" and all(map(math.isfinite, values))
             else TrialState.PRUNED if status == "raced" else TrialState.FAIL)
    attrs = {k: str(row[k]) for k in ("trial_id", "mlflow_run_id") if isinstance(row.get(k), str)}
    return optuna.trial.create_trial(params=params, distributions=distributions, user_attrs=attrs, state=state,
                                     values=values if state == TrialState.COMPLETE else None)


def _write(url: str, specs: dict[str, SweepSpec], df) -> None:
    import optuna

    for name, spec in specs.items():
        rows = df if spec.method is None or "method" not in df else df[df["method"] == spec.method_contract.name]
        study = optuna.create_study(storage=url, study_name=name,
                                    directions=["minimize" if o.direction == "min" else "maximize"
                                                for o in spec.objectives])
        study.set_metric_names([o.metric for o in spec.objectives])
        study.add_trials([_trial(spec, row) for _, row in rows.iterrows()])


def write_study(spec: SweepSpec, paths: SweepPaths, df) -> None:
    """Rewrite the sweep's studies from the results table ``df``."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # set_metric_names
    specs = {paths.study_name(sub.method if spec.methods else None): sub for sub in spec.per_method()}
    if spec.study_storage is None:  # the sweep's own sqlite file: built aside, then renamed over the old
        tmp = temp_sibling(paths.study)
        try:
            _write(f"sqlite:///{tmp.resolve()}", specs, df)
            os.replace(tmp, paths.study)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return
    for name in specs:  # a database the user gave: its studies replaced in place
        if name in {s.study_name for s in optuna.get_all_study_summaries(spec.study_storage)}:
            optuna.delete_study(study_name=name, storage=spec.study_storage)
    _write(spec.study_storage, specs, df)
