"""Triton backend for CUDA tensors (float32, bfloat16, float16; math in float32).

One launch per operation covers the whole tensor list (see :mod:`kernels.triton_kernels`).
Thresholds and masks are bit-identical to the reference; the selection uses the sample-bracket
search of :mod:`kernels.selection` (normally one counting pass, a few small device syncs).
Differences from the reference, by design:

* ``masked_reinit_`` consumes the caller's generator exactly like the reference (one draw,
  see :func:`kernels.reference.fresh_generator`) but draws the fresh values in-kernel
  (Philox ``tl.rand`` seeded per tensor from the private generator): same distribution and
  masks, other values. This saves the counting pass that an ordered draw would need.
* ``project_`` sums float32 block partials in float64, so coefficients agree with the
  reference's float64 dot products to ~1e-6 relative, not bit for bit.
* ``selection_masks`` materialises masks and is the reference's.

Under ``TRITON_INTERPRET=1`` the kernels run on CPU tensors (tests do this).
"""
from __future__ import annotations

import math
import os
import weakref
from collections import OrderedDict
from functools import lru_cache
from dataclasses import dataclass
from typing import Sequence

import torch
import triton.language as tl

from kernels import reference, selection
from kernels import triton_kernels as K
from kernels.reference import InitSpec, Threshold

Tensors = Sequence[torch.Tensor]

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
BLOCK = 4096  # entries per block (the interpreter too: fewer, larger blocks run faster there)
NUM_WARPS = 8
CAND_FRACTION = 0.01  # candidate buffer: at most this share of the parameter bytes
MIN_CAND = 1 << 15

_DT = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


def _check_dtype(t: torch.Tensor) -> None:
    if t.dtype not in _DT:
        raise TypeError(f"triton backend: dtype {t.dtype} unsupported (float32, bfloat16, float16)")


@lru_cache(maxsize=None)
def _sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _programs(device: torch.device, n_blocks: int, per_sm: int = 8) -> int:
    if INTERPRET or device.type != "cuda":
        return max(1, min(n_blocks, 2))
    return max(1, min(n_blocks, _sms(device.index if device.index is not None else torch.cuda.current_device()) * per_sm))


@dataclass
class _Plan:
    """Device tables of one run of tensor pairs with the same dtypes."""

    table: torch.Tensor  # int64 [T, 4]: ptr a, ptr b, numel, extra
    blk_off: torch.Tensor  # int32 [T + 1]
    cum: torch.Tensor  # int64 [T + 1] entries before each tensor
    n_blocks: int
    T: int
    log_t: int
    a_t: object
    b_t: object
    aligned: bool
    numels: list[int]
    idx: list[int]  # positions of the tensors in the caller's list
    blk_tensor: torch.Tensor | None = None  # int64 [n_blocks]: tensor of each block (lazy)
    idx_dev: torch.Tensor | None = None  # idx on the device (lazy)

    def index(self) -> torch.Tensor:
        if self.idx_dev is None:
            self.idx_dev = torch.tensor(self.idx, device=self.table.device)
        return self.idx_dev

    def meta(self) -> dict:
        return dict(A_T=self.a_t, B_T=self.b_t, LOG_T=self.log_t, BLOCK=BLOCK, ALIGNED=self.aligned)


_plans: OrderedDict = OrderedDict()


def _log_bucket(t: int) -> int:
    """Binary-search steps for t tensors, rounded up to a multiple of 4 (extra steps are no-ops)."""
    need = max(1, math.ceil(math.log2(max(1, t))))
    return 4 * math.ceil(need / 4)


