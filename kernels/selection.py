"""Exact global top-n threshold without a concatenated score vector (shared by fused and triton).

Scores (``|w * G|`` or ``|G|``, see :mod:`kernels.reference`) are non-negative float32, so
they order like the int32 bit patterns ("keys") of their values. The search needs only two
device-specific primitives:

* ``sample()``: a systematic sample of the scores (every ``stride``-th entry of the
  concatenated order, computed on the fly): a 1-D float32 tensor of a few 10^4-10^5 values;
* ``count_collect(lo, hi, cap)``: one streaming pass returning ``#(s > hi)``, ``#(s == hi)``,
  ``#(s == lo)`` (0 when lo == hi), ``#(lo < s < hi)`` and the values strictly between lo
  and hi (all of them when at most ``cap``; else ``cand`` is None and ``partial`` holds
  some of them).

Algorithm (Floyd-Rivest style): the sample's quantiles give a bracket [lo, hi] that contains
tau with high probability (3 sigma either side of the expected sample rank) and holds
about ``6 sqrt(q (1 - q) / S)`` of all entries; one pass counts what lies above, on and
inside the bracket; tau is then ``hi``, ``lo`` or an order statistic of the few collected
values. If the sample misled (tau outside the bracket, or too many values inside), the
known key range of tau and the counts above and below it tighten, and the next bracket
comes from the values known in that range (the sample, or the partial candidates), or,
after two such tries, from halving the key range (so at most ~32 more passes in the worst
case; normally none). Every answer is exact; the sample only decides the speed.
Ties follow the reference's rule (``take_ties = n - #(s > tau)``).
NaN scores are not supported (they are neither counted nor selected).
"""
from __future__ import annotations

import math
import struct
from typing import Callable, NamedTuple

import torch

from kernels.reference import Threshold

INF_KEY = 0x7F800000  # bit pattern of float32 +inf, the largest non-NaN key


def f32_key(x: float) -> int:
    """The int32 bit pattern of float32(x) for x >= 0."""
    return struct.unpack("<i", struct.pack("<f", x))[0]


def key_f32(k: int) -> float:
    return struct.unpack("<f", struct.pack("<i", k))[0]


class Counts(NamedTuple):
    gt: int  # s > hi
    eq_hi: int  # s == hi
    eq_lo: int  # s == lo (0 when lo == hi)
    inside: int  # lo < s < hi
    cand: torch.Tensor | None  # the values lo < s < hi, or None when more than cap
    partial: torch.Tensor | None = None  # when cand is None: some of those values


def sample_size(total: int) -> int:
    """How many scores the bracket sample holds: ~1/256 of them, within [4096, 2**17]."""
    return min(total, max(4096, min(1 << 17, total // 256)))


def sample_plan(numels: list[int], size: int) -> tuple[int, list[int]]:
    """Global stride and, per tensor, the first flat index that is a multiple of it globally."""
    total = sum(numels)
    stride = max(1, -(-total // max(1, size)))
    starts, cum = [], 0
    for n in numels:
        starts.append((-cum) % stride)
        cum += n
    return stride, starts


def _kth_largest(values: torch.Tensor, ranks: list[int]) -> list[float]:
    """The r-th largest (1-based) of a 1-D float32 tensor, for each r (one device sync)."""
    size = values.numel()
    if values.device.type == "cpu":
        return [float(torch.kthvalue(values, size - r + 1).values) for r in ranks]
    desc = torch.sort(values, descending=True).values
    return desc[torch.tensor([r - 1 for r in ranks], device=values.device)].tolist()


def guided_bracket(values: torch.Tensor | None, low: int, high: int, rank: int, count: int) -> tuple[int, int] | None:
    """A bracket for the rank-th largest (1-based) of ``count`` scores with keys in [low, high],
    from the known ``values`` in that range (None when fewer than 2 are known)."""
    if values is None or values.numel() == 0 or count <= 0:
        return None
    v = values[(values >= key_f32(low)) & (values <= key_f32(high))]
    size = v.numel()
    if size < 2:
        return None
    if size == count:  # every value in the range is known: tau exactly
        k = f32_key(_kth_largest(v, [rank])[0])
        return k, k
    q = min(1.0, max(0.0, rank / count))
    r = q * size
    margin = 3.0 * math.sqrt(size * q * (1.0 - q)) + 2.0
    r_hi, r_lo = math.floor(r - margin), math.ceil(r + margin)
    ranks = [x for x in (r_hi, r_lo) if 1 <= x <= size]
    vals = dict(zip(ranks, _kth_largest(v, ranks))) if ranks else {}
    hi = f32_key(vals[r_hi]) if r_hi in vals else high
    lo = f32_key(vals[r_lo]) if r_lo in vals else low
    return min(lo, hi), hi


def bracket(sample: torch.Tensor, n: int, total: int) -> tuple[int, int]:
    """Keys (lo, hi) around the expected position of the n-th largest score."""
    return guided_bracket(sample, 0, INF_KEY, n, total) or (0, INF_KEY)


def find_threshold(
    n: int,
    total: int,
    sample: Callable[[], torch.Tensor],
    count_collect: Callable[[float, float, int], Counts],
    cap: int,
    info: dict | None = None,
) -> Threshold:
    """The exact threshold selecting n of total scores (see the module docstring).

    ``info``, when given, receives ``n_tied`` (how many scores equal tau) and ``passes``.
    """
    info = {} if info is None else info
    if not 0 <= n <= total:
        raise ValueError(f"n_select={n} must be within [0, {total}]")
    if n == 0:
        return Threshold(tau=float("inf"), take_ties=0, n_selected=0)
    # tau's key lies in [low, high]; `above` scores have keys > high, `below` keys < low.
    low, high, above, below = 0, INF_KEY, 0, 0
    guide: torch.Tensor | None = sample()
    lo, hi = bracket(guide, n, total)
    misses = 0
    for passes in range(1, 100):
        lo, hi = max(lo, low), min(hi, high)
        if lo > hi:
            raise RuntimeError("threshold search lost its bracket; did the scores change during the search?")
        c = count_collect(key_f32(lo), key_f32(hi), cap)
        info["passes"] = passes
        eq_lo = c.eq_lo if lo < hi else 0
        inside = c.inside if lo < hi else 0
        if n <= c.gt:  # tau > hi
            low, below = hi + 1, total - c.gt
        elif n <= c.gt + c.eq_hi:
            info["n_tied"] = c.eq_hi
            return Threshold(key_f32(hi), n - c.gt, n)
        elif n <= c.gt + c.eq_hi + inside:
            if c.cand is not None:
                tau = _kth_largest(c.cand, [n - c.gt - c.eq_hi])[0]
                above_tied = torch.stack([(c.cand > tau).sum(), (c.cand == tau).sum()]).tolist()
                info["n_tied"] = above_tied[1]
                return Threshold(tau, n - c.gt - c.eq_hi - above_tied[0], n)
            low, high = lo + 1, hi - 1
            above, below = c.gt + c.eq_hi, total - c.gt - c.eq_hi - inside
            guide = c.partial
        elif n <= c.gt + c.eq_hi + inside + eq_lo:
            info["n_tied"] = eq_lo
            return Threshold(key_f32(lo), n - (c.gt + c.eq_hi + inside), n)
        else:  # tau < lo
            high, above = lo - 1, c.gt + c.eq_hi + inside + eq_lo
        misses += 1
        nxt = guided_bracket(guide, low, high, n - above, total - above - below) if misses % 3 else None
        if nxt is None:  # halve the key range
            nxt = ((low + high + 1) // 2, high)
        lo, hi = nxt
    raise RuntimeError("threshold search did not converge")
