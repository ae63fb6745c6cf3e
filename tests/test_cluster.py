"""Sweeps on a real multi-node Ray cluster with a remote MLflow server, and a node lost mid-sweep.

Everything runs on 127.0.0.1 (see tests/cluster_helpers.py): a Ray head with 0 CPUs and
worker nodes of 1 CPU each, every node its own raylet process, so trials can only run on
the workers and two concurrent trials must run on two different nodes. Each worker carries
a custom resource naming it. The sweep is the real CLI (`scissorhands sweep --address ...
--tracking-uri http://...`) in a subprocess, the way a user runs it on a cluster's head.
An `mlflow server` (sqlite store, proxied artifacts) receives every run over http.

Cost on 2 shared CPU cores: 3-4 minutes for the module (one reference build, two tiny
sweeps of 4 trials, two clusters, one MLflow server), most of it training under load.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.measured import as_in_a_trial, build_references_here
from cluster_helpers import (
    FAST_NODE_DEATH,
    NodeKiller,
    local_cluster,
    mlflow_server,
    node_id,
    raylet_pid,
    sweep_process,
    tiny_spec,
)

pytestmark = pytest.mark.slow

TRIALS = 4
SWEEP_TIMEOUT = 300  # seconds; a tiny sweep takes about one minute here
TRIAL_TAG = "scissorhands.trial_id"
PARENT_TAG = "mlflow.parentRunId"


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def _booting_server(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow-server"), wait=False) as server:
        yield server


@pytest.fixture(scope="module")
def tiny_references(tmp_path_factory, _booting_server):
    """Original + retrain of the tiny spec, trained once (cache entries are content-hashed,
    so a copy as a storage's references/ is a cache hit and the sweep skips training).
    Requests the server only so that it boots while the references train."""
    from orchestrator.sweep.spec import load_spec

    root = tmp_path_factory.mktemp("tiny-references")
    space = root / "tiny.yaml"
    space.write_text(tiny_spec("refs", TRIALS))
    started = time.monotonic()
    build_references_here(load_spec(space), root / "cache")
    print(f"\nreferences built in {time.monotonic() - started:.1f} s")
    return root / "cache"


@pytest.fixture(scope="module")
def tracking_server(_booting_server, tiny_references) -> str:
    """One MLflow server for the module (its http URI); each sweep logs into its own experiment."""
    return _booting_server.wait_ready()


def _prepare(storage: Path, name: str, references: Path) -> Path:
    space = storage.parent / f"{name}.yaml"
    space.write_text(tiny_spec(name, TRIALS))
    shutil.copytree(references, storage / "references")
    return space


def _sweep_args(space: Path, storage: Path, address: str, uri: str) -> list[str]:
    return [str(space), "--storage", str(storage), "--address", address, "--tracking-uri", uri, "--no-progress"]


class Sweep:
    """A finished sweep: its Parquet table, summary and MLflow parent/child runs."""

    def __init__(self, storage: Path, name: str, uri: str):
        self.storage, self.name, self.uri = storage, name, uri
        self.root = storage / name
        self.df = pd.read_parquet(self.root / "results.parquet")
        self.summary = json.loads((self.root / "summary.json").read_text())
        self.client = MlflowClient(uri)
        exp = self.client.get_experiment_by_name(name)
        assert exp is not None, f"no MLflow experiment {name!r} on {uri}"
        self.experiment_id = exp.experiment_id
        parents = self.client.search_runs([exp.experiment_id], filter_string="tags.role = 'sweep'")
        assert len(parents) == 1, [p.info.run_id for p in parents]
        self.parent = parents[0]

    def children(self):
        """Every active (not deleted) trial run under the sweep's parent run, any status."""
        return self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{self.parent.info.run_id}' and tags.role = 'trial'",
            max_results=1000,
        )

    def assert_each_trial_recorded_once(self) -> None:
        """Parquet and MLflow hold the same completed trials, each exactly once."""
        df, children = self.df, self.children()
        assert df["trial_id"].is_unique, df["trial_id"].tolist()
        assert len(df) == TRIALS, df[["trial_id", "status"]]
        assert (df["status"] == "ok").all(), df[["trial_id", "status", "error"]]
        tags = [c.data.tags.get(TRIAL_TAG) for c in children]
        assert len(tags) == len(set(tags)), f"a trial has several MLflow runs: {sorted(tags)}"
        assert {c.info.status for c in children} == {"FINISHED"}, [(t, c.info.status) for t, c in zip(tags, children)]
        assert set(tags) == set(df["trial_id"])
        by_trial = {c.data.tags[TRIAL_TAG]: c.info.run_id for c in children}
        assert dict(zip(df["trial_id"], df["mlflow_run_id"])) == by_trial
        assert self.summary["trials"] == TRIALS and self.summary["completed"] == TRIALS


