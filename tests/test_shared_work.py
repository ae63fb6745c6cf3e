"""Shared per-seed work (scores, saliency, importances): computed once, found by every later
run of the same seed, and a run that finds it ends exactly where one that computed it does."""
from __future__ import annotations

import copy

import pytest
import torch

from orchestrator.methods import get_method
from orchestrator.methods.shared_work import SHARED_PREFIX, SharedWork
from orchestrator.tasks.classification.references import get_reference
from orchestrator.tasks.classification.task import prepare
from tests.measured import tiny_config

# One repair epoch: the shared work is the first step; what follows must not notice where it came from.
METHODS = {"scissorhands": {"epochs": 1}, "salun": {"epochs": 1}, "ssd": {}}


def _run(method: str, shared: SharedWork | None, tiny_references):
    cfg = tiny_config(method=method, **METHODS[method])
    data = prepare(cfg)
    original = get_reference("original", cfg, data, tiny_references, progress=False, build=False).model
    torch.manual_seed(cfg.seed)
    return get_method(method).run(copy.deepcopy(original), data, cfg.knobs, torch.Generator().manual_seed(cfg.seed),
                                  shared=shared)


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))


@pytest.mark.parametrize("method", METHODS)
def test_shared_work_is_found_and_changes_nothing(method, tmp_path, tiny_references):
    first = _run(method, SharedWork(tmp_path), tiny_references)  # computes and keeps it
    again = _run(method, SharedWork(tmp_path), tiny_references)
    assert (first.stats["shared_hits"], again.stats["shared_hits"]) == (0, 1)
    assert again.stats["shared_seconds_saved"] > 0 and again.seconds >= again.stats["shared_seconds_saved"]
    assert _same(first, again), "a run that found the shared work ended elsewhere"
    assert first.stats == {**again.stats, "shared_hits": 0, "shared_seconds_saved": 0.0}
    (stored,) = tmp_path.glob(f"{SHARED_PREFIX}*.pt")

    # A corrupt file is recomputed, never loaded.
    stored.write_bytes(stored.read_bytes()[:64])
    rebuilt = _run(method, SharedWork(tmp_path), tiny_references)
    assert rebuilt.stats["shared_hits"] == 0 and _same(first, rebuilt)


def test_other_scoring_knobs_or_another_generator_are_other_work(tmp_path, tiny_references):
    def ssd(generator_seed: int, **knobs) -> SharedWork:
        cfg = tiny_config(method="ssd", **knobs)
        data = prepare(cfg)
        original = get_reference("original", cfg, data, tiny_references, progress=False, build=False).model
        shared = SharedWork(tmp_path)
        get_method("ssd").run(copy.deepcopy(original), data, cfg.knobs, torch.Generator().manual_seed(generator_seed),
                              shared=shared)
        return shared

    assert [ssd(0).hits, ssd(0, batch_size=64).hits, ssd(0, importance_data="augmented").hits,
            ssd(1).hits] == [0, 0, 0, 0]
    assert len(list(tmp_path.glob(f"{SHARED_PREFIX}*.pt"))) == 4
