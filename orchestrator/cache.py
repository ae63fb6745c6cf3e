"""The one reference cache: models trained once and stored by content hash, for every task.

An entry is ``<cache>/<kind>-<key>/model.pt`` plus ``meta.json`` holding the file's sha256
(written last); an entry whose checksum does not match (truncated, corrupt, half-written) is
rebuilt, never loaded. A lock file serialises two processes building the same entry.
Metrics of a cached model are cached beside it (``metrics-<key>.*``) and dropped on rebuild.
"""
from __future__ import annotations

import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from orchestrator.storage import atomic_write_bytes, atomic_write_json, content_key, file_lock, sha256_file

BUILD_LOG_ENV = "SCISSORHANDS_BUILD_LOG"  # optional file that gets one line per model trained
# An entry's files (``sweep/store.py`` mirrors entries by these names).
WEIGHTS = "model.pt"  # the state dict
MANIFEST = "meta.json"  # its sha256, spec and training info; written last
METRICS_PREFIX = "metrics-"  # cached metrics of the model: metrics-<key>.json (+ e.g. .png)


def default_cache_dir() -> Path:
    return Path(os.environ.get("SCISSORHANDS_CACHE") or Path.home() / ".cache" / "scissorhands-sweep")


@dataclass
class Cached:
    kind: str  # e.g. original, retrain, diffusion-original
    model: nn.Module
    path: Path
    meta: dict
    built: bool = False  # trained (or loaded from the user's weights) by this call, not found in the cache

    def metrics(self, key: dict, compute: Callable[[], dict], extra_files: tuple[str, ...] = ()) -> dict:
        """``compute()``'s metrics of this model, cached per ``key`` (an evaluation setting).
        ``extra_files`` (suffixes, e.g. ``.png``) must exist too; ``compute`` may write them
        at :meth:`metrics_path` with that suffix."""
        file = self.metrics_path(key, ".json")
        if file.is_file() and all(self.metrics_path(key, s).is_file() for s in extra_files):
            try:
                return json.loads(file.read_text())
            except json.JSONDecodeError:
                pass  # a corrupt metrics file is recomputed
        result = compute()
        atomic_write_json(file, result)
        return result

    def metrics_path(self, key: dict, suffix: str) -> Path:
        return self.path / f"{METRICS_PREFIX}{content_key(key)}{suffix}"


def load_checkpoint(entry: Path, model: nn.Module) -> dict | None:
    """Load ``entry/model.pt`` into ``model`` if its sha256 matches ``entry/meta.json``; return the meta.
    None when the entry is missing or unreadable: anything corrupt is rebuilt, never loaded."""
    meta_file, weights = entry / MANIFEST, entry / WEIGHTS
    try:
        meta = json.loads(meta_file.read_text())
        if sha256_file(weights) != meta["sha256"]:
            raise ValueError("checksum mismatch")
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        return meta
    except FileNotFoundError:
        return None
    except Exception as exc:
        print(f"warning: cache entry {entry} is corrupt ({exc}); rebuilding it", file=sys.stderr)
        return None


def save_checkpoint(kind: str, entry: Path, model: nn.Module, meta: dict) -> dict:
    """``entry/model.pt`` plus a manifest with its sha256, both atomic; the manifest goes last,
    so a crash in between leaves an entry that fails verification."""
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    atomic_write_bytes(entry / WEIGHTS, buf.getvalue())
    meta = {"sha256": sha256_file(entry / WEIGHTS), **meta}
    atomic_write_json(entry / MANIFEST, meta)
    if os.environ.get(BUILD_LOG_ENV):
        with open(os.environ[BUILD_LOG_ENV], "a") as log:
            log.write(f"{kind} {entry.name} pid={os.getpid()}\n")  # the pid: which process trained it
    return meta


def cached_model(
    kind: str,
    spec: dict,
    cache_dir: Path,
    build: Callable[[], nn.Module],
    train: Callable[[nn.Module], dict] | None,
    *,
    allow_build: bool = True,
    valid: Callable[[dict], bool] | None = None,
) -> Cached:
    """Load ``<cache>/<kind>-<key>`` if intact (and ``valid(meta)``), else build + train + store it.
    ``allow_build=False``: a missing entry is an error (sweep trials never train references)."""
    entry = Path(cache_dir) / f"{kind}-{content_key(spec)}"
    with file_lock(Path(cache_dir) / f".{entry.name}.lock"):
        model = build()
        meta = load_checkpoint(entry, model)
        if meta is not None and (valid is None or valid(meta)):
            return Cached(kind, model.eval(), entry, meta)
        if not allow_build:
            raise RuntimeError(f"{kind} reference {entry} is missing; it must be built before the trials")
        for stale in list(entry.glob(f"{METRICS_PREFIX}*")):  # metrics of a model that no longer exists
            stale.unlink()
        info = train(model)
        meta = save_checkpoint(kind, entry, model, {"spec": spec, "info": info})
    return Cached(kind, model.eval(), entry, meta, built=True)
