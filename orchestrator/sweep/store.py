"""Where sweeps live: a local folder, or an object store (``s3://``, ``gs://``, any URI
``pyarrow.fs`` opens) mirrored in a node-local folder.

The tool always works on local files (locks, atomic renames, Parquet). With a bucket, the
driver pushes each file it writes as one whole object (an object PUT is atomic: readers see
the old or the new object, never a partial one) and pulls what it needs; each trial pulls the
references into its node's mirror, verified against their checksum manifests before use.
Ray Tune keeps its own state in the bucket (``storage_path``), so ``--resume`` needs nothing
else. Credentials come from the usual environment (AWS_*, GOOGLE_*, instance roles) through
pyarrow; nothing here stores or logs them.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from orchestrator.cache import MANIFEST, METRICS_PREFIX, WEIGHTS, default_cache_dir
from orchestrator.errors import UserError
from orchestrator.storage import atomic_write_bytes, content_key, file_lock, sha256_bytes, sha256_file
from orchestrator.sweep.paths import SweepPaths


class SweepStore:
    """``--storage`` resolved: ``root`` is the local folder the tool works in (the storage
    itself, or the bucket's node-local mirror under the cache folder)."""

    def __init__(self, location: str | Path):
        self.location = str(location)
        self.fs = None
        if "://" not in self.location or self.location.startswith("file://"):
            self.root = Path(self.location.removeprefix("file://")).resolve()
            self.location = str(self.root)  # absolute: Ray tasks open it from other folders (and nodes)
            return
        import pyarrow.fs

        self.location = self.location.rstrip("/")
        try:
            self.fs, self.base = pyarrow.fs.FileSystem.from_uri(self.location)
            bucket = self.fs.get_file_info(self.base.split("/")[0])  # reaches the store now, once
        except (OSError, ValueError) as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"--storage {self.location!r}: cannot open it ({first_line}); give a folder or "
                            "an s3:// / gs:// URI whose credentials are in the environment") from None
        if bucket.type == pyarrow.fs.FileType.NotFound:
            raise UserError(f"--storage {self.location!r}: bucket {bucket.path!r} does not exist; create it first")
        self.root = default_cache_dir() / "storage" / content_key(self.location)

    # Pickled into Ray's experiment state: a restore on another machine re-opens the store there.
    def __getstate__(self) -> dict:
        return {"location": self.location}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["location"])

    @property
    def remote(self) -> bool:
        return self.fs is not None

    def uri(self, rel: str) -> str:
        """Where ``rel`` lives, as Ray Tune and people read it."""
        return f"{self.location}/{rel}" if self.remote else str(self.root / rel)

    def _key(self, rel: str) -> str:
        return f"{self.base}/{rel}"

    def files(self, rel: str, recursive: bool = True) -> list[str]:
        """Paths (relative to the store) of the files under ``rel``."""
        from pyarrow.fs import FileSelector, FileType

        if not self.remote:
            folder = self.root / rel
            found = folder.rglob("*") if recursive else folder.glob("*")
            return sorted(str(p.relative_to(self.root)) for p in found if p.is_file())
        infos = self.fs.get_file_info(FileSelector(self._key(rel), allow_not_found=True, recursive=recursive))
        return sorted(i.path.removeprefix(self.base + "/") for i in infos if i.type == FileType.File)

    def exists(self, rel: str) -> bool:
        from pyarrow.fs import FileType

        if not self.remote:
            return (self.root / rel).exists()
        return self.fs.get_file_info(self._key(rel)).type != FileType.NotFound

    def started(self, name: str) -> bool:
        """A sweep has Tune state (``tune/`` or one ``tune-<method>/`` per method)."""
        from pyarrow.fs import FileSelector, FileType

        if not self.remote:
            return any(SweepPaths.is_tune(p.name) for p in (self.root / name).glob("*"))
        infos = self.fs.get_file_info(FileSelector(self._key(name), allow_not_found=True))
        return any(i.type == FileType.Directory and SweepPaths.is_tune(i.base_name) for i in infos)

    def read_bytes(self, rel: str) -> bytes | None:
        if not self.remote:
            path = self.root / rel
            return path.read_bytes() if path.is_file() else None
        try:
            with self.fs.open_input_stream(self._key(rel)) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def push(self, rel: str) -> None:
        """Upload the local ``rel`` as one object (no-op for a local store)."""
        if self.remote:
            data = (self.root / rel).read_bytes()
            with self.fs.open_output_stream(self._key(rel)) as out:
                out.write(data)

    def pull(self, rel: str) -> bool:
        """Replace the local ``rel`` with the stored object (atomically); False if there is none."""
        if not self.remote:
            return (self.root / rel).is_file()
        data = self.read_bytes(rel)
        if data is None:
            return False
        atomic_write_bytes(self.root / rel, data)
        return True

    def push_folder_files(self, rel: str) -> None:
        """Upload the regular files directly in the local ``rel`` (not locks or temp files)."""
        for path in sorted((self.root / rel).glob("*")):
            if path.is_file() and not path.name.startswith(".") and path.suffix != ".lock":
                self.push(f"{rel}/{path.name}")

    def pull_results(self, name: str) -> None:
        """A sweep's table and specs, for ``frontier`` / ``pick`` / ``--resume`` on any machine."""
        paths = SweepPaths(self.root, name)
        for path in paths.synced:
            self.pull(paths.rel(path))

    # ------------------------------------------------------------------ references
    def pull_references(self, rel: str, *, verify_store: bool) -> tuple[set[str], set[str]]:
        """Bring every reference entry under ``rel`` into the local mirror, each verified
        against its manifest; return the entries whose stored copy is intact, and those whose
        stored copy is not. A local copy that already matches is kept without download unless
        ``verify_store`` (reference tasks check the bucket itself, so a corrupt object is
        replaced). A stored object that fails its checksum is never used: the reference task
        that needs it rebuilds it."""
        if not self.remote:
            return set(), set()
        intact, rejected = set(), set()
        with file_lock(self.root / f"{rel}.lock"):  # tasks and trials on one node share one mirror
            entries = sorted({f.rsplit("/", 2)[-2] for f in self.files(rel) if f.endswith(f"/{MANIFEST}")})
            for entry in entries:
                (intact if self._pull_entry(f"{rel}/{entry}", verify_store) else rejected).add(entry)
        return intact, rejected

    def _pull_entry(self, rel: str, verify_store: bool) -> bool:
        local = self.root / rel
        manifest = self.read_bytes(f"{rel}/{MANIFEST}")
        try:
            want = json.loads(manifest)["sha256"]
        except (TypeError, ValueError, KeyError):
            print(f"warning: {self.uri(rel)}/{MANIFEST} is unreadable; this reference is rebuilt", file=sys.stderr)
            return False
        local_ok = (local / WEIGHTS).is_file() and sha256_file(local / WEIGHTS) == want
        if not local_ok or verify_store:
            data = self.read_bytes(f"{rel}/{WEIGHTS}")
            stored_ok = data is not None and sha256_bytes(data) == want
            if not stored_ok:
                print(f"warning: {self.uri(rel)}/{WEIGHTS} does not match its checksum; not used", file=sys.stderr)
                return False
            if not local_ok:
                atomic_write_bytes(local / WEIGHTS, data)
        for file in self.files(rel, recursive=False):  # cached metrics beside the model
            if Path(file).name.startswith(METRICS_PREFIX) and not (self.root / file).is_file():
                self.pull(file)
        atomic_write_bytes(local / MANIFEST, manifest)  # the manifest last, as the cache writes it
        return True

    def push_references(self, rel: str, intact: set[str]) -> None:
        """Upload every local entry the store lacks or holds corrupt, weights before manifest."""
        if not self.remote:
            return
        for entry in sorted(p.parent for p in (self.root / rel).glob(f"*/{MANIFEST}")):
            files = sorted(p for p in entry.iterdir() if p.is_file() and not p.name.startswith("."))
            if entry.name in intact:
                files = [p for p in files if p.name.startswith(METRICS_PREFIX)]
            else:  # weights first, manifest last: a reader never sees a manifest without its weights
                files.sort(key=lambda p: (p.name == MANIFEST, p.name != WEIGHTS))
            for p in files:
                self.push(str(p.relative_to(self.root)))


def write_text(store: SweepStore, rel: str, text: str) -> None:
    """Write ``rel`` locally (atomically) and publish it."""
    atomic_write_bytes(store.root / rel, text.encode())
    store.push(rel)
