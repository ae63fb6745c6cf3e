"""Benchmark the kernels against the reference code's way, full argsort and the bandwidth floor.

    python benchmarks/kernel_speed.py [--device cpu|cuda] [--sizes 11200000,100000000] [--repeats 3]

Prints one JSON object per line (and appends them to --out when given):

  {"op": "select" | "project_global" | "project_per_layer" | "stream", "n": N,
   "impl": "reference_code" | "argsort" | "qp_host" | "loop" | "fused" | "triton",
   "device": "cpu" | "cuda", "seconds": median, "peak_extra_bytes": B, ...ratios}

The tensor list is ResNet-18 (CIFAR) widened until it holds about N entries (a 1-D tail tensor
makes it exactly N), float32. ``select`` is score + select + trim at --trim-ratio (re-init of
every conv/linear tensor; 1-D tensors are scored but not eligible):
  reference_code  concatenate |w*G| on the device, copy to the host, kthvalue, then per tensor
                  a fresh full init tensor and torch.where (the published Scissorhands code);
  argsort         concatenate, full descending argsort, scatter a global mask (SalUn's way);
  fused / triton  kernels.select_threshold + kernels.masked_reinit_ of this package.
``project_*`` is the GEM projection of a conflicting gradient list against a reference list:
  qp_host         the published code's way: concatenate, copy to the host in float64, solve the
                  one-memory QP (quadprog when installed, else its closed form: same cost
                  profile, the solve itself is 1x1), copy back;
  loop            the reference backend: a per-tensor Python loop of float64 dot products;
  fused / triton  kernels.project_ of this package.
``stream`` is the floor: one read of w and G (per-tensor torch sums on CPU, one multi-tensor
Triton launch on CUDA). Ratios in each line: ``x_stream`` (seconds / stream seconds of the
same N), ``speedup_vs_<impl>``, and for projections ``x_floor`` (seconds / the floor of the
projection's own bytes: read g and r twice, write g once = 2.5x the stream's bytes).

Memory: on CUDA the peak of torch.cuda.max_memory_allocated above the live tensors; on CPU
the peak resident set above the start of the call (VmHWM after resetting it through
/proc/self/clear_refs), with MALLOC_MMAP_THRESHOLD_ pinned so freed buffers leave the RSS
(the script re-executes itself with it set). Imports only torch and ``kernels`` (numpy with quadprog when installed).
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

if sys.platform.startswith("linux") and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"  # big buffers mmapped and unmapped on free
    os.execv(sys.executable, [sys.executable, *sys.argv])

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import kernels  # noqa: E402
from kernels import reference  # noqa: E402
from kernels.reference import InitSpec  # noqa: E402

RESNET18_PARAMS = 11_173_962


def resnet18_shapes(width: int, classes: int = 10) -> list[tuple[int, ...]]:
    """Parameter shapes of a CIFAR ResNet-18 whose first stage has `width` channels."""
    shapes: list[tuple[int, ...]] = [(width, 3, 3, 3), (width,), (width,)]
    c_in = width
    for stage, mult in enumerate((1, 2, 4, 8)):
        c = width * mult
        for block in range(2):
            stride2 = stage > 0 and block == 0
            shapes += [(c, c_in, 3, 3), (c,), (c,), (c, c, 3, 3), (c,), (c,)]
            if stride2 or c_in != c:
                shapes += [(c, c_in, 1, 1), (c,), (c,)]
            c_in = c
    return shapes + [(classes, c_in), (classes,)]


def shapes_for(n: int) -> list[tuple[int, ...]]:
    width = max(1, int(64 * math.sqrt(n / RESNET18_PARAMS)))
    while width > 1 and sum(math.prod(s) for s in resnet18_shapes(width)) > n:
        width -= 1
    shapes = resnet18_shapes(width)
    rest = n - sum(math.prod(s) for s in shapes)
    return shapes + ([(rest,)] if rest > 0 else [])


# ----------------------------------------------------------------------------- measuring


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _hwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


class Meter:
    """Wall time (synchronised on CUDA) and peak extra memory of one call."""

    def __init__(self, device: str):
        self.device = device

    def sync(self):
        if self.device == "cuda":
            torch.cuda.synchronize()

    def run(self, fn, reset=None):
        if reset is not None:
            reset()
        gc.collect()
        self.sync()
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # reset VmHWM to the current RSS
            except OSError:
                pass
            base = _rss()
        t0 = time.perf_counter()
        out = fn()
        self.sync()
        dt = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() - base if self.device == "cuda" else _hwm() - base
        return dt, max(0, peak), out


def measure(meter: Meter, fn, repeats: int, reset=None, slow: float = 2.0, warmup: bool = False):
    """Median seconds over `repeats` runs (one run when a run takes > `slow` s) and the peak extra bytes."""
    times, peaks = [], []
    if warmup:
        meter.run(fn, reset)
    dt, peak, out = meter.run(fn, reset)
    times.append(dt)
    peaks.append(peak)
    if dt <= slow:
        for _ in range(repeats - 1):
            dt, peak, out = meter.run(fn, reset)
            times.append(dt)
            peaks.append(peak)
    return statistics.median(times), min(times), max(peaks), len(times), out


# ----------------------------------------------------------------------------- implementations


def select_reference_code(ws, gs, n, inits):
    """Concatenate |w*G|, kthvalue on the host, mask, full fresh init per tensor, torch.where."""
    scores = [(w * g).abs() for w, g in zip(ws, gs)]
    flat = torch.cat([s.flatten() for s in scores]).cpu()
    tau = torch.kthvalue(flat, flat.numel() - n).values if n < flat.numel() else flat.min() - 1
    del flat
    tau = tau.to(ws[0].device)
    for w, s, init in zip(ws, scores, inits):
        if init is None:
            continue
        fresh = torch.empty_like(w).uniform_(init.low, init.high)
        w.copy_(torch.where(s > tau, fresh, w))
    return float(tau)


def select_argsort(ws, gs, n, inits):
    """Concatenate, full argsort, global mask of the top n, full fresh init per tensor."""
    flat = torch.cat([(w * g).abs().flatten() for w, g in zip(ws, gs)])
    order = torch.argsort(flat, descending=True)
    del flat
    mask = torch.zeros(order.numel(), dtype=torch.bool, device=order.device)
    mask[order[:n]] = True
    del order
    off = 0
    for w, init in zip(ws, inits):
        m = mask[off : off + w.numel()].view_as(w)
        off += w.numel()
        if init is None:
            continue
        fresh = torch.empty_like(w).uniform_(init.low, init.high)
        w.copy_(torch.where(m, fresh, w))
    return n


def select_ours(backend):
    def run(ws, gs, n, inits):
        th = kernels.select_threshold(ws, gs, n, backend=backend)
        changed = kernels.masked_reinit_(ws, gs, th, inits, None, backend=backend)
        return th.tau, changed

    return run


def select_ours_reference_rule(backend, trim_ratio):
    """What the method runs: the reference code's cut and guard (kernels.snip_threshold: three
    exact top-n searches, for the cut, the largest and the smallest score) and the trim."""
    def run(ws, gs, n, inits):
        th = kernels.snip_threshold(ws, gs, trim_ratio, backend=backend)
        return th.tau, kernels.masked_reinit_(ws, gs, th, inits, None, backend=backend)

    return run


try:  # the published code's solver, when installed
    import numpy as np
    import quadprog  # type: ignore
except ImportError:  # pragma: no cover
    quadprog = None


def _qp_coefficient(gr: float, rr: float, margin: float, eps: float) -> float:
    """GEM's dual for one memory vector: min 1/2 (rr + eps) v^2 + gr v subject to v >= margin."""
    if quadprog is not None:
        P = np.array([[rr + eps]])
        q = np.array([-gr])
        return float(quadprog.solve_qp(P, q, np.eye(1), np.zeros(1) + margin)[0][0])
    return max(-gr / (rr + eps), margin)


