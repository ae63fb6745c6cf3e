"""``parquet:PATH``: an image table as Hugging Face writes it (one file, or a folder of
``train*.parquet`` / ``test*.parquet`` files)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from orchestrator.datasets.dataset import Dataset, DatasetLoader, first_items, make_dataset, seeded_split
from orchestrator.datasets.images import decode_images
from orchestrator.errors import UserError


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
        raise UserError(f"--dataset {name}: id column {id_column!r} repeats ids: {first_items(repeated)}")
    every = [p for part in parts.values() for p in zip(*part)]
    x = decode_images(name, [e[0] for e in every], [e[3] for e in every], image_size, max_gb)
    y = np.concatenate([part[1] for part in parts.values()])
    ids = [e[2] for e in every]
    common = dict(natural=x.shape[1] == 3)
    if "all" in parts:
        return seeded_split(name, x, y, ids, test_fraction, split_seed, **common)
    n = len(parts["train"][1])
    return make_dataset(name, x[:n], y[:n], x[n:], y[n:], ids_train=ids[:n], **common)


def _load(path: str, *, split_seed: int, image_size: int | None, max_gb: float | None, data_dir=None,
          **columns) -> Dataset:
    return load_parquet(path, split_seed=split_seed, image_size=image_size, max_gb=max_gb, **columns)


DATASET = DatasetLoader(key="parquet", usage="parquet:PATH", load=_load, path_prefix="parquet:", resizes=True)
