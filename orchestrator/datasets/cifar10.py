"""``cifar10``: CIFAR-10 from the standard python-pickle batches in ``--data-dir``."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from orchestrator.datasets.dataset import Dataset, DatasetLoader, make_dataset
from orchestrator.errors import UserError


def load_cifar10(data_dir: str | Path) -> Dataset:
    """CIFAR-10 from the standard python-pickle batches (data_batch_1..5, test_batch)."""
    root = Path(data_dir)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    train_files = sorted(root.glob("data_batch_*"))
    test_file = root / "test_batch"
    if not train_files or not test_file.is_file():
        raise UserError(f"--data-dir {data_dir}: no CIFAR-10 batches (need data_batch_* and test_batch)")

    def read(path: Path):
        try:
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            labels = np.asarray(batch[b"labels"], dtype=np.int64)
        except Exception as exc:  # any unreadable batch is a user-facing data error
            raise UserError(f"{path}: not a CIFAR-10 python batch ({type(exc).__name__}: {exc})") from None
        return data.transpose(0, 2, 3, 1), labels

    parts = [read(p) for p in train_files]
    x_te, y_te = read(test_file)
    x_tr = np.concatenate([p[0] for p in parts])
    y_tr = np.concatenate([p[1] for p in parts])
    return make_dataset("cifar10", x_tr, y_tr, x_te, y_te, natural=True)


def _load(_, *, data_dir: str | None, **__) -> Dataset:
    if not data_dir:
        raise UserError("--dataset cifar10 needs --data-dir PATH (the cifar-10-batches-py folder)")
    if not Path(data_dir).is_dir():
        raise UserError(f"--data-dir {data_dir}: no such directory")
    return load_cifar10(data_dir)


DATASET = DatasetLoader(key="cifar10", usage="cifar10", load=_load)
