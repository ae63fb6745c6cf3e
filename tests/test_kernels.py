"""Kernels: every backend against the reference (the oracle), property-based.

CPU only (the fused backend); the triton backend is tested in test_kernels_triton.py.
Imports only torch, numpy, hypothesis, pytest and ``kernels``.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kernels
from kernels import fused, native, reference, selection
from kernels.reference import InitSpec, Threshold

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = settings(max_examples=100, deadline=None)

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SCORES = kernels.SCORES
ACCUMULATE = {"abs": (reference.accumulate_abs_grad_, fused.accumulate_abs_grad_),
              "sq": (reference.accumulate_sq_grad_, fused.accumulate_sq_grad_)}


def plain_scores(ws, gs, score):
    """The scores written out independently of the kernels."""
    return [(g.float().abs() if score == "grad" else (w.float() * g.float()).abs()) for w, g in zip(ws, gs)]


# ----------------------------------------------------------------------------- strategies


@st.composite
def tensor_lists(draw, max_tensors=6, max_side=40):
    """Lists of (weights, score sums): random shapes (some empty), dtypes and tie structure."""
    n = draw(st.integers(1, max_tensors))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    ties = draw(st.sampled_from(["none", "some", "heavy", "zeros"]))
    w_dtype = draw(st.sampled_from(DTYPES))
    g_dtype = draw(st.sampled_from([torch.float32, w_dtype]))
    ws, gs = [], []
    for _ in range(n):
        dims = draw(st.lists(st.integers(0 if draw(st.booleans()) and n > 1 else 1, max_side), min_size=1, max_size=3))
        w = torch.randn(dims, generator=gen)
        g = torch.rand(dims, generator=gen) * 3
        if ties == "some":
            w = torch.round(w * 8) / 8
            g = torch.round(g * 8) / 8
        elif ties == "heavy":
            w = torch.round(w)
            g = torch.round(g)
        elif ties == "zeros":
            w = torch.where(torch.rand(dims, generator=gen) < 0.5, torch.zeros(dims), w)
            g = torch.where(torch.rand(dims, generator=gen) < 0.3, torch.zeros(dims), g)
        ws.append(w.to(w_dtype))
        gs.append(g.to(g_dtype))
    if sum(w.numel() for w in ws) == 0:
        ws.append(torch.randn(3, generator=gen).to(w_dtype))
        gs.append(torch.rand(3, generator=gen).to(g_dtype))
    return ws, gs


def n_selects(total: int):
    return st.one_of(st.sampled_from([0, 1, total - 1, total]), st.integers(0, total)).map(
        lambda k: min(max(k, 0), total)
    )


def inits_for(draw, ws):
    kinds = st.sampled_from(["none", "uniform", "zeros"])
    out = []
    for _ in ws:
        k = draw(kinds)
        out.append(None if k == "none" else InitSpec(0.0, 0.0) if k == "zeros" else InitSpec(-0.5, 0.25))
    return out


def same_threshold(a: Threshold, b: Threshold) -> bool:
    return (
        torch.tensor(a.tau, dtype=torch.float32).item() == torch.tensor(b.tau, dtype=torch.float32).item()
        and a.take_ties == b.take_ties
        and a.n_selected == b.n_selected
    )


# Tuning that forces the rare paths: tiny samples (misleading brackets) and tiny candidate caps
# (bisection of the key range).
SEARCH_KNOBS = [{}, {"sample_size": 3, "cand_cap": 4}, {"sample_size": 50, "cand_cap": 1}]


# ----------------------------------------------------------------------------- selection


@pytest.mark.parametrize("score", SCORES)
@SETTINGS
@given(data=st.data())
def test_fused_threshold_is_the_reference_threshold_bit_for_bit(score, data):
    ws, gs = data.draw(tensor_lists())
    total = sum(w.numel() for w in ws)
    n = data.draw(n_selects(total))
    knobs = data.draw(st.sampled_from(SEARCH_KNOBS))
    want = reference.select_threshold(ws, gs, n, score)
    got = fused.select_threshold(ws, gs, n, score, **knobs)
    assert same_threshold(got, want), (got, want)
    masks = reference.selection_masks(ws, gs, got, score)
    assert sum(int(m.sum()) for m in masks) == n  # exactly n selected
    fused_masks = fused.selection_masks(ws, gs, got, score)
    assert all(torch.equal(a, b) for a, b in zip(masks, fused_masks))


@pytest.mark.parametrize("score", SCORES)
@SETTINGS
@given(data=st.data())
def test_threshold_selects_exactly_the_top_n_with_ties_to_the_lowest_index(score, data):
    ws, gs = data.draw(tensor_lists(max_tensors=4, max_side=12))
    total = sum(w.numel() for w in ws)
    n = data.draw(n_selects(total))
    th = kernels.select_threshold(ws, gs, n, score=score)
    flat = torch.cat([s.flatten() for s in plain_scores(ws, gs, score)])
    mask = torch.cat([m.flatten() for m in kernels.selection_masks(ws, gs, th, score=score)])
    assert int(mask.sum()) == n
    if 0 < n < total:
        assert flat[mask].min() >= flat[~mask].max()
    # Ties: the selected entries equal to tau are the lowest global indices among the ties.
    tied = torch.nonzero(flat == th.tau).flatten()
    taken = torch.nonzero(mask & (flat == th.tau)).flatten()
    assert torch.equal(taken, tied[: th.take_ties])


@SETTINGS
@given(data=st.data(), backend=st.sampled_from(["reference", "fused"]))
def test_grad_score_selects_the_top_n_gradients_whatever_the_weights(data, backend):
    """score="grad": the n largest |G| (ties to the lowest index); weight values never enter,
    not even NaN or inf ones, in the threshold, the masks or the re-initialisation."""
    ws, gs = data.draw(tensor_lists(max_tensors=4, max_side=12))
    total = sum(w.numel() for w in ws)
    n = data.draw(n_selects(total))
    fill = data.draw(st.sampled_from([float("nan"), float("inf"), 0.0]))
    other = [torch.full_like(w, fill) for w in ws]
    th = kernels.select_threshold(ws, gs, n, backend=backend, score="grad")
    assert th == kernels.select_threshold(other, gs, n, backend=backend, score="grad")
    flat = torch.cat([g.float().abs().flatten() for g in gs])
    want = torch.zeros(total, dtype=torch.bool)
    want[torch.sort(flat, descending=True, stable=True).indices[:n]] = True
    for w in (ws, other):
        got = torch.cat([m.flatten() for m in kernels.selection_masks(w, gs, th, backend=backend, score="grad")])
        assert torch.equal(got, want)
    a, b = [w.clone() for w in ws], [w.clone() for w in other]
    inits = [InitSpec(-0.5, 0.25)] * len(ws)
    for w in (a, b):
        kernels.masked_reinit_(w, gs, th, inits, torch.Generator().manual_seed(3), backend=backend, score="grad")
    a_flat, b_flat = torch.cat([x.flatten() for x in a]), torch.cat([x.flatten() for x in b])
    assert torch.equal(a_flat[want], b_flat[want])  # the same fresh values in the same places
    untouched = torch.cat([x.flatten() for x in other])[~want]
    torch.testing.assert_close(b_flat[~want], untouched, rtol=0, atol=0, equal_nan=True)


def reference_code_masks(ws, gs, trim_ratio, score="snip"):
    """The published code's cut, verbatim in spirit: concatenate, kthvalue, guard, s > tau."""
    s = plain_scores(ws, gs, score)
    flat = torch.cat([t.flatten() for t in s])
    k = min(max(int((1 - trim_ratio) * flat.numel()), 1), flat.numel())
    tau = flat.kthvalue(k).values
    if tau >= flat.max() - 1e-12 or tau <= flat.min() + 1e-12:
        tau = (flat.max() - flat.min()) / 2.0
    return [t > tau for t in s]


