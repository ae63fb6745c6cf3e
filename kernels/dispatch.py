"""Backend choice: one public API, several implementations.

``reference``  plain torch, any device: the oracle.
``fused``      CPU tensors: bounded extra memory, a few streaming passes (:mod:`kernels.fused`).
``triton``     CUDA tensors (or CPU tensors under TRITON_INTERPRET=1): :mod:`kernels.triton_backend`.

Choice per call: the ``backend=`` argument, else ``$SCISSORHANDS_KERNELS``, else by device
(``triton`` for CUDA tensors when triton imports, ``reference`` for other accelerators,
``fused`` for CPU tensors).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from functools import lru_cache
from types import ModuleType
from typing import Sequence

import torch

from kernels import reference

BACKENDS = ("reference", "fused", "triton")
ENV_VAR = "SCISSORHANDS_KERNELS"


@lru_cache(maxsize=None)
def triton_available() -> bool:
    """Whether the triton backend can be imported (triton installed and importable)."""
    try:
        if importlib.util.find_spec("triton") is None:
            return False
        _module("triton")
    except Exception:  # a missing or broken triton must not break the other backends
        return False
    return True


def _device(tensors: Sequence[torch.Tensor]) -> torch.device:
    return tensors[0].device if len(tensors) else torch.device("cpu")


def resolve_backend(tensors: Sequence[torch.Tensor], backend: str | None = None) -> str:
    """The backend to use: the argument, else $SCISSORHANDS_KERNELS, else by device."""
    choice = backend or os.environ.get(ENV_VAR) or ""
    if choice and choice not in BACKENDS:
        raise ValueError(f"kernel backend {choice!r} is unknown; allowed: {', '.join(BACKENDS)}")
    device = _device(tensors)
    if choice == "fused" and device.type != "cpu":
        raise ValueError(f"kernel backend 'fused' runs on CPU tensors only, these are on {device}")
    if choice == "triton":
        interpret = os.environ.get("TRITON_INTERPRET", "0") == "1"
        if device.type != "cuda" and not (interpret and device.type == "cpu"):
            raise ValueError(
                f"kernel backend 'triton' needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), got {device}"
            )
        if not triton_available():
            raise ValueError("kernel backend 'triton' requested but triton is not importable")
    if choice:
        return choice
    if device.type == "cpu":
        return "fused"
    if device.type == "cuda" and triton_available():
        return "triton"
    return "reference"


_MODULES = {"reference": "kernels.reference", "fused": "kernels.fused", "triton": "kernels.triton_backend"}


def _module(name: str) -> ModuleType:
    return reference if name == "reference" else importlib.import_module(_MODULES[name])


def accumulate_abs_grad_(buffers, grads, backend: str | None = None) -> None:
    """buffers[i] += |grads[i]| in place."""
    _module(resolve_backend(buffers, backend)).accumulate_abs_grad_(buffers, grads)


def accumulate_sq_grad_(buffers, grads, backend: str | None = None) -> None:
    """buffers[i] += grads[i] ** 2 in place (squares in float32 at least, see reference)."""
    _module(resolve_backend(buffers, backend)).accumulate_sq_grad_(buffers, grads)


def select_threshold(weights, grad_sums, n_select: int, backend: str | None = None, score: str = "snip"):
    """The exact global threshold selecting the top ``n_select`` scores, ``score`` "snip"
    (|w * G|) or "grad" (|G|) (see reference)."""
    return _module(resolve_backend(weights, backend)).select_threshold(weights, grad_sums, n_select, score=score)


def snip_threshold(weights, grad_sums, trim_ratio: float, backend: str | None = None, score: str = "snip"):
    """The reference code's cut (SHs_cifar10.py ``snip``): tau = the k-th smallest score with
    k = int((1 - trim_ratio) * N); every entry with s > tau is selected, ties at tau are not.
    Guard, as there: a tau within 1e-12 of the largest or smallest score becomes (max - min) / 2
    (e.g. when most scores are 0). Built from the backend's exact top-n search, never a sort.
    ``score`` as in :func:`select_threshold`."""
    module = _module(resolve_backend(weights, backend))
    total = sum(w.numel() for w in weights)
    k = min(max(int((1.0 - trim_ratio) * total), 1), total)
    cut = module.select_threshold(weights, grad_sums, total - k + 1, score=score)  # tau: the k-th smallest score
    largest = module.select_threshold(weights, grad_sums, 1, score=score).tau
    smallest = module.select_threshold(weights, grad_sums, total, score=score).tau
    if smallest + 1e-12 < cut.tau < largest - 1e-12:
        return reference.Threshold(tau=cut.tau, take_ties=0, n_selected=cut.n_selected - cut.take_ties)
    tau = float(torch.tensor((largest - smallest) / 2.0, dtype=torch.float32))
    masks = module.selection_masks(weights, grad_sums, reference.Threshold(tau, 0, total), score=score)
    return reference.Threshold(tau=tau, take_ties=0, n_selected=int(sum(int(m.sum()) for m in masks)))


def selection_masks(weights, grad_sums, threshold, backend: str | None = None, score: str = "snip"):
    """Boolean masks of the entries a threshold selects (materialised: for tests and analysis);
    ``score`` must be the one the threshold was selected with."""
    return _module(resolve_backend(weights, backend)).selection_masks(weights, grad_sums, threshold, score=score)


def masked_reinit_(
    weights, grad_sums, threshold, inits, generator=None, backend: str | None = None, score: str = "snip"
) -> int:
    """Re-initialise the selected entries of eligible tensors in place; returns how many changed.
    ``score`` must be the one the threshold was selected with."""
    return _module(resolve_backend(weights, backend)).masked_reinit_(
        weights, grad_sums, threshold, inits, generator, score=score
    )


def project_(grads, refs, margin: float, eps: float = 1e-3, scope: str = "global", backend: str | None = None):
    """GEM closed-form projection of grads against refs, in place; returns the coefficients."""
    return _module(resolve_backend(grads, backend)).project_(grads, refs, margin, eps, scope)


def project_columns_(grads, memories, margin: float, eps: float = 1e-3, scope: str = "global",
                     backend: str | None = None):
    """GEM projection against several memory vectors (a small QP), in place; one memory goes
    through the backend's closed form (:func:`project_`), more through the reference's QP: the
    t x t system is solved on the host in float64, the dot products are t^2 streaming passes."""
    if len(memories) == 1:
        return project_(grads, memories[0], margin, eps, scope, backend=backend).reshape(-1, 1)
    return reference.project_columns_(grads, memories, margin, eps, scope)
