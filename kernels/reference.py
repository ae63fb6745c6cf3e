"""Plain-torch reference implementation: the oracle every other backend is tested against.

All functions take lists of tensors (one per parameter). ``select_threshold`` concatenates
every score into one float32 vector (4 bytes per parameter) and takes its top n; the other
functions work per tensor. It is a production path too, not only the oracle: the default on
devices the other backends do not serve (e.g. CUDA without triton), and the fallback of
``fused`` without its native library and of ``triton`` for tensors it does not support.

Selection rule (shared by every backend)
----------------------------------------
Scores are ``s = |w * G|`` (``score="snip"``, SNIP connection sensitivity, the default) or
``s = |G|`` (``score="grad"``, SalUn's gradient saliency: the weights give only the shapes),
in float32. Selecting ``n`` entries out of ``N`` picks every entry with
``s > tau`` plus the first ``take_ties`` entries with ``s == tau``, where ``tau`` is the
n-th largest score and ties are broken by the lower *global index* (tensors in list order,
entries in row-major order inside each tensor). Exactly ``n`` entries are selected.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

Tensors = Sequence[torch.Tensor]

SCORES = ("snip", "grad")


@dataclass(frozen=True)
class Threshold:
    """Where the global top-n cut falls: every score > tau, plus ``take_ties`` entries == tau."""

    tau: float
    take_ties: int
    n_selected: int


@dataclass(frozen=True)
class InitSpec:
    """Fresh values for trimmed entries: uniform(low, high); a constant when low == high."""

    low: float
    high: float


def accumulate_abs_grad_(buffers: Tensors, grads: Tensors) -> None:
    """buffers[i] += |grads[i]| (in place)."""
    for buf, g in zip(buffers, grads, strict=True):
        buf.add_(g.abs())


def square(g: torch.Tensor) -> torch.Tensor:
    """g ** 2 in float32 at least: half-precision squares overflow (fp16 beyond 256)."""
    return g.to(torch.promote_types(g.dtype, torch.float32)).square()


def accumulate_sq_grad_(buffers: Tensors, grads: Tensors) -> None:
    """buffers[i] += grads[i] ** 2 (in place): SSD's diagonal Fisher importance."""
    for buf, g in zip(buffers, grads, strict=True):
        buf.add_(square(g))


def check_score(score: str) -> None:
    if score not in SCORES:
        raise ValueError(f"score={score!r} is unknown; allowed: {', '.join(SCORES)}")


def score_of(w: torch.Tensor, g: torch.Tensor, score: str) -> torch.Tensor:
    """The float32 scores of one tensor pair (``score`` already checked)."""
    return g.float().abs() if score == "grad" else (w.float() * g.float()).abs()


def scores(weights: Tensors, grad_sums: Tensors, score: str = "snip") -> list[torch.Tensor]:
    """Per tensor, the float32 scores of the module's selection rule."""
    check_score(score)
    return [score_of(w, g, score) for w, g in zip(weights, grad_sums, strict=True)]


def select_threshold(weights: Tensors, grad_sums: Tensors, n_select: int, score: str = "snip") -> Threshold:
    """The threshold that selects exactly ``n_select`` entries (see the module's tie rule)."""
    flat = torch.cat([s.flatten() for s in scores(weights, grad_sums, score)])
    total = flat.numel()
    if not 0 <= n_select <= total:
        raise ValueError(f"n_select={n_select} must be within [0, {total}]")
    if n_select == 0:
        return Threshold(tau=float("inf"), take_ties=0, n_selected=0)
    tau = torch.topk(flat, n_select, sorted=False).values.min()
    above = int((flat > tau).sum())
    return Threshold(tau=float(tau), take_ties=n_select - above, n_selected=n_select)


def selection_masks(
    weights: Tensors, grad_sums: Tensors, threshold: Threshold, score: str = "snip"
) -> list[torch.Tensor]:
    """Boolean masks (one per tensor) of the entries the threshold selects."""
    masks = []
    ties_left = threshold.take_ties
    tau = torch.tensor(threshold.tau, dtype=torch.float32)
    for s in scores(weights, grad_sums, score):
        mask = s > tau
        if ties_left > 0:
            ties = (s == tau).flatten()
            rank = torch.cumsum(ties.to(torch.int64), 0)
            take = ties & (rank <= ties_left)
            ties_left -= int(take.sum())
            mask = mask | take.view_as(s)
        masks.append(mask)
    return masks


def fresh_generator(generator: torch.Generator | None, device: torch.device | str) -> torch.Generator:
    """The private generator that fresh values come from, seeded by ONE draw from ``generator``.

    Every backend calls this exactly once per :func:`masked_reinit_` call, so the caller's
    random stream advances by the same amount whatever the mask, the trim ratio or the
    backend (later batches and augmentations do not shift when the trim ratio changes),
    while only the selected entries cost a draw.
    """
    src = torch.device(generator.device if generator is not None else device)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=src))
    return torch.Generator(device=torch.device(device)).manual_seed(seed)