@pytest.mark.parametrize("score", SCORES)
@SETTINGS
@given(data=st.data())
def test_snip_threshold_selects_what_the_reference_code_selects(score, data):
    ws, gs = data.draw(tensor_lists())
    trim = data.draw(st.sampled_from([0.001, 0.03, 0.1, 0.5, 0.97]))
    want = reference_code_masks(ws, gs, trim, score)
    for backend in ("reference", "fused"):
        th = kernels.snip_threshold(ws, gs, trim, backend=backend, score=score)
        got = kernels.selection_masks(ws, gs, th, backend=backend, score=score)
        assert th.take_ties == 0 and th.n_selected == sum(int(m.sum()) for m in want)
        for g, w in zip(got, want):
            assert torch.equal(g, w)


def test_snip_threshold_guard_when_most_scores_are_zero():
    ws = [torch.tensor([0.0] * 98 + [1.0, 3.0])]
    gs = [torch.ones(100)]
    th = kernels.snip_threshold(ws, gs, 0.03)  # k-th smallest is 0 = the minimum: guard
    assert th.tau == 1.5 and th.n_selected == 1


def test_threshold_edges_and_errors():
    ws = [torch.tensor([3.0, 1.0, 2.0]), torch.tensor([[2.0, 5.0]])]
    gs = [torch.ones(3), torch.ones(1, 2)]
    for backend in ("reference", "fused"):
        assert kernels.select_threshold(ws, gs, 0, backend=backend) == Threshold(float("inf"), 0, 0)
        assert kernels.select_threshold(ws, gs, 1, backend=backend) == Threshold(5.0, 1, 1)
        # 2.0 appears twice (index 2, then index 3): selecting 3 takes the first of the tie.
        assert kernels.select_threshold(ws, gs, 3, backend=backend) == Threshold(2.0, 1, 3)
        assert kernels.select_threshold(ws, gs, 5, backend=backend) == Threshold(1.0, 1, 5)
        with pytest.raises(ValueError, match="n_select=6"):
            kernels.select_threshold(ws, gs, 6, backend=backend)
        with pytest.raises(ValueError, match="n_select=-1"):
            kernels.select_threshold(ws, gs, -1, backend=backend)
    masks = kernels.selection_masks(ws, gs, Threshold(2.0, 1, 3))
    assert [m.tolist() for m in masks] == [[True, False, True], [[False, True]]]


