"""A user's own model, weights, data and deletion list, through the CLI as a user runs it:
a model module the tool has never seen, trained outside the tool, on an image folder and a
Parquet table of real digits, unlearning a list of sample ids."""
import json
import sys

import mlflow
import pytest
import ray
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from orchestrator.cli import main
from orchestrator.sweep.results import ResultsTable
from tests.measured import torch_threads
from tests.oracles import brute_force_hypervolume
from tests.user_files import digits, write_imagefolder, write_model_module, write_parquet

EPOCHS = ["--epochs", "2", "--train-epochs", "3", "--no-progress"]


def train_outside_the_tool(code_dir, classes: int = 3):
    """What a user did before: train their model on [0, 1] images normalised per channel with
    the training split's mean and std (the documented contract)."""
    sys.path.insert(0, str(code_dir))
    import usernet

    (x, y), _ = digits()
    x = torch.from_numpy(x).float().div(255)[:, None]
    x = (x - x.mean()) / x.std()
    torch.manual_seed(0)
    model = usernet.build(in_channels=1, num_classes=classes)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    y = torch.from_numpy(y)
    for _ in range(15):
        for idx in torch.randperm(len(y)).split(60):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()

    def accuracy_on(rows: list[int]) -> float:
        with torch.no_grad():
            return 100 * (model(x[rows]).argmax(1) == y[rows]).float().mean().item()

    return model, accuracy_on


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """Everything a user brings, written once for the module."""
    root = tmp_path_factory.mktemp("user")
    write_model_module(root / "code")
    model, accuracy_on = train_outside_the_tool(root / "code")
    save_file(model.state_dict(), root / "weights.safetensors")
    ids = write_imagefolder(root / "images")
    parquet_ids = write_parquet(root / "digits.parquet")
    deleted = ids[5:65:6]  # ten samples of two classes
    (root / "delete.txt").write_text("\n".join(deleted) + "\n")
    (root / "delete_parquet.txt").write_text("\n".join(parquet_ids[5:65:6]) + "\n")
    return {"root": root, "accuracy_on": accuracy_on, "ids": ids, "deleted": deleted}


def unlearn(user, tmp_path, *extra, json_name="out.json"):
    r = user["root"]
    argv = ["unlearn", "--model", "usernet:build", "--code-dir", str(r / "code"),
            "--original", str(r / "weights.safetensors"), "--dataset", f"imagefolder:{r / 'images'}",
            "--forget", f"ids:{r / 'delete.txt'}", "--cache-dir", str(tmp_path / "cache"),
            "--json", str(tmp_path / json_name), *EPOCHS, *extra]
    return main(argv)


