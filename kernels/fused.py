"""Fused CPU backend: bounded extra memory, a few streaming passes, results bit-identical to
:mod:`kernels.reference` (thresholds, trimmed weights, random stream) on CPU.

* Scores are never stored: every pass recomputes ``|w * G|`` from ``w`` and ``G`` (or ``|G|``
  from ``G`` alone, ``score="grad"``) in segments of :data:`SEG` entries inside small C loops
  (:mod:`kernels.native`), spread over ``torch.get_num_threads()`` threads (ctypes releases the GIL).
* ``select_threshold``: the sample-bracket search of :mod:`kernels.selection`: a strided sample,
  then normally ONE counting pass that also collects the few scores inside the bracket.
  Extra memory: the sample (<= 2**17 floats) and the candidates (at most
  :data:`CAND_FRACTION` of the parameter bytes; more triggers the exact bisection fallback).
* ``masked_reinit_``: a counting pass (selected and tied entries per segment), then fresh
  values drawn per segment in list order (the reference's stream, see
  :func:`kernels.reference.fresh_generator`) and written by a second C pass.
* ``project_``: all dot products in one pass (float32 lanes summed in float64), then one
  in-place ``add_`` per tensor, the same op the reference uses.
* ``accumulate_abs_grad_``, ``accumulate_sq_grad_``: one C pass per float32 tensor.

Tensors that are not float32 are converted segment by segment into small float32 buffers
(scores are float32 in every backend); non-contiguous ones are copied whole first.
Without a C compiler every function falls back to the reference (same results).
"""
from __future__ import annotations

import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import torch

from kernels import native, reference, selection
from kernels.reference import InitSpec, Threshold

Tensors = Sequence[torch.Tensor]

SEG = 1 << 16  # entries per C call; also the size of the per-thread conversion buffers
CAND_FRACTION = 0.01  # candidate / fresh-value buffers: at most this share of the parameter bytes
MIN_CAND = 1 << 15

_pool_lock = threading.Lock()
_pool: tuple[tuple[int, int], ThreadPoolExecutor] | None = None


def _threads() -> int:
    return max(1, torch.get_num_threads())


def _run(jobs: list[Callable[[], object]]) -> list[object]:
    """Run jobs on the shared thread pool (inline when there is one)."""
    global _pool
    if len(jobs) <= 1:
        return [job() for job in jobs]
    key = (_threads(), os.getpid())  # a forked child must not reuse the parent's (threadless) pool
    with _pool_lock:
        if _pool is None or _pool[0] != key:
            if _pool is not None and _pool[0][1] == key[1]:
                _pool[1].shutdown(wait=False)
            _pool = (key, ThreadPoolExecutor(max_workers=key[0], thread_name_prefix="sh-kernels"))
        pool = _pool[1]
    return [f.result() for f in [pool.submit(_no_grad, job) for job in jobs]]


def _no_grad(job: Callable[[], object]) -> object:
    with torch.no_grad():  # grad mode is per thread: the caller's no_grad does not reach the pool
        return job()


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.view(-1) if t.is_contiguous() else t.reshape(-1)


def _segments(numels: Sequence[int], which: Sequence[int] | None = None, seg: int = SEG):
    """(tensor index, start, stop) covering the chosen tensors in global order."""
    out = []
    for i in which if which is not None else range(len(numels)):
        for a in range(0, numels[i], seg):
            out.append((i, a, min(a + seg, numels[i])))
    return out


def _split(segs: list, parts: int, size: Callable[[object], int] = lambda s: s[2] - s[1]) -> list[list]:
    """Contiguous groups of segments with about equal numbers of entries."""
    parts = max(1, min(parts, len(segs)))
    total = sum(size(s) for s in segs)
    groups, cur, acc, target = [], [], 0, total / parts
    for s in segs:
        cur.append(s)
        acc += size(s)
        if acc >= target * (len(groups) + 1) and len(groups) < parts - 1:
            groups.append(cur)
            cur = []
    groups.append(cur)
    return [g for g in groups if g]