@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_unknown_score_is_an_error(backend):
    ws, gs = [torch.tensor([3.0, 1.0, 2.0])], [torch.ones(3)]
    th = Threshold(2.0, 0, 1)
    allowed = r"score='fisher' is unknown; allowed: snip, grad"
    calls = [
        lambda: kernels.select_threshold(ws, gs, 1, backend=backend, score="fisher"),
        lambda: kernels.snip_threshold(ws, gs, 0.5, backend=backend, score="fisher"),
        lambda: kernels.selection_masks(ws, gs, th, backend=backend, score="fisher"),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=allowed):
            call()
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    with pytest.raises(ValueError, match=allowed):
        kernels.masked_reinit_(ws, gs, th, [InitSpec(0.0, 0.0)], gen, backend=backend, score="fisher")
    assert torch.equal(gen.get_state(), state) and ws[0].tolist() == [3.0, 1.0, 2.0]  # nothing consumed or changed


def test_all_scores_tied_and_infinite_scores():
    ws = [torch.zeros(7), torch.zeros(2, 3)]
    gs = [torch.ones(7), torch.ones(2, 3)]
    for n in range(14):
        assert fused.select_threshold(ws, gs, n, cand_cap=1) == reference.select_threshold(ws, gs, n)
    ws = [torch.tensor([1.0, float("inf"), 2.0, float("inf")])]
    gs = [torch.ones(4)]
    for n in range(5):
        assert fused.select_threshold(ws, gs, n) == reference.select_threshold(ws, gs, n)
        assert fused.select_threshold(gs, ws, n, "grad") == reference.select_threshold(gs, ws, n, "grad")