def masked_reinit_(
    weights: Tensors,
    grad_sums: Tensors,
    threshold: Threshold,
    inits: Sequence[InitSpec | None],
    generator: torch.Generator | None = None,
    score: str = "snip",
) -> int:
    """Re-initialise the selected entries of eligible tensors in place; returns how many changed.

    ``inits[i] is None`` marks tensor i as not eligible: it is scored (it takes part in the
    global threshold) but never modified. Random stream (shared by every backend): one draw
    from ``generator`` seeds a private generator (:func:`fresh_generator`); then, per eligible
    tensor in list order, ``m`` float32 values are drawn from it with
    ``uniform_(low, high)``, ``m`` being the tensor's number of selected entries, and go to
    those entries in row-major order (cast to the tensor's dtype). The CPU backends match
    bit for bit; the triton backend draws its fresh values in-kernel (same distribution,
    same caller stream, other values).
    """
    changed = 0
    masks = selection_masks(weights, grad_sums, threshold, score)
    device = weights[0].device if len(weights) else torch.device("cpu")
    fresh_gen = fresh_generator(generator, device)
    for w, mask, init in zip(weights, masks, inits, strict=True):
        if init is None:
            continue
        m = int(mask.sum())
        if m:
            fresh = torch.empty(m, dtype=torch.float32, device=w.device)
            fresh.uniform_(init.low, init.high, generator=fresh_gen)
            with torch.no_grad():
                w[mask] = fresh.to(w.dtype)
        changed += m
    return changed


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.dot(a.flatten().double(), b.flatten().double())


def project_(
    grads: Tensors,
    refs: Tensors,
    margin: float,
    eps: float = 1e-3,
    scope: str = "global",
) -> torch.Tensor:
    """GEM projection with one memory vector, closed form, in place.

    If <g, r> < 0 then g <- g + v * r with v = max(-<g, r> / (||r||^2 + eps), margin).
    ``scope="global"`` uses one coefficient over all tensors; ``"per_layer"`` one per tensor.
    Returns the coefficients applied (0 where the projection did not fire): shape [1] or [len(grads)].
    """
    if scope not in ("global", "per_layer"):
        raise ValueError(f"scope={scope!r}: allowed global, per_layer")
    gr = torch.stack([_dot(g, r) for g, r in zip(grads, refs, strict=True)])
    rr = torch.stack([_dot(r, r) for r in refs])
    if scope == "global":
        gr, rr = gr.sum().reshape(1), rr.sum().reshape(1)
    coef = torch.where(gr < 0, torch.clamp(-gr / (rr + eps), min=margin), torch.zeros_like(gr))
    for i, (g, r) in enumerate(zip(grads, refs)):
        v = float(coef[0] if scope == "global" else coef[i])
        if v != 0.0:
            g.add_(r, alpha=v)
    return coef.float()


def solve_cone_qp(gram: torch.Tensor, dots: torch.Tensor, margin: float, eps: float,
                  tol: float = 1e-12, max_sweeps: int = 10_000) -> torch.Tensor:
    """GEM's dual QP for t memories (``project2cone2``: quadprog on P = M M^T + eps I, q = -M g,
    v >= margin): argmin_v 0.5 v^T P v + (M g)^T v subject to v >= margin, in float64.

    Solved by cyclic coordinate descent, exact per coordinate and convergent because P is
    positive definite; t is the number of memory batches (a handful), so this costs nothing
    beside the dot products. For t = 1 it is the closed form max(-<g, r> / (||r||^2 + eps), margin).
    """
    p = gram.double().cpu() + eps * torch.eye(len(gram), dtype=torch.float64)
    b = dots.double().cpu()
    v = torch.full_like(b, margin)
    for _ in range(max_sweeps):
        largest_step = 0.0
        for i in range(len(v)):
            new = max(margin, float(v[i] - (p[i] @ v + b[i]) / p[i, i]))
            largest_step = max(largest_step, abs(new - float(v[i])))
            v[i] = new
        if largest_step <= tol * max(1.0, float(v.abs().max())):
            break
    return v


def project_columns_(
    grads: Tensors,
    memories: Sequence[Tensors],
    margin: float,
    eps: float = 1e-3,
    scope: str = "global",
) -> torch.Tensor:
    """GEM projection against t memory vectors (``memories[j]``: one tensor per grad), in place.

    If any <g, r_j> < 0: g <- g + sum_j v_j r_j with v from :func:`solve_cone_qp` (one QP over
    all tensors for ``scope="global"``, one per tensor for ``"per_layer"``). Returns the
    coefficients applied, shape [1, t] or [len(grads), t] (zeros where it did not fire).
    """
    if scope not in ("global", "per_layer"):
        raise ValueError(f"scope={scope!r}: allowed global, per_layer")
    t = len(memories)
    # dots[i, j] = <g_i, r_ji>; gram[i, j, k] = <r_ji, r_ki>, per tensor i
    dots = torch.stack([torch.stack([_dot(g, m[i]) for m in memories]) for i, g in enumerate(grads)])
    gram = torch.stack([torch.stack([torch.stack([_dot(a[i], b[i]) for b in memories]) for a in memories])
                        for i in range(len(grads))])
    if scope == "global":
        dots, gram = dots.sum(0, keepdim=True), gram.sum(0, keepdim=True)
    coef = torch.zeros(len(dots), t, dtype=torch.float64)
    for k in range(len(dots)):
        if bool((dots[k] < 0).any()):
            coef[k] = solve_cone_qp(gram[k], dots[k], margin, eps)
    for i, g in enumerate(grads):
        v = coef[0] if scope == "global" else coef[i]
        for j in range(t):
            if float(v[j]) != 0.0:
                g.add_(memories[j][i], alpha=float(v[j]))
    return coef.float()
