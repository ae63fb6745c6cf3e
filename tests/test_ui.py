"""`scissorhands ui`: the MLflow UI over a sweep's store, on 127.0.0.1 only."""
import json
import os
import subprocess
import sys
import urllib.request

from cluster_helpers import free_port, stop_group, wait_until
from mlflow import MlflowClient

from orchestrator.cli import main


def test_ui_serves_the_sweep_store_on_loopback(tmp_path):
    storage = tmp_path / "runs"
    storage.mkdir()
    MlflowClient(f"sqlite:///{storage / 'mlflow.db'}").create_experiment("demo-sweep")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    log_path = tmp_path / "ui.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "ui", "--storage", str(storage),
                                 "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        def experiments():
            if proc.poll() is not None:
                raise RuntimeError(f"ui exited with {proc.returncode}:\n{log_path.read_text()}")
            url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=10"
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    return json.load(r)
            except OSError:
                return None

        body = wait_until(experiments, 120, interval=0.5, what="the MLflow UI")
        assert "demo-sweep" in [e["name"] for e in body["experiments"]]
    finally:
        stop_group(proc)


def test_ui_without_a_store_is_a_user_error(tmp_path, capsys, monkeypatch):
    # $MLFLOW_TRACKING_URI would name a store: this one must have none (with one, `ui` would
    # exec mlflow in place of this test process).
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["ui", "--storage", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no MLflow store" in err