@pytest.mark.parametrize("score", SCORES)
def test_select_on_non_contiguous_and_mixed_dtype_lists(score):
    gen = torch.Generator().manual_seed(0)
    ws = [torch.randn(30, 20, generator=gen).t(), torch.randn(50, generator=gen).half(), torch.randn(7, 3, generator=gen)[:, 1]]
    gs = [torch.rand(20, 30, generator=gen), torch.rand(50, generator=gen), torch.rand(7, generator=gen).bfloat16()]
    total = sum(w.numel() for w in ws)
    for n in (1, 17, total // 2, total):
        want = reference.select_threshold(ws, gs, n, score)
        assert fused.select_threshold(ws, gs, n, score, sample_size=20, cand_cap=8) == want


@pytest.mark.parametrize("score", SCORES)
def test_larger_list_takes_the_one_pass_path(score):
    """Tens of thousands of entries over several threads: the sample brackets tau, one pass finds it."""
    gen = torch.Generator().manual_seed(1)
    shapes = [(64, 3, 3, 3), (64,), (128, 64, 3, 3), (128,), (256, 128, 3, 3), (10, 256)]
    ws = [torch.randn(s, generator=gen) for s in shapes]
    gs = [torch.rand(s, generator=gen) for s in shapes]
    total = sum(w.numel() for w in ws)
    calls = []
    orig = fused._count_collect

    def spy(*a):
        cc = orig(*a)

        def wrapped(lo, hi, cap):
            calls.append((lo, hi))
            return cc(lo, hi, cap)

        return wrapped

    fused._count_collect = spy
    try:
        for ratio in (0.001, 0.03, 0.5, 0.97):
            n = int(ratio * total)
            calls.clear()
            assert fused.select_threshold(ws, gs, n, score) == reference.select_threshold(ws, gs, n, score)
            assert len(calls) == 1, calls
    finally:
        fused._count_collect = orig


# ----------------------------------------------------------------------------- trimming


@pytest.mark.parametrize("score", SCORES)
@SETTINGS
@given(data=st.data())
def test_fused_reinit_is_bit_identical_to_the_reference(score, data):
    ws, gs = data.draw(tensor_lists())
    total = sum(w.numel() for w in ws)
    n = data.draw(n_selects(total))
    inits = inits_for(data.draw, ws)
    seed = data.draw(st.integers(0, 1000))
    th = reference.select_threshold(ws, gs, n, score)
    a = [w.clone() for w in ws]
    b = [w.clone() for w in ws]
    gen_a, gen_b = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    changed_a = reference.masked_reinit_(a, gs, th, inits, gen_a, score)
    changed_b = fused.masked_reinit_(b, gs, th, inits, gen_b, score)
    assert changed_a == changed_b
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    # The caller's stream advanced by the same single draw in both.
    assert torch.equal(gen_a.get_state(), gen_b.get_state())
    masks = reference.selection_masks(ws, gs, th, score)
    for w0, w1, m, init in zip(ws, b, masks, inits):
        if init is None:
            assert torch.equal(w0, w1)
        else:
            assert torch.equal(w0[~m], w1[~m])
            fresh = w1[m].float()
            assert ((fresh >= init.low) & (fresh <= init.high)).all()
    assert changed_a == sum(int(m.sum()) for m, i in zip(masks, inits) if i is not None)


def test_reinit_stream_does_not_depend_on_the_mask():
    """One draw from the caller's generator per call, whatever the trim ratio."""
    gen = torch.Generator().manual_seed(0)
    ws = [torch.randn(40, 30, generator=gen)]
    gs = [torch.rand(40, 30, generator=gen)]
    states = []
    for n in (0, 5, 600, 1200):
        g = torch.Generator().manual_seed(7)
        kernels.masked_reinit_([w.clone() for w in ws], gs, kernels.select_threshold(ws, gs, n), [InitSpec(-1, 1)], g)
        states.append(g.get_state())
    assert all(torch.equal(s, states[0]) for s in states)


@pytest.mark.parametrize("score", SCORES)
def test_reinit_parameters_non_contiguous_float64_and_default_generator(score):
    gen = torch.Generator().manual_seed(3)
    base = [torch.randn(20, 30, generator=gen), torch.randn(64, generator=gen).double(), torch.randn(9, generator=gen)]
    gs = [torch.rand(30, 20, generator=gen).t(), torch.rand(64, generator=gen), torch.rand(9, generator=gen)]
    inits = [InitSpec(-1, 1), InitSpec(-0.1, 0.1), None]
    th = reference.select_threshold(base, gs, 300, score)
    out = []
    for backend in ("reference", "fused"):
        params = [torch.nn.Parameter(base[0].t().contiguous().t()), torch.nn.Parameter(base[1].clone()), base[2].clone()]
        assert not params[0].is_contiguous()
        torch.manual_seed(11)
        changed = kernels.masked_reinit_(params, gs, th, inits, None, backend=backend, score=score)
        out.append((changed, [p.detach().clone() for p in params], torch.randn(3)))
    assert out[0][0] == out[1][0] > 0
    assert all(torch.equal(x, y) for x, y in zip(out[0][1], out[1][1]))
    assert torch.equal(out[0][2], out[1][2])  # the default generator advanced identically


# ----------------------------------------------------------------------------- projection


@st.composite
def projection_case(draw):
    n = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    dtype = draw(st.sampled_from(DTYPES + [torch.float64]))
    shapes = [draw(st.lists(st.integers(1, 30), min_size=1, max_size=3)) for _ in range(n)]
    r = [torch.randn(s, generator=gen) for s in shapes]
    conflict = draw(st.floats(-2.0, 1.0))
    g = [conflict * ri + 0.3 * torch.randn(s, generator=gen) for ri, s in zip(r, shapes)]
    return [x.to(dtype) for x in g], [x.to(dtype) for x in r]


@SETTINGS
@given(case=projection_case(), margin=st.sampled_from([0.0, 0.1, 0.5, 2.0]), scope=st.sampled_from(["global", "per_layer"]))
def test_fused_projection_matches_the_reference(case, margin, scope):
    g, r = case
    eps = 1e-3
    a = [x.clone() for x in g]
    b = [x.clone() for x in g]
    ca = reference.project_(a, r, margin, eps, scope)
    cb = fused.project_(b, r, margin, eps, scope)
    assert ca.shape == cb.shape == ((1,) if scope == "global" else (len(g),))
    # Coefficients agree unless <g, r> is within rounding of zero (then either answer is right).
    dots = [float((x.double() * y.double()).sum()) for x, y in zip(g, r)]
    norms = [float(x.double().norm() * y.double().norm()) for x, y in zip(g, r)]
    if scope == "global":
        dots, norms = [sum(dots)], [sum(norms)]
    for i, (d, nrm) in enumerate(zip(dots, norms)):
        if abs(d) <= 1e-4 * nrm:
            continue
        assert float(cb[i]) == pytest.approx(float(ca[i]), rel=1e-5, abs=1e-7)
        idx = range(len(g)) if scope == "global" else [i]
        for j in idx:
            tol = dict(rtol=1e-5, atol=1e-6) if g[j].dtype in (torch.float32, torch.float64) else dict(rtol=1e-2, atol=1e-2)
            torch.testing.assert_close(b[j], a[j], **tol)


def brute_force_cone_qp(gram, dots, margin, eps):
    """GEM's dual QP solved by trying every set of coordinates at their bound (t <= 4)."""
    import itertools

    p = gram.double() + eps * torch.eye(len(gram), dtype=torch.float64)
    b = dots.double()
    best, best_value = None, float("inf")
    for at_bound in itertools.product([True, False], repeat=len(b)):
        v = torch.full_like(b, margin)
        free = [i for i, bound in enumerate(at_bound) if not bound]
        if free:
            fixed = [i for i, bound in enumerate(at_bound) if bound]
            rhs = -b[free] - p[free][:, fixed] @ v[fixed]
            v[free] = torch.linalg.solve(p[free][:, free], rhs)
        if bool((v >= margin - 1e-12).all()):
            value = float(0.5 * v @ p @ v + b @ v)
            if value < best_value:
                best, best_value = v, value
    return best


@SETTINGS
@given(t=st.integers(1, 4), n=st.integers(1, 30), margin=st.sampled_from([0.0, 0.1, 0.5]),
       scope=st.sampled_from(["global", "per_layer"]), seed=st.integers(0, 2**31 - 1))
def test_multi_memory_projection_solves_the_reference_qp(t, n, margin, scope, seed):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(n,), (2, n)]
    memories = [[torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes] for _ in range(t)]
    g = [-memories[0][i] * 0.7 + torch.randn(s, generator=gen, dtype=torch.float64) for i, s in enumerate(shapes)]
    eps = 1e-3
    projected = [x.clone() for x in g]
    coef = kernels.project_columns_(projected, memories, margin, eps, scope).double()
    groups = [list(range(len(g)))] if scope == "global" else [[i] for i in range(len(g))]
    assert coef.shape == (len(groups), t)
    for k, idx in enumerate(groups):
        dots = torch.tensor([sum(float((g[i] * m[i]).sum()) for i in idx) for m in memories], dtype=torch.float64)
        gram = torch.tensor([[sum(float((a[i] * b[i]).sum()) for i in idx) for b in memories] for a in memories],
                            dtype=torch.float64)
        if not bool((dots < 0).any()):
            assert bool((coef[k] == 0).all())
            assert all(torch.equal(projected[i], g[i]) for i in idx)
            continue
        torch.testing.assert_close(coef[k], brute_force_cone_qp(gram, dots, margin, eps).float().double(),
                                   rtol=1e-4, atol=1e-5)
        for i in idx:
            expected = g[i] + sum(float(coef[k, j]) * memories[j][i] for j in range(t))
            torch.testing.assert_close(projected[i], expected, rtol=1e-5, atol=1e-5)
        # GEM's guarantee: no memory is left conflicting beyond eps * v_j.
        after = torch.tensor([sum(float((projected[i] * m[i]).sum()) for i in idx) for m in memories])
        assert bool((after >= -eps * coef[k].float() - 1e-3).all())


