"""Atomic file writes (temp file in the same folder + fsync + rename) and content hashing."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterator

BUILD_LOG_ENV = "SCISSORHANDS_BUILD_LOG"  # optional file that gets one line per model trained


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def content_key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Exclusive lock across processes (e.g. two runs building the same reference)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load_checkpoint(entry: Path, model) -> dict | None:
    """Load ``entry/model.pt`` into ``model`` if its sha256 matches ``entry/meta.json``; return the meta.

    None when the entry is missing or unreadable: anything corrupt is rebuilt, never loaded.
    """
    import torch

    meta_file, weights = entry / "meta.json", entry / "model.pt"
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


def save_checkpoint(kind: str, entry: Path, model, meta: dict) -> dict:
    """Store ``model`` as ``entry/model.pt`` plus a manifest with its sha256, both atomically.

    The manifest goes last, so a crash in between leaves an entry that fails verification.
    """
    import torch

    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    atomic_write_bytes(entry / "model.pt", buf.getvalue())
    meta = {"sha256": sha256_file(entry / "model.pt"), **meta}
    atomic_write_json(entry / "meta.json", meta)
    if os.environ.get(BUILD_LOG_ENV):
        with open(os.environ[BUILD_LOG_ENV], "a") as log:
            log.write(f"{kind} {entry.name}\n")
    return meta
