"""Multi-tensor kernels for Scissorhands: sensitivity scoring (``score="snip"``: |w * G|, or
``"grad"``: |G|), global top-n threshold, masked re-initialisation, gradient accumulation
(|g| or g ** 2) and GEM gradient projection (one memory: closed form; several: a small QP).

Knows nothing of ``orchestrator``: every function takes lists of tensors.
Backends share one API and are chosen per call by device, or forced with
``SCISSORHANDS_KERNELS=reference|fused|triton`` or the ``backend=`` argument:

* ``reference`` (:mod:`kernels.reference`): plain torch, the oracle; its docstring holds the
  tie rule and the random-stream rule every backend follows.
* ``fused`` (:mod:`kernels.fused`, CPU default): small C loops (built on first use, see
  :mod:`kernels.native`), exact threshold by a sample-bracket search (:mod:`kernels.selection`)
  in ~1 streaming pass, extra memory ~1% of the parameter bytes; bit-identical to the
  reference on CPU.
* ``triton`` (:mod:`kernels.triton_backend`, CUDA default when triton imports): one launch
  per operation over the whole tensor list; same thresholds and masks as the reference.

``import kernels`` never imports triton.
"""
from kernels.dispatch import (
    BACKENDS,
    accumulate_abs_grad_,
    accumulate_sq_grad_,
    masked_reinit_,
    project_,
    project_columns_,
    resolve_backend,
    select_threshold,
    selection_masks,
    snip_threshold,
)
from kernels.reference import SCORES, InitSpec, Threshold

__all__ = [
    "BACKENDS",
    "SCORES",
    "InitSpec",
    "Threshold",
    "accumulate_abs_grad_",
    "accumulate_sq_grad_",
    "masked_reinit_",
    "project_",
    "project_columns_",
    "resolve_backend",
    "select_threshold",
    "selection_masks",
    "snip_threshold",
]
