"""Shared fixtures: small real data, small real models, temporary caches."""
from __future__ import annotations

import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import pytest  # noqa: E402
import torch  # noqa: E402

from orchestrator.config import RunConfig, TrainRecipe  # noqa: E402
from orchestrator.methods.scissorhands import ScissorhandsConfig  # noqa: E402

# Small but real: ResNet-8 at width 8 on the bundled MNIST digits trains to ~95% in a few epochs.
TINY_RECIPE = TrainRecipe(epochs=4, lr=0.1, batch_size=128)


def tiny_config(forget: str = "class:3", seed: int = 0, **method) -> RunConfig:
    return RunConfig(
        model="resnet8", width=8, forget=forget, seed=seed, recipe=TINY_RECIPE, knobs=ScissorhandsConfig(**method)
    )


@pytest.fixture(scope="session", autouse=True)
def _threads():
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (tiny models run faster so, and like one Ray trial)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    """One reference cache for the whole session: each tiny reference is trained once."""
    return tmp_path_factory.mktemp("reference-cache")
