"""Real multi-node Ray clusters and a real MLflow server, all on 127.0.0.1, for tests/test_cluster.py.

- `local_cluster`: a Ray head and worker nodes, each its own raylet process
  (`ray.cluster_utils.Cluster`), bound to loopback (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0).
  It never touches /tmp/ray/ray_current_cluster, which other Ray users on this machine
  share: a plain `ray.init()` elsewhere must not join (or lose) a test cluster.
- `mlflow_server`: `mlflow server` with a sqlite store and proxied artifacts on a free port.
- `s3_server`: moto's S3 server on a free port, with the AWS variables a user would export.
- `sweep_process`: `scissorhands sweep ...` (or `pick ...`) as a subprocess, like a user on a cluster's head.

Every context manager stops what it started on exit, also when the test fails.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from tests.spaces import tiny_space

ROOT = Path(__file__).resolve().parents[1]

# Loopback-only, no token auth: set before any Ray process starts (conftest does the same).
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}

# A lost node is declared dead after ~5 missed 1 s health checks instead of Ray's default
# 5 x 3 s (10 s timeout each); still lenient enough for a live raylet stalled by a busy CPU.
FAST_NODE_DEATH = {
    "health_check_initial_delay_ms": 1000,
    "health_check_period_ms": 1000,
    "health_check_timeout_ms": 2000,
    "health_check_failure_threshold": 5,
}


def tiny_spec(name: str, trials: int = 4) -> str:
    """The tests' tiny space with the two objectives the cluster tests plot."""
    return tiny_space(name, trials, objectives=(("gap_UA", "min"), ("RA", "max")))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, interval: float = 0.25, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# ----------------------------------------------------------------------------- Ray
@contextlib.contextmanager
def local_cluster(workers: list[dict], head_cpus: int = 0, system_config: dict | None = None):
    """Yield (cluster, worker_nodes): a head with `head_cpus` CPUs (0: no trial can run there)
    and one worker node per dict of `Cluster.add_node` arguments, e.g.
    {"num_cpus": 1, "resources": {"worker_a": 1}}. The test process does not connect."""
    os.environ.update(RAY_ENV)
    import ray
    import ray._common.utils as common_utils
    import ray._private.utils as private_utils
    from ray.cluster_utils import Cluster

    saved = private_utils.write_ray_address, common_utils.reset_ray_address
    private_utils.write_ray_address = lambda *a, **k: None  # keep /tmp/ray/ray_current_cluster alone
    common_utils.reset_ray_address = lambda *a, **k: None
    cluster = None
    try:
        head_args = {"num_cpus": head_cpus, "resources": {"head": 1}, "include_dashboard": False}
        if system_config:
            head_args["_system_config"] = system_config
        cluster = Cluster(initialize_head=True, head_node_args=head_args, shutdown_at_exit=False)
        nodes = [cluster.add_node(**w) for w in workers]
        cluster.wait_for_nodes(timeout=60)
        yield cluster, nodes
    finally:
        try:
            if ray.is_initialized():
                ray.shutdown()
            if cluster is not None:
                cluster.shutdown()
        finally:
            private_utils.write_ray_address, common_utils.reset_ray_address = saved


def node_id(node) -> str:
    return node.node_id


def raylet_pid(node) -> int:
    from ray._private import ray_constants

    (info,) = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET]
    return info.process.pid


def serving(proc: subprocess.Popen, log_path: Path, url: str, what: str) -> bool:
    """Whether a server we started answers ``url`` with 200; an exited server is an error."""
    if proc.poll() is not None:
        raise RuntimeError(f"{what} exited with {proc.returncode}:\n{_tail(log_path)}")
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


