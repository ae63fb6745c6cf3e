"""Forget sets: the ``--forget`` spec (random / mislabeled share, classes, or a deletion list
of sample ids) and the seeded split of a dataset's training samples into forget and retain.

The forget set follows the run's seed, as in the paper's protocol; the train / test split
it is drawn from is the dataset's own (fixed by ``split_seed``).
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from orchestrator.datasets.dataset import Dataset, first_items
from orchestrator.errors import UserError


FORGET_KINDS = ("random:FRACTION (e.g. random:0.1), mislabeled:FRACTION (e.g. mislabeled:0.1), class:K[,K...] "
                "(e.g. class:3 or class:3,5) or ids:FILE (one sample id a line, or a CSV / Parquet id column)")


def read_ids(text: str, path: Path) -> tuple[str, ...]:
    """A deletion list: one id a line, or the ``id`` column of a CSV / Parquet file."""
    if not path.is_file():
        raise UserError(f"--forget {text}: file not found")
    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            if "id" not in table.column_names:
                raise UserError(f"--forget {text}: no 'id' column; columns: {', '.join(table.column_names)}")
            ids = [str(v) for v in table.column("id").to_pylist()]
        elif path.suffix.lower() == ".csv":
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                if "id" not in (reader.fieldnames or []):
                    raise UserError(f"--forget {text}: no 'id' column; columns: {', '.join(reader.fieldnames or [])}")
                ids = [row["id"].strip() for row in reader]
        else:
            ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"--forget {text}: unreadable ({type(exc).__name__})") from None
    if not ids:
        raise UserError(f"--forget {text}: the list is empty")
    duplicates = [i for i, n in Counter(ids).items() if n > 1]
    if duplicates:
        raise UserError(f"--forget {text}: duplicate ids: {first_items(duplicates)}")
    return tuple(ids)


@dataclass(frozen=True)
class ForgetSpec:
    """``random:FRACTION`` (seeded share of the training split), ``class:K[,K...]``,
    ``mislabeled:FRACTION``: a seeded share of the training split gets a wrong label (seeded,
    uniform over the other classes) and is the forget set: the original model learns the
    noise, the retrain model never sees it (removing mislabeled data); or ``ids:FILE``, a
    deletion list of sample ids."""

    kind: str
    value: float = 0.0  # the fraction of random / mislabeled
    classes: tuple[int, ...] = ()
    ids: tuple[str, ...] = ()
    source: str = ""  # the ids file

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
                classes = tuple(int(c) for c in arg.split(","))
                if len(set(classes)) != len(classes):
                    raise UserError(f"--forget {text}: a class is listed twice")
                return cls("class", classes=classes)
            if kind == "ids" and arg:
                return cls("ids", ids=read_ids(text, Path(arg)), source=arg)
        except ValueError as exc:
            if isinstance(exc, UserError):
                raise
        raise UserError(f"--forget {text!r}: allowed {FORGET_KINDS}")

    def __str__(self) -> str:
        if self.kind == "class":
            return "class:" + ",".join(map(str, self.classes))
        return f"ids:{self.source}" if self.kind == "ids" else f"{self.kind}:{self.value:g}"

    @property
    def forget_class(self) -> int | None:
        """The class of a one-class forget set."""
        return self.classes[0] if len(self.classes) == 1 else None


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
        """D_test; for class-wise forgetting without the forgotten classes, as TA is measured in
        Jia et al., "Model Sparsity Can Simplify Machine Unlearning" (NeurIPS 2023) and SalUn
        (Fan et al., ICLR 2024)."""
        x, y = self.dataset.x_test, self.dataset.y_test
        if self.forget.kind == "class":
            keep = ~torch.isin(y, torch.tensor(self.forget.classes))
            return x[keep], y[keep]
        return x, y

    def forget_digest(self) -> str:
        return hashlib.sha256(self.forget_idx.numpy().tobytes()).hexdigest()[:16]

    def forget_ids(self) -> list[str]:
        return [self.dataset.ids_train[i] for i in self.forget_idx.tolist()]


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
        present = sorted(int(c) for c in torch.unique(y))
        missing = [k for k in forget.classes if k not in present]
        if missing:
            raise UserError(f"--forget {forget}: class not in the data: {first_items(missing)}; "
                            f"classes present: {present}")
        mask = torch.isin(y, torch.tensor(forget.classes))
    elif forget.kind == "ids":
        position = {sample_id: i for i, sample_id in enumerate(dataset.ids_train)}
        unknown = [i for i in forget.ids if i not in position]
        if unknown:
            raise UserError(f"--forget {forget}: {len(unknown)} id(s) not in the training split: "
                            f"{first_items(unknown)} (training ids look like {first_items(dataset.ids_train, 3)})")
        mask = torch.zeros(n, dtype=torch.bool)
        mask[[position[i] for i in forget.ids]] = True
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
