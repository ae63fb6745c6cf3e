"""The package's one atomic writer and one file lock, plus content hashing.

Every file the tool writes goes through :func:`atomic_write`: a uniquely named sibling temp
file (normal permissions, unlike mkstemp's 0600), fsynced, renamed over the target, and the
directory entry fsynced; a reader sees the old or the new file, never a partial one.
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Callable

from filelock import FileLock


def temp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """``write(tmp)`` fills a sibling temp file, which then replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        write(str(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)  # persist the rename itself
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_json(path: str | Path, obj) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def file_lock(path: str | Path) -> FileLock:
    """Exclusive lock across processes (released by the kernel even if the holder is killed)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path))


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def content_key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]