# ----------------------------------------------------------------------------- MLflow
class MlflowServer:
    """`mlflow server` on 127.0.0.1 and a free port, sqlite store and proxied artifacts under
    `root`. Starts in the background: call `wait_ready()` before the first request."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.uri = f"http://127.0.0.1:{free_port()}"
        exe = Path(sys.executable).parent / "mlflow"
        cmd = [str(exe), "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
               "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1",
               "--port", self.uri.rsplit(":", 1)[1], "--workers", "1"]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        self.log_path = self.root / "server.log"
        self._log = open(self.log_path, "wb")
        # Own process group: the server's worker processes go down with it.
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=self.root,
                                     start_new_session=True)

    def _healthy(self) -> bool:
        return serving(self.proc, self.log_path, f"{self.uri}/health", "mlflow server")

    def wait_ready(self, timeout: float = 90) -> str:
        wait_until(self._healthy, timeout, interval=0.5, what=f"mlflow server at {self.uri}/health")
        return self.uri

    def stop(self) -> None:
        stop_group(self.proc)
        self._log.close()


@contextlib.contextmanager
def mlflow_server(root: Path, wait: bool = True):
    """Yield a running MlflowServer (ready unless wait=False); stopped on exit."""
    server = MlflowServer(root)
    try:
        if wait:
            server.wait_ready()
        yield server
    finally:
        server.stop()


def stop_group(proc: subprocess.Popen, timeout: float = 15) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)
    with contextlib.suppress(ProcessLookupError):  # stragglers of the group after its leader exited
        os.killpg(proc.pid, signal.SIGKILL)


def _tail(path: Path, n: int = 60) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


# ----------------------------------------------------------------------------- S3
class S3Server:
    """moto's S3 server on 127.0.0.1 and a free port; ``env`` holds what a user would export
    to reach it (endpoint and keys, the standard AWS variables)."""

    SECRET = "s3-secret-that-must-never-be-logged"

    def __init__(self, root: Path):
        root.mkdir(parents=True, exist_ok=True)
        self.endpoint = f"http://127.0.0.1:{free_port()}"
        self.env = {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "sweep-tests",
                    "AWS_SECRET_ACCESS_KEY": self.SECRET, "AWS_DEFAULT_REGION": "us-east-1"}
        self.log_path = root / "moto.log"
        self._log = open(self.log_path, "wb")
        exe = Path(sys.executable).parent / "moto_server"
        self.proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", self.endpoint.rsplit(":", 1)[1]],
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def _healthy(self) -> bool:
        return serving(self.proc, self.log_path, f"{self.endpoint}/moto-api/", "moto_server")

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.SECRET, region_name=self.env["AWS_DEFAULT_REGION"])

    def stop(self) -> None:
        stop_group(self.proc)
        self._log.close()


@contextlib.contextmanager
def s3_server(root: Path):
    """Yield a running S3Server; stopped on exit."""
    server = S3Server(root)
    try:
        wait_until(server._healthy, 60, interval=0.5, what=f"moto S3 server at {server.endpoint}")
        yield server
    finally:
        server.stop()


# ----------------------------------------------------------------------------- the sweep
class SweepProcess:
    """`python -m orchestrator.cli sweep ...` (or another ``command``) in the background;
    `wait()` returns its exit code."""

    def __init__(self, args: list[str], log: Path, env: dict | None = None, command: str = "sweep"):
        env = {**os.environ, **RAY_ENV, **(env or {})}
        for var in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):  # only the flags decide where it goes
            env.pop(var, None)
        self.log_path = Path(log)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", command, *args],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                     start_new_session=True)

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"sweep still running after {timeout:.0f} s:\n{self.output()}") from None

    def output(self) -> str:
        self._log.flush()
        return _tail(self.log_path)

    def stop(self) -> None:
        stop_group(self.proc)
        self._log.close()


@contextlib.contextmanager
def sweep_process(args: list[str], log: Path, env: dict | None = None, command: str = "sweep"):
    sweep = SweepProcess(args, log, env, command)
    try:
        yield sweep
    finally:
        sweep.stop()


class NodeKiller(threading.Thread):
    """Kills `node` (SIGKILL, no graceful drain) once `started()` returns a true value, e.g. the
    trial id of an MLflow child run that reports this node; remembers what triggered it."""

    def __init__(self, cluster, node, started, interval: float = 0.5):
        super().__init__(daemon=True)
        self.cluster, self.node, self.started, self.interval = cluster, node, started, interval
        self.stop_event = threading.Event()
        self.trigger = None
        self.killed_at: float | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                found = self.started()
                if found:
                    self.trigger = found
                    self.cluster.remove_node(self.node, allow_graceful=False)
                    self.killed_at = time.monotonic()
                    return
                self.stop_event.wait(self.interval)
        except BaseException as exc:  # reported by the test, never swallowed
            self.error = exc

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=60)
