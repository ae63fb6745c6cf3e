"""The baselines behind the method registry: each forgets a class on real digits, each changes
only what it claims to, bad knobs are one line, and a comparison sweep gives every method the
same budget, its own frontier and hypervolume against one reference point."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import ray
import torch

from orchestrator import RunConfig, get_method, run_unlearning
from orchestrator.cli import main
from orchestrator.data import ForgetSpec, load_mnist5k, split_forget
from orchestrator.models import build_model
from orchestrator.sweep.results import ResultsTable
from tests.conftest import TINY_RECIPE

BASELINES = ("finetune", "grad_ascent", "random_label", "l1_sparse", "salun", "ssd")
# Knobs that act within a few seconds on the tiny model (published defaults are for ResNet-18).
FAST = {"finetune": {"epochs": 3, "lr": 0.05}, "grad_ascent": {"epochs": 2, "lr": 1e-3},
        "random_label": {"epochs": 3, "lr": 0.05}, "l1_sparse": {"epochs": 3, "lr": 0.05},
        "salun": {"epochs": 3, "lr": 0.05}, "ssd": {"alpha": 1000.0, "dampening": 0.1}}
SEEDS = (0, 1, 2)


def forget_gap(m: dict, retrain: dict) -> float:
    return (abs(m["UA"] - retrain["UA"]) + abs(m["MIA"] - retrain["MIA"])) / 2


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    yield


@pytest.mark.slow
@pytest.mark.parametrize("name", BASELINES)
def test_classwise_forgetting_moves_toward_retrain(name, shared_cache):
    """Means over three seeds, margins of tens of points (one forget sample is ~0.25 points). SSD
    at its published alpha 10 destroys this small model (RA at chance): it gets alpha 1000."""
    reports = []
    for seed in SEEDS:
        cfg = RunConfig(model="resnet8", width=8, forget="class:3", seed=seed, recipe=TINY_RECIPE, method=name,
                        knobs=get_method(name).config(**FAST[name]))
        reports.append(run_unlearning(cfg, shared_cache, progress=False).report)
    mean = lambda f: float(np.mean([f(r) for r in reports]))  # noqa: E731
    assert mean(lambda r: r["unlearned"]["UA"] - r["original"]["UA"]) > 30
    assert mean(lambda r: forget_gap(r["original"], r["retrain"]) - forget_gap(r["unlearned"], r["retrain"])) > 10
    assert all(r["config"]["method"] == name for r in reports)


@pytest.fixture(scope="module")
def digits():
    data = split_forget(load_mnist5k(), ForgetSpec.parse("class:3"), seed=0)
    torch.manual_seed(0)
    return build_model("resnet8", 1, 10, width=4), data


def test_salun_updates_only_its_salient_entries(digits):
    model, data = digits
    before = copy.deepcopy(model)
    method = get_method("salun")
    cfg = method.config(epochs=1, lr=0.05, momentum=0.0, weight_decay=0.0, mask_ratio=0.2)
    result = method.run(model, data, cfg, torch.Generator().manual_seed(0))
    changed = sum(int((p != q).sum()) for p, q in zip(result.model.parameters(), before.parameters()))
    assert 0 < changed <= result.stats["masked"]
    assert result.stats["masked"] == pytest.approx(0.2 * result.stats["n_params"], abs=2)


def test_ssd_dampens_only_the_selected_entries_and_keeps_batchnorm_statistics(digits):
    model, data = digits
    before = copy.deepcopy(model)
    result = get_method("ssd").run(model, data, get_method("ssd").config(alpha=2.0),
                                   torch.Generator().manual_seed(0))
    shrunk = [(p.abs() < q.abs()) for p, q in zip(result.model.parameters(), before.parameters())]
    changed = [(p != q) for p, q in zip(result.model.parameters(), before.parameters())]
    assert sum(int(c.sum()) for c in changed) == sum(int(s.sum()) for s in shrunk) > 0  # only ever dampened
    assert sum(int(c.sum()) for c in changed) <= result.stats["dampened"]
    for b, a in zip(before.buffers(), result.model.buffers()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name, knob, value, message", [
    ("finetune", "--lr", "-1", "--lr -1.0: must be a positive number"),
    ("grad_ascent", "--epochs", "-2", "--epochs -2: must be >= 0"),
    ("random_label", "--momentum", "1.5", "--momentum 1.5: must be in [0, 1)"),
    ("l1_sparse", "--alpha", "-1", "--alpha -1.0: must be >= 0"),
    ("salun", "--mask-ratio", "0", "--mask-ratio 0.0: must be in (0, 1]"),
    ("ssd", "--dampening", "0", "--dampening 0.0: must be > 0"),
])
def test_bad_knobs_are_one_line_and_exit_2(tmp_path, capsys, name, knob, value, message):
    code = main(["unlearn", "--method", name, knob, value, "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "c").exists()


COMPARISON = """\
name: compare
forget: class:3
width: 4
recipe: {epochs: 1}
methods:
  finetune:
    fixed: {epochs: 1}
    search: {lr: {type: loguniform, low: 0.005, high: 0.05}}
  grad_ascent:
    fixed: {epochs: 1}
    search: {lr: {type: loguniform, low: 1.0e-5, high: 1.0e-3}}
  ssd:
    search: {alpha: {type: loguniform, low: 2.0, high: 20.0}}
objectives:
  - {metric: forget_gap, direction: min}
  - {metric: retain_gap, direction: min}
trials: 2
seeds: [0]
resources: {cpu: 1}
max_concurrent: 2
"""


@pytest.mark.slow
def test_comparison_sweep_gives_each_method_its_budget_and_frontier(tmp_path, capsys):
    ray.shutdown()
    space = tmp_path / "compare.yaml"
    space.write_text(COMPARISON)
    storage = tmp_path / "runs"
    try:
        assert main(["sweep", str(space), "--storage", str(storage), "--no-progress"]) == 0
    finally:
        ray.shutdown()
    df = ResultsTable(storage / "compare" / "results.parquet").read()
    assert df.groupby("method").size().to_dict() == {"finetune": 2, "grad_ascent": 2, "ssd": 2}
    assert (df["status"] == "ok").all()
    for method, rows in df.groupby("method"):
        values = rows[["forget_gap", "retain_gap"]].to_numpy(dtype=float)
        brute = [not any((o <= p).all() and (o < p).any() for o in values) for p in values]
        assert rows["pareto"].astype(bool).tolist() == brute, method
    summary = json.loads((storage / "compare" / "summary.json").read_text())
    assert set(summary["methods"]) == {"finetune", "grad_ascent", "ssd"}
    assert all(m["hypervolume"] >= 0 and m["best"]["avg_gap"] >= 0 for m in summary["methods"].values())
    assert (storage / "compare" / "frontier_methods.png").stat().st_size > 0
    assert main(["pick", "compare", "--storage", str(storage), "--method", "ssd", "--rule", "min-avg_gap",
                 "--validate-seeds", "0"]) == 0
    assert '"alpha"' in capsys.readouterr().out
    assert main(["pick", "compare", "--storage", str(storage), "--method", "salun", "--validate-seeds", "0"]) == 2
    assert "no trials of it" in capsys.readouterr().err
