"""Images as uint8 NCHW tensors: layout, resizing, decoding with Pillow, and the memory check
that runs before any pixel is decoded."""
from __future__ import annotations

import io
import os

import numpy as np
import torch
import torch.nn.functional as F

from orchestrator.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def to_nchw(x: np.ndarray) -> torch.Tensor:
    """N x H x W or N x H x W x C numpy images as a uint8 NCHW tensor."""
    if x.ndim == 3:
        x = x[:, None, :, :]
    elif x.ndim == 4:
        x = x.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.uint8))


def resize_uint8(x: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 NCHW images resized (antialiased bilinear) to size x size."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    y = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return y.round().clamp(0, 255).to(torch.uint8)


def default_max_data_gb() -> float:
    """Half the machine's memory: the arrays, a model and its training must fit beside each other."""
    return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2e9, 1)


def check_memory(name: str, nbytes: int, max_gb: float | None) -> None:
    """A dataset held as uint8 must fit the memory it is allowed (``--max-data-gb``)."""
    limit = max_gb if max_gb is not None else default_max_data_gb()
    if nbytes > limit * 1e9:
        raise UserError(f"--dataset {name}: needs {nbytes / 1e9:.2f} GB in memory as uint8 images, more than "
                        f"--max-data-gb {limit:g} allows (raise it, or pass a smaller --image-size)")


def decode_images(name: str, sources: list, labels: list[str], image_size: int | None,
                  max_gb: float | None) -> torch.Tensor:
    """Images (paths or encoded bytes) as one uint8 NCHW tensor, read with Pillow: grey when
    every image is, else RGB; one size (``image_size``, or the common size of all images).
    ``labels`` name each image in errors. The memory check runs on the headers, before decoding."""
    from PIL import Image

    def open_image(i: int):
        src = sources[i]
        try:
            return Image.open(io.BytesIO(src) if isinstance(src, bytes) else src)
        except Exception as exc:
            raise UserError(f"--dataset {name}: {labels[i]} is not a readable image ({type(exc).__name__})") from None

    headers = []
    for i in range(len(sources)):
        with open_image(i) as img:
            headers.append((img.mode, img.size))
    mode = "L" if all(m in GRAY_MODES for m, _ in headers) else "RGB"
    sizes = {size for _, size in headers}
    if image_size is None and len(sizes) > 1:
        (a, b), first_other = headers[0][1], next(i for i, (_, s) in enumerate(headers) if s != headers[0][1])
        other = headers[first_other][1]
        raise UserError(f"--dataset {name}: images differ in size ({labels[0]} {a}x{b}, {labels[first_other]} "
                        f"{other[0]}x{other[1]}); pass --image-size S to resize them all to S x S")
    width, height = (image_size, image_size) if image_size else headers[0][1]
    channels = 1 if mode == "L" else 3
    check_memory(name, len(sources) * channels * width * height, max_gb)
    out = torch.empty((len(sources), channels, height, width), dtype=torch.uint8)
    for i in range(len(sources)):
        with open_image(i) as img:
            try:
                array = np.array(img.convert(mode), dtype=np.uint8)
            except Exception as exc:  # a header that reads but pixel data that does not (truncated files)
                raise UserError(f"--dataset {name}: {labels[i]} is not a readable image "
                                f"({type(exc).__name__})") from None
        pixels = to_nchw(array[None])
        out[i] = resize_uint8(pixels, image_size)[0] if image_size else pixels[0]
    return out
