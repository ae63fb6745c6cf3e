"""Multi-tensor kernels for Scissorhands: sensitivity scoring, global top-n threshold,
masked re-initialisation and GEM gradient projection.

Knows nothing of ``orchestrator``: every function takes lists of tensors.
Backends share one API and are chosen per call by device, or forced with
``SCISSORHANDS_KERNELS=reference|fused|triton`` or the ``backend=`` argument.
"""
from kernels.dispatch import (
    BACKENDS,
    accumulate_abs_grad_,
    masked_reinit_,
    project_,
    resolve_backend,
    select_threshold,
    selection_masks,
)
from kernels.reference import InitSpec, Threshold

__all__ = [
    "BACKENDS",
    "InitSpec",
    "Threshold",
    "accumulate_abs_grad_",
    "masked_reinit_",
    "project_",
    "resolve_backend",
    "select_threshold",
    "selection_masks",
]
