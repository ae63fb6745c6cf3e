"""Work a method does before its searched knobs matter, done once per seed and reused.

Scissorhands' sensitivity scores, SalUn's forget gradients and SSD's importances depend only on
the original model, the forget set, the seed's generator and a few scoring knobs, yet every
trial of a sweep computes them again on every seed. :class:`SharedWork` keeps them beside the
seed's original reference (``shared-<key>.pt``, content-keyed, its sha256 in ``.json`` written
last, built under a lock), with what the computation left behind: the generator's state after
it and the model's buffers (BatchNorm statistics move while scoring in train mode). A run that
finds them continues exactly where one that computed them would: same seed, same figures.
"""
from __future__ import annotations

import hashlib
import io
import json
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from orchestrator.models import state_digest
from orchestrator.storage import atomic_write_bytes, atomic_write_json, content_key, file_lock, sha256_bytes

SHARED_PREFIX = "shared-"
CODE_VERSION = 1  # bump when a method's shared computation changes what it returns


class SharedWork:
    """``folder`` None: nothing is kept (every call computes). ``context``: what the work
    depends on besides the model, the generator and the knobs each call names (the forget
    set, the data, the method, the kernel backend)."""

    def __init__(self, folder: Path | None = None, context: dict | None = None):
        self.folder, self.context = (Path(folder) if folder else None), context or {}
        self.seconds_saved = 0.0  # compute time the cached results stood in for
        self.hits = 0

    def __call__(self, name: str, knobs: dict, compute: Callable[[], list[torch.Tensor]], *, model: nn.Module,
                 generator: torch.Generator) -> list[torch.Tensor]:
        if self.folder is None:
            return compute()
        key = content_key({"name": name, "knobs": knobs, **self.context, "code": CODE_VERSION,
                           "model": state_digest(model.state_dict()),
                           "generator": hashlib.sha256(generator.get_state().numpy().tobytes()).hexdigest()})
        file = self.folder / f"{SHARED_PREFIX}{name}-{key}.pt"
        manifest = file.with_suffix(".json")
        with file_lock(self.folder / f".{file.name}.lock"):
            found = _load(file, manifest)
            if found is not None:
                generator.set_state(found["generator"])
                _set_buffers(model, found["buffers"])
                self.hits += 1
                self.seconds_saved += found["seconds"]
                device = next(model.parameters()).device
                return [t.to(device) for t in found["tensors"]]
            started = time.perf_counter()
            tensors = compute()
            seconds = time.perf_counter() - started
            buf = io.BytesIO()
            torch.save({"tensors": [t.detach().cpu() for t in tensors], "generator": generator.get_state(),
                        "buffers": {k: b.detach().cpu() for k, b in model.named_buffers()}, "seconds": seconds}, buf)
            atomic_write_bytes(file, buf.getvalue())
            atomic_write_json(manifest, {"sha256": sha256_bytes(buf.getvalue()), "seconds": seconds})
        return tensors

    def stats(self) -> dict[str, float]:
        return {"shared_hits": self.hits, "shared_seconds_saved": round(self.seconds_saved, 3)}


def _load(file: Path, manifest: Path) -> dict | None:
    """The stored work if its checksum matches; None when missing or corrupt (then recomputed)."""
    try:
        want = json.loads(manifest.read_text())["sha256"]
        data = file.read_bytes()
    except (OSError, ValueError, KeyError):
        return None
    if sha256_bytes(data) != want:
        return None
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _set_buffers(model: nn.Module, buffers: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, b in model.named_buffers():
            b.copy_(buffers[name])