@pytest.mark.slow
def test_unlearn_a_user_model_with_retrain_and_without(user, tmp_path, capsys, monkeypatch):
    log = tmp_path / "builds.log"
    monkeypatch.setenv("SCISSORHANDS_BUILD_LOG", str(log))
    assert unlearn(user, tmp_path, "--retrain", "train", json_name="train.json") == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "train.json").read_text())
    # The user's weights are the original: evaluated as trained outside, never trained again
    # (RA is its accuracy on the training images not deleted, computed here outside the tool;
    # the tool sums the normalisation statistics in its own order of the files, so at most a
    # prediction on a float tie may differ); the retrain model is built once.
    kept = [i for i, sample_id in enumerate(user["ids"]) if sample_id not in set(user["deleted"])]
    assert abs(report["original"]["RA"] - user["accuracy_on"](kept)) <= 100 / len(kept)
    assert report["original"]["UA"] < 10, "the original model should know the samples it was trained on"
    assert sorted(line.split()[0] for line in log.read_text().splitlines()) == ["original", "retrain"]
    assert set(report) >= {"original", "retrain", "unlearned", "avg_gap", "avg_gap_original", "forget_set", "layers"}
    assert sorted(report["forget_set"]["ids"]) == sorted(user["deleted"]) and report["forget_set"]["size"] == 10
    assert report["classes"] == ["one", "two", "zero"]
    # Layers: the last third of conv / linear (mix, head) and the head; normalisation never trimmed.
    assert report["layers"]["trim"] == ["net.mix.weight", "net.mix.bias", "net.head.weight", "net.head.bias"]
    assert "trim layers (4 parameters): net.mix.weight" in out and "Avg. Gap" in out

    # No retrain model: raw metrics only, the same original, nothing else trained.
    assert unlearn(user, tmp_path, "--retrain", "none", json_name="none.json") == 0
    table = capsys.readouterr().out
    none = json.loads((tmp_path / "none.json").read_text())
    assert none["retrain"] is None and "avg_gap" not in none and none["original"] == report["original"]
    assert "(none: no gap metrics)" in table and "Avg. Gap" not in table
    assert len(log.read_text().splitlines()) == 2
    assert none["forget_set"]["digest"] == report["forget_set"]["digest"]

    # The user's own retrain model (here the original's file): evaluated, never trained (its
    # one cache entry is a copy of the file), so the two reference rows coincide and the
    # original's gap is zero.
    own = str(user["root"] / "weights.safetensors")
    assert unlearn(user, tmp_path, "--retrain", own, json_name="own.json") == 0
    mine = json.loads((tmp_path / "own.json").read_text())
    assert mine["retrain"] == mine["original"] == report["original"] and mine["avg_gap_original"] == 0
    assert len(log.read_text().splitlines()) == 3 and log.read_text().splitlines()[-1].split()[0] == "retrain"

    # The same weights as a torch .pt state_dict: the same original (copied into the cache, not trained).
    torch.save(load_file(user["root"] / "weights.safetensors"), tmp_path / "weights.pt")
    assert unlearn(user, tmp_path, "--retrain", "none", "--original", str(tmp_path / "weights.pt"),
                   json_name="pt.json") == 0
    assert json.loads((tmp_path / "pt.json").read_text())["original"] == none["original"]
    assert len(log.read_text().splitlines()) == 4 and log.read_text().splitlines()[-1].split()[0] == "original"