def _plan(a: Tensors, b: Tensors, idx: list[int], extra: Sequence[int] | None = None) -> _Plan:
    a_list = [a[i] for i in idx]
    b_list = [b[i] for i in idx]
    extra_l = [0] * len(idx) if extra is None else [int(extra[i]) for i in idx]
    key = tuple((x.data_ptr(), y.data_ptr(), x.numel(), e) for x, y, e in zip(a_list, b_list, extra_l))
    key = (key, a_list[0].dtype, b_list[0].dtype, str(a_list[0].device))
    hit = _plans.get(key)
    if hit is not None:
        _plans.move_to_end(key)
        return hit
    numels = [x.numel() for x in a_list]
    blocks = [-(-n // BLOCK) for n in numels]
    blk_off = [0]
    cum = [0]
    for nb, n in zip(blocks, numels):
        blk_off.append(blk_off[-1] + nb)
        cum.append(cum[-1] + n)
    rows = [[x.data_ptr(), y.data_ptr(), n, e] for x, y, n, e in zip(a_list, b_list, numels, extra_l)]
    device = a_list[0].device
    table = torch.tensor(rows, dtype=torch.int64).to(device)
    plan = _Plan(
        table=table,
        blk_off=torch.tensor(blk_off, dtype=torch.int32).to(device),
        cum=torch.tensor(cum, dtype=torch.int64).to(device),
        n_blocks=blk_off[-1],
        T=len(idx),
        log_t=_log_bucket(len(idx)),
        a_t=_DT[a_list[0].dtype],
        b_t=_DT[b_list[0].dtype],
        aligned=all(x.data_ptr() % 16 == 0 and y.data_ptr() % 16 == 0 for x, y in zip(a_list, b_list)),
        numels=numels,
        idx=list(idx),
    )
    _plans[key] = plan
    while len(_plans) > 32:
        _plans.popitem(last=False)
    return plan


def supported(*lists: Tensors) -> bool:
    """Whether every tensor suits the kernels (contiguous float32/bfloat16/float16); else the
    backend hands the call to the reference implementation."""
    return all(t.dtype in _DT and t.is_contiguous() for ts in lists for t in ts)


def _runs(a: Tensors, b: Tensors, extra: Sequence[int] | None = None, keep=None) -> list[_Plan]:
    """Plans for consecutive runs of non-empty tensors with equal (dtype a, dtype b), in list order."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} tensors but {len(b)} partners")
    for i, (x, y) in enumerate(zip(a, b)):
        if x.shape != y.shape:
            raise ValueError(f"tensor {i} has shape {tuple(x.shape)}, its partner {tuple(y.shape)}")
        if not (x.is_contiguous() and y.is_contiguous()):
            raise ValueError(f"triton backend: tensor {i} is not contiguous")
        _check_dtype(x)
        _check_dtype(y)
    groups: list[list[int]] = []
    last = None
    for i, (x, y) in enumerate(zip(a, b)):
        if x.numel() == 0 or (keep is not None and not keep(i)):
            continue
        k = (x.dtype, y.dtype)
        if k != last or not groups:
            groups.append([])
            last = k
        groups[-1].append(i)
    return [_plan(a, b, g, extra) for g in groups]


def _launch(kernel, plan: _Plan, *args, programs: int | None = None, **meta) -> int:
    p = programs or _programs(plan.table.device, plan.n_blocks)
    kernel[(p,)](plan.table, plan.blk_off, plan.n_blocks, plan.T, *args, **plan.meta(), **meta, num_warps=NUM_WARPS)
    return p


# --------------------------------------------------------------------------- accumulate


@torch.no_grad()
def accumulate_abs_grad_(buffers: Tensors, grads: Tensors) -> None:
    if not supported(buffers, grads):
        return reference.accumulate_abs_grad_(buffers, grads)
    for plan in _runs(buffers, grads):
        _launch(K.acc_kernel, plan, SQUARE=False)


@torch.no_grad()
def accumulate_sq_grad_(buffers: Tensors, grads: Tensors) -> None:
    if not supported(buffers, grads):
        return reference.accumulate_sq_grad_(buffers, grads)
    for plan in _runs(buffers, grads):  # unfused: round g * g, then add, as the reference does
        _launch(K.acc_kernel, plan, SQUARE=True, enable_fp_fusion=False)


# --------------------------------------------------------------------------- selection

# n_tied of the last thresholds this backend computed, keyed by the threshold, the score and
# the identity and version of every input: masked_reinit_ then knows whether ties need ranking.
_tied: OrderedDict = OrderedDict()


def _inputs_key(weights: Tensors, grad_sums: Tensors) -> tuple:
    return tuple((id(t), t.data_ptr(), t._version) for t in (*weights, *grad_sums))


def _remember_ties(th: Threshold, score: str, weights: Tensors, grad_sums: Tensors, n_tied: int | None) -> None:
    refs = [weakref.ref(t) for t in (*weights, *grad_sums)]
    _tied[(th, score, _inputs_key(weights, grad_sums))] = (n_tied, refs)
    while len(_tied) > 8:
        _tied.popitem(last=False)


def _recall_ties(th: Threshold, score: str, weights: Tensors, grad_sums: Tensors) -> int | None:
    """n_tied from the select call on these very tensors, unchanged since; else None."""
    hit = _tied.get((th, score, _inputs_key(weights, grad_sums)))
    if hit is None:
        return None
    n_tied, refs = hit
    if any(r() is not t for r, t in zip(refs, (*weights, *grad_sums))):
        return None
    return n_tied


def sample_scores(
    weights: Tensors, grad_sums: Tensors, size: int, plans: list[_Plan] | None = None, score: str = "snip"
) -> torch.Tensor:
    """The same systematic sample as the fused backend, one launch per dtype run."""
    plans = plans if plans is not None else _runs(weights, grad_sums)
    numels = [w.numel() for w in weights]
    total = sum(numels)
    stride = max(1, -(-total // max(1, size)))
    starts = [0]
    for n in numels:
        starts.append(starts[-1] + n)
    device = weights[0].device
    parts = []
    for plan in plans:
        g0 = starts[plan.idx[0]]  # global index of the run's first entry (runs skip only empty tensors)
        g1 = starts[plan.idx[-1] + 1]
        first = (-g0) % stride
        count = max(0, -(-(g1 - g0 - first) // stride))
        if count == 0:
            continue
        out = torch.empty(count, dtype=torch.float32, device=device)
        sb = 1024
        K.sample_kernel[(-(-count // sb),)](
            plan.table, plan.cum, plan.T, first, stride, count, out,
            A_T=plan.a_t, B_T=plan.b_t, LOG_T=plan.log_t, SBLOCK=sb, GRAD=score == "grad", num_warps=4,
        )
        parts.append(out)
    return torch.cat(parts) if parts else torch.empty(0, device=device)


def _cand_cap(weights: Tensors) -> int:
    return max(MIN_CAND, int(CAND_FRACTION * sum(w.numel() * w.element_size() for w in weights)) // 4)


def _count_collect(plans: list[_Plan], device: torch.device, score: str):
    progs = [_programs(device, p.n_blocks) for p in plans]

    def count_collect(lo: float, hi: float, cap: int) -> selection.Counts:
        region = max(1, cap // max(1, sum(progs)))
        cand = torch.empty(sum(progs) * region, dtype=torch.float32, device=device)
        counts = torch.empty(sum(progs), 5, dtype=torch.int64, device=device)
        off = 0
        for plan, p in zip(plans, progs):
            _launch(
                K.count_collect_kernel, plan, lo, hi, counts[off:], cand[off * region :], region,
                programs=p, GRAD=score == "grad",
            )
            off += p
        fills = counts[:, 4]
        summary = torch.cat([counts[:, :4].sum(0), fills.max().reshape(1)]).tolist()
        gt, eqh, eql, ins, max_fill = summary
        keep = torch.arange(region, device=device)[None, :] < fills[:, None]
        found = cand.view(-1, region)[keep]
        if max_fill > region:
            return selection.Counts(gt, eqh, eql, ins, None, found)
        return selection.Counts(gt, eqh, eql, ins, found)

    return count_collect


@torch.no_grad()
def select_threshold(
    weights: Tensors,
    grad_sums: Tensors,
    n_select: int,
    score: str = "snip",
    *,
    sample_size: int | None = None,
    cand_cap: int | None = None,
) -> Threshold:
    reference.check_score(score)
    if not supported(weights, grad_sums):
        return reference.select_threshold(weights, grad_sums, n_select, score)
    plans = _runs(weights, grad_sums)
    total = sum(w.numel() for w in weights)
    if not 0 <= n_select <= total:
        raise ValueError(f"n_select={n_select} must be within [0, {total}]")
    if n_select == 0:
        return Threshold(tau=float("inf"), take_ties=0, n_selected=0)
    device = weights[0].device
    size = selection.sample_size(total) if sample_size is None else min(total, sample_size)
    info: dict = {}
    th = selection.find_threshold(
        n_select,
        total,
        lambda: sample_scores(weights, grad_sums, size, plans, score),
        _count_collect(plans, device, score),
        _cand_cap(weights) if cand_cap is None else cand_cap,
        info=info,
    )
    _remember_ties(th, score, weights, grad_sums, info.get("n_tied"))
    return th


def selection_masks(
    weights: Tensors, grad_sums: Tensors, threshold: Threshold, score: str = "snip"
) -> list[torch.Tensor]:
    return reference.selection_masks(weights, grad_sums, threshold, score)


# --------------------------------------------------------------------------- trimming


@torch.no_grad()
def masked_reinit_(
    weights: Tensors,
    grad_sums: Tensors,
    threshold: Threshold,
    inits: Sequence[InitSpec | None],
    generator: torch.Generator | None = None,
    score: str = "snip",
) -> int:
    reference.check_score(score)
    if len(inits) != len(weights):
        raise ValueError(f"{len(weights)} weights but {len(inits)} init specs")
    if not supported(weights, grad_sums):
        return reference.masked_reinit_(weights, grad_sums, threshold, inits, generator, score)
    device = weights[0].device if len(weights) else torch.device("cpu")
    grad = score == "grad"
    n_tied = _recall_ties(threshold, score, weights, grad_sums)
    fresh_gen = reference.fresh_generator(generator, device)  # one draw, like the reference
    eligible = [0 if i is None else 1 for i in inits]
    if threshold.n_selected == 0 or not any(eligible):
        _runs(weights, grad_sums)  # argument checks
        return 0
    take = threshold.take_ties
    if take == 0:
        mode = 0
    elif n_tied is not None and take == n_tied:
        mode = 1
    else:
        mode = 2
    plans = _runs(weights, grad_sums, eligible, keep=None if mode == 2 else (lambda i: eligible[i] == 1))
    tau = threshold.tau
    ties_before = []
    if mode == 2:  # rank ties by global index: ties per block, then an exclusive prefix over all runs
        per_block = []
        for plan in plans:
            out = torch.empty(plan.n_blocks, dtype=torch.int64, device=device)
            _launch(K.tie_count_kernel, plan, tau, out, GRAD=grad)
            per_block.append(out)
        allb = torch.cat(per_block)
        excl = torch.cumsum(allb, 0) - allb
        ties_before = list(torch.split(excl, [p.n_blocks for p in plans]))
    seeds = torch.randint(0, 2**31 - 1, (len(weights),), generator=fresh_gen, device=device)
    bounds = _bounds(tuple(inits), device)
    changed = []
    for k, plan in enumerate(plans):
        p = _programs(device, plan.n_blocks)
        out = torch.empty(p, dtype=torch.int64, device=device)
        before = ties_before[k] if mode == 2 else out
        whole = plan.idx == list(range(len(weights)))
        _launch(
            K.trim_kernel, plan, tau, take, before,
            seeds if whole else seeds[plan.index()], bounds if whole else bounds[plan.index()], out,
            programs=p, TIES=mode, GRAD=grad,
        )
        changed.append(out.sum())
    return int(torch.stack(changed).sum()) if changed else 0


@lru_cache(maxsize=16)
def _bounds(inits: tuple, device: torch.device) -> torch.Tensor:
    """(low, high) per tensor on the device (cached: the same init specs come back every call)."""
    rows = [[0.0, 0.0] if s is None else [s.low, s.high] for s in inits]
    return torch.tensor(rows, dtype=torch.float32).to(device)


# --------------------------------------------------------------------------- projection


@torch.no_grad()
def project_(
    grads: Tensors,
    refs: Tensors,
    margin: float,
    eps: float = 1e-3,
    scope: str = "global",
) -> torch.Tensor:
    if scope not in ("global", "per_layer"):
        raise ValueError(f"scope={scope!r}: allowed global, per_layer")
    if not supported(grads, refs):
        return reference.project_(grads, refs, margin, eps, scope)
    plans = _runs(grads, refs)
    device = grads[0].device if len(grads) else torch.device("cpu")
    parts = []
    for plan in plans:  # pass 1: per-block (<g, r>, <r, r>) of every tensor, one launch per dtype run
        out = torch.empty(plan.n_blocks, 2, dtype=torch.float64, device=device)
        _launch(K.dots_kernel, plan, out)
        parts.append(out)
    if scope == "global":
        tot = torch.cat(parts).sum(0) if parts else torch.zeros(2, dtype=torch.float64, device=device)
        gr, rr = tot[0:1], tot[1:2]
    else:
        gr = torch.zeros(len(grads), dtype=torch.float64, device=device)
        rr = torch.zeros(len(grads), dtype=torch.float64, device=device)
        for plan, out in zip(plans, parts):
            if plan.blk_tensor is None:
                sizes = torch.tensor([-(-n // BLOCK) for n in plan.numels])
                plan.blk_tensor = torch.repeat_interleave(torch.tensor(plan.idx), sizes).to(device)  # cached
            gr.index_add_(0, plan.blk_tensor, out[:, 0])
            rr.index_add_(0, plan.blk_tensor, out[:, 1])
    coef = torch.where(gr < 0, torch.clamp(-gr / (rr + eps), min=margin), torch.zeros_like(gr))
    for plan in plans:  # pass 2: g += coef * r in place, skipped where the coefficient is 0
        whole = plan.idx == list(range(len(grads)))
        c = coef if scope == "global" or whole else coef[plan.index()]
        _launch(K.axpy_kernel, plan, c, PER_TENSOR=scope != "global")
    return coef.float()


# --------------------------------------------------------------------------- benchmark helper


def stream(a: Tensors, b: Tensors) -> torch.Tensor:
    """One streaming read of every tensor pair (the bandwidth floor the benchmark compares to)."""
    outs = []
    for plan in _runs(a, b):
        p = _programs(plan.table.device, plan.n_blocks)
        out = torch.empty(p, dtype=torch.float32, device=plan.table.device)
        _launch(K.stream_kernel, plan, out, programs=p)
        outs.append(out)
    return torch.cat(outs).sum() if outs else torch.zeros(())