def _qp_one(grads, refs, margin, eps):
    """The published code's round trip: the whole vectors to the host in float64, then back."""
    mem = torch.cat([r.flatten() for r in refs]).cpu().double()
    grad = torch.cat([g.flatten() for g in grads]).cpu().double()
    gr = float(torch.dot(mem, grad))
    if gr < 0:
        v = _qp_coefficient(gr, float(torch.dot(mem, mem)), margin, eps)
        x = v * mem + grad
        off = 0
        for g in grads:
            g.copy_(x[off : off + g.numel()].view_as(g))
            off += g.numel()
        return v
    return 0.0


def project_qp_host(scope):
    def run(grads, refs, margin, eps):
        if scope == "global":
            return [_qp_one(grads, refs, margin, eps)]
        return [_qp_one([g], [r], margin, eps) for g, r in zip(grads, refs)]

    return run


def project_loop(scope):
    return lambda grads, refs, margin, eps: reference.project_(grads, refs, margin, eps, scope)


def project_ours(scope, backend):
    return lambda grads, refs, margin, eps: kernels.project_(grads, refs, margin, eps, scope, backend=backend)


def stream_floor(device, backend):
    if backend == "triton":
        from kernels import triton_backend

        return lambda a, b: triton_backend.stream(a, b)

    def run(a, b):
        tot = 0.0
        for x, y in zip(a, b):
            tot += float(x.sum()) + float(y.sum())
        return tot

    return run


# ----------------------------------------------------------------------------- driver


def emit(record: dict, out_path: str | None):
    line = json.dumps(record)
    print(line, flush=True)
    if out_path:
        with open(out_path, "a") as f:
            f.write(line + "\n")


