"""Datasets behind a registry, like the methods: one file per loader, each declaring its
``DATASET = DatasetLoader(...)`` once; the built-ins are listed in ``BUILTIN`` and imported
on first use, a user's own loader comes in through :func:`register`. The CLI help, the
unknown-name error and the sweep spec's path handling all derive from here.

A ``--dataset`` value is a loader's key (``mnist5k``) or, for a loader with a
``path_prefix``, the prefix and a local path (``npz:PATH``). Splits are seeded and fixed
(``split_seed``); forget sets are chosen in :mod:`orchestrator.forget`.
"""
from __future__ import annotations

import dataclasses

from orchestrator.datasets.dataset import Dataset, DatasetLoader, make_dataset
from orchestrator.datasets.images import resize_uint8
from orchestrator.errors import UserError
from orchestrator.registry import Registry

__all__ = ["BUILTIN", "Dataset", "DatasetLoader", "dataset_help", "dataset_path_prefixes", "get_loader",
           "list_datasets", "load_dataset", "make_dataset", "register", "unregister"]

# key -> "module:attribute" of its DatasetLoader, imported on first use; this order is the help's
BUILTIN: dict[str, str] = {
    "mnist5k": "orchestrator.datasets.mnist5k:DATASET",
    "cifar10": "orchestrator.datasets.cifar10:DATASET",
    "npz": "orchestrator.datasets.npz:DATASET",
    "imagefolder": "orchestrator.datasets.imagefolder:DATASET",
    "parquet": "orchestrator.datasets.parquet:DATASET",
}

REGISTRY: Registry[DatasetLoader] = Registry("dataset", BUILTIN)


def register(loader: DatasetLoader) -> DatasetLoader:
    """Make a loader available as ``--dataset KEY`` (or ``KEY:PATH``) at run time."""
    return REGISTRY.add(loader.key, loader)


def unregister(key: str) -> None:
    REGISTRY.remove(key)


def _loaders() -> list[DatasetLoader]:
    """Every loader: the built-ins in ``BUILTIN`` order, then the registered ones."""
    keys = list(BUILTIN) + [k for k in REGISTRY.loaded if k not in BUILTIN]
    return [REGISTRY.get(k) for k in keys]


def list_datasets() -> list[str]:
    """The loaders' keys (sorted, as ``list_methods``)."""
    return REGISTRY.names()


def dataset_help() -> str:
    """``mnist5k | cifar10 | npz:PATH | ...``: how each dataset value is written."""
    return " | ".join(loader.usage for loader in _loaders())


def dataset_path_prefixes() -> tuple[str, ...]:
    """The prefixes behind which a dataset value names a local path (``npz:``, ...)."""
    return tuple(loader.path_prefix for loader in _loaders() if loader.path_prefix)


def get_loader(name: str) -> tuple[DatasetLoader, str]:
    """The loader a dataset value names, and its argument (the path after the prefix, or the key)."""
    key, colon, arg = name.partition(":")
    if key in REGISTRY.names():
        loader = REGISTRY.get(key)
        if (loader.path_prefix is not None) == bool(colon):
            return loader, (arg if colon else key)
    raise UserError(f"unknown dataset {name!r}; allowed: {', '.join(loader.usage for loader in _loaders())}")


def load_dataset(name: str, data_dir: str | None = None, split_seed: int = 0, *, image_size: int | None = None,
                 max_gb: float | None = None, **columns) -> Dataset:
    """``columns``: the Parquet column names (``image_column``, ``label_column``, ``id_column``)."""
    if image_size is not None and image_size < 1:
        raise UserError(f"--image-size {image_size}: must be a positive integer")
    if max_gb is not None and not max_gb > 0:
        raise UserError(f"--max-data-gb {max_gb}: must be > 0")
    loader, arg = get_loader(name)
    dataset = loader.load(arg, data_dir=data_dir, split_seed=split_seed, image_size=image_size, max_gb=max_gb,
                          **columns)
    if image_size is None or loader.resizes:
        return dataset
    return dataclasses.replace(dataset, x_train=resize_uint8(dataset.x_train, image_size),
                               x_test=resize_uint8(dataset.x_test, image_size))
