"""What a user brings, written by the tests themselves: an image folder and a Parquet image
table of real (bundled) digits, a model module of their own, and deletion lists."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from orchestrator.datasets.mnist5k import load_mnist5k

# Not one of the built-ins: a small CNN with LayerNorm and a head named "head".
MODEL_MODULE = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, in_channels, num_classes):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.norm = nn.GroupNorm(1, 8)
        self.block = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.mix = nn.Conv2d(16, 16, 3, padding=1)
        self.ln = nn.LayerNorm(16 * 4 * 4)
        self.head = nn.Linear(16 * 4 * 4, num_classes)

    def forward(self, x):
        x = torch.relu(self.norm(self.stem(x)))
        x = torch.relu(self.block(x))
        x = torch.relu(self.mix(x))
        return self.head(self.ln(nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)))


def build(in_channels, num_classes):
    return TinyNet(in_channels, num_classes)


def broken(in_channels, num_classes):
    raise RuntimeError("no GPU found")
'''


# The model: a small CNN with LayerNorm after global pooling and a head named
# "classifier_head", as people train it on x / 255 (no other normalisation).
SILHOUETTE_MODULE = '''
from torch import nn


class SilhouetteNet(nn.Module):
    def __init__(self, in_channels, num_classes):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LayerNorm(64))
        self.classifier_head = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.classifier_head(self.features(x))


def build(in_channels, num_classes):
    return SilhouetteNet(in_channels, num_classes)
'''


def write_model_module(folder: Path, name: str = "usernet", source: str = MODEL_MODULE) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(source)
    return path


NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def class_names(classes=(0, 1, 2)) -> list[str]:
    """The class folders in the sorted order every loader uses: label i is ``class_names()[i]``."""
    return sorted(NAMES[c] for c in classes)


def digits(classes=(0, 1, 2), train_per_class: int = 60, test_per_class: int = 20, invert: bool = False):
    """Real bundled digits of a few classes: (train images, labels), (test images, labels),
    labelled by the sorted class names (as an image folder of them is); ``invert``: dark
    strokes on white, like silhouettes."""
    ds = load_mnist5k()
    names = class_names(classes)

    def take(x, y, per_class):
        idx = np.concatenate([np.nonzero(y.numpy() == c)[0][:per_class] for c in classes])
        labels = np.array([names.index(NAMES[d]) for d in y.numpy()[idx]])
        images = x.numpy()[idx, 0]
        return (255 - images if invert else images), labels

    return take(ds.x_train, ds.y_train, train_per_class), take(ds.x_test, ds.y_test, test_per_class)


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def write_imagefolder(root: Path, with_test: bool = True, **kwargs) -> list[str]:
    """``root/train/<digit name>/NNN.png`` (+ ``root/test/...``); returns the training ids."""
    (x, y), (xt, yt) = digits(**kwargs)
    names = class_names(kwargs.get("classes", (0, 1, 2)))
    ids = []
    for split, images, labels in (("train", x, y), ("test", xt, yt)) if with_test else (("train", x, y),):
        for i, (image, label) in enumerate(zip(images, labels)):
            path = root / split / names[label] / f"{i:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png(image))
            if split == "train":
                ids.append(path.relative_to(root).as_posix())
    return ids


def write_parquet(path: Path, **kwargs) -> list[str]:
    """One Parquet file as Hugging Face writes an image dataset (image = struct of bytes and
    path, integer label), plus an ``id`` and a ``split`` column; returns the training ids."""
    (x, y), (xt, yt) = digits(**kwargs)
    rows = [("train", *row) for row in zip(x, y)] + [("test", *row) for row in zip(xt, yt)]
    ids = [f"{split}-{i:05d}" for i, (split, _, _) in enumerate(rows)]
    table = pa.table({
        "image": [{"bytes": png(image), "path": None} for _, image, _ in rows],
        "label": pa.array([int(label) for _, _, label in rows], pa.int64()),
        "id": ids,
        "split": [split for split, _, _ in rows],
    })
    pq.write_table(table, path)
    return [i for i, (split, _, _) in zip(ids, rows) if split == "train"]
