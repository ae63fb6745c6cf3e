"""SalUn for text-to-image (Fan et al. 2024, the authors' SD scripts) behind the name ``salun``:
its mask is the global top |forget gradient|, nothing outside it moves, the name resolves per
task (CLI, sweep spec, registry) and a run from the CLI on an offline pipeline."""
import copy
import dataclasses
import json

import pytest
import torch

from orchestrator.cli import main
from orchestrator.errors import FieldError, UserError
from orchestrator.methods import list_methods, method_for, method_knobs
from orchestrator.methods import salun, salun_diffusion
from orchestrator.methods.salun_diffusion import forget_gradients
from orchestrator.sweep.spec import load_spec
from orchestrator.tasks.text_to_image.data import PromptTask
from tests.measured import build_tiny_sd
from tests.test_contracts import text_to_image_case, tiny_config

METHOD = salun_diffusion.METHOD


def oracle_masks(unet, data, cfg, seed):
    """The top int(mask_ratio * N) of |G| by a plain sort, G drawn as the run's first draws."""
    grads = forget_gradients(copy.deepcopy(unet).eval(), data, cfg, torch.Generator().manual_seed(seed))
    scores = torch.cat([g.abs().flatten() for g in grads])
    k = int(cfg.mask_ratio * scores.numel())
    tau = scores.topk(k).values[-1]
    masks = [g.abs() >= tau for g in grads]
    assert sum(int(m.sum()) for m in masks) == k  # no tie at tau: the mask is unambiguous
    return masks, k


def test_the_mask_is_the_global_top_gradients_and_nothing_outside_it_moves():
    unet, data, tiny = text_to_image_case()
    cfg = tiny_config(METHOD, tiny, mask_ratio=0.3, epochs=2, lr=1e-3)
    masks, k = oracle_masks(unet, data, cfg, seed=0)
    before = [p.detach().clone() for p in unet.parameters()]
    result = METHOD.run(unet, data, cfg, torch.Generator().manual_seed(0))
    assert result.stats["mask_entries"] == k == int(0.3 * sum(p.numel() for p in before))
    after = list(result.model.parameters())
    for p0, p1, m in zip(before, after, masks):
        assert torch.equal(p0[~m], p1[~m])  # bit-identical: Adam never moves an entry with zero gradients
    moved = sum(int((p0 != p1)[m].sum()) for p0, p1, m in zip(before, after, masks))
    assert moved > k // 2
    assert [r["epoch"] for r in result.history] == [0, 1] and {"loss_forget", "loss_retain"} <= set(result.history[0])


def test_pseudo_conditions_are_random_retain_prompts_or_the_anchor():
    _, data, _ = text_to_image_case()
    g = torch.Generator().manual_seed(0)
    assert torch.equal(data.pseudo_cond(data.emb_forget, g), data.emb_anchor.expand(4, -1, -1))  # no retain prompts
    prompts = torch.randn(3, 6, 16, generator=g)
    with_prompts = PromptTask(data.lat_forget, data.emb_forget, data.lat_retain, data.emb_retain, data.emb_anchor,
                              data.abar, data.forget_prompts, data.emb_null, retain_prompts=prompts)
    picked = with_prompts.pseudo_cond(torch.zeros(64, 6, 16), g)
    rows = {next(i for i in range(3) if torch.equal(row, prompts[i])) for row in picked}
    assert rows == {0, 1, 2}


def test_salun_resolves_per_task():
    assert method_for("salun", "text_to_image") is METHOD and method_for("salun", "classification") is salun.METHOD
    assert list_methods("text_to_image").count("salun") == 1 and list_methods("classification").count("salun") == 1
    assert "salun@text_to_image" in list_methods()  # the registry key: every Method once, for the contract tests
    assert isinstance(method_knobs("salun", {"mask_ratio": 0.3}, "text_to_image"), salun_diffusion.SalUnDiffusionConfig)
    with pytest.raises(UserError, match="--method salun: a classification method; diffusion methods: "
                                        "scissorhands_diffusion"):
        method_for("salun", "diffusion")


def test_a_sweep_spec_takes_salun_for_text_to_image(tmp_path):
    space = tmp_path / "salun.yaml"
    space.write_text("name: t2i-salun\ntask: text_to_image\nmethod: salun\nfixed: {epochs: 1}\n"
                     "search: {mask_ratio: {type: uniform, low: 0.1, high: 0.9}}\n"
                     "objectives: [{metric: gap_ratio, direction: min}]\ntrials: 1\n")
    spec = load_spec(space)
    assert spec.method_contract is METHOD
    assert spec.run_config({"mask_ratio": 0.3}, 0).knobs == salun_diffusion.SalUnDiffusionConfig(mask_ratio=0.3,
                                                                                                 epochs=1)
    space.write_text(space.read_text().replace("mask_ratio:", "trim_ratio:"))
    with pytest.raises(UserError, match=r"unknown search key\(s\) \['trim_ratio'\]; allowed: mask_ratio, "):
        load_spec(space)


def test_a_bad_knob_is_one_line_naming_value_and_range(capsys):
    with pytest.raises(FieldError, match=r"^mask_ratio 1\.5: must be in \(0, 1\]$"):
        METHOD.config(mask_ratio=1.5)
    assert main(["unlearn", "--task", "text_to_image", "--method", "salun", "--mask-ratio", "1.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("--mask-ratio 1.5: must be in (0, 1]")


@pytest.mark.slow
def test_salun_runs_from_the_cli_on_an_offline_pipeline(tmp_path, capsys):
    pytest.importorskip("transformers")
    pipe = build_tiny_sd(tmp_path)
    out = tmp_path / "salun.json"
    assert main(["unlearn", "--task", "text_to_image", "--method", "salun", "--pretrained", str(pipe),
                 "--forget-prompt", "a cat", "--anchor-prompt", "a dog", "--retain-prompt", "a bird",
                 "--epochs", "1", "--batch-size", "2", "--mask-batches", "1", "--samples-per-prompt", "2",
                 "--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "--json", str(out), "--no-progress"]) == 0
    report = json.loads(out.read_text())
    assert report["config"]["method"] == "salun"
    assert report["config"]["knobs"] == {**dataclasses.asdict(METHOD.config()),
                                         "epochs": 1, "batch_size": 2, "mask_batches": 1}
    assert report["unlearned"]["retain_drift"] > 0 and report["unlearned"]["RTE_s"] > 0
