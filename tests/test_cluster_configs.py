"""The deployment files in cluster/ agree with each other, with pyproject.toml and with search_spaces/.

Nothing here starts a cluster or builds an image: it parses the Dockerfile, the Ray cluster
launcher configs and the KubeRay manifests (pyyaml + tomllib only) and checks what would
otherwise fail only on a real cluster: a wrong image name, a torch pin that drifted from
pyproject.toml, a search space that does not exist, a worker group without GPUs, a pod
without the shared volume, a tracking URI that names no MLflow Service.
"""
from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
KUBERAY = CLUSTER / "kuberay"

# The one image name that cluster/Dockerfile documents and every config runs.
IMAGE = "scissorhands-sweep:latest"
BUILD_COMMAND = f"docker build -f cluster/Dockerfile -t {IMAGE} ."
SHARED = "/shared"  # the shared-storage mount point on every node and pod

LAUNCHER_FILES = ("aws.yaml", "gcp.yaml")
K8S_KINDS = {"RayCluster", "RayJob", "Deployment", "Service", "PersistentVolumeClaim"}


# ---------------------------------------------------------------- helpers


def load_docs(path: Path) -> list[dict]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} is empty"
    for d in docs:
        assert isinstance(d, dict), f"{path}: a document is not a mapping"
    return docs


def all_yaml_files() -> list[Path]:
    return sorted(p for p in CLUSTER.rglob("*") if p.suffix in (".yaml", ".yml"))


def k8s_docs() -> list[tuple[Path, dict]]:
    return [(p, d) for p in sorted(KUBERAY.glob("*.yaml")) for d in load_docs(p)]


def one(kind: str) -> dict:
    found = [d for _, d in k8s_docs() if d.get("kind") == kind]
    assert len(found) == 1, f"expected exactly one {kind} in cluster/kuberay, found {len(found)}"
    return found[0]


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def torch_pin() -> str:
    pins = [
        m.group(1)
        for dep in pyproject()["project"]["dependencies"]
        if (m := re.fullmatch(r"torch\s*==\s*([\w.+]+)", dep.strip()))
    ]
    assert len(pins) == 1, "pyproject.toml must pin torch exactly once (torch==X)"
    return pins[0]


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for raw in (CLUSTER / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not buf):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        instr, _, args = buf.partition(" ")
        out.append((instr.upper(), " ".join(args.split())))
        buf = ""
    assert not buf, "Dockerfile ends inside a continued line"
    return out


def base_image() -> re.Match:
    froms = [a for i, a in dockerfile() if i == "FROM"]
    assert len(froms) == 1, "one build stage expected"
    m = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py3(\d+)-(gpu|cu\d+)", froms[0])
    assert m, f"base must be a Ray GPU image rayproject/ray:X.Y.Z-py3NN-(gpu|cuNNN), got {froms[0]}"
    return m


def app_dir() -> str:
    """Where the Dockerfile puts the repository inside the image."""
    copies = [a.split() for i, a in dockerfile() if i == "COPY"]
    repo = [c for c in copies if c[-2:-1] == ["."]]
    assert len(repo) == 1, "the Dockerfile must COPY the whole repository (COPY . DEST) once"
    return repo[0][-1].rstrip("/")


def images_in(obj) -> list[str]:
    """Every image a config names (containers, launcher docker section, autoscaler)."""
    found = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key in ("image", "head_image", "worker_image") and isinstance(value, str):
                found.append(value)
            else:
                found += images_in(value)
    elif isinstance(obj, list):
        for item in obj:
            found += images_in(item)
    return found


def mlflow_url() -> str:
    svc = one("Service")
    assert svc["metadata"]["name"] == "mlflow"
    (port,) = svc["spec"]["ports"]
    return f"http://{svc['metadata']['name']}:{port['port']}"


def pvc_name() -> str:
    return one("PersistentVolumeClaim")["metadata"]["name"]


def option(argv: list[str], flag: str) -> str:
    assert argv.count(flag) == 1, f"{flag} must appear once in {shlex.join(argv)}"
    return argv[argv.index(flag) + 1]


def pod_specs(ray_cluster_spec: dict) -> dict[str, dict]:
    pods = {"head": ray_cluster_spec["headGroupSpec"]["template"]["spec"]}
    for group in ray_cluster_spec["workerGroupSpecs"]:
        pods[group["groupName"]] = group["template"]["spec"]
    return pods


def assert_mounts_shared_pvc(pod: dict, container: dict, where: str) -> None:
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in pod.get("volumes", [])
        if "persistentVolumeClaim" in v
    }
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    assert SHARED in mounts, f"{where}: nothing mounted at {SHARED}"
    assert claims.get(mounts[SHARED]) == pvc_name(), f"{where}: {SHARED} is not the PVC {pvc_name()}"


