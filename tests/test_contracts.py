"""Every registered method and task keeps its contract (as optuna's tests run every sampler):
a method returns a MethodResult, is deterministic per seed, reports every epoch, leaves the
model in eval mode and turns an exploding lr into a DivergenceError; every preset and every
shipped search space validates. A toy method added here runs through the CLI, and through a
search space into the per-seed function every sweep trial runs, with no edit to the trial,
CLI, spec or sweep code."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from orchestrator import get_method, get_task, list_methods, list_tasks, register
from orchestrator.cli import main
from orchestrator.datasets.mnist5k import load_mnist5k
from orchestrator.forget import ForgetSpec, split_forget
from orchestrator.errors import DivergenceError, UserError
from orchestrator.methods import Method, MethodResult
from orchestrator.methods.shared import repair_loop
from orchestrator.models import build_model
from orchestrator.sweep.seed_runs import run_seed
from orchestrator.sweep.spec import load_spec
from orchestrator.training import batches, to_float

ROOT = Path(__file__).resolve().parents[1]


def classification_case(seed: int = 0):
    data = split_forget(load_mnist5k(), ForgetSpec.parse("class:3"), seed=0)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_model("resnet8", 1, 10, width=4)
    return model, data, {"epochs": 1, "batch_size": 256, "score_batch_size": 64}  # >= 2 steps on D_f


def diffusion_case(seed: int = 0):
    from orchestrator.tasks.class_erasure.config import GeneratorRecipe
    from orchestrator.datasets.images import resize_uint8
    from orchestrator.diffusion.images import to_signed
    from orchestrator.diffusion.sampling import alphas_cumprod
    from orchestrator.tasks.class_erasure.data import ClassTask
    from orchestrator.diffusion.unet import build_class_unet

    recipe = GeneratorRecipe(widths=(16, 32), attention_head_dim=8)
    data = split_forget(load_mnist5k(), ForgetSpec.parse("class:3"), seed=0)
    task = ClassTask(to_signed(resize_uint8(data.x_forget, 8)), 3, to_signed(resize_uint8(data.x_retain, 8)),
                     data.y_retain, 10, alphas_cumprod(recipe.noise_schedule, recipe.train_timesteps),
                     recipe.p_uncond, None)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = build_class_unet(recipe, 8, 1, 10)
    return unet, task, {"epochs": 1, "steps_per_epoch": 2, "batch_size": 16, "score_batches": 1,
                        "score_batch_size": 16}


def text_to_image_case(seed: int = 0):
    """A tiny Stable Diffusion UNet on random latents and prompt embeddings (no pipeline folder)."""
    from diffusers import UNet2DConditionModel

    from orchestrator.diffusion.sampling import alphas_cumprod
    from orchestrator.tasks.text_to_image.data import PromptTask

    g = torch.Generator().manual_seed(100)
    lat, emb = torch.randn(4, 4, 8, 8, generator=g), torch.randn(3, 6, 16, generator=g)  # 2 forget prompts, anchor
    data = PromptTask(lat, emb[[0, 0, 1, 1]], lat.flip(0), emb[[2, 2, 2, 2]], emb[2:3],
                      alphas_cumprod("linear", 1000), emb[:2], torch.zeros(1, 6, 16))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                    block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                    norm_num_groups=8, attention_head_dim=8)
    return unet, data, {"iterations": 12, "sample_steps": 3,  # ESD
                        "epochs": 1, "batch_size": 2, "mask_batches": 1}  # SalUn: 2 steps (one to diverge at)


CASES = {"classification": classification_case, "diffusion": diffusion_case, "text_to_image": text_to_image_case}


def tiny_config(method: Method, tiny: dict, **changes):
    """The method's config from a case's tiny knobs (those it has) and ``changes``."""
    return method.config(**{k: v for k, v in {**tiny, **changes}.items() if k in method.knob_names()})


def run(name: str, seed: int = 0, **changes):
    method = get_method(name)
    model, data, tiny = CASES[method.tasks[0]]()
    cfg = tiny_config(method, tiny, **changes)
    epochs = []
    result = method.run(model, data, cfg, torch.Generator().manual_seed(seed), on_epoch=epochs.append)
    return result, epochs, cfg


@pytest.fixture(scope="module", autouse=True)
def _trial_threads(trial_threads):
    yield


@pytest.mark.parametrize("name", list_methods())
def test_method_contract(name):
    result, epochs, cfg = run(name)
    assert isinstance(result, MethodResult) and result.seconds > 0
    assert not result.model.training
    n_epochs = get_method(name).history_length(cfg)  # a method without training (SSD) reports none
    assert len(epochs) == n_epochs == len(result.history) and epochs == result.history
    assert [e["epoch"] for e in epochs] == list(range(n_epochs))
    assert all(isinstance(v, float) and math.isfinite(v) for e in epochs for k, v in e.items() if k != "epoch")
    again, _, _ = run(name)
    for (key, a), b in zip(result.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b), f"{name}: same seed, different {key}"
    other, _, _ = run(name, seed=1)
    differs = any(not torch.equal(a, b) for a, b in zip(result.model.parameters(), other.model.parameters()))
    assert differs == get_method(name).seeded(cfg)  # SSD by default draws nothing: every seed, one model


@pytest.mark.parametrize("name", [m for m in list_methods() if "lr" in get_method(m).knob_names()])
def test_exploding_lr_raises_divergence(name):
    with pytest.raises(DivergenceError, match="lower --lr"):
        run(name, lr=1e30)


@pytest.mark.parametrize("name", list_methods())
def test_every_preset_validates_and_unknown_knobs_are_named(name):
    method = get_method(name)
    assert method.presets[0] == "auto"
    for preset in method.presets:
        for size in ("small", "large"):
            for kind in ("class", "random", "mislabeled"):
                cfg = method.preset(preset, model_size=size, forget_kind=kind)
                assert isinstance(cfg, method.config_class)
                cfg.validate()
                # A preset is plain knob values: it round-trips through the YAML / JSON form.
                assert method.config(**json.loads(json.dumps(dataclasses.asdict(cfg)))) == cfg
    with pytest.raises(UserError, match=f"unknown {method.name} knob"):  # a NAME@TASK key's method is NAME
        method.config(no_such_knob=1)
    with pytest.raises(UserError, match="allowed"):
        method.preset("no-such-preset")


@pytest.mark.parametrize("name", list_tasks())
def test_task_contract(name):
    task = get_task(name)
    assert name in get_method(task.default_method).tasks
    assert set(task.gap_metrics) <= set(task.metrics) and "RTE_s" in task.metrics
    cfg = task.config_class()
    assert cfg.TASK == name and cfg.method == task.default_method
    assert task.config_class.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_unknown_method_and_task_list_the_known_ones(capsys):
    with pytest.raises(UserError, match="known methods: esd_u, esd_x, finetune, grad_ascent, .*, ssd"):
        get_method("nope")
    assert main(["unlearn", "--method", "nope"]) == 2
    assert "known methods:" in capsys.readouterr().err
    assert main(["unlearn", "--task", "diffusion", "--method", "scissorhands"]) == 2
    assert "diffusion methods: scissorhands_diffusion" in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted((ROOT / "search_spaces").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_search_space_validates(path):
    spec = load_spec(path)
    cfg = spec.run_config(spec.default_point() or {}, spec.seeds[0])
    assert cfg.method == spec.method_contract.name
    assert spec.trials >= 1 and len(set(spec.seeds)) >= 3, "a result is a mean over at least 3 seeds"


def test_the_shipped_search_spaces_are_there():
    assert {p.name for p in (ROOT / "search_spaces").glob("*.yaml")} >= {
        "mnist5k_class.yaml", "mnist5k_random.yaml", "mnist5k_mislabeled.yaml", "cifar10_resnet18.yaml"}


# ----------------------------------------------------------------------------------- a toy method


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    epochs: int = 1
    lr: float = 0.01
    batch_size: int = 256

    def validate(self) -> None:
        if not self.lr > 0:
            raise UserError(f"--lr {self.lr}: must be > 0")


class RetainFinetune(Method):
    """Fine-tune on D_r only, through the shared repair loop: the smallest honest method."""

    name = "toy_finetune"
    tasks = ("classification",)
    config_class = ToyConfig

    def unlearn(self, model, data, cfg, generator, *, on_epoch, backend, shared):
        def loss(batch):
            x, y = batch
            value = F.cross_entropy(model(to_float(x)), y)
            return value, {"loss_retain": value.item()}

        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
        history = repair_loop(model, opt, epochs=cfg.epochs,
                              steps=lambda epoch: batches(data.x_retain, data.y_retain, cfg.batch_size, generator),
                              loss=loss, on_epoch=on_epoch, where="toy", hint=f"lower --lr (now {cfg.lr})")
        return history, {}


@pytest.fixture
def toy_method():
    from orchestrator.methods import unregister

    yield register(RetainFinetune())
    unregister("toy_finetune")


def test_a_new_method_needs_no_edit_elsewhere(toy_method, tmp_path, shared_cache, capsys):
    assert "toy_finetune" in list_methods("classification")
    out = tmp_path / "toy.json"
    args = ["unlearn", "--method", "toy_finetune", "--width", "8", "--train-epochs", "4", "--epochs", "1",
            "--lr", "0.02", "--cache-dir", str(shared_cache), "--json", str(out), "--no-progress"]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert report["config"]["method"] == "toy_finetune" and report["config"]["knobs"]["lr"] == 0.02
    assert report["unlearned"] != report["original"] and report["unlearned"]["RTE_s"] > 0
    assert main([*args[:-3], "--lr", "-1"]) == 2
    assert "--lr -1.0: must be > 0" in capsys.readouterr().err

    space = tmp_path / "toy.yaml"
    space.write_text("name: toy\nmethod: toy_finetune\nforget: class:3\nwidth: 8\nrecipe: {epochs: 4}\nsearch:\n"
                     "  lr: {type: loguniform, low: 0.001, high: 0.1}\nobjectives: [{metric: RA, direction: max}]\n"
                     "trials: 2\n")
    spec = load_spec(space)
    assert spec.run_config({"lr": 0.05}, 1).knobs == ToyConfig(lr=0.05)
    seed_run = run_seed(spec, {"lr": 0.02}, 0, shared_cache, build=False)  # what a sweep trial runs per seed
    assert {k: seed_run.metrics[k] for k in ("UA", "RA", "TA", "MIA")} == {
        k: report["unlearned"][k] for k in ("UA", "RA", "TA", "MIA")}
    space.write_text(space.read_text().replace("lr:", "trim_ratio:"))
    with pytest.raises(UserError, match=r"unknown search key\(s\) \['trim_ratio'\]; allowed: epochs, lr, batch_size"):
        load_spec(space)


def test_public_api_is_lazy_and_editors_see_the_same_names():
    import ast
    import subprocess
    import sys

    import orchestrator

    tree = ast.parse((ROOT / "orchestrator" / "__init__.py").read_text())
    guarded = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING")
    seen = {a.asname or a.name for n in guarded.body for a in n.names}
    assert seen == set(orchestrator.__all__)
    assert all(getattr(orchestrator, name).__name__ == name for name in orchestrator.__all__)
    cold = subprocess.run([sys.executable, "-c", "import sys, orchestrator; print('torch' in sys.modules)"],
                          capture_output=True, text=True, check=True)
    assert cold.stdout.strip() == "False"  # `import orchestrator` imports none of them


def test_a_run_option_is_one_field_in_one_config_class(tmp_path, monkeypatch, capsys):
    """Declared once, a field is a CLI flag with its help, a search-space key, and a run setting."""
    from dataclasses import dataclass

    from orchestrator.cli import build_parser, run_config
    from orchestrator.tasks.classification.config import RunConfig
    from orchestrator.fields import run_field
    from orchestrator.sweep.spec import load_spec
    from orchestrator.tasks import REGISTRY
    from orchestrator.tasks.classification.task import Classification

    @dataclass(frozen=True)
    class ToyConfig(RunConfig):
        toy_option: int = run_field(3, spec=True, help="a toy option, declared once")

    class Toy(Classification):
        name = "toy"
        config_class = ToyConfig

    REGISTRY.add("toy", Toy())
    monkeypatch.setattr(get_method("scissorhands"), "tasks", ("classification", "toy"))
    try:
        parser = build_parser("toy")
        args = parser.parse_args(["unlearn", "--task", "toy", "--toy-option", "7"])
        assert run_config(args, get_task("toy"), get_method("scissorhands")).toy_option == 7
        with pytest.raises(SystemExit):
            parser.parse_args(["unlearn", "--task", "toy", "--help"])
        assert "--toy-option TOY_OPTION a toy option, declared once" in " ".join(capsys.readouterr().out.split())
        space = tmp_path / "toy.yaml"
        space.write_text("name: toy\ntask: toy\nforget: class:3\ntoy_option: 5\n"
                         "search: {trim_ratio: {type: uniform, low: 0.01, high: 0.1}}\n"
                         "objectives: [{metric: RA, direction: max}]\ntrials: 1\n")
        spec = load_spec(space)
        assert spec.toy_option == 5 and spec.run_config({}, 0).toy_option == 5
    finally:
        REGISTRY.remove("toy")