def bench_size(n_target: int, device: str, repeats: int, trim_ratio: float, out_path: str | None, skip: set[str],
               backend: str | None = None):
    ours = backend or ("triton" if device == "cuda" else "fused")
    meter = Meter(device)
    gen = torch.Generator(device=device).manual_seed(0)
    shapes = shapes_for(n_target)
    n = sum(math.prod(s) for s in shapes)
    param_bytes = 4 * n
    base = {"n": n, "device": device, "tensors": len(shapes), "param_bytes": param_bytes}
    if device == "cuda":
        base["gpu"] = torch.cuda.get_device_name()
    else:
        base["threads"] = torch.get_num_threads()

    ws = [torch.randn(s, device=device, generator=gen) * 0.05 for s in shapes]
    gs = [torch.rand(s, device=device, generator=gen) for s in shapes]

    # floor
    t_stream, best, peak, runs, _ = measure(meter, lambda: stream_floor(device, ours)(ws, gs), max(repeats, 5), warmup=True)
    emit({"op": "stream", "impl": "triton" if ours == "triton" else "torch_sum", **base, "seconds": t_stream,
          "best": best, "runs": runs, "peak_extra_bytes": peak, "bytes": 2 * param_bytes,
          "gb_per_s": round(2 * param_bytes / t_stream / 1e9, 2)}, out_path)

    # score + select + trim
    n_sel = n - math.floor((1.0 - trim_ratio) * n)
    inits = [InitSpec(-0.05, 0.05) if len(s) > 1 else None for s in shapes]
    w0 = [w.clone() for w in ws]

    def restore():
        for w, x in zip(ws, w0):
            w.copy_(x)

    results = {}
    for impl, fn in (("reference_code", select_reference_code), ("argsort", select_argsort), (ours, select_ours(ours)),
                     (f"{ours}_reference_rule", select_ours_reference_rule(ours, trim_ratio))):
        if impl in skip:
            continue
        t, best, peak, runs, out = measure(
            meter, lambda fn=fn: fn(ws, gs, n_sel, inits), repeats, reset=restore, warmup=impl == ours
        )
        results[impl] = t
        rec = {"op": "select", "impl": impl, **base, "n_select": n_sel, "seconds": t, "best": best, "runs": runs,
               "peak_extra_bytes": peak, "peak_extra_frac": round(peak / param_bytes, 4),
               "x_stream": round(t / t_stream, 2)}
        if impl == ours:
            th = kernels.select_threshold(ws, gs, n_sel, backend=ours)  # phases, one more run each
            meter.sync()
            t0 = time.perf_counter()
            th = kernels.select_threshold(ws, gs, n_sel, backend=ours)
            meter.sync()
            t1 = time.perf_counter()
            kernels.masked_reinit_(ws, gs, th, inits, None, backend=ours)
            meter.sync()
            rec["phases"] = {"select": round(t1 - t0, 6), "trim": round(time.perf_counter() - t1, 6)}
            restore()
        if impl.startswith(ours):
            for other in ("reference_code", "argsort"):
                if other in results:
                    rec[f"speedup_vs_{other}"] = round(results[other] / t, 2)
        emit(rec, out_path)
    del w0
    del ws, gs
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()

    # projection
    refs = [torch.randn(s, device=device, generator=gen) for s in shapes]
    grads0 = [-r + 0.5 * torch.randn(s, device=device, generator=gen) for r, s in zip(refs, shapes)]
    grads = [g.clone() for g in grads0]

    def restore_g():
        for g, x in zip(grads, grads0):
            g.copy_(x)

    floor = 2.5 * t_stream
    for scope in ("global", "per_layer"):
        res = {}
        for impl, fn in (("qp_host", project_qp_host(scope)), ("loop", project_loop(scope)), (ours, project_ours(scope, ours))):
            if impl in skip:
                continue
            t, best, peak, runs, coef = measure(
                meter, lambda fn=fn: fn(grads, refs, 0.5, 1e-3), repeats, reset=restore_g, warmup=impl == ours
            )
            res[impl] = t
            rec = {"op": f"project_{scope}", "impl": impl, **base, "seconds": t, "best": best, "runs": runs,
                   "peak_extra_bytes": peak, "peak_extra_frac": round(peak / param_bytes, 4),
                   "bytes": 5 * param_bytes, "x_floor": round(t / floor, 2), "x_stream": round(t / t_stream, 2)}
            if impl == ours:
                for other in ("qp_host", "loop"):
                    if other in res:
                        rec[f"speedup_vs_{other}"] = round(res[other] / t, 2)
            emit(rec, out_path)
    del grads, grads0, refs
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--sizes", default="11200000,100000000", help="comma-separated entry counts N")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--trim-ratio", type=float, default=0.03)
    ap.add_argument("--skip", default="", help="comma-separated impls to leave out (e.g. reference_code)")
    ap.add_argument("--out", default=None, help="also append the JSON lines to this file")
    ap.add_argument("--backend", default=None, help="this package's backend to time (default: by device)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    one = [torch.ones(4, device=args.device)]
    kernels.select_threshold(one, one, 1, backend=args.backend)  # build / JIT before timing
    skip = {s for s in args.skip.split(",") if s}
    for size in [int(float(s)) for s in args.sizes.split(",") if s]:
        bench_size(size, args.device, args.repeats, args.trim_ratio, args.out, skip, args.backend)


if __name__ == "__main__":
    main()
