"""Parquet table of every trial of a sweep, safe against crashes and concurrent writers.

Every write rewrites the whole table (sweeps have hundreds of trials, not
millions) into a temp file in the same directory and renames it over the old
one (``orchestrator.storage.atomic_write``), so readers always see a complete old or new
table. The package's file lock on a sibling `.lock` file serialises read-modify-write cycles across processes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator.storage import atomic_write, file_lock

if TYPE_CHECKING:
    import pandas as pd

Scalar = str | int | float | bool | None


def _scalar(name: str, v: Any) -> Scalar:
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:  # numpy / torch scalars
        return v.item()
    if isinstance(v, (list, tuple)):  # e.g. a layer list in a config: keep columns scalar
        return json.dumps(v)
    raise TypeError(f"column {name!r}: value {v!r} of type {type(v).__name__} is not a scalar")


def flatten(row: Mapping[str, Any], prefix: str = "") -> dict[str, Scalar]:
    """Flatten nested dicts into dotted column names: {"config": {"a": 1}} -> {"config.a": 1}."""
    out: dict[str, Scalar] = {}
    for k, v in row.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, prefix=f"{name}."))
        else:
            out[name] = _scalar(name, v)
    return out


def _dedupe_last(table: pa.Table, key: str) -> pa.Table:
    """Keep the last row of every key (a resumed trial's latest report wins)."""
    last: dict[Any, int] = {}
    for i, k in enumerate(table.column(key).to_pylist()):
        last[k] = i
    return table.take(sorted(last.values())) if len(last) < table.num_rows else table


class ResultsTable:
    """One Parquet file holding a row per trial; see the module docstring for guarantees."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._tmp_prefix = f".{self.path.name}."

    # -- reading ------------------------------------------------------------
    def _read_table(self) -> pa.Table | None:
        try:
            with open(self.path, "rb") as f:  # one open = one inode, even if replaced meanwhile
                return pq.read_table(f)
        except FileNotFoundError:
            return None

    def read(self) -> pd.DataFrame:
        """The whole table as a DataFrame; an empty frame if nothing was written yet."""
        import pandas as pd

        table = self._read_table()
        return pd.DataFrame() if table is None else table.to_pandas()

    # -- writing ------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[pa.Table | None]:
        with file_lock(self.lock_path):  # released by the kernel even on SIGKILL
            # Holding the lock, any temp file left behind is from a killed writer.
            for stale in self.path.parent.glob(f"{self._tmp_prefix}*.tmp"):
                stale.unlink(missing_ok=True)
            yield self._read_table()

    def _write(self, table: pa.Table) -> None:
        atomic_write(self.path, lambda tmp: pq.write_table(table, tmp))

    @staticmethod
    def _combine(old: pa.Table | None, rows: Iterable[Mapping[str, Any]]) -> pa.Table:
        flat = [flatten(r) for r in rows]
        names = list(dict.fromkeys(k for r in flat for k in r))  # from_pylist alone keeps row 0's keys only
        try:
            new = pa.table({k: pa.array([r.get(k) for r in flat]) for k in names})
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise TypeError(f"rows mix incompatible value types in one column: {e}") from e
        if old is None:
            return new
        try:  # union of columns, missing -> null, int+float -> float
            return pa.concat_tables([old, new], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise TypeError(f"new rows conflict with the column types of {old.schema}: {e}") from e

    def append(self, rows: list[Mapping[str, Any]]) -> None:
        """Add rows as they are (no de-duplication)."""
        if not rows:
            return
        with self._locked() as old:
            self._write(self._combine(old, rows))

    def upsert(self, rows: list[Mapping[str, Any]], key: str = "trial_id") -> None:
        """Add rows, keeping exactly one row per `key`: the last one written wins."""
        if not rows:
            return
        missing = [r for r in rows if flatten(r).get(key) is None]
        if missing:
            raise ValueError(f"upsert: {len(missing)} row(s) lack key {key!r}, e.g. {missing[0]}")
        with self._locked() as old:
            self._write(_dedupe_last(self._combine(old, rows), key))

    def set_column(self, name: str, values_by_key: Mapping[Any, Scalar], key: str = "trial_id") -> None:
        """Set column `name` for the rows whose `key` is in `values_by_key` (e.g. the pareto flag).

        Other rows keep their value (null if the column is new); unknown keys raise KeyError.
        """
        with self._locked() as table:
            if table is None or key not in table.column_names:
                raise KeyError(f"{self.path}: no rows with key column {key!r}")
            keys = table.column(key).to_pylist()
            unknown = set(values_by_key) - set(keys)
            if unknown:
                raise KeyError(f"set_column({name!r}): keys not in the table: {sorted(map(str, unknown))}")
            col = table.column(name).to_pylist() if name in table.column_names else [None] * len(keys)
            col = [_scalar(name, values_by_key[k]) if k in values_by_key else v for k, v in zip(keys, col)]
            arr = pa.array(col)
            if name in table.column_names:
                table = table.set_column(table.column_names.index(name), name, arr)
            else:
                table = table.append_column(name, arr)
            self._write(table)
