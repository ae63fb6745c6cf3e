"""MLflow: one parent run per sweep, one nested child run per trial."""
from __future__ import annotations

import os
import platform
import socket
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from orchestrator.sweep.paths import SweepPaths, mlflow_db

PARENT_TAG = "mlflow.parentRunId"
SWEEP_TAG = "scissorhands.sweep"
TRIAL_TAG = "scissorhands.trial_id"


def default_tracking_uri(storage: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{mlflow_db(storage)}"


def ensure_experiment(client: MlflowClient, name: str, storage: Path, tracking_uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    # With a local store keep artifacts beside it; a server decides its own artifact root.
    location = None
    if tracking_uri.startswith("sqlite:"):
        location = SweepPaths(storage, name).mlflow_artifacts.as_uri()
    return client.create_experiment(name, artifact_location=location)


def find_or_create_parent(client: MlflowClient, experiment_id: str, sweep: str) -> str:
    """A resumed sweep keeps logging into its first parent run."""
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = '{sweep}' and tags.role = 'sweep'", max_results=1
    )
    if runs:
        client.update_run(runs[0].info.run_id, status="RUNNING")
        return runs[0].info.run_id
    run = client.create_run(experiment_id, run_name=sweep, tags={SWEEP_TAG: sweep, "role": "sweep"})
    return run.info.run_id


def child_runs(client: MlflowClient, experiment_id: str, parent_run_id: str, trial_id: str | None = None):
    query = f"tags.`{PARENT_TAG}` = '{parent_run_id}'"
    if trial_id:
        query += f" and tags.`{TRIAL_TAG}` = '{trial_id}'"
    return client.search_runs([experiment_id], filter_string=query, max_results=10000)


def start_child(client: MlflowClient, experiment_id: str, parent_run_id: str, trial_id: str, sweep: str) -> str:
    """Exactly one run per trial: a run left by an interrupted attempt of this trial is deleted first."""
    for stale in child_runs(client, experiment_id, parent_run_id, trial_id):
        client.delete_run(stale.info.run_id)
    tags = {PARENT_TAG: parent_run_id, TRIAL_TAG: trial_id, SWEEP_TAG: sweep, "role": "trial", **node_tags()}
    return client.create_run(experiment_id, run_name=trial_id, tags=tags).info.run_id


def node_tags() -> dict[str, str]:
    """Where the trial ran: Ray node, host, and hardware."""
    import torch

    tags = {"host": socket.gethostname(), "platform": platform.platform(), "cpu_count": str(os.cpu_count())}
    try:
        import ray

        ctx = ray.get_runtime_context()
        tags["ray.node_id"] = ctx.get_node_id()
        tags["ray.node_ip"] = ray.util.get_node_ip_address()
        tags["ray.assigned_resources"] = str(ctx.get_assigned_resources())
    except Exception:  # outside Ray (an in-process call): no node to record
        pass
    if torch.cuda.is_available():
        tags["gpu"] = torch.cuda.get_device_name(0)
    return tags


def log_model(client: MlflowClient, run_id: str, model) -> None:
    """Log the unlearned model so the registry can serve it (mlflow.pytorch.load_model).

    Saved locally and uploaded through the client: no global MLflow state is touched, so
    sweeps with different stores can share one process."""
    import tempfile

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        # "pickle": the pt2 default needs an input example and a traceable graph; pickling the
        # module keeps load_model exact for any model this project builds.
        mlflow.pytorch.save_model(
            model, f"{tmp}/model", serialization_format="pickle",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "scissorhands-sweep"],
        )
        client.log_artifacts(run_id, f"{tmp}/model", "model")
