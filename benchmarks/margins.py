"""Measure the trained quantities the tests' thresholds rest on (tests/measured.py), per seed,
in the CPU cell this process runs in; then summarise several cells' output.

    python benchmarks/margins.py measure baselines classwise pick --seeds 0-4 --cache /tmp/m > cell.jsonl
    bash benchmarks/margins_matrix.sh            # every group in the four cpu-matrix cells
    python benchmarks/margins.py summarize margins-*.jsonl

``summarize`` prints one JSON line per quantity: n, min, max, mean, std over every seed and
cell, and ``low_bound`` = min - 3 std / ``high_bound`` = max + 3 std, the most a lower / upper
threshold may ask under the margin rule (tests/measured.py).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import measured  # noqa: E402

# The corners of tests/spaces.tiny_space's search range: every trial the sweep tests can draw lies inside.
CORNERS = [(t, lr) for t in (0.005, 0.05) for lr in (0.002, 0.02)]


def baselines(seed: int, cache: Path):
    for name, knobs in measured.FAST.items():
        for key, value in measured.baseline_quantities(measured.classwise_report(name, seed, cache, **knobs)).items():
            yield f"baselines.{name}.{key}", value


def classwise(seed: int, cache: Path):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        report = measured.cli_report(Path(tmp), cache, "class", "--forget", "class:3", "--seed", str(seed))
    for key, value in measured.classwise_quantities(report).items():
        yield f"classwise.{key}", value


def mislabeled(seed: int, cache: Path):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        report = measured.cli_report(Path(tmp), cache, "mislabeled", "--forget", "mislabeled:0.1", "--seed", str(seed))
    for key, value in measured.mislabeled_quantities(report).items():
        yield f"mislabeled.{key}", value


def pick(seed: int, cache: Path):
    values = [measured.pick_space_improvement(seed, cache, t, lr) for t, lr in CORNERS]
    yield "pick.improvement_min_over_corners", min(values)


def prune(seed: int, cache: Path):
    for label, point in (("healthy", measured.HEALTHY), ("collapsed", measured.COLLAPSED)):
        yield f"prune.{label}.first_epoch_retain_acc", measured.first_epoch_retain_acc(seed, cache, point)


def diffusion(seed: int, cache: Path):
    import dataclasses

    from orchestrator.trial import run_unlearning

    cfg = dataclasses.replace(measured.diffusion_tiny(), seed=seed)
    result = run_unlearning(cfg, cache, progress=False)
    for key, value in measured.erasure_quantities(result).items():
        yield f"diffusion.{key}", value
    for key, value in measured.repair_quantities(cfg, measured.original_unet(cfg, result), seed).items():
        yield f"diffusion.{key}", value
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        yield "diffusion.sd_gap_ratio", measured.sd_gap_ratio(Path(tmp), cache / "sd", seed)


GROUPS = {"diffusion": diffusion, "baselines": baselines, "classwise": classwise, "mislabeled": mislabeled, "pick": pick, "prune": prune}


def cell() -> str:
    keys = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "OMP_NUM_THREADS")
    return ",".join(f"{k}={os.environ.get(k, '')}" for k in keys)


def measure(args) -> None:
    from orchestrator.training import set_threads

    threads = set_threads()
    for group in args.groups:
        for seed in args.seeds:
            start = time.perf_counter()
            for quantity, value in GROUPS[group](seed, args.cache):
                print(json.dumps({"cell": cell(), "threads": threads, "quantity": quantity, "seed": seed,
                                  "value": float(value), "s": round(time.perf_counter() - start, 1)}), flush=True)


def summarize(args) -> None:
    values = defaultdict(list)
    for path in args.files:
        for line in Path(path).read_text().splitlines():
            if line.startswith("{"):
                rec = json.loads(line)
                values[rec["quantity"]].append((rec["cell"], rec["seed"], rec["value"]))
    for quantity, rows in sorted(values.items()):
        v = np.array([r[2] for r in rows])
        std = float(v.std(ddof=1)) if len(v) > 1 else float("nan")
        print(json.dumps({"quantity": quantity, "n": len(v), "cells": len({r[0] for r in rows}),
                          "min": round(float(v.min()), 3), "max": round(float(v.max()), 3),
                          "mean": round(float(v.mean()), 3), "std": round(std, 3),
                          "low_bound": round(float(v.min()) - 3 * std, 3),
                          "high_bound": round(float(v.max()) + 3 * std, 3)}))


def seeds_arg(text: str) -> list[int]:
    a, _, b = text.partition("-")
    return list(range(int(a), int(b) + 1)) if b else [int(s) for s in text.split(",")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure")
    m.add_argument("groups", nargs="+", choices=sorted(GROUPS))
    m.add_argument("--seeds", type=seeds_arg, default=list(range(5)))
    m.add_argument("--cache", type=Path, required=True, help="reference cache (one per cell: kernels differ)")
    s = sub.add_parser("summarize")
    s.add_argument("files", nargs="+")
    args = p.parse_args()
    measure(args) if args.command == "measure" else summarize(args)


if __name__ == "__main__":
    main()