def test_one_memory_column_is_the_closed_form():
    gen = torch.Generator().manual_seed(0)
    r = [torch.randn(5, generator=gen), torch.randn(3, 2, generator=gen)]
    g = [-2 * x + 0.1 * torch.randn(x.shape, generator=gen) for x in r]
    for backend in ("reference", "fused"):
        a, b = [x.clone() for x in g], [x.clone() for x in g]
        closed = kernels.project_(a, r, 0.5, backend=backend)
        columns = kernels.project_columns_(b, [r], 0.5, backend=backend)
        assert columns.shape == (1, 1) and columns.flatten().tolist() == closed.tolist()
        assert all(torch.equal(x, y) for x, y in zip(a, b))
        many = [x.clone() for x in g]
        qp = reference.project_columns_(many, [r, [x.clone() for x in r]], 0.5)
        assert qp.shape == (1, 2)  # two equal memories share the coefficient of one
        torch.testing.assert_close(float(qp.sum()), float(closed.double() * (sum(float((x * x).sum()) for x in r) + 1e-3)
                                   / (sum(float((x * x).sum()) for x in r) + 5e-4)), rtol=1e-3, atol=1e-3)


def test_projection_fires_only_on_conflict_and_errors():
    r = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])]
    g = [torch.tensor([-1.0, 0.0]), torch.tensor([0.0, 1.0])]  # <g0, r0> = -1, <g1, r1> = 2, total 1
    for backend in ("reference", "fused"):
        a = [x.clone() for x in g]
        assert kernels.project_(a, r, 0.5, backend=backend).tolist() == [0.0]
        assert all(torch.equal(x, y) for x, y in zip(a, g))
        a = [x.clone() for x in g]
        coef = kernels.project_(a, r, 0.5, 0.0, "per_layer", backend=backend)
        assert coef.tolist() == [1.0, 0.0]
        assert a[0].tolist() == [0.0, 0.0] and torch.equal(a[1], g[1])
        with pytest.raises(ValueError, match="scope='layer'"):
            kernels.project_(a, r, 0.5, scope="layer", backend=backend)


