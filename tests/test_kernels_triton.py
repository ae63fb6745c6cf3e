"""Triton backend against the reference.

* On CPU the kernels run under the Triton interpreter (TRITON_INTERPRET=1, small tensors).
  The variable must be set before triton is imported, so those checks run in a fresh
  Python subprocess that imports this module and calls :func:`run_checks`.
* With CUDA the same checks (larger sizes) run on the GPU (marked ``gpu``; skipped without).

Imports only torch, pytest, hypothesis-free helpers and ``kernels``; triton only inside checks.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
HAS_TRITON = importlib.util.find_spec("triton") is not None


def _same(a, b) -> bool:
    f32 = lambda x: torch.tensor(x, dtype=torch.float32).item()  # noqa: E731
    return f32(a.tau) == f32(b.tau) and a.take_ties == b.take_ties and a.n_selected == b.n_selected


def _case(gen, device, n_tensors, max_numel, dtype, g_dtype, ties):
    ws, gs = [], []
    for t in range(n_tensors):
        numel = int(torch.randint(1, max_numel + 1, (1,), generator=gen))
        if t == 1 and n_tensors > 2:
            numel = 0  # an empty tensor in the list
        shape = (numel,) if numel % 3 else (3, numel // 3)
        w = torch.randn(shape, generator=gen)
        g = torch.rand(shape, generator=gen) * 3
        if ties == "some":
            w, g = torch.round(w * 4) / 4, torch.round(g * 4) / 4
        elif ties == "heavy":
            w, g = torch.round(w), torch.round(g)
        ws.append(w.to(device=device, dtype=dtype))
        gs.append(g.to(device=device, dtype=g_dtype))
    return ws, gs


def run_checks(device: str, cases: int, max_numel: int, seed: int = 0, all_pairs: bool = True) -> dict:
    """Every triton entry point, both scores, against the reference on random lists; returns a summary.

    ``all_pairs``: weight/gradient dtype pairs of all kinds (else three, to bound GPU compile time).
    """
    from kernels import reference as R
    from kernels import triton_backend as TB
    from kernels.reference import InitSpec

    gen = torch.Generator().manual_seed(seed)
    dtypes = [torch.float32, torch.bfloat16, torch.float16]
    out = {"select": 0, "reinit": 0, "project": 0, "accumulate": 0}
    t0 = time.time()
    for c in range(cases):
        dtype = dtypes[c % 3]
        if all_pairs:
            g_dtype = torch.float32 if c % 2 else dtype
        else:
            g_dtype = torch.float32 if dtype == torch.bfloat16 else dtype
        ties = ["none", "some", "heavy"][(c // 3) % 3]
        n_tensors = 1 + c % 5
        ws, gs = _case(gen, device, n_tensors, max_numel, dtype, g_dtype, ties)
        total = sum(w.numel() for w in ws)
        # selection: edges, a random k, and forced fallback paths of the search
        ks = sorted({0, 1, total - 1, total, int(torch.randint(0, total + 1, (1,), generator=gen))})
        for score in R.SCORES:
            for k in ks:
                if k < 0:
                    continue
                want = R.select_threshold(ws, gs, k, score)
                # misleading samples; tiny candidate buffers (bisection) in one case of three
                knobs = [{}, {"sample_size": 5, "cand_cap": 400}, {"sample_size": 40, "cand_cap": 24}][c % 3]
                got = TB.select_threshold(ws, gs, k, score, **knobs)
                assert _same(got, want), (c, score, k, got, want)
                out["select"] += 1
        # trimming: masks and untouched entries exact; constant inits exact; ranges for uniform
        k = ks[len(ks) // 2]
        inits = [[InitSpec(-0.5, 0.25), None, InitSpec(2.0, 2.0)][(i + c) % 3] for i in range(len(ws))]
        for score in R.SCORES:
            th = TB.select_threshold(ws, gs, k, score)
            for cached in (True, False):
                a = [w.clone() for w in ws]
                b = [w.clone() for w in ws]
                ga = torch.Generator(device=device).manual_seed(c)
                gb = torch.Generator(device=device).manual_seed(c)
                na = R.masked_reinit_(a, gs, th, inits, ga, score)
                if cached:  # the backend remembers how many scores tie at tau for these very inputs
                    assert _same(TB.select_threshold(b, gs, k, score), th)
                else:
                    TB._tied.clear()  # unknown: the ranked-ties path
                nb = TB.masked_reinit_(b, gs, th, inits, gb, score)
                assert na == nb, (c, score, na, nb)
                assert torch.equal(ga.get_state(), gb.get_state())
                masks = R.selection_masks(ws, gs, th, score)
                for w0, x, y, m, init in zip(ws, a, b, masks, inits):
                    assert torch.equal(y[~m], w0[~m])
                    if init is None:
                        assert torch.equal(y, w0)
                    elif init.low == init.high:
                        assert torch.equal(x, y)
                    else:
                        v = y[m].float()
                        assert ((v >= init.low) & (v <= init.high)).all()
                out["reinit"] += 1
        # projection, both scopes, with and without conflict
        r = [torch.randn(w.shape, generator=gen).to(device=device, dtype=dtype) for w in ws]
        sign = -1.0 if c % 4 else 0.5
        g = [(sign * ri.float() + 0.2 * torch.randn(ri.shape, generator=gen).to(device)).to(dtype) for ri in r]
        for scope in ("global", "per_layer"):
            a = [x.clone() for x in g]
            b = [x.clone() for x in g]
            ca = R.project_(a, r, 0.5, 1e-3, scope)
            cb = TB.project_(b, r, 0.5, 1e-3, scope)
            torch.testing.assert_close(cb.cpu(), ca.cpu(), rtol=1e-5, atol=1e-6)
            tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=2e-2)
            for x, y in zip(a, b):
                torch.testing.assert_close(y, x, **tol)
            out["project"] += 1
        # accumulation, |g| and g ** 2: exact
        for kind in ("abs", "sq"):
            bufs_a = [torch.rand(w.shape, generator=gen).to(device) for w in ws]
            bufs_b = [x.clone() for x in bufs_a]
            getattr(R, f"accumulate_{kind}_grad_")(bufs_a, gs)
            getattr(TB, f"accumulate_{kind}_grad_")(bufs_b, gs)
            assert all(torch.equal(x, y) for x, y in zip(bufs_a, bufs_b)), (c, kind)
            out["accumulate"] += 1
    out["seconds"] = round(time.time() - t0, 2)
    return out


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_triton_kernels_match_the_reference_in_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", TRITON_DEFAULT_FP_FUSION="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    code = (
        "import json, torch\n"
        "torch.set_num_threads(1)\n"
        "import test_kernels_triton as t\n"
        "print(json.dumps(t.run_checks('cpu', cases=9, max_numel=2500)))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["select"] >= 2 * 9 * 4 and summary["reinit"] == 36 and summary["project"] == 18
    assert summary["accumulate"] == 18


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_dispatch_picks_triton_for_interpreted_cpu_tensors_only_when_forced():
    env = dict(os.environ, TRITON_INTERPRET="1")
    env.pop("SCISSORHANDS_KERNELS", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    code = (
        "import torch, kernels\n"
        "w = [torch.tensor([1.0, 3.0, 2.0])]\n"
        "assert kernels.resolve_backend(w) == 'fused'\n"
        "assert kernels.resolve_backend(w, 'triton') == 'triton'\n"
        "print(kernels.select_threshold(w, w, 2, backend='triton'))\n"
        "print(kernels.select_threshold(w, w, 2, backend='triton', score='grad'))\n"
        "b = [torch.zeros(3)]\n"
        "kernels.accumulate_sq_grad_(b, w, backend='triton')\n"
        "print(b[0].tolist())\n"
        "try:\n"
        "    kernels.select_threshold(w, w, 2, backend='triton', score='fisher')\n"
        "except ValueError as e:\n"
        "    print(e)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "tau=4.0, take_ties=1, n_selected=2" in res.stdout
    assert "tau=2.0, take_ties=1, n_selected=2" in res.stdout
    assert "[1.0, 9.0, 4.0]" in res.stdout
    assert "score='fisher' is unknown; allowed: snip, grad" in res.stdout


cuda = pytest.mark.skipif(not (HAS_TRITON and torch.cuda.is_available()), reason="needs CUDA and triton")


@pytest.mark.gpu
@cuda
def test_triton_kernels_match_the_reference_on_the_gpu():
    summary = run_checks("cuda", cases=18, max_numel=300_000, seed=1, all_pairs=False)
    print(json.dumps(summary))
    assert summary["select"] >= 18 * 4


@pytest.mark.gpu
@cuda
def test_gpu_dispatch_and_one_pass_on_a_resnet_sized_list():
    import kernels
    from kernels import reference as R

    assert kernels.resolve_backend([torch.zeros(1, device="cuda")]) == "triton"
    gen = torch.Generator(device="cuda").manual_seed(0)
    shapes = [(64, 3, 3, 3), (64,), (64,)] + [(128, 128, 3, 3), (128,)] * 6 + [(512, 512, 3, 3)] * 4 + [(10, 512), (10,)]
    ws = [torch.randn(s, device="cuda", generator=gen) for s in shapes]
    gs = [torch.rand(s, device="cuda", generator=gen) for s in shapes]
    total = sum(w.numel() for w in ws)
    for ratio in (0.001, 0.03, 0.1, 0.5):
        n = int(ratio * total)
        assert kernels.select_threshold(ws, gs, n) == R.select_threshold(ws, gs, n)
        assert kernels.select_threshold(ws, gs, n, score="grad") == R.select_threshold(ws, gs, n, score="grad")
        for dtype in (torch.bfloat16, torch.float16):
            wd = [w.to(dtype) for w in ws]
            assert kernels.select_threshold(wd, gs, n) == R.select_threshold(wd, gs, n)
    th = kernels.select_threshold(ws, gs, int(0.03 * total))
    inits = [kernels.InitSpec(-0.1, 0.1)] * len(ws)
    a = [w.clone() for w in ws]
    changed = kernels.masked_reinit_(a, gs, th, inits, torch.Generator(device="cuda").manual_seed(1))
    assert changed == th.n_selected
    masks = R.selection_masks(ws, gs, th)
    assert all(torch.equal(x[~m], w[~m]) for x, w, m in zip(a, ws, masks))
