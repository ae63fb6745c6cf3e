"""Shared fixtures: small real data, small real models, temporary caches; torch threads and
Hypothesis set so that a run can be replayed (and the cpu-matrix cells are what they say)."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

from tests.measured import as_in_a_trial, torch_threads  # noqa: E402

# Derandomized: a failing example is the same on every run and every machine (print_blob
# replays it); HYPOTHESIS_PROFILE=explore draws fresh examples when looking for new bugs.
settings.register_profile("ci", derandomize=True, print_blob=True, deadline=None)
settings.register_profile("explore", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session", autouse=True)
def _threads():
    torch.set_num_threads(torch_threads(max(1, min(2, os.cpu_count() or 1))))


@pytest.fixture(scope="module", autouse=True)
def _no_ray_left_behind():
    """A module that started a local Ray (a sweep, a pick) shuts it down: the next module on the
    same worker starts from no Ray, as a user's command does."""
    yield
    import sys

    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown()


@pytest.fixture(scope="module")
def trial_threads():
    """A module's torch threads as one Ray trial gets them: OMP_NUM_THREADS, else one (tiny
    models run faster so)."""
    with as_in_a_trial():
        yield


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    """One reference cache for the whole session: each tiny reference is trained once.
    SCISSORHANDS_TEST_CACHE names a folder to keep it in across sessions (one per CPU cell:
    references trained on another cell's kernels are other models)."""
    kept = os.environ.get("SCISSORHANDS_TEST_CACHE")
    if kept:
        return Path(kept)
    # Under pytest-xdist every worker has its own base folder under one shared parent: the
    # workers share the cache there (its lock lets one build what the other waits for).
    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "reference-cache"
    shared.mkdir(exist_ok=True)
    return shared


@pytest.fixture(scope="session")
def tiny_references(shared_cache):
    """The shared cache with the tiny recipe's references (class 3) for seeds 0-6 built: the
    search seeds and the held-out seeds of the tests' picks."""
    from tests.measured import build_references_here, tiny_space_spec
    from tests.spaces import PICK

    build_references_here(tiny_space_spec(seeds="[0, 1, 2, 3, 4, 5, 6]", **PICK), shared_cache)
    return shared_cache
