"""Triton kernels of the ``triton`` backend (imported only when triton is installed).

Every kernel walks a *list* of tensors in one launch: a device table holds, per tensor,
two data pointers (int64 addresses), the number of entries and one extra int64; ``blk_off``
holds the cumulative number of BLOCK-sized blocks per tensor. Programs grid-stride over
the global block index and find each block's tensor by binary search in ``blk_off``. Full
blocks take an unmasked path (vectorised loads when ALIGNED: every base address is a
multiple of 16 bytes); the last block of a tensor takes the masked path.
Scores are ``|float32(w) * float32(g)|``, or ``|float32(g)|`` under the constexpr GRAD
(``score="grad"``: w is then not loaded), exactly as the reference computes them.
Under TRITON_INTERPRET=1 the same kernels run on CPU tensors.
Integer arguments are not specialised and LOG_T comes in buckets, so one compiled variant per
(kernel, dtypes, modes) serves every list.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _tensor_of(blk_off, blk, T, LOG_T: tl.constexpr):
    """The largest t in [0, T) with blk_off[t] <= blk."""
    lo = blk * 0
    hi = lo + T
    for _ in tl.static_range(LOG_T):
        mid = (lo + hi) // 2
        go = tl.load(blk_off + mid) <= blk
        lo = tl.where(go, mid, lo)
        hi = tl.where(go, hi, mid)
    return lo


@triton.jit
def _ptr(table, t, col: tl.constexpr, DT: tl.constexpr, ALIGNED: tl.constexpr):
    p = tl.load(table + t * 4 + col).to(tl.pointer_type(DT))
    if ALIGNED:
        p = tl.multiple_of(p, 16)
    return p


@triton.jit
def _where_am_i(table, blk_off, blk, T, LOG_T: tl.constexpr, BLOCK: tl.constexpr):
    t = _tensor_of(blk_off, blk, T, LOG_T)
    n = tl.load(table + t * 4 + 2)
    start = (blk - tl.load(blk_off + t)).to(tl.int64) * BLOCK
    return t, n, start


@triton.jit
def _load_f32(p, offs, m, FULL: tl.constexpr):
    if FULL:
        x = tl.load(p + offs)
    else:
        x = tl.load(p + offs, mask=m, other=0.0)
    return x.to(tl.float32)


@triton.jit
def _score(wp, gp, offs, m, FULL: tl.constexpr, GRAD: tl.constexpr):
    """|w * g|, or |g| when GRAD (w not loaded), at offs; m masks the loads unless FULL."""
    g = _load_f32(gp, offs, m, FULL)
    if GRAD:
        s = tl.abs(g)
    else:
        s = tl.abs(_load_f32(wp, offs, m, FULL) * g)
    return s


@triton.jit
def _scores(wp, gp, offs, n, FULL: tl.constexpr, GRAD: tl.constexpr):
    """Scores of one block; -1 where the block runs past the tensor (below every bracket)."""
    if FULL:
        s = _score(wp, gp, offs, None, True, GRAD)
    else:
        m = offs < n
        s = tl.where(m, _score(wp, gp, offs, m, False, GRAD), -1.0)
    return s


# ----------------------------------------------------------------------------- accumulate


@triton.jit
def _acc_term(g, SQUARE: tl.constexpr):
    g = g.to(tl.float32)
    if SQUARE:
        t = g * g
    else:
        t = tl.abs(g)
    return t


@triton.jit
def _acc_block(bp, gp, offs, n, FULL: tl.constexpr, SQUARE: tl.constexpr):
    if FULL:
        b = tl.load(bp + offs)
        g = tl.load(gp + offs)
        tl.store(bp + offs, (b.to(tl.float32) + _acc_term(g, SQUARE)).to(b.dtype))
    else:
        m = offs < n
        b = tl.load(bp + offs, mask=m, other=0.0)
        g = tl.load(gp + offs, mask=m, other=0.0)
        tl.store(bp + offs, (b.to(tl.float32) + _acc_term(g, SQUARE)).to(b.dtype), mask=m)


@triton.jit(do_not_specialize=["n_blocks", "T"])
def acc_kernel(table, blk_off, n_blocks, T, A_T: tl.constexpr, B_T: tl.constexpr,
               LOG_T: tl.constexpr, BLOCK: tl.constexpr, ALIGNED: tl.constexpr, SQUARE: tl.constexpr):
    """table: (buffer, gradient, numel, -): buffer += |gradient|, or gradient ** 2 when SQUARE
    (launch without fp fusion: the reference rounds the square before the add)."""
    for blk in range(tl.program_id(0), n_blocks, tl.num_programs(0)):
        t, n, start = _where_am_i(table, blk_off, blk, T, LOG_T, BLOCK)
        bp = _ptr(table, t, 0, A_T, ALIGNED)
        gp = _ptr(table, t, 1, B_T, ALIGNED)
        offs = start + tl.arange(0, BLOCK)
        if start + BLOCK <= n:
            _acc_block(bp, gp, offs, n, True, SQUARE)
        else:
            _acc_block(bp, gp, offs, n, False, SQUARE)


# ----------------------------------------------------------------------------- selection


@triton.jit(do_not_specialize=["T", "first", "stride", "n_samples"])
def sample_kernel(table, cum, T, first, stride, n_samples, out,
                  A_T: tl.constexpr, B_T: tl.constexpr, LOG_T: tl.constexpr, SBLOCK: tl.constexpr,
                  GRAD: tl.constexpr):
    """out[j] = score at run-local flat position first + j * stride (cum: entries before each tensor)."""
    j = tl.program_id(0).to(tl.int64) * SBLOCK + tl.arange(0, SBLOCK)
    valid = j < n_samples
    pos = first + j * stride
    lo = tl.zeros([SBLOCK], tl.int32)
    hi = lo + T
    for _ in tl.static_range(LOG_T):
        mid = (lo + hi) // 2
        go = tl.load(cum + mid) <= pos
        lo = tl.where(go, mid, lo)
        hi = tl.where(go, hi, mid)
    local = pos - tl.load(cum + lo)
    wp = tl.load(table + lo * 4 + 0).to(tl.pointer_type(A_T))
    gp = tl.load(table + lo * 4 + 1).to(tl.pointer_type(B_T))
    tl.store(out + j, _score(wp, gp, local, valid, False, GRAD), mask=valid)


@triton.jit
def _cc_block(wp, gp, offs, n, lo, hi, cand, fill, cap, gt, eqh, eql, ins, FULL: tl.constexpr,
              GRAD: tl.constexpr):
    s = _scores(wp, gp, offs, n, FULL, GRAD)
    gt += tl.sum((s > hi).to(tl.int32), 0).to(tl.int64)
    eqh += tl.sum((s == hi).to(tl.int32), 0).to(tl.int64)
    eql += tl.sum(((s == lo) & (lo < hi)).to(tl.int32), 0).to(tl.int64)
    inside = (s > lo) & (s < hi)
    rank = tl.cumsum(inside.to(tl.int32), 0)
    dest = fill + rank - 1
    tl.store(cand + dest, s, mask=inside & (dest < cap))
    k = tl.sum(inside.to(tl.int32), 0)
    return fill + k, gt, eqh, eql, ins + k.to(tl.int64)


@triton.jit(do_not_specialize=["n_blocks", "T", "cap"])
def count_collect_kernel(table, blk_off, n_blocks, T, lo, hi, counts, cand, cap,
                         A_T: tl.constexpr, B_T: tl.constexpr, LOG_T: tl.constexpr,
                         BLOCK: tl.constexpr, ALIGNED: tl.constexpr, GRAD: tl.constexpr):
    """Per program p: counts[p] = (#s>hi, #s==hi, #s==lo (lo<hi), #lo<s<hi, fill); the values
    lo < s < hi go to cand[p*cap : p*cap + min(fill, cap)]."""
    pid = tl.program_id(0)
    region = cand + pid.to(tl.int64) * cap
    fill = pid * 0
    gt = tl.zeros((), tl.int64)
    eqh = tl.zeros((), tl.int64)
    eql = tl.zeros((), tl.int64)
    ins = tl.zeros((), tl.int64)
    for blk in range(pid, n_blocks, tl.num_programs(0)):
        t, n, start = _where_am_i(table, blk_off, blk, T, LOG_T, BLOCK)
        wp = _ptr(table, t, 0, A_T, ALIGNED)
        gp = _ptr(table, t, 1, B_T, ALIGNED)
        offs = start + tl.arange(0, BLOCK)
        if start + BLOCK <= n:
            fill, gt, eqh, eql, ins = _cc_block(wp, gp, offs, n, lo, hi, region, fill, cap, gt, eqh, eql, ins,
                                                True, GRAD)
        else:
            fill, gt, eqh, eql, ins = _cc_block(wp, gp, offs, n, lo, hi, region, fill, cap, gt, eqh, eql, ins,
                                                False, GRAD)
    base = counts + pid * 5
    tl.store(base + 0, gt)
    tl.store(base + 1, eqh)
    tl.store(base + 2, eql)
    tl.store(base + 3, ins)
    tl.store(base + 4, fill.to(tl.int64))


# ----------------------------------------------------------------------------- trimming


@triton.jit(do_not_specialize=["n_blocks", "T"])
def tie_count_kernel(table, blk_off, n_blocks, T, tau, out,
                     A_T: tl.constexpr, B_T: tl.constexpr, LOG_T: tl.constexpr,
                     BLOCK: tl.constexpr, ALIGNED: tl.constexpr, GRAD: tl.constexpr):
    """out[blk] = #(s == tau) in block blk."""
    for blk in range(tl.program_id(0), n_blocks, tl.num_programs(0)):
        t, n, start = _where_am_i(table, blk_off, blk, T, LOG_T, BLOCK)
        wp = _ptr(table, t, 0, A_T, ALIGNED)
        gp = _ptr(table, t, 1, B_T, ALIGNED)
        offs = start + tl.arange(0, BLOCK)
        if start + BLOCK <= n:
            s = _scores(wp, gp, offs, n, True, GRAD)
        else:
            s = _scores(wp, gp, offs, n, False, GRAD)
        tl.store(out + blk, tl.sum((s == tau).to(tl.int32), 0).to(tl.int64))


@triton.jit
def _trim_block(wp, gp, offs, n, tau, ties_before, take_ties, seed, low, high, TIES: tl.constexpr,
                FULL: tl.constexpr, GRAD: tl.constexpr):
    s = _scores(wp, gp, offs, n, FULL, GRAD)
    sel = s > tau
    if TIES == 1:
        sel = sel | (s == tau)
    if TIES == 2:
        eq = s == tau
        rank = ties_before + tl.cumsum(eq.to(tl.int64), 0) - 1
        sel = sel | (eq & (rank < take_ties))
    u = tl.rand(seed, offs.to(tl.int32))
    fresh = low + (high - low) * u
    tl.store(wp + offs, fresh.to(wp.dtype.element_ty), mask=sel)
    return tl.sum(sel.to(tl.int32), 0).to(tl.int64)


@triton.jit(do_not_specialize=["n_blocks", "T", "take_ties"])
def trim_kernel(table, blk_off, n_blocks, T, tau, take_ties, ties_before, seeds, bounds, changed,
                A_T: tl.constexpr, B_T: tl.constexpr, LOG_T: tl.constexpr, BLOCK: tl.constexpr,
                ALIGNED: tl.constexpr, TIES: tl.constexpr, GRAD: tl.constexpr):
    """table: (weight, score gradient, numel, eligible). Selected entries of eligible tensors
    get low + (high - low) * rand(seed[t], index); TIES: 0 none, 1 every s == tau, 2 the first
    take_ties by global rank (ties_before[blk]: ties in earlier blocks)."""
    pid = tl.program_id(0)
    total = tl.zeros((), tl.int64)
    for blk in range(pid, n_blocks, tl.num_programs(0)):
        t, n, start = _where_am_i(table, blk_off, blk, T, LOG_T, BLOCK)
        if tl.load(table + t * 4 + 3) != 0:
            wp = _ptr(table, t, 0, A_T, ALIGNED)
            gp = _ptr(table, t, 1, B_T, ALIGNED)
            seed = tl.load(seeds + t)
            low = tl.load(bounds + 2 * t)
            high = tl.load(bounds + 2 * t + 1)
            before = 0
            if TIES == 2:
                before = tl.load(ties_before + blk)
            offs = start + tl.arange(0, BLOCK)
            if start + BLOCK <= n:
                total += _trim_block(wp, gp, offs, n, tau, before, take_ties, seed, low, high, TIES, True, GRAD)
            else:
                total += _trim_block(wp, gp, offs, n, tau, before, take_ties, seed, low, high, TIES, False, GRAD)
    tl.store(changed + pid, total)


# ----------------------------------------------------------------------------- projection


@triton.jit
def _dots_block(gp, rp, offs, n, FULL: tl.constexpr):
    if FULL:
        g = tl.load(gp + offs).to(tl.float32)
        r = tl.load(rp + offs).to(tl.float32)
    else:
        m = offs < n
        g = tl.load(gp + offs, mask=m, other=0.0).to(tl.float32)
        r = tl.load(rp + offs, mask=m, other=0.0).to(tl.float32)
    return tl.sum(g * r, 0), tl.sum(r * r, 0)


@triton.jit(do_not_specialize=["n_blocks", "T"])
def dots_kernel(table, blk_off, n_blocks, T, out,
                A_T: tl.constexpr, B_T: tl.constexpr, LOG_T: tl.constexpr,
                BLOCK: tl.constexpr, ALIGNED: tl.constexpr):
    """table: (g, r, numel, -): out[blk] = (<g, r>, <r, r>) over block blk, float32 sums stored as float64."""
    for blk in range(tl.program_id(0), n_blocks, tl.num_programs(0)):
        t, n, start = _where_am_i(table, blk_off, blk, T, LOG_T, BLOCK)
        gp = _ptr(table, t, 0, A_T, ALIGNED)
        rp = _ptr(table, t, 1, B_T, ALIGNED)
        offs = start + tl.arange(0, BLOCK)
        if start + BLOCK <= n:
            gr, rr = _dots_block(gp, rp, offs, n, True)
        else:
            gr, rr = _dots_block(gp, rp, offs, n, False)
        tl.store(out + 2 * blk, gr.to(tl.float64))
        tl.store(out + 2 * blk + 1, rr.to(tl.float64))


@triton.jit
def _axpy_block(gp, rp, offs, n, v, FULL: tl.constexpr):
    if FULL:
        g = tl.load(gp + offs)
        r = tl.load(rp + offs)
        tl.store(gp + offs, (g.to(tl.float32) + v * r.to(tl.float32)).to(g.dtype))
    else:
        m = offs < n
        g = tl.load(gp + offs, mask=m, other=0.0)
        r = tl.load(rp + offs, mask=m, other=0.0)
        tl.store(gp + offs, (g.to(tl.float32) + v * r.to(tl.float32)).to(g.dtype), mask=m)


@triton.jit(do_not_specialize=["n_blocks", "T"])
def axpy_kernel(table, blk_off, n_blocks, T, coef,
                A_T: tl.constexpr, B_T: tl.constexpr, LOG_T: tl.constexpr, BLOCK: tl.constexpr,
                ALIGNED: tl.constexpr, PER_TENSOR: tl.constexpr):
    """table: (g, r, numel, -): g += coef[t] * r (coef[0] for every tensor unless PER_TENSOR); skipped where 0."""
    for blk in range(tl.program_id(0), n_blocks, tl.num_programs(0)):
        t, n, start = _where_am_i(table, blk_off, blk, T, LOG_T, BLOCK)
        if PER_TENSOR:
            v = tl.load(coef + t).to(tl.float32)
        else:
            v = tl.load(coef).to(tl.float32)
        if v != 0.0:
            gp = _ptr(table, t, 0, A_T, ALIGNED)
            rp = _ptr(table, t, 1, B_T, ALIGNED)
            offs = start + tl.arange(0, BLOCK)
            if start + BLOCK <= n:
                _axpy_block(gp, rp, offs, n, v, True)
            else:
                _axpy_block(gp, rp, offs, n, v, False)


# ----------------------------------------------------------------------------- bandwidth floor


@triton.jit
def _stream_block(ap, bp, offs, n, FULL: tl.constexpr):
    if FULL:
        a = tl.load(ap + offs).to(tl.float32)
        b = tl.load(bp + offs).to(tl.float32)
    else:
        m = offs < n
        a = tl.load(ap + offs, mask=m, other=0.0).to(tl.float32)
        b = tl.load(bp + offs, mask=m, other=0.0).to(tl.float32)
    return tl.sum(a + b, 0)


@triton.jit(do_not_specialize=["n_blocks", "T"])
def stream_kernel(table, blk_off, n_blocks, T, out,
                  A_T: tl.constexpr, B_T: tl.constexpr, LOG_T: tl.constexpr,
                  BLOCK: tl.constexpr, ALIGNED: tl.constexpr):
    """The floor: read both tensors of every pair once (out[p] = a partial sum, to keep the loads)."""
    acc = tl.zeros((), tl.float32)
    for blk in range(tl.program_id(0), n_blocks, tl.num_programs(0)):
        t, n, start = _where_am_i(table, blk_off, blk, T, LOG_T, BLOCK)
        ap = _ptr(table, t, 0, A_T, ALIGNED)
        bp = _ptr(table, t, 1, B_T, ALIGNED)
        offs = start + tl.arange(0, BLOCK)
        if start + BLOCK <= n:
            acc += _stream_block(ap, bp, offs, n, True)
        else:
            acc += _stream_block(ap, bp, offs, n, False)
    tl.store(out + tl.program_id(0), acc)