# ----------------------------------------------------------------------------- accumulation


@pytest.mark.parametrize("kind", ACCUMULATE)
@SETTINGS
@given(data=st.data())
def test_fused_accumulation_is_bit_identical(kind, data):
    ws, gs = data.draw(tensor_lists())
    buf_dtype = data.draw(st.sampled_from([torch.float32, ws[0].dtype]))
    bufs_a = [torch.rand(w.shape, dtype=torch.float32).to(buf_dtype) for w in ws]
    bufs_b = [x.clone() for x in bufs_a]
    ref, fast = ACCUMULATE[kind]
    for _ in range(2):
        ref(bufs_a, ws)
        fast(bufs_b, ws)
    assert all(torch.equal(x, y) for x, y in zip(bufs_a, bufs_b))


@pytest.mark.parametrize("kind", ACCUMULATE)
def test_accumulation_large_enough_for_threads_and_segments(kind):
    gen = torch.Generator().manual_seed(0)
    gs = [torch.randn(300_001, generator=gen), torch.randn(70_000, generator=gen)]
    a = [torch.zeros_like(g) for g in gs]
    b = [torch.zeros_like(g) for g in gs]
    ACCUMULATE[kind][0](a, gs)
    getattr(kernels, f"accumulate_{kind}_grad_")(b, gs)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_squares_accumulate_in_float32_at_least(backend):
    """fp16 squares overflow past 256: the reference squares in float32 (float64 stays float64)."""
    bufs = [torch.zeros(3), torch.zeros(2, dtype=torch.float64), torch.ones(2)]
    grads = [torch.tensor([300.0, -2.0, 0.0], dtype=torch.float16), torch.tensor([2.0**-100, 3.0], dtype=torch.float64),
             torch.tensor([-0.5, 4.0])]
    kernels.accumulate_sq_grad_(bufs, grads, backend=backend)
    assert bufs[0].tolist() == [90000.0, 4.0, 0.0]
    assert bufs[1].tolist() == [2.0**-200, 9.0]  # 0 in float32
    assert bufs[2].tolist() == [1.25, 17.0]


