"""Measure the trained quantities the tests' thresholds rest on (tests/measured.py), per seed,
in the CPU cell this process runs in; then summarise several cells' output.

    python benchmarks/margins.py measure baselines classwise pick --seeds 0-4 --cache /tmp/m > cell.jsonl
    bash benchmarks/margins_matrix.sh            # every group in the four cpu-matrix cells
    python benchmarks/margins.py summarize margins-*.jsonl

``summarize`` prints one JSON line per quantity: n, min, max, mean, std over every seed and
cell, and ``low_bound`` = min - 3 std / ``high_bound`` = max + 3 std, the most a lower / upper
threshold on one seed's value may ask under the margin rule (tests/measured.py). For a test
that asserts a mean over three seeds, ``mean3_min`` / ``mean3_max`` are the worst such means
(every 3 of the cell's seeds, in every cell) and ``mean3_low_bound`` / ``mean3_high_bound``
lie three spreads of a 3-seed mean (std / sqrt 3) beyond them.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import measured  # noqa: E402

# The corners of the pick test's search range (tests/spaces.PICK): every trial it can draw lies inside.
CORNERS = [(t, lr) for t in (0.005, 0.02) for lr in (0.005, 0.02)]


def baselines(seed: int, cache: Path, names=tuple(measured.FAST)):
    for name in names:
        knobs = measured.FAST[name]
        for key, value in measured.baseline_quantities(measured.classwise_report(name, seed, cache, **knobs)).items():
            yield f"baselines.{name}.{key}", value


def classwise(seed: int, cache: Path):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        report = measured.cli_report(Path(tmp), cache, "class", "--forget", "class:3", "--seed", str(seed))
    for key, value in measured.classwise_quantities(report).items():
        yield f"classwise.{key}", value


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


def t2i(seed: int, cache: Path):
    report = measured.t2i_report(seed, cache, **measured.T2I_KNOBS)
    for key, value in measured.t2i_quantities(report).items():
        yield f"t2i.{key}", value


def ssd(seed: int, cache: Path):
    yield from baselines(seed, cache, ("ssd",))


GROUPS = {"baselines": baselines, "ssd": ssd, "t2i": t2i, "classwise": classwise, "pick": pick, "prune": prune,
          "diffusion": diffusion}


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
    latest = {}  # a re-measured (cell, quantity, seed) counts once, as last measured
    for path in args.files:
        for line in Path(path).read_text().splitlines():
            if line.startswith("{"):
                rec = json.loads(line)
                latest[rec["cell"], rec["quantity"], rec["seed"]] = rec["value"]
    values = defaultdict(list)
    for (cell_name, quantity, seed), value in latest.items():
        values[quantity].append((cell_name, seed, value))
    for quantity, rows in sorted(values.items()):
        v = np.array([r[2] for r in rows])
        std = float(v.std(ddof=1)) if len(v) > 1 else float("nan")
        by_cell = defaultdict(list)
        for cell_name, _, value in rows:
            by_cell[cell_name].append(value)
        means = [float(np.mean(c)) for vals in by_cell.values() for c in itertools.combinations(vals, 3)]
        out = {"quantity": quantity, "n": len(v), "cells": len(by_cell),
               "min": float(v.min()), "max": float(v.max()), "mean": float(v.mean()), "std": std,
               "low_bound": float(v.min()) - 3 * std, "high_bound": float(v.max()) + 3 * std}
        if means:
            spread = 3 * std / np.sqrt(3)
            out.update(mean3_min=min(means), mean3_max=max(means), mean3_low_bound=min(means) - spread,
                       mean3_high_bound=max(means) + spread)
        if quantity.startswith("pick."):  # what pick decides on: each cell's 5 seeds as held-out seeds
            from orchestrator.stats import summarize as seed_summary

            cis = [seed_summary(vals) for vals in by_cell.values()]
            out.update(mean5_min=min(c.mean for c in cis), ci95_low_min=min(c.ci95_low for c in cis),
                       ci95_low_by_cell=[round(c.ci95_low, 3) for c in cis])
        print(json.dumps({k: round(x, 3) if isinstance(x, float) else x for k, x in out.items()}))


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