@pytest.fixture(scope="module")
def spread_sweep(tmp_path_factory, tracking_server):
    """A 4-trial sweep on head (0 CPUs) + two 1-CPU workers, logging to the MLflow server, with
    nothing in its storage (its references are built by Ray tasks on the workers), then
    ``pick --address`` on the same cluster (held-out seeds 1-2). The build log names the
    process that trained each model."""
    tmp = tmp_path_factory.mktemp("spread")
    storage, name = tmp / "storage", "spread"
    space = tmp / f"{name}.yaml"
    space.write_text(tiny_spec(name, TRIALS))
    build_log = tmp / "builds.log"
    workers = [{"num_cpus": 1, "resources": {"worker_a": 1}}, {"num_cpus": 1, "resources": {"worker_b": 1}}]
    started = time.monotonic()
    with _env(SCISSORHANDS_BUILD_LOG=str(build_log)), local_cluster(workers, head_cpus=0) as (cluster, nodes):
        labels = {node_id(n): label for n, label in zip(nodes, ("worker_a", "worker_b"))}
        head = node_id(cluster.head_node)
        assert cluster.address.startswith("127.0.0.1:"), cluster.address
        assert len({raylet_pid(n) for n in (cluster.head_node, *nodes)}) == 3, "one raylet process per node"
        up = time.monotonic()
        with sweep_process(_sweep_args(space, storage, cluster.address, tracking_server), tmp / "sweep.log") as sweep:
            rc = sweep.wait(SWEEP_TIMEOUT)
            assert rc == 0, sweep.output()
            drivers = {"sweep": sweep.proc.pid}
        swept = _builds(build_log)
        done = time.monotonic()
        pick_args = [name, "--storage", str(storage), "--address", cluster.address, "--tracking-uri", tracking_server,
                     "--rule", "max-RA", "--validate-seeds", "2", "--json", str(tmp / "pick.json")]
        with sweep_process(pick_args, tmp / "pick.log", command="pick") as pick:
            assert pick.wait(SWEEP_TIMEOUT) == 0, pick.output()
            drivers["pick"] = pick.proc.pid
        picked = time.monotonic()
    print(f"\ncluster up in {up - started:.1f} s, sweep {done - up:.1f} s, pick {picked - done:.1f} s, "
          f"shutdown {time.monotonic() - picked:.1f} s")
    result = Sweep(storage, name, tracking_server)
    result.labels, result.head, result.drivers = labels, head, drivers
    result.builds = {"sweep": swept, "pick": _builds(build_log)[len(swept):]}
    result.pick = json.loads((tmp / "pick.json").read_text())
    result.logs = {"sweep": (tmp / "sweep.log").read_text(), "pick": (tmp / "pick.log").read_text()}
    return result


