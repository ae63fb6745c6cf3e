"""What a sweep publishes for the MLflow UI, so it opens on the user's question (which trial to
pick, and why): the experiment marked as model training, the references as runs beside the
trials, and a shared runs view (MLflow 3 keeps shared views as experiment tags,
``mlflow.sharedViewState.<key>``): the objectives' means and 95% intervals as columns, the
trial runs expanded under the parent, a scatter of the objectives and a parallel-coordinates
chart of the searched knobs into the objectives."""
from __future__ import annotations

import hashlib
import json
import math

from orchestrator.stats import headline_pair
from orchestrator.sweep.spec import SweepSpec
from orchestrator.sweep.tracking import PARENT_TAG, SWEEP_TAG

EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")  # not the GenAI overview
SHARED_VIEW_PREFIX = "mlflow.sharedViewState."
VIEW_TAG = "scissorhands.view"  # the experiment's shared view key, for `scissorhands ui`
REFERENCE_ROLE = "reference"
SECTION = "sweep"


def view_key(sweep: str) -> str:
    return hashlib.sha256(f"scissorhands-sweep:{sweep}".encode()).hexdigest()[:24]


def _metric(key: str) -> str:
    return f"metrics.`{key}`"


def searched_knobs(spec: SweepSpec) -> list[str]:
    """Every knob any method of the sweep searches, in the order the spaces name them."""
    return list(dict.fromkeys(k for sub in spec.per_method() for k in sub.search))


def runs_view(spec: SweepSpec, parent_run_id: str) -> dict:
    """The shared view's state (the runs page's search facets and UI state)."""
    objectives = [o.metric for o in spec.objectives]
    knobs = searched_knobs(spec)
    flags = [_metric("improves_on_original")] if headline_pair(spec.task_contract) else []
    columns = [c for m in objectives for c in (_metric(m), _metric(f"{m}_ci95"))]
    columns += ["tags.`pareto`", "tags.`tied`", "params.`method`", *flags, *(f"params.`{k}`" for k in knobs)]
    y = objectives[1] if len(objectives) > 1 else spec.task_contract.time_metric
    first = spec.objectives[0]
    charts = [
        {"uuid": "objectives", "type": "SCATTER", "xaxis": {"key": objectives[0], "type": "METRIC"},
         "yaxis": {"key": y, "type": "METRIC"}, "runsCountToCompare": 1000, "metricSectionId": SECTION,
         "deleted": False, "isGenerated": False},
        {"uuid": "knobs", "type": "PARALLEL", "selectedParams": knobs, "selectedMetrics": objectives,
         "runsCountToCompare": 1000, "metricSectionId": SECTION, "deleted": False, "isGenerated": False,
         "showAllRuns": True},
    ]
    return {
        "searchFilter": "", "orderByKey": _metric(first.metric), "orderByAsc": first.direction == "min",
        "startTime": "ALL", "lifecycleFilter": "Active", "modelVersionFilter": "All Runs", "datasetsFilter": [],
        "selectedColumns": columns, "runsExpanded": {parent_run_id: True}, "runsHiddenMode": "SHOW_ALL",
        "compareRunCharts": charts,
        "compareRunSections": [{"uuid": SECTION, "name": f"Sweep {spec.name}", "display": True,
                                "isReordered": False, "deleted": False, "isGenerated": False}],
        # Our section first; MLflow appends its per-metric sections after it.
        "isAccordionReordered": True, "viewMaximized": False, "runListHidden": False,
        "useGroupedValuesInCharts": True, "hideEmptyCharts": True, "groupBy": None, "groupsExpanded": {},
        "autoRefreshEnabled": True,
    }


def mark_experiment(client, experiment_id: str) -> None:
    client.set_experiment_tag(experiment_id, *EXPERIMENT_KIND)


def publish_view(client, experiment_id: str, spec: SweepSpec, parent_run_id: str) -> str:
    """Publish (or refresh) the sweep's shared runs view; its key."""
    key = view_key(spec.name)
    client.set_experiment_tag(experiment_id, SHARED_VIEW_PREFIX + key, json.dumps(runs_view(spec, parent_run_id)))
    client.set_experiment_tag(experiment_id, VIEW_TAG, key)
    return key


def view_urls(base: str, experiment_id: str, key: str) -> dict[str, str]:
    """The runs table and the charts of the shared view (``workflowType``: the UI's model-training side)."""
    page = f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={key}"
    return {"runs": page, "charts": f"{page}&compareRunsMode=CHART"}


def log_reference_runs(client, experiment_id: str, parent_run_id: str, sweep: str,
                       markers: dict[str, dict[str, float]]) -> None:
    """Original and retrain as runs under the parent, each with the trials' metrics (means over
    seeds and ``_ci95``): points beside the trials in the shared view's charts."""
    from mlflow.entities import Metric

    existing = {r.data.tags.get("reference"): r.info.run_id for r in client.search_runs(
        [experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.role = '{REFERENCE_ROLE}'")}
    for role, metrics in markers.items():
        run_id = existing.get(role) or client.create_run(
            experiment_id, run_name=f"reference: {role}",
            tags={PARENT_TAG: parent_run_id, SWEEP_TAG: sweep, "role": REFERENCE_ROLE, "reference": role}).info.run_id
        values = [Metric(k, float(v), 0, 0) for k, v in metrics.items() if math.isfinite(v)]
        client.log_batch(run_id, metrics=values)
        client.set_terminated(run_id, "FINISHED")


def published_views(tracking_uri: str, base: str, name: str | None = None) -> dict[str, dict[str, str]]:
    """Each sweep's (or ``name``'s) shared view URLs in the store at ``tracking_uri``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    out = {}
    for experiment in client.search_experiments():
        key = experiment.tags.get(VIEW_TAG)
        if key and (name is None or experiment.name == name):
            out[experiment.name] = view_urls(base, experiment.experiment_id, key)
    return out