# ---------------------------------------------------------------- every file


def test_every_yaml_parses_and_is_a_known_kind():
    files = all_yaml_files()
    names = {p.relative_to(CLUSTER).as_posix() for p in files}
    assert {"aws.yaml", "gcp.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob.yaml",
            "kuberay/mlflow.yaml", "kuberay/pvc.yaml"} <= names
    kinds = []
    for path in files:
        for doc in load_docs(path):
            if path.parent == CLUSTER:
                assert {"cluster_name", "provider"} <= doc.keys(), f"{path}: not a launcher config"
            else:
                assert doc.get("kind") in K8S_KINDS, f"{path}: unexpected kind {doc.get('kind')}"
                assert doc.get("metadata", {}).get("name"), f"{path}: {doc['kind']} without a name"
                kinds.append(doc["kind"])
    assert sorted(kinds) == sorted(K8S_KINDS), "one of each Kubernetes object expected"


def test_every_config_runs_the_image_the_dockerfile_documents():
    assert BUILD_COMMAND in (CLUSTER / "Dockerfile").read_text()
    assert BUILD_COMMAND in (CLUSTER / "README.md").read_text()
    for path in all_yaml_files():
        for doc in load_docs(path):
            images = images_in(doc)
            if path.name in LAUNCHER_FILES or doc.get("kind") in ("RayCluster", "RayJob", "Deployment"):
                assert images, f"{path}: {doc.get('kind', 'launcher config')} names no image"
            assert set(images) <= {IMAGE}, f"{path}: images {sorted(set(images))}, expected {IMAGE}"


# ---------------------------------------------------------------- the image


def test_dockerfile_installs_the_repo_with_torch_pinned_as_pyproject_pins_it():
    steps = dockerfile()
    runs = [a for i, a in steps if i == "RUN"]
    pin = f"torch=={torch_pin()}"
    torch_steps = [k for k, r in enumerate(runs) if re.search(rf"pip install .*{re.escape(pin)}(\s|$)", r)]
    assert torch_steps, f"no RUN pip install {pin}"
    for r in runs:
        for other in re.findall(r"torch==[\w.+]+", r):
            assert other == pin, f"Dockerfile installs {other}, pyproject.toml pins {pin}"

    dest = app_dir()
    assert "gpu" in pyproject()["project"]["optional-dependencies"]
    project_steps = [k for k, r in enumerate(runs) if re.search(rf"pip install \"?{re.escape(dest)}\[gpu\]", r)]
    assert project_steps, f"no RUN pip install {dest}[gpu]"
    assert max(torch_steps) < min(project_steps), "torch must be installed before the project"
    # Ray's images run `ray start` themselves: an entrypoint would get in the way.
    assert not [i for i, _ in steps if i in ("ENTRYPOINT", "CMD")]


def test_dockerfile_base_is_ray_with_a_python_the_project_supports():
    m = base_image()
    requires = pyproject()["project"]["requires-python"]
    low = re.fullmatch(r">=\s*3\.(\d+)", requires)
    assert low and int(m.group(2)) >= int(low.group(1)), f"py3{m.group(2)} vs requires-python {requires}"


def test_build_context_leaves_out_the_venv_and_git():
    ignore = (CLUSTER / "Dockerfile.dockerignore").read_text().split()
    assert ".venv" in ignore and ".git" in ignore


# ---------------------------------------------------------------- ray up configs


@pytest.mark.parametrize("name", LAUNCHER_FILES)
def test_launcher_config(name):
    (cfg,) = load_docs(CLUSTER / name)
    assert cfg["cluster_name"]
    assert cfg["provider"]["type"] == name.removesuffix(".yaml")
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types

    head = types[cfg["head_node_type"]]
    assert head["resources"].get("CPU", 0) > 0 and head["resources"].get("GPU", 0) == 0, "CPU head expected"

    workers = {k: t for k, t in types.items() if k != cfg["head_node_type"]}
    gpu_workers = [t for t in workers.values() if t["resources"].get("GPU", 0) > 0]
    assert gpu_workers, "no GPU worker type"
    for t in workers.values():
        assert 0 <= t.get("min_workers", 0) <= t["max_workers"]
        assert "node_config" in t
    assert sum(t.get("min_workers", 0) for t in workers.values()) <= cfg["max_workers"]
    assert max(t["max_workers"] for t in gpu_workers) <= cfg["max_workers"]

    docker = cfg["docker"]
    assert docker["image"] == IMAGE and docker["container_name"]
    assert f"--volume={SHARED}:{SHARED}" in docker["run_options"], "shared storage not bound into the container"

    head_cmds = " ; ".join(cfg["head_start_ray_commands"])
    worker_cmds = " ; ".join(cfg["worker_start_ray_commands"])
    assert "ray start --head" in head_cmds and "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_cmds
    assert "ray start --address=$RAY_HEAD_IP:6379" in worker_cmds
    # MLflow on the head, its store on the shared volume, and its URI given to every Ray process.
    assert f"mlflow server --backend-store-uri sqlite:///{SHARED}/" in head_cmds
    assert "--port 5000" in head_cmds
    assert "export MLFLOW_TRACKING_URI=http://$RAY_HEAD_IP:5000" in worker_cmds
    assert "export MLFLOW_TRACKING_URI=http://" in head_cmds
    assert any(f"{SHARED}" in c and "mount" in c for c in cfg["initialization_commands"])


