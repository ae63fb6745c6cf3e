"""``npz:PATH``: arrays ``x`` / ``y`` (and optionally ``x_test`` / ``y_test``) in one .npz file."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from orchestrator.datasets.dataset import Dataset, DatasetLoader, make_dataset, seeded_split
from orchestrator.datasets.images import check_memory
from orchestrator.errors import UserError


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
    return seeded_split(f"npz:{path}", x, y, list(map(str, range(len(y)))), test_fraction, split_seed, natural=False)


def _load(path: str, *, split_seed: int, max_gb: float | None, **_) -> Dataset:
    return load_npz(path, split_seed=split_seed, max_gb=max_gb)


DATASET = DatasetLoader(key="npz", usage="npz:PATH", load=_load, path_prefix="npz:")
