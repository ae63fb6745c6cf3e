"""Sweeps kept in a bucket: a real S3 endpoint (moto's server on 127.0.0.1), reached the way
users reach S3 (AWS_* environment variables), a real local Ray, a real MLflow server; and a
cluster request no node can hold, refused within a bounded wait instead of hanging."""
import hashlib
import io
import json
import os
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from tests.cluster_helpers import local_cluster, mlflow_server, s3_server, sweep_process, wait_until
from tests.spaces import tiny_space

BUCKET, PREFIX, NAME = "sweeps", "team-a", "bucketed"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with s3_server(tmp_path_factory.mktemp("s3")) as server:
        server.client().create_bucket(Bucket=BUCKET)
        yield server


def stored_table(s3):
    """results.parquet as a reader of the bucket sees it (None before the first write)."""
    try:
        body = s3.client().get_object(Bucket=BUCKET, Key=f"{PREFIX}/{NAME}/results.parquet")["Body"].read()
    except s3.client().exceptions.NoSuchKey:
        return None
    return pq.read_table(io.BytesIO(body)).to_pandas()


def stored_keys(s3, under: str) -> list[str]:
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{PREFIX}/{under}")
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


@pytest.mark.slow
def test_sweep_in_a_bucket_resumes_on_a_fresh_machine_and_rebuilds_a_corrupt_reference(tmp_path, s3):
    space = tmp_path / "space.yaml"
    space.write_text(tiny_space(NAME, trials=4, concurrent=1))
    storage = f"s3://{BUCKET}/{PREFIX}"
    with mlflow_server(tmp_path / "mlflow") as server:
        args = [str(space), "--storage", storage, "--tracking-uri", server.uri, "--no-progress"]
        # First machine: its own working folder (cache and bucket mirror); killed mid-sweep.
        first = {**s3.env, "SCISSORHANDS_CACHE": str(tmp_path / "machine-1")}
        t0 = time.monotonic()
        with sweep_process(args, tmp_path / "first.log", env=first) as sweep:
            wait_until(lambda: not sweep.running() or (stored_table(s3) is not None and len(stored_table(s3)) >= 1),
                       600, interval=1, what="the first trial's row in the bucket")
            assert sweep.running(), f"the sweep ended before it could be interrupted:\n{sweep.output()}"
        killed_s = time.monotonic() - t0
        before = stored_table(s3)
        assert 1 <= len(before) < 4, "every finished trial is in the bucket's table, whole"

        # The bucket's copy of a reference gets corrupted: same size, other bytes.
        (weights,) = [k for k in stored_keys(s3, "references/original-") if k.endswith("/model.pt")]
        size = len(s3.client().get_object(Bucket=BUCKET, Key=weights)["Body"].read())
        s3.client().put_object(Bucket=BUCKET, Key=weights, Body=b"\0" * size)

        # Second machine: nothing local, everything from the bucket.
        build_log = tmp_path / "builds.log"
        second = {**s3.env, "SCISSORHANDS_CACHE": str(tmp_path / "machine-2"), "SCISSORHANDS_BUILD_LOG": str(build_log)}
        t0 = time.monotonic()
        with sweep_process([*args, "--resume"], tmp_path / "second.log", env=second) as sweep:
            assert sweep.wait(900) == 0, sweep.output()
            output = (tmp_path / "second.log").read_text()
        resumed_s = time.monotonic() - t0
        print(json.dumps({"s3_sweep_killed_after_s": round(killed_s, 1), "s3_resume_s": round(resumed_s, 1)}))

        after = stored_table(s3)
        assert len(after) == 4 and after["trial_id"].is_unique and (after["status"] == "ok").all()
        assert set(before["trial_id"]) <= set(after["trial_id"])
        assert "does not match its checksum" in output
        assert build_log.read_text().split()[0] == "original", "the corrupt reference was rebuilt, once"
        assert len(build_log.read_text().splitlines()) == 1, "the intact references were downloaded, not rebuilt"
        manifest = json.loads(s3.client().get_object(Bucket=BUCKET, Key=weights.replace("model.pt", "meta.json"))
                              ["Body"].read())
        rebuilt = s3.client().get_object(Bucket=BUCKET, Key=weights)["Body"].read()
        assert hashlib.sha256(rebuilt).hexdigest() == manifest["sha256"], "the bucket holds an intact copy again"
        for key in ("spec.yaml", "spec.resolved.json", "summary.json", "frontier.png", "optuna.db"):
            assert stored_keys(s3, f"{NAME}/{key}"), f"{key} was not published to the bucket"

        client = MlflowClient(server.uri)
        exp = client.get_experiment_by_name(NAME)
        runs = client.search_runs([exp.experiment_id], max_results=100)
        children = [r for r in runs if r.data.tags.get("role") == "trial"]
        assert sorted(r.data.tags["scissorhands.trial_id"] for r in children) == sorted(after["trial_id"])
        assert all(r.info.status == "FINISHED" for r in children), "every trial ran exactly once"
        logged = json.dumps([[r.data.params, r.data.tags] for r in runs])
        logs = "".join((tmp_path / f).read_text() for f in ("first.log", "second.log"))
        assert s3.SECRET not in logged and s3.SECRET not in logs, "a credential reached MLflow or the logs"

    # A third machine reads the frontier from the bucket alone.
    third = {**s3.env, "SCISSORHANDS_CACHE": str(tmp_path / "machine-3")}
    shown = subprocess.run([sys.executable, "-m", "orchestrator.cli", "frontier", NAME, "--storage", storage],
                           env={**os.environ, **third}, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert f"sweep {NAME}: 4 trials, 4 completed" in shown.stdout


def test_a_missing_bucket_is_one_line_exit_2(tmp_path, s3, monkeypatch, capsys):
    from orchestrator.cli import main

    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SCISSORHANDS_CACHE", str(tmp_path / "cache"))
    space = tmp_path / "space.yaml"
    space.write_text(tiny_space("nowhere"))
    assert main(["sweep", str(space), "--storage", "s3://no-such-bucket/x", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["scissorhands: error: --storage 's3://no-such-bucket/x': bucket 'no-such-bucket' does not exist; "
                   "create it first"]
    assert not (tmp_path / "cache").exists(), "nothing was written"


def test_a_request_no_cluster_node_can_hold_is_refused_within_the_wait(tmp_path):
    space = tmp_path / "gpu.yaml"
    space.write_text(tiny_space("needs-gpu").replace("resources: {cpu: 1}", "resources: {cpu: 1, gpu: 1}"))
    with local_cluster([{"num_cpus": 1}], head_cpus=0) as (cluster, _):
        args = [str(space), "--storage", str(tmp_path / "runs"), "--address", cluster.address,
                "--resource-wait", "3", "--no-progress"]
        t0 = time.monotonic()
        with sweep_process(args, tmp_path / "sweep.log") as sweep:
            code = sweep.wait(120)
            output = sweep.output()
        elapsed = time.monotonic() - t0
    assert code == 2, output
    assert ("resources: a trial asks for cpu 1, gpu 1; no node of the cluster at " in output
            and "after 3 s (largest: cpu 1, gpu 0)" in output), output
    assert elapsed < 90
    assert not (tmp_path / "runs").exists(), "nothing was written before the refusal"