class _F32:
    """float32 pointers into segments of a flat tensor, converting into a buffer when needed."""

    def __init__(self, flat: torch.Tensor):
        self.flat = flat
        self.direct = flat.dtype == torch.float32 and flat.is_contiguous()
        self.base = flat.data_ptr() if self.direct else 0

    def ptr(self, a: int, b: int, buf: torch.Tensor) -> int:
        if self.direct:
            return self.base + 4 * a
        buf[: b - a].copy_(self.flat[a:b])
        return buf.data_ptr()


def _buffers(n: int = SEG) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty(n, dtype=torch.float32), torch.empty(n, dtype=torch.float32)


# --------------------------------------------------------------------------- accumulate


@torch.no_grad()
def accumulate_abs_grad_(buffers: Tensors, grads: Tensors) -> None:
    """buffers[i] += |grads[i]|, one pass per tensor, no temporaries beyond a segment."""
    _accumulate(buffers, grads, "sh_acc_abs", torch.abs)


@torch.no_grad()
def accumulate_sq_grad_(buffers: Tensors, grads: Tensors) -> None:
    """buffers[i] += grads[i] ** 2, one pass per tensor, no temporaries beyond a segment."""
    _accumulate(buffers, grads, "sh_acc_sq", reference.square)


def _accumulate(buffers: Tensors, grads: Tensors, c_loop: str, term: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """buffers[i] += term(grads[i]): the C loop for float32 pairs, ``term`` in segments otherwise."""
    lib = native.load()
    segs_c, rest = [], []
    for i, (buf, g) in enumerate(zip(buffers, grads, strict=True)):
        if buf.shape != g.shape:
            raise ValueError(f"buffer {i} has shape {tuple(buf.shape)}, gradient {tuple(g.shape)}")
        fast = lib is not None and buf.dtype == g.dtype == torch.float32 and buf.is_contiguous() and g.is_contiguous()
        (segs_c if fast else rest).append(i)
    for i in rest:
        buf, g = buffers[i], grads[i]
        if not buf.is_contiguous():
            buf.add_(term(g))
            continue
        bf, gf = buf.view(-1), _flat(g)
        for a in range(0, bf.numel(), SEG):
            bf[a : a + SEG].add_(term(gf[a : a + SEG]))
    if not segs_c:
        return
    ptrs = {i: (buffers[i].data_ptr(), grads[i].data_ptr()) for i in segs_c}
    segs = _segments([t.numel() for t in buffers], segs_c)
    loop = getattr(lib, c_loop)

    def job(group):
        def run():
            for i, a, b in group:
                bp, gp = ptrs[i]
                loop(bp + 4 * a, gp + 4 * a, b - a)

        return run

    _run([job(g) for g in _split(segs, _threads())])


# --------------------------------------------------------------------------- selection


def _check_pairs(weights: Tensors, grad_sums: Tensors) -> None:
    if len(weights) != len(grad_sums):
        raise ValueError(f"{len(weights)} weights but {len(grad_sums)} gradient sums")
    for i, (w, g) in enumerate(zip(weights, grad_sums)):
        if w.shape != g.shape:
            raise ValueError(f"weight {i} has shape {tuple(w.shape)}, gradient sum {tuple(g.shape)}")


class _Unread:
    """Stands in for the weights where the score ignores them (``score="grad"``): the C loops get
    NULL and never read them, so a counting pass streams G alone."""

    direct = True

    def ptr(self, a: int, b: int, buf: torch.Tensor | None) -> int:
        return 0


_UNREAD = _Unread()


def sample_scores(weights: Tensors, grad_sums: Tensors, size: int, score: str = "snip") -> torch.Tensor:
    """Every stride-th score of the concatenated order (float32, computed like the reference)."""
    numels = [w.numel() for w in weights]
    stride, starts = selection.sample_plan(numels, size)
    parts = []
    for w, g, s in zip(weights, grad_sums, starts):
        if s < w.numel():
            parts.append(reference.score_of(_flat(w)[s::stride], _flat(g)[s::stride], score))
    return torch.cat(parts) if parts else torch.empty(0)


def _cand_cap(weights: Tensors) -> int:
    param_bytes = sum(w.numel() * w.element_size() for w in weights)
    return max(MIN_CAND, int(CAND_FRACTION * param_bytes) // 4)


def _count_collect(lib, weights: Tensors, grad_sums: Tensors, score: str = "snip"):
    numels = [w.numel() for w in weights]
    segs = _segments(numels)
    groups = _split(segs, _threads())
    grad = score == "grad"
    wv = [_UNREAD if grad else _F32(_flat(w)) for w in weights]
    gv = [_F32(_flat(g)) for g in grad_sums]

    def count_collect(lo: float, hi: float, cap: int) -> selection.Counts:
        def job(group):
            def run():
                total = [0, 0, 0, 0]
                cand = torch.empty(max(1, cap // len(groups)), dtype=torch.float32)
                bw, bg = (None, None) if all(wv[i].direct and gv[i].direct for i, _, _ in group) else _buffers()
                fill, overflow = 0, False
                for i, a, b in group:
                    wp, gp = wv[i].ptr(a, b, bw), gv[i].ptr(a, b, bg)
                    while True:
                        c = (ctypes.c_int64 * 4)()
                        room = fill if overflow else cand.numel()
                        new = lib.sh_count_collect(
                            wp, gp, b - a, grad, lo, hi, ctypes.addressof(c), cand.data_ptr(), room, fill
                        )
                        if overflow or new <= cand.numel():
                            break
                        if new > cap:  # more than the whole budget: keep counting only
                            overflow = True
                            break
                        grown = torch.empty(min(cap, max(new, 2 * cand.numel())), dtype=torch.float32)
                        grown[:fill] = cand[:fill]
                        cand = grown  # and run the segment again
                    total = [t + c[k] for k, t in enumerate(total)]
                    if not overflow:
                        fill = new
                return total, cand[:fill], overflow

            return run

        results = _run([job(g) for g in groups])
        tot = [sum(r[0][k] for r in results) for k in range(4)]
        found = results[0][1] if len(results) == 1 else torch.cat([r[1] for r in results])
        if any(r[2] for r in results) or tot[3] > cap:
            return selection.Counts(tot[0], tot[1], tot[2], tot[3], None, found)
        return selection.Counts(tot[0], tot[1], tot[2], tot[3], found)

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
    """The exact reference threshold in ~1 streaming pass (``sample_size``/``cand_cap``: tuning, tests)."""
    reference.check_score(score)
    _check_pairs(weights, grad_sums)
    lib = native.load()
    if lib is None:
        return reference.select_threshold(weights, grad_sums, n_select, score)
    total = sum(w.numel() for w in weights)
    size = selection.sample_size(total) if sample_size is None else min(total, sample_size)
    with torch.no_grad():
        return selection.find_threshold(
            n_select,
            total,
            lambda: sample_scores(weights, grad_sums, size, score),
            _count_collect(lib, weights, grad_sums, score),
            _cand_cap(weights) if cand_cap is None else cand_cap,
        )


def selection_masks(
    weights: Tensors, grad_sums: Tensors, threshold: Threshold, score: str = "snip"
) -> list[torch.Tensor]:
    """Boolean masks of the selected entries: materialises them, so it is the reference's."""
    return reference.selection_masks(weights, grad_sums, threshold, score)


# --------------------------------------------------------------------------- trimming

# dtypes whose values survive a float32 round trip (their entries can be edited in a float32 buffer)
_ROUND_TRIP = (torch.float32, torch.bfloat16, torch.float16)


def _write_torch(w: torch.Tensor, g: torch.Tensor, score: str, tau: float, take: int, fresh: torch.Tensor) -> None:
    """The write pass in torch ops, for dtypes a float32 buffer cannot hold (e.g. float64)."""
    s = reference.score_of(w, g, score)
    mask = s > tau
    if take:
        mask[torch.nonzero(s == tau).flatten()[:take]] = True
    if int(mask.sum()) != fresh.numel():
        raise RuntimeError("selected entries changed between the counting and the writing pass")
    w[mask] = fresh.to(w.dtype)



@torch.no_grad()
def masked_reinit_(
    weights: Tensors,
    grad_sums: Tensors,
    threshold: Threshold,
    inits: Sequence[InitSpec | None],
    generator: torch.Generator | None = None,
    score: str = "snip",
) -> int:
    """Re-initialise the selected entries of eligible tensors in place (same result as the reference)."""
    reference.check_score(score)
    _check_pairs(weights, grad_sums)
    if len(inits) != len(weights):
        raise ValueError(f"{len(weights)} weights but {len(inits)} init specs")
    lib = native.load()
    if lib is None:
        return reference.masked_reinit_(weights, grad_sums, threshold, inits, generator, score)
    device = weights[0].device if len(weights) else torch.device("cpu")
    fresh_gen = reference.fresh_generator(generator, device)  # always one draw, like the reference
    if threshold.n_selected == 0 or not any(i is not None for i in inits):
        return 0
    tau = threshold.tau
    numels = [w.numel() for w in weights]
    # Non-eligible tensors matter only while tied entries are still to be ranked.
    which = [i for i in range(len(weights)) if inits[i] is not None or threshold.take_ties > 0]
    segs = _segments(numels, which)
    flats_w = {i: _flat(weights[i]) for i in which}
    wv = {i: _F32(flats_w[i]) for i in which}
    gv = {i: _F32(_flat(grad_sums[i])) for i in which}
    grad = score == "grad"
    cw = {i: _UNREAD for i in which} if grad else wv  # the counting pass reads w only for snip

    # Pass 1: per segment, entries above tau and entries equal to tau.
    def count_job(group):
        def run():
            out = []
            bw, bg = (None, None) if all(cw[i].direct and gv[i].direct for i, _, _ in group) else _buffers()
            for i, a, b in group:
                counts = (ctypes.c_int64 * 2)()
                lib.sh_count_sel(cw[i].ptr(a, b, bw), gv[i].ptr(a, b, bg), b - a, grad, tau, ctypes.addressof(counts))
                out.append((counts[0], counts[1]))
            return out

        return run

    counted = [c for part in _run([count_job(g) for g in _split(segs, _threads())]) for c in part]

    # Ties go to the lowest global indices; then only eligible segments with work remain.
    ties_left = threshold.take_ties
    work = []  # (tensor, start, stop, ties to take, entries to write)
    for (i, a, b), (gt, eq) in zip(segs, counted):
        take = min(eq, ties_left)
        ties_left -= take
        if inits[i] is not None and gt + take > 0:
            work.append((i, a, b, take, gt + take))

    # Pass 2, in batches that bound the fresh-value buffer: draw in list order, write in parallel.
    cap = _cand_cap(weights)
    changed = 0
    start = 0
    while start < len(work):
        stop, m = start, 0
        while stop < len(work) and (stop == start or m + work[stop][4] <= cap):
            m += work[stop][4]
            stop += 1
        batch = work[start:stop]
        fresh = torch.empty(m, dtype=torch.float32)
        offsets, off = [], 0
        for i, _, _, _, k in batch:
            fresh[off : off + k].uniform_(inits[i].low, inits[i].high, generator=fresh_gen)
            offsets.append(off)
            off += k

        def write_job(items):
            def run():
                direct_all = all(wv[i].direct and gv[i].direct for (i, _, _, _, _), _ in items)
                bw, bg = (None, None) if direct_all else _buffers()
                for (i, a, b, take, k), off in items:
                    if flats_w[i].dtype not in _ROUND_TRIP:
                        _write_torch(flats_w[i][a:b], _flat(grad_sums[i])[a:b], score, tau, take, fresh[off : off + k])
                        continue
                    direct = wv[i].direct
                    wp = wv[i].ptr(a, b, bw)
                    got = lib.sh_write_sel(wp, gv[i].ptr(a, b, bg), b - a, grad, tau, take, fresh.data_ptr() + 4 * off)
                    if got != k:
                        raise RuntimeError(f"tensor {i} [{a}:{b}]: wrote {got} entries, counted {k}; inputs changed?")
                    if not direct:
                        flats_w[i][a:b].copy_(bw[: b - a])

            return run

        _run([write_job(g) for g in _split(list(zip(batch, offsets)), _threads(), lambda s: s[0][2] - s[0][1])])
        changed += m
        start = stop
    with torch.no_grad():
        for i in which:
            w = weights[i]
            if inits[i] is not None and not w.is_contiguous():
                w.copy_(flats_w[i].view_as(w))
    return changed


# --------------------------------------------------------------------------- projection


def _dots(lib, grads: Tensors, refs: Tensors) -> tuple[list[float], list[float]]:
    """Per tensor (<g, r>, <r, r>) in float64, one pass over g and r."""
    n = len(grads)
    gr, rr = [0.0] * n, [0.0] * n
    numels = [g.numel() for g in grads]
    segs = _segments(numels, seg=4 * SEG)
    gv = [_F32(_flat(g)) for g in grads]
    rv = [_F32(_flat(r)) for r in refs]

    def job(group):
        def run():
            out = []
            bg, br = _buffers(4 * SEG) if not all(gv[i].direct and rv[i].direct for i, _, _ in group) else (None, None)
            for i, a, b in group:
                acc = (ctypes.c_double * 2)()
                lib.sh_dots(gv[i].ptr(a, b, bg), rv[i].ptr(a, b, br), b - a, ctypes.addressof(acc))
                out.append((i, acc[0], acc[1]))
            return out

        return run

    for part in _run([job(g) for g in _split(segs, _threads())]):
        for i, a, b in part:
            gr[i] += a
            rr[i] += b
    return gr, rr


@torch.no_grad()
def project_(
    grads: Tensors,
    refs: Tensors,
    margin: float,
    eps: float = 1e-3,
    scope: str = "global",
) -> torch.Tensor:
    """GEM closed-form projection in place: dot products in one pass, the update in a second."""
    if scope not in ("global", "per_layer"):
        raise ValueError(f"scope={scope!r}: allowed global, per_layer")
    if len(grads) != len(refs):
        raise ValueError(f"{len(grads)} gradients but {len(refs)} references")
    for i, (g, r) in enumerate(zip(grads, refs)):
        if g.shape != r.shape:
            raise ValueError(f"gradient {i} has shape {tuple(g.shape)}, reference {tuple(r.shape)}")
    lib = native.load()
    if lib is None or any(t.dtype not in _ROUND_TRIP for t in (*grads, *refs)):
        return reference.project_(grads, refs, margin, eps, scope)  # e.g. float64: keep its precision
    gr_l, rr_l = _dots(lib, grads, refs)
    gr = torch.tensor(gr_l, dtype=torch.float64)
    rr = torch.tensor(rr_l, dtype=torch.float64)
    if scope == "global":
        gr, rr = gr.sum().reshape(1), rr.sum().reshape(1)
    coef = torch.where(gr < 0, torch.clamp(-gr / (rr + eps), min=margin), torch.zeros_like(gr))
    with torch.no_grad():
        if scope == "global":
            v = float(coef[0])
            if v != 0.0 and len(grads):
                torch._foreach_add_(list(grads), list(refs), alpha=v)
        else:
            for g, r, v in zip(grads, refs, coef.tolist()):
                if v != 0.0:
                    g.add_(r, alpha=v)
    return coef.float()
