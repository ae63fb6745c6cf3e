"""Reference models: trained once, cached by content hash, corrupt entries rebuilt."""
from pathlib import Path

import torch

from orchestrator.tasks.classification.references import get_reference
from orchestrator.tasks.classification.task import prepare
from tests.measured import tiny_config


def _builds(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_cache_reuse_key_and_corrupt_entry_rebuild(tmp_path, monkeypatch, capsys):
    log = tmp_path / "builds.log"
    monkeypatch.setenv("SCISSORHANDS_BUILD_LOG", str(log))
    cfg = tiny_config("class:1")
    cfg = cfg.__class__(**{**cfg.__dict__, "recipe": cfg.recipe.__class__(epochs=1)})
    data = prepare(cfg)
    cache = tmp_path / "cache"

    first = get_reference("original", cfg, data, cache, progress=False)
    assert len(_builds(log)) == 1
    again = get_reference("original", cfg, data, cache, progress=False)
    assert len(_builds(log)) == 1, "a cached reference was retrained"
    assert again.path == first.path
    for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)

    # The original does not depend on the forget set; the retrain model does.
    other = prepare(cfg.__class__(**{**cfg.__dict__, "forget": "class:2"}))
    assert get_reference("original", cfg, other, cache, progress=False).path == first.path
    r1 = get_reference("retrain", cfg, data, cache, progress=False)
    r2 = get_reference("retrain", cfg, other, cache, progress=False)
    assert r1.path != r2.path and len(_builds(log)) == 3

    # A truncated weights file is detected and rebuilt, never loaded.
    weights = first.path / "model.pt"
    weights.write_bytes(weights.read_bytes()[:100])
    rebuilt = get_reference("original", cfg, data, cache, progress=False)
    assert len(_builds(log)) == 4
    assert "corrupt" in capsys.readouterr().err
    for a, b in zip(first.model.state_dict().values(), rebuilt.model.state_dict().values()):
        assert torch.equal(a, b), "same seed must rebuild the same model"
    # A missing manifest (crash between the two writes) also rebuilds.
    (first.path / "meta.json").unlink()
    get_reference("original", cfg, data, cache, progress=False)
    assert len(_builds(log)) == 5
    assert not list(cache.rglob("*.tmp"))