# ----------------------------------------------------------------------------- dispatch


def test_backend_resolution(monkeypatch):
    cpu = [torch.zeros(2)]
    monkeypatch.delenv(kernels.dispatch.ENV_VAR, raising=False)
    assert kernels.resolve_backend(cpu) == "fused"
    assert kernels.resolve_backend([]) == "fused"
    assert kernels.resolve_backend(cpu, "reference") == "reference"
    monkeypatch.setenv(kernels.dispatch.ENV_VAR, "reference")
    assert kernels.resolve_backend(cpu) == "reference"
    assert kernels.resolve_backend(cpu, "fused") == "fused"  # the argument wins over the variable
    monkeypatch.setenv(kernels.dispatch.ENV_VAR, "cuda-magic")
    with pytest.raises(ValueError, match=r"'cuda-magic'.*reference, fused, triton"):
        kernels.resolve_backend(cpu)
    monkeypatch.delenv(kernels.dispatch.ENV_VAR)
    with pytest.raises(ValueError, match="'nope'"):
        kernels.select_threshold(cpu, cpu, 1, backend="nope")
    meta = [torch.zeros(2, device="meta")]
    with pytest.raises(ValueError, match="CPU tensors only"):
        kernels.resolve_backend(meta, "fused")
    assert kernels.resolve_backend(meta) == "reference"
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="triton"):
        kernels.resolve_backend(cpu, "triton")


def test_fused_falls_back_to_the_reference_without_a_compiler(monkeypatch):
    monkeypatch.setenv("SCISSORHANDS_NATIVE", "0")
    assert native.load() is None
    ws = [torch.tensor([3.0, 1.0, 2.0])]
    gs = [torch.ones(3)]
    assert fused.select_threshold(ws, gs, 2) == Threshold(2.0, 1, 2)
    assert fused.select_threshold(gs, ws, 2, "grad") == Threshold(2.0, 1, 2)
    a = [torch.tensor([-1.0, 2.0])]
    assert fused.project_(a, [torch.tensor([1.0, 0.0])], 0.5, 0.0).tolist() == [1.0]
    assert a[0].tolist() == [0.0, 2.0]
    fused.accumulate_sq_grad_(a, [torch.tensor([3.0, -1.0])])
    assert a[0].tolist() == [9.0, 3.0]


def test_native_library_builds_here():
    if os.environ.get("SCISSORHANDS_NATIVE", "1") == "0":
        pytest.skip("native library disabled")
    assert native.load() is not None


def test_import_kernels_needs_no_triton(tmp_path):
    """`import kernels` and the CPU path work when triton cannot be imported at all."""
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'triton' or name.startswith('triton.'):\n"
        "            raise ImportError('blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import torch, kernels\n"
        "assert 'triton' not in sys.modules\n"
        "w = [torch.tensor([1.0, 3.0])]\n"
        "print(kernels.select_threshold(w, w, 1).tau, kernels.dispatch.triton_available())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["9.0", "False"]


def test_key_round_trip():
    for x in (0.0, 1.401298464324817e-45, 1.5, 3.4028234663852886e38, float("inf")):
        assert selection.key_f32(selection.f32_key(x)) == x
    assert selection.f32_key(float("inf")) == selection.INF_KEY


