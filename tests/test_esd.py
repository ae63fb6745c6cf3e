"""ESD (negative-guidance fine-tuning, Gandikota et al. 2023) behind the method registry: which
modules each variant trains, its target, and a run from the CLI on an offline pipeline."""
import json

import pytest
import torch

from orchestrator.cli import main
from orchestrator.methods import get_method
from tests.measured import build_tiny_sd
from tests.test_contracts import text_to_image_case, tiny_config


def changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


@pytest.mark.parametrize("name, cross_attention", [("esd_x", True), ("esd_u", False)])
def test_each_variant_trains_its_modules_and_nothing_else(name, cross_attention):
    unet, data, tiny = text_to_image_case()
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    method = get_method(name)
    result = method.run(unet, data, tiny_config(method, tiny), torch.Generator().manual_seed(0))
    moved = changed(before, result.model.state_dict())
    chosen = set(method.layers(unet, method.config())["train"])
    assert moved and moved <= chosen  # (Adam moves every entry with a gradient; some may have none)
    assert all(("attn2" in k) == cross_attention for k in chosen)
    assert result.stats["trained_entries"] == sum(before[k].numel() for k in chosen)


def test_without_negative_guidance_the_target_is_the_original_so_nothing_moves():
    # eta = 0: the target e_c - 0 (e_c - e_0) is the frozen copy's own prediction, exactly what
    # the trained UNet predicts before its first step: zero loss, zero gradients, no update.
    unet, data, tiny = text_to_image_case()
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    method = get_method("esd_u")
    result = method.run(unet, data, tiny_config(method, tiny, negative_guidance=0.0), torch.Generator().manual_seed(0))
    assert not changed(before, result.model.state_dict())
    assert all(r["loss_esd"] == 0.0 for r in result.history)


@pytest.mark.slow
def test_esd_runs_from_the_cli_on_an_offline_pipeline(tmp_path, capsys):
    name = "esd_x"  # (esd_u differs only in its modules, asserted above)
    pytest.importorskip("transformers")
    pipe = build_tiny_sd(tmp_path)
    out = tmp_path / "esd.json"
    assert main(["unlearn", "--task", "text_to_image", "--method", name, "--pretrained", str(pipe),
                 "--forget-prompt", "a cat", "--anchor-prompt", "a dog", "--iterations", "4", "--sample-steps", "3",
                 "--samples-per-prompt", "2", "--device", "cpu", "--cache-dir", str(tmp_path / "cache"),
                 "--json", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["config"]["method"] == name and report["config"]["knobs"]["negative_guidance"] == 2.0
    assert report["unlearned"]["retain_drift"] > 0 and report["unlearned"]["RTE_s"] > 0
    assert "train layers" in printed and all(("attn2" in k) == (name == "esd_x") for k in report["layers"]["train"])
