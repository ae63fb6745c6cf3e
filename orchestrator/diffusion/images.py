"""Pixel ranges and sample grids shared by the diffusion tasks."""
from __future__ import annotations

import io
from pathlib import Path

import torch

from orchestrator.storage import atomic_write_bytes


def to_signed(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1] (the generator's pixel range)."""
    return x.float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def save_grid(samples: torch.Tensor, labels: torch.Tensor, path: Path, columns: int, scale: int = 2) -> Path:
    """PNG with one row per class (its first ``columns`` samples), 1 px gaps, upscaled ``scale``x."""
    from PIL import Image

    classes = torch.unique(labels).tolist()
    c, h, w = samples.shape[1:]
    rows = []
    for k in classes:
        imgs = samples[labels == k][:columns]
        row = torch.full((c, h + 1, columns * (w + 1)), 255, dtype=torch.uint8)
        for j, im in enumerate(imgs):
            row[:, :h, j * (w + 1) : j * (w + 1) + w] = im
        rows.append(row)
    grid = torch.cat(rows, dim=1)
    arr = grid.permute(1, 2, 0).numpy()
    img = Image.fromarray(arr[:, :, 0] if c == 1 else arr)
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