@contextlib.contextmanager
def _env(**values):
    """Environment variables for the processes started inside (the nodes' workers inherit them)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _builds(log: Path) -> list[tuple[str, int]]:
    """(role, pid) of each model trained, from the build log."""
    lines = log.read_text().splitlines() if log.exists() else []
    return [(line.split()[0], int(line.split("pid=")[1])) for line in lines]


# ----------------------------------------------------------------------------- spread over nodes
def test_trials_ran_on_several_worker_nodes(spread_sweep):
    df = spread_sweep.df
    assert {"node_id", "node_ip"} <= set(df.columns)
    nodes = set(df["node_id"])
    assert spread_sweep.head not in nodes, "a trial ran on the head, which has no CPUs"
    assert nodes <= set(spread_sweep.labels), f"unknown node ids {nodes - set(spread_sweep.labels)}"
    assert {spread_sweep.labels[n] for n in nodes} == {"worker_a", "worker_b"}
    assert set(df["node_ip"]) == {"127.0.0.1"}
    spread_sweep.assert_each_trial_recorded_once()


def test_child_runs_on_server_carry_node_tags(spread_sweep):
    node_of = dict(zip(spread_sweep.df["trial_id"], spread_sweep.df["node_id"]))
    children = spread_sweep.children()
    assert len(children) == TRIALS
    for run in children:
        tags = run.data.tags
        assert tags["ray.node_id"] == node_of[tags[TRIAL_TAG]]
        assert tags["ray.node_ip"] == "127.0.0.1"
        assert tags["host"] == socket.gethostname()
        assert tags["cpu_count"] == str(os.cpu_count())
        assert tags["role"] == "trial" and tags["scissorhands.sweep"] == spread_sweep.name
        assert "TA" in run.data.metrics and "gap_UA" in run.data.metrics
    # The parent run finished too, with the frontier and results logged to the server.
    parent = spread_sweep.client.get_run(spread_sweep.parent.info.run_id)
    assert parent.info.status == "FINISHED"
    logged = {a.path for a in spread_sweep.client.list_artifacts(parent.info.run_id)}
    assert "results.parquet" in logged


def test_model_artifact_downloads_from_server_and_reproduces_ta(spread_sweep, tmp_path):
    import mlflow
    import torch

    from orchestrator.tasks.classification.evaluation import top1_accuracy
    from orchestrator.sweep.spec import load_spec
    from orchestrator.training import predict_proba
    from orchestrator.tasks.classification.task import prepare

    row = spread_sweep.df.iloc[0]
    run = spread_sweep.client.get_run(row["mlflow_run_id"])
    assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri  # proxied by the server
    local = _download_model(spread_sweep.client, spread_sweep.uri, run, tmp_path)
    model = mlflow.pytorch.load_model(local)
    assert isinstance(model, torch.nn.Module)

    spec = load_spec(spread_sweep.storage.parent / f"{spread_sweep.name}.yaml")
    config = {k: float(row[f"config.{k}"]) for k in spec.search}
    data = prepare(spec.run_config(config, spec.seeds[0]))
    x_test, y_test = data.test_set()
    with as_in_a_trial(), torch.no_grad():
        probs = predict_proba(model, x_test)
    assert probs.shape == (len(y_test), 10)
    # The logged model is the first seed's: evaluated with the trial's threads, it scores
    # exactly the TA its run logged for that seed.
    assert round(top1_accuracy(probs, y_test), 4) == run.data.metrics[f"TA/seed{spec.seeds[0]}"]  # 4 decimals


def _download_model(client: MlflowClient, uri: str, run, dst: Path) -> str:
    """The trial's model folder, downloaded through the server: logged as the run's "model"
    artifacts, or (mlflow.pytorch.log_model in MLflow 3) as a LoggedModel whose source run is it."""
    import mlflow

    if "model" in {a.path for a in client.list_artifacts(run.info.run_id)}:
        return mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="model",
                                                   dst_path=str(dst), tracking_uri=uri)
    # Not download_artifacts(run_id=..., artifact_path="model", tracking_uri=...) here: MLflow 3.17
    # resolves the LoggedModel's models:/ URI with the default tracking URI, fails, and leaves
    # ./mlflow.db behind. The model's own artifact location goes straight to the server.
    models = [m for m in client.search_logged_models(experiment_ids=[run.info.experiment_id],
                                                     filter_string="name = 'model'", max_results=100)
              if m.source_run_id == run.info.run_id]
    assert len(models) == 1, f"run {run.info.run_id} has no (or several) logged models: {models}"
    assert models[0].artifact_location.startswith("mlflow-artifacts:"), models[0].artifact_location
    return mlflow.artifacts.download_artifacts(artifact_uri=models[0].artifact_location, dst_path=str(dst),
                                               tracking_uri=uri)


def test_the_driver_waits_for_a_node_that_fits_and_goes_on_when_one_joins(tmp_path):
    """--resource-wait: no node can hold a trial when the driver starts; one joins 3 s later
    (as an autoscaler would add it) and the wait ends there, well before its bound."""
    import threading

    import ray

    from orchestrator.sweep.spec import load_spec
    from orchestrator.sweep.tuner import _wait_for_a_fitting_node

    space = tmp_path / "tiny.yaml"
    space.write_text(tiny_spec("wait", TRIALS))
    spec = load_spec(space)
    with local_cluster([], head_cpus=0) as (cluster, _):
        ray.init(address=cluster.address, log_to_driver=False)
        joined = {}
        timer = threading.Timer(3.0, lambda: joined.update(node=cluster.add_node(num_cpus=1),
                                                           at=time.monotonic()))
        started = time.monotonic()
        timer.start()
        try:
            _wait_for_a_fitting_node(spec, cluster.address, 120)
        finally:
            timer.join()
        waited = time.monotonic() - started
    assert "node" in joined and joined["at"] - started >= 3.0
    assert 3.0 <= waited < 60, waited


# ----------------------------------------------------------------------------- the heavy work on workers
def test_references_and_validation_ran_on_worker_nodes_and_the_drivers_trained_nothing(spread_sweep):
    """Every reference (the sweep's and the held-out seeds') and every validation run was a Ray
    task on a worker node, recorded with its node id; neither driver process trained a model."""
    on_workers, swept, picked = set(spread_sweep.labels), spread_sweep.builds["sweep"], spread_sweep.builds["pick"]
    # The sweep: the original and retrain of seed 0, trained by worker processes, not the driver.
    assert sorted(role for role, _ in swept) == ["original", "retrain"]
    assert spread_sweep.drivers["sweep"] not in {pid for _, pid in swept}
    refs = spread_sweep.summary["references"]
    assert sorted((r["seed"], r["role"], r["built"]) for r in refs) == [(0, "original", True), (0, "retrain", True)]
    assert {r["node_id"] for r in refs} <= on_workers
    assert {r["pid"] for r in refs} == {pid for _, pid in swept}
    tags = spread_sweep.parent.data.tags
    assert {tags[f"reference.seed0.{role}.node_id"] for role in ("original", "retrain")} <= on_workers
    assert "reference original seed 0: trained in" in spread_sweep.logs["sweep"]

    # pick: the held-out seeds 1 and 2, their references and runs, on workers too.
    assert sorted(role for role, _ in picked) == ["original", "original", "retrain", "retrain"]
    assert spread_sweep.drivers["pick"] not in {pid for _, pid in picked}
    work = spread_sweep.pick["validation"]["work"]
    assert sorted((w["what"], w["seed"]) for w in work) == [
        ("reference original", 1), ("reference original", 2), ("reference retrain", 1), ("reference retrain", 2),
        ("unlearning run", 1), ("unlearning run", 2)]
    assert {w["node_id"] for w in work} <= on_workers
    assert spread_sweep.drivers["pick"] not in {w["pid"] for w in work}
    assert "held-out seed 1:" in spread_sweep.logs["pick"]


# ----------------------------------------------------------------------------- fault tolerance
def test_lost_node_trials_are_retried_and_recorded_once(tmp_path, tracking_server, tiny_references):
    """Kill (SIGKILL) one worker node as soon as a trial starts on it: that trial is retried on the
    other worker, the sweep completes, and Parquet and MLflow hold each trial exactly once."""
    storage, name = tmp_path / "storage", "lost-node"
    space = _prepare(storage, name, tiny_references)
    workers = [{"num_cpus": 1, "resources": {"victim": 1}}, {"num_cpus": 1, "resources": {"survivor": 1}}]
    client = MlflowClient(tracking_server)
    with local_cluster(workers, head_cpus=0, system_config=FAST_NODE_DEATH) as (cluster, (victim, survivor)):
        victim_id, survivor_id = node_id(victim), node_id(survivor)

        def trial_started_on_victim():
            exp = client.get_experiment_by_name(name)
            if exp is None:
                return None
            runs = client.search_runs([exp.experiment_id], max_results=1,
                                      filter_string=f"tags.`ray.node_id` = '{victim_id}'")
            return runs[0].data.tags[TRIAL_TAG] if runs else None

        killer = NodeKiller(cluster, victim, trial_started_on_victim)
        started = time.monotonic()
        args = _sweep_args(space, storage, cluster.address, tracking_server)
        with sweep_process(args, tmp_path / "sweep.log") as sweep:
            killer.start()
            try:
                rc = sweep.wait(SWEEP_TIMEOUT)
            finally:
                killer.stop()
            assert killer.error is None, f"killing the node failed: {killer.error!r}"
            assert killer.trigger is not None, "no trial ever started on the victim node:\n" + sweep.output()
            assert rc == 0, sweep.output()
        print(f"victim killed {killer.killed_at - started:.1f} s in; sweep done {time.monotonic() - started:.1f} s in")
        assert victim not in cluster.worker_nodes and not victim.any_processes_alive()

    result = Sweep(storage, name, tracking_server)
    result.assert_each_trial_recorded_once()
    df = result.df.set_index("trial_id")
    # The interrupted trial ran again, to completion, on the surviving node; nothing finished on the victim.
    assert killer.trigger in df.index
    assert df.loc[killer.trigger, "node_id"] == survivor_id
    assert set(df["node_id"]) == {survivor_id}
    run = client.get_run(df.loc[killer.trigger, "mlflow_run_id"])
    assert run.data.tags["ray.node_id"] == survivor_id and run.info.status == "FINISHED"