# ---------------------------------------------------------------- KubeRay


def test_rayjob_brings_the_same_cluster_as_raycluster_yaml():
    assert one("RayJob")["spec"]["rayClusterSpec"] == one("RayCluster")["spec"]


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_ray_cluster_spec(kind):
    obj = one(kind)
    assert obj["apiVersion"] == "ray.io/v1"
    spec = obj["spec"] if kind == "RayCluster" else obj["spec"]["rayClusterSpec"]
    assert spec["rayVersion"] == base_image().group(1), "rayVersion must match the image's Ray"
    assert spec["enableInTreeAutoscaling"] is True
    assert "headGroupSpec" in spec and spec["workerGroupSpecs"]

    gpu_groups = []
    for group in spec["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"]
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        if int(limits.get("nvidia.com/gpu", 0)) > 0:
            gpu_groups.append(group["groupName"])
    assert gpu_groups, "no worker group with nvidia.com/gpu"
    head_limits = spec["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in head_limits, "CPU head expected"

    for where, pod in pod_specs(spec).items():
        ray_container = pod["containers"][0]
        assert ray_container["image"] == IMAGE
        assert_mounts_shared_pvc(pod, ray_container, f"{kind} {where}")
        env = {e["name"]: e.get("value") for e in ray_container.get("env", [])}
        assert env.get("MLFLOW_TRACKING_URI") == mlflow_url(), f"{kind} {where}: MLFLOW_TRACKING_URI"


def test_rayjob_runs_a_sweep_of_an_existing_search_space_on_shared_storage():
    job = one("RayJob")["spec"]
    assert job["shutdownAfterJobFinishes"] is True
    argv = shlex.split(job["entrypoint"])

    # The console script is the one pyproject.toml declares.
    assert argv[0] in pyproject()["project"]["scripts"], f"{argv[0]} is not in [project.scripts]"
    assert argv[1] == "sweep"

    # The search space is read from the repository copy in the image: it must exist in search_spaces/.
    space = argv[2]
    prefix = app_dir() + "/"
    rel = space[len(prefix):] if space.startswith(prefix) else space
    assert rel.startswith("search_spaces/") and rel.endswith(".yaml"), space
    assert (ROOT / rel).is_file(), f"{rel} does not exist in the repository"

    assert option(argv, "--address") == "auto"
    assert option(argv, "--storage").startswith(SHARED + "/"), "--storage must be on the shared volume"
    assert option(argv, "--tracking-uri") == mlflow_url()
    assert option(argv, "--name")


def test_mlflow_server_stores_on_the_shared_volume_and_answers_to_its_service_name():
    deploy, svc = one("Deployment"), one("Service")
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == IMAGE
    assert_mounts_shared_pvc(pod, container, "mlflow")
    argv = container["command"]
    assert argv[:2] == ["mlflow", "server"]
    assert option(argv, "--backend-store-uri").startswith(f"sqlite:///{SHARED}/")
    assert option(argv, "--artifacts-destination").startswith(f"{SHARED}/")
    assert option(argv, "--host") == "0.0.0.0"

    url = urlparse(mlflow_url())
    (port,) = svc["spec"]["ports"]
    ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
    target = port.get("targetPort", port["port"])
    assert int(option(argv, "--port")) == (ports[target] if isinstance(target, str) else target)
    assert svc["spec"]["selector"].items() <= deploy["spec"]["template"]["metadata"]["labels"].items()
    assert url.hostname in option(argv, "--allowed-hosts").split(","), "MLflow would reject its own Service name"


def test_shared_volume_is_read_write_many():
    pvc = one("PersistentVolumeClaim")
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]


# ---------------------------------------------------------------- the guide


def test_readme_names_only_files_that_exist():
    text = (CLUSTER / "README.md").read_text()
    for rel in sorted(set(re.findall(r"(?:cluster|search_spaces)/[\w./-]+\.(?:yaml|md)|cluster/Dockerfile", text))):
        assert (ROOT / rel).is_file(), f"cluster/README.md names {rel}, which does not exist"
