"""The dataset type every loader returns, the loader declaration, and the helpers loaders share.

Images are kept as uint8 NCHW tensors; models normalise inside, so nothing here depends on
the model. Every training sample has a stable id (its file path, an ``id`` column, or its
row index) that deletion lists name.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from orchestrator.datasets.images import to_nchw


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: torch.Tensor  # uint8 [N, C, H, W]
    y_train: torch.Tensor  # int64 [N]
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    natural_images: bool  # horizontal flips are label-preserving (not for digits)
    ids_train: tuple[str, ...] = ()  # stable sample ids of the training split
    classes: tuple[str, ...] = ()  # class names by label, where the data names them

    @property
    def channels(self) -> int:
        return int(self.x_train.shape[1])

    def fingerprint(self) -> str:
        """Content hash of the exact arrays (and split) that define this dataset."""
        h = hashlib.sha256()
        for t in (self.x_train, self.y_train, self.x_test, self.y_test):
            h.update(str(tuple(t.shape)).encode())
            h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


@dataclass(frozen=True)
class DatasetLoader:
    """One kind of ``--dataset`` value, declared once in its loader's file.

    ``load(arg, *, data_dir, split_seed, image_size, max_gb, **columns)`` returns a
    :class:`Dataset`; ``arg`` is the value after ``path_prefix`` (a local path) or, for a
    named dataset (no prefix), the key itself. Every option is passed by keyword (a loader
    takes ``**_`` for those it ignores); ``columns`` are the Parquet column names. A loader
    with ``resizes`` applies ``image_size`` itself (while decoding); for the others
    ``load_dataset`` resizes the arrays it returns."""

    key: str  # "mnist5k", or "npz" for "npz:PATH"
    usage: str  # how the value is written in help and errors: "mnist5k", "npz:PATH"
    load: Callable[..., Dataset]
    path_prefix: str | None = None  # "npz:": the rest of the value is a local path
    resizes: bool = False

    def __post_init__(self) -> None:
        if ":" in self.key or not self.key:
            raise ValueError(f"dataset key {self.key!r}: a non-empty name without ':'")
        if self.path_prefix not in (None, f"{self.key}:"):
            raise ValueError(f"dataset {self.key}: path_prefix must be {self.key + ':'!r} or None")


def make_dataset(name, x_tr, y_tr, x_te, y_te, natural: bool, *, ids_train=None, classes=(),
                 num_classes: int | None = None) -> Dataset:
    """Images as numpy N x H x W [x C] or torch NCHW uint8; ``ids_train`` default: the row index."""
    y_tr = torch.from_numpy(np.asarray(y_tr, dtype=np.int64))
    y_te = torch.from_numpy(np.asarray(y_te, dtype=np.int64))
    num_classes = num_classes or int(max(y_tr.max(), y_te.max() if len(y_te) else 0)) + 1
    ids = tuple(ids_train) if ids_train is not None else tuple(map(str, range(len(y_tr))))
    x_tr, x_te = (x if isinstance(x, torch.Tensor) else to_nchw(x) for x in (x_tr, x_te))
    return Dataset(name, x_tr, y_tr, x_te, y_te, num_classes, natural, ids, tuple(classes))


def split_order(n: int, test_fraction: float, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, test) row indices."""
    order = np.random.default_rng(split_seed).permutation(n)
    n_test = int(round(test_fraction * n))
    return order[n_test:], order[:n_test]


def seeded_split(name: str, x, y: np.ndarray, ids: list[str], test_fraction: float, split_seed: int,
                 **kwargs) -> Dataset:
    """A dataset from one pool of samples, split into train / test by ``split_seed`` (kept fixed)."""
    train, test = split_order(len(y), test_fraction, split_seed)
    return make_dataset(name, x[train], y[train], x[test], y[test], ids_train=[ids[i] for i in train], **kwargs)


def first_items(items, n: int = 5) -> str:
    """The first few items, for error messages."""
    items = list(items)
    return ", ".join(map(str, items[:n])) + (f" ... ({len(items)} in all)" if len(items) > n else "")