def test_portable_build_of_the_c_loops_matches_the_native_one(tmp_path):
    """The library without -march=native (the generic-vector and scalar paths) gives the same answers."""
    import ctypes

    built = native.load()
    if built is None:
        pytest.skip("no C compiler")
    target = tmp_path / "portable.so"
    assert native.compile_to(target, native=False)
    portable = native.bind(ctypes.CDLL(str(target)))
    gen = torch.Generator().manual_seed(5)
    n = 64 * 40 + 13
    w = torch.round(torch.randn(n, generator=gen) * 4) / 4
    g = torch.round(torch.rand(n, generator=gen) * 4) / 4
    dots = []
    for lib in (built, portable):
        out = (ctypes.c_double * 2)()
        lib.sh_dots(w.data_ptr(), g.data_ptr(), n, ctypes.addressof(out))
        dots.append(list(out))
        bufs = [torch.ones(n), torch.ones(n)]
        lib.sh_acc_abs(bufs[0].data_ptr(), w.data_ptr(), n)
        lib.sh_acc_sq(bufs[1].data_ptr(), w.data_ptr(), n)
        assert torch.equal(bufs[0], 1 + w.abs()) and torch.equal(bufs[1], 1 + w.square())
    assert dots[0] == pytest.approx(dots[1], rel=1e-6)
    assert dots[0][0] == pytest.approx(float((w.double() * g.double()).sum()), rel=1e-5)
    for grad, s in ((0, (w * g).abs()), (1, g.abs())):
        lo, hi = float(s.kthvalue(n - 300).values), float(s.kthvalue(n - 40).values)
        tau = float(s.kthvalue(n - 100).values)
        results = []
        for lib in (built, portable):
            wp = 0 if grad else w.data_ptr()  # the grad score never reads w
            counts = (ctypes.c_int64 * 4)()
            cand = torch.zeros(n)
            fill = lib.sh_count_collect(wp, g.data_ptr(), n, grad, lo, hi, ctypes.addressof(counts), cand.data_ptr(), n, 0)
            sel = (ctypes.c_int64 * 2)()
            lib.sh_count_sel(wp, g.data_ptr(), n, grad, tau, ctypes.addressof(sel))
            ties = max(0, 100 - sel[0]) // 2
            fresh = torch.arange(1, n + 1, dtype=torch.float32) * 100
            wc = w.clone()
            wrote = lib.sh_write_sel(wc.data_ptr(), g.data_ptr(), n, grad, tau, ties, fresh.data_ptr())
            results.append((list(counts), sorted(cand[:fill].tolist()), list(sel), wrote, wc))
        (a, b) = results
        assert a[:4] == b[:4] and torch.equal(a[4], b[4])
        # and both agree with plain torch
        assert a[0][0] == int((s > hi).sum()) and a[0][3] == int(((s > lo) & (s < hi)).sum())
        assert a[1] == sorted(s[(s > lo) & (s < hi)].tolist())
        assert a[2] == [int((s > tau).sum()), int((s == tau).sum())]
        assert a[3] == a[2][0] + ties


def test_thread_pool_survives_fork():
    """A child forked after the pool exists gets its own pool (no hang on the parent's dead threads)."""
    if not hasattr(os, "fork"):
        pytest.skip("no fork")
    gen = torch.Generator().manual_seed(0)
    gs = [torch.randn(200_000, generator=gen), torch.randn(200_000, generator=gen)]
    bufs = [torch.zeros_like(g) for g in gs]
    kernels.accumulate_abs_grad_(bufs, gs)  # creates the pool (2 jobs)
    code = (
        "import os, sys, torch, kernels\n"
        "torch.set_num_threads(2)\n"
        "g = [torch.ones(200_000), torch.ones(200_000)]\n"
        "b = [torch.zeros(200_000), torch.zeros(200_000)]\n"
        "kernels.accumulate_abs_grad_(b, g)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    kernels.accumulate_abs_grad_(b, g)\n"
        "    ok = b[0][:3].tolist() == [2.0] * 3 and b[1][-3:].tolist() == [2.0] * 3  # no torch parallel op here:\n"
        "    os._exit(0 if ok else 3)  # torch's own OpenMP pool is not fork-safe\n"
        "_, status = os.waitpid(pid, 0)\n"
        "sys.exit(os.waitstatus_to_exitcode(status))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
