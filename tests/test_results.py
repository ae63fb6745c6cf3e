"""ResultsTable: round trip, upsert, schema evolution, concurrent writers, crash safety."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from orchestrator.sweep.results import ResultsTable, flatten

# fork: children reuse the already-imported modules (spawn would re-import
# pyarrow/pandas per child, slow on a shared 2-core machine).
CTX = mp.get_context("fork")
# Incompressible payload: makes the Parquet write (where a kill hurts) most of each loop.
BLOB = np.random.default_rng(0).bytes(10_000).hex()


def _leftovers(d: Path) -> list[str]:
    return [p.name for p in d.iterdir() if p.name.endswith(".tmp")]


def test_flatten_nested_and_scalars() -> None:
    row = {"trial_id": "t1", "config": {"trim_ratio": 0.1, "opt": {"lr": np.float32(0.5)}},
           "ok": np.bool_(True), "layers": [1, 2], "none": None}
    assert flatten(row) == {"trial_id": "t1", "config.trim_ratio": 0.1, "config.opt.lr": 0.5,
                            "ok": True, "layers": "[1, 2]", "none": None}
    with pytest.raises(TypeError, match="'bad'"):
        flatten({"bad": object()})


def test_read_missing_file_is_empty(tmp_path: Path) -> None:
    df = ResultsTable(tmp_path / "r.parquet").read()
    assert isinstance(df, pd.DataFrame) and len(df) == 0


def test_append_upsert_read_round_trip(tmp_path: Path) -> None:
    t = ResultsTable(tmp_path / "sweep" / "results.parquet")
    t.append([{"trial_id": "a", "ua": 5.0, "config": {"trim_ratio": 0.1}},
              {"trial_id": "b", "ua": 6.0, "config": {"trim_ratio": 0.2}}])
    t.upsert([{"trial_id": "a", "ua": 7.5, "config": {"trim_ratio": 0.1}},  # resumed trial re-reports
              {"trial_id": "c", "ua": 1.0, "config": {"trim_ratio": 0.3}}])
    t.upsert([{"trial_id": "a", "ua": 8.0, "config": {"trim_ratio": 0.1}}])
    df = t.read().set_index("trial_id")
    assert sorted(df.index) == ["a", "b", "c"]
    assert df.loc["a", "ua"] == 8.0 and df.loc["b", "config.trim_ratio"] == 0.2

    t.set_column("pareto", {"a": True, "c": False})
    df = t.read().set_index("trial_id")
    assert df.loc["a", "pareto"] == True and df.loc["c", "pareto"] == False  # noqa: E712
    assert pd.isna(df.loc["b", "pareto"])
    t.set_column("pareto", {"b": True})  # existing column: other rows keep their values
    assert t.read().set_index("trial_id")["pareto"].to_dict() == {"a": True, "b": True, "c": False}
    with pytest.raises(KeyError, match="zzz"):
        t.set_column("pareto", {"zzz": True})
    with pytest.raises(ValueError, match="trial_id"):
        t.upsert([{"ua": 1.0}])
    assert _leftovers(t.path.parent) == []


def test_schema_evolution(tmp_path: Path) -> None:
    t = ResultsTable(tmp_path / "r.parquet")
    t.append([{"trial_id": "a", "ua": 1, "note": None}])
    t.append([{"trial_id": "b", "ua": 2.5, "mia": 12.0, "note": "x", "config": {"seed": 3}}])
    df = t.read()
    assert set(df.columns) == {"trial_id", "ua", "note", "mia", "config.seed"}
    assert df["ua"].tolist() == [1.0, 2.5]  # int + float promote to float
    assert pd.isna(df.loc[0, "mia"]) and df.loc[1, "mia"] == 12.0
    assert pd.isna(df.loc[0, "note"]) and df.loc[1, "note"] == "x"
    t.append([{"trial_id": "c"}, {"trial_id": "d", "rte": 4.0}])  # key first seen in a later row
    df = t.read()
    assert len(df) == 4 and pd.isna(df.loc[2, "rte"]) and df.loc[3, "rte"] == 4.0
    with pytest.raises(TypeError, match="ua"):
        t.append([{"trial_id": "e", "ua": "not a number"}])
    assert len(t.read()) == 4  # the failed write left the table alone
    assert _leftovers(tmp_path) == []


def _append_worker(path: str, worker: int, n: int) -> None:
    t = ResultsTable(path)
    for i in range(n):  # one row per call: maximal lock contention
        t.append([{"trial_id": f"w{worker}-{i}", "worker": worker, "i": i}])


def test_concurrent_appends_lose_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "r.parquet")
    procs = [CTX.Process(target=_append_worker, args=(path, w, 10)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    df = ResultsTable(path).read()
    assert len(df) == 40 and df["trial_id"].is_unique
    for w in range(4):  # each writer's rows landed in its own order
        assert df.loc[df["worker"] == w, "i"].tolist() == list(range(10))
    assert _leftovers(tmp_path) == []


def _append_forever(path: str) -> None:
    t = ResultsTable(path)
    i = 0
    while True:
        t.append([{"trial_id": f"t{i:05d}", "i": i, "score": float(i), "blob": f"{i}{BLOB}"}])
        i += 1


@pytest.mark.parametrize("delay, mid_write", [(0.3, True), (0.6, True), (0.45, False)])
def test_sigkill_mid_append_leaves_consistent_file(tmp_path: Path, delay: float, mid_write: bool) -> None:
    path = tmp_path / "r.parquet"
    proc = CTX.Process(target=_append_forever, args=(str(path),))
    proc.start()
    deadline = time.monotonic() + 20
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(delay)
    # Aim the kill at the write window: as soon as the child's temp file shows up.
    deadline = time.monotonic() + 2
    while mid_write and not _leftovers(tmp_path) and time.monotonic() < deadline:
        pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    assert proc.exitcode == -signal.SIGKILL

    t = ResultsTable(path)
    df = t.read()
    n = len(df)
    assert n >= 1
    # A prefix of the child's appends, every row complete, keys unique.
    assert df["i"].tolist() == list(range(n))
    assert df["trial_id"].tolist() == [f"t{i:05d}" for i in range(n)]
    assert df.notna().all().all() and (df["blob"] == df["i"].astype(str) + BLOB).all()
    # The kernel dropped the dead writer's lock; the next write also sweeps its temp file.
    t.append([{"trial_id": "after", "i": n, "score": 0.0, "blob": "y"}])
    assert len(t.read()) == n + 1
    assert _leftovers(tmp_path) == []
