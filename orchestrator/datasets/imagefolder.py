"""``imagefolder:DIR``: ``DIR/train/<class>/*`` images (and optionally ``DIR/test/<class>/*``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from orchestrator.datasets.dataset import Dataset, DatasetLoader, make_dataset, seeded_split
from orchestrator.datasets.images import IMAGE_SUFFIXES, decode_images
from orchestrator.errors import UserError


def _folder_images(root: Path, split: str, classes: list[str]) -> tuple[list[Path], list[int]]:
    files, labels = [], []
    for label, cls in enumerate(classes):
        for f in sorted((root / split / cls).glob("*")):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                files.append(f)
                labels.append(label)
    return files, labels


def load_imagefolder(path: str | Path, test_fraction: float = 0.2, split_seed: int = 0,
                     image_size: int | None = None, max_gb: float | None = None) -> Dataset:
    """``DIR/train/<class>/*.png|jpg`` and optionally ``DIR/test/<class>/...`` (else a seeded split);
    classes in sorted order; ids are file paths relative to DIR."""
    root = Path(path)
    name = f"imagefolder:{path}"
    if not root.is_dir():
        raise UserError(f"--dataset {name}: no such directory")
    if not (root / "train").is_dir():
        raise UserError(f"--dataset {name}: needs {root / 'train'}/<class>/ folders of images (no train folder)")
    classes = sorted(d.name for d in (root / "train").iterdir() if d.is_dir())
    files, labels = _folder_images(root, "train", classes)
    if not files:
        raise UserError(f"--dataset {name}: no images ({', '.join(IMAGE_SUFFIXES)}) in {root / 'train'}/<class>/")
    test_files: list[Path] = []
    test_labels: list[int] = []
    if (root / "test").is_dir():
        unknown = sorted({d.name for d in (root / "test").iterdir() if d.is_dir()} - set(classes))
        if unknown:
            raise UserError(f"--dataset {name}: test classes {unknown} have no train folder; train classes: "
                            f"{', '.join(classes)}")
        test_files, test_labels = _folder_images(root, "test", classes)
    every = files + test_files
    ids = [f.relative_to(root).as_posix() for f in every]
    x = decode_images(name, every, ids, image_size, max_gb)
    y = np.asarray(labels + test_labels, dtype=np.int64)
    common = dict(natural=x.shape[1] == 3, classes=classes, num_classes=len(classes))
    if test_files:
        n = len(files)
        return make_dataset(name, x[:n], y[:n], x[n:], y[n:], ids_train=ids[:n], **common)
    return seeded_split(name, x, y, ids, test_fraction, split_seed, **common)


def _load(path: str, *, split_seed: int, image_size: int | None, max_gb: float | None, **_) -> Dataset:
    return load_imagefolder(path, split_seed=split_seed, image_size=image_size, max_gb=max_gb)


DATASET = DatasetLoader(key="imagefolder", usage="imagefolder:DIR", load=_load, path_prefix="imagefolder:",
                        resizes=True)