@pytest.mark.parametrize("case, message", [
    ("missing_factory", "--model usernet:nope: module usernet"),
    ("factory_raises", "--model usernet:broken: the factory raised RuntimeError: no GPU found"),
    ("no_module", "--model nomodule:build: cannot import module 'nomodule'"),
    ("wrong_shape", "does not fit the model: key 'head.weight' has shape [5, 256] in the checkpoint, [3, 256] in "
                    "the model"),
    ("wrong_keys", "does not fit the model: missing key 'head.weight' (the model's shape [3, 256]); unexpected "
                   "key 'fc."),
    ("unknown_ids", "1 id(s) not in the training split: train/zero/9999.png"),
    ("empty_folder", "no images"),
    ("corrupt_image", "is not a readable image"),
    ("bad_parquet", "not a readable Parquet file"),
    ("bad_regex", "--trim-layers 'layer4' matches no parameter of the model"),
    ("norm_only", "matches only normalisation parameters"),
])
def test_bad_user_input_is_one_line_exit_2_and_writes_nothing(user, tmp_path, capsys, case, message):
    r = user["root"]
    extra = []
    if case == "missing_factory":
        extra = ["--model", "usernet:nope"]
    elif case == "factory_raises":
        extra = ["--model", "usernet:broken"]
    elif case == "no_module":
        extra = ["--model", "nomodule:build"]
    elif case in ("wrong_shape", "wrong_keys"):
        sys.path.insert(0, str(r / "code"))
        import usernet

        state = usernet.build(in_channels=1, num_classes=5 if case == "wrong_shape" else 3).state_dict()
        if case == "wrong_keys":
            state = {k.replace("head.", "fc."): v for k, v in state.items()}
        save_file(state, tmp_path / "bad.safetensors")
        extra = ["--original", str(tmp_path / "bad.safetensors")]
    elif case == "unknown_ids":
        (tmp_path / "ids.txt").write_text(user["deleted"][0] + "\ntrain/zero/9999.png\n")
        extra = ["--forget", f"ids:{tmp_path / 'ids.txt'}"]
    elif case == "empty_folder":
        (tmp_path / "empty" / "train" / "zero").mkdir(parents=True)
        extra = ["--dataset", f"imagefolder:{tmp_path / 'empty'}"]
    elif case == "corrupt_image":
        write_imagefolder(tmp_path / "images", train_per_class=3, test_per_class=1)
        (tmp_path / "images" / "train" / "one" / "x.png").write_bytes(b"\x89PNG broken")
        extra = ["--dataset", f"imagefolder:{tmp_path / 'images'}", "--forget", "class:0"]
    elif case == "bad_parquet":
        (tmp_path / "d.parquet").write_bytes(b"PAR1 broken")
        extra = ["--dataset", f"parquet:{tmp_path / 'd.parquet'}", "--forget", "class:0"]
    elif case == "bad_regex":
        extra = ["--trim-layers", "layer4"]
    elif case == "norm_only":  # the reference's name rule would trim a norm not named 'bn'; by type, never
        extra = ["--trim-layers", r"\.ln\.", "--trim-rule", "by_type"]
    assert unlearn(user, tmp_path, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out.json").exists()


SPACE = """\
name: {name}
dataset: parquet:{root}/digits.parquet
model: usernet:build
code_dir: {root}/code
original: {root}/weights.safetensors
retrain: {retrain}
forget: ids:{root}/delete_parquet.txt
recipe: {{epochs: 1}}
fixed: {{epochs: 1}}
search:
  trim_ratio: {{type: loguniform, low: 0.005, high: 0.1}}
  lr: {{type: loguniform, low: 0.001, high: 0.02}}
objectives:
  - {{metric: {first}, direction: {direction}}}
  - {{metric: RA, direction: max}}
trials: 4
seeds: [0]
resources: {{cpu: 1}}
max_concurrent: 2
"""


def test_gap_objective_without_retrain_is_refused_before_ray_starts(user, tmp_path, capsys):
    space = tmp_path / "gap.yaml"
    space.write_text(SPACE.format(name="gap", root=user["root"], retrain="none", first="avg_gap", direction="min"))
    assert main(["sweep", str(space), "--storage", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "objective 'avg_gap' is a gap to the retrain model, and retrain: none has no retrain model" in err
    assert not (tmp_path / "runs").exists() and not ray.is_initialized()


@pytest.mark.slow
def test_sweep_on_parquet_without_retrain_then_pick_and_load(user, tmp_path, capsys, monkeypatch):
    ray.shutdown()
    storage = tmp_path / "runs"
    space = tmp_path / "mine.yaml"
    space.write_text(SPACE.format(name="mine", root=user["root"], retrain="none", first="UA", direction="max"))
    try:
        assert main(["sweep", str(space), "--storage", str(storage), "--no-progress"]) == 0
    finally:
        ray.shutdown()
    capsys.readouterr()
    df = ResultsTable(storage / "mine" / "results.parquet").read()
    assert len(df) == 4 and (df["status"] == "ok").all()
    assert "avg_gap" not in df and {"UA", "RA", "TA", "MIA"} <= set(df.columns)
    summary = json.loads((storage / "mine" / "summary.json").read_text())
    # Without a retrain model the reference point is the original model (as the parent run logged it).
    client = mlflow.MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    parent = client.search_runs([client.get_experiment_by_name("mine").experiment_id],
                                filter_string="tags.role = 'sweep'")[0]
    reference = [parent.data.metrics["original.UA"], parent.data.metrics["original.RA"]]
    assert summary["hypervolume_reference_point"] == pytest.approx(reference)
    hv = brute_force_hypervolume(df[["UA", "RA"]].to_numpy(dtype=float), ["max", "max"], reference)
    assert summary["hypervolume"] == pytest.approx(hv, rel=1e-9, abs=1e-12)

    assert main(["pick", "mine", "--rule", "max-RA", "--storage", str(storage), "--validate-seeds", "1",
                 "--no-progress", "--json", str(tmp_path / "pick.json")]) == 0
    chosen = json.loads((tmp_path / "pick.json").read_text())
    # Through the environment, undone after the test: mlflow.set_tracking_uri would export it for
    # the rest of this worker (and `scissorhands ui` in a later test would serve this store).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", chosen["tracking_uri"])
    model = mlflow.pytorch.load_model(chosen["model_uri"])
    x = torch.from_numpy(digits()[1][0][:8]).float().div(255)[:, None]
    assert model(x).shape == (8, 3)
    version = mlflow.MlflowClient().get_model_version(chosen["registered_model"], str(chosen["version"]))
    assert len(version.tags["forget_digest"]) == 16
    layers = mlflow.artifacts.load_dict(f"runs:/{chosen['run_id']}/layers.json")
    assert "net.head.weight" in layers["trim"]
    assert chosen["search"]["RA"] == df["RA"].max()

    # The registered model, and the trial run's model, are valid --original themselves (MLflow
    # model URIs): evaluated with the trial's threads they score exactly the RA the trial logged.
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch_threads(1)))
    r = user["root"]
    for i, uri in enumerate((chosen["model_uri"], f"runs:/{chosen['run_id']}/model")):
        assert main(["unlearn", "--model", "usernet:build", "--code-dir", str(r / "code"), "--original", uri,
                     "--dataset", f"parquet:{r / 'digits.parquet'}", "--forget", f"ids:{r / 'delete_parquet.txt'}",
                     "--retrain", "none", "--epochs", "1", "--cache-dir", str(tmp_path / f"cache{i}"),
                     "--json", str(tmp_path / "again.json")]) == 0
        again = json.loads((tmp_path / "again.json").read_text())
        assert again["original"]["RA"] == chosen["search"]["RA"], uri


def test_a_local_hugging_face_model_is_the_original_by_default(user, tmp_path, capsys):
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(num_channels=1, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3,
                          layer_type="basic")
    torch.manual_seed(0)
    ResNetForImageClassification(config).save_pretrained(tmp_path / "hf")
    r = user["root"]
    assert main(["unlearn", "--model", f"hf:{tmp_path / 'hf'}", "--dataset", f"imagefolder:{r / 'images'}",
                 "--forget", "class:0", "--retrain", "none", "--cache-dir", str(tmp_path / "cache"),
                 "--json", str(tmp_path / "hf.json"), "--epochs", "1"]) == 0
    report = json.loads((tmp_path / "hf.json").read_text())
    assert "net.classifier.1.weight" in report["layers"]["trim"] and report["retrain"] is None
    # The folder's weights are what was evaluated (not trained): its own predictions give the original's TA.
    (x, _), (xt, yt) = digits()
    x = torch.from_numpy(x).float().div(255)[:, None]
    keep = yt != 0
    # The documented preprocessing, computed as the tool computes it: per channel over the
    # training split, softmax, top-1; so the accuracy is the same number, not a nearby one.
    mean, std = x.mean(dim=(0, 2, 3)).view(1, -1, 1, 1), x.std(dim=(0, 2, 3)).view(1, -1, 1, 1)
    xt = torch.from_numpy(xt[keep]).float().div(255)[:, None]
    with torch.no_grad():
        logits = ResNetForImageClassification.from_pretrained(tmp_path / "hf").eval()((xt - mean) / std).logits
    expected = 100 * float((F.softmax(logits, dim=1).argmax(1) == torch.from_numpy(yt[keep])).float().mean())
    assert report["original"]["TA"] == round(expected, 4)  # reports carry 4 decimals
    capsys.readouterr()
    assert main(["unlearn", "--model", f"hf:{tmp_path / 'nope'}", "--cache-dir", str(tmp_path / "c2")]) == 2
    assert "no config.json" in capsys.readouterr().err and not (tmp_path / "c2").exists()


def test_relative_paths_in_a_search_space_are_taken_from_where_the_sweep_starts(user, tmp_path, monkeypatch):
    from orchestrator.sweep.spec import load_spec

    monkeypatch.chdir(user["root"])
    space = tmp_path / "rel.yaml"
    text = SPACE.format(name="rel", root=".", retrain="train", first="UA", direction="max")
    space.write_text(text.replace("./", ""))
    spec = load_spec(space)
    root = str(user["root"].resolve())
    assert spec.dataset == f"parquet:{root}/digits.parquet" and spec.forget == f"ids:{root}/delete_parquet.txt"
    assert spec.code_dir == f"{root}/code" and spec.original == f"{root}/weights.safetensors"
    assert spec.retrain == "train"
