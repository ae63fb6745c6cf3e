"""One configuration over several seeds, compared paired with doing nothing (the original).

    python benchmarks/seed_stats.py --forget random:0.1 --preset reference --seeds 0,1,2
    python benchmarks/seed_stats.py --forget mislabeled:0.1 --recipe epochs=30 --set lr=0.01 --seeds 0-4

Prints one JSON line per seed and a summary line: mean, std, SE, n and 95% interval of the
unlearned model's and the original's Avg. Gap, and the paired improvement. A diverged seed
(collapse) is reported as such and counts in ``diverged``. Same trial function as the CLI.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.tasks.classification.config import RunConfig  # noqa: E402
from orchestrator.training import TrainRecipe  # noqa: E402
from orchestrator.errors import DivergenceError  # noqa: E402
from orchestrator.methods import get_method  # noqa: E402
from orchestrator.tasks import get_task  # noqa: E402
from orchestrator.stats import paired_improvement, summarize  # noqa: E402
from orchestrator.training import set_threads  # noqa: E402
from orchestrator.trial import run_unlearning  # noqa: E402


def seeds_arg(text: str) -> list[int]:
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(s) for s in text.split(",")]


def assignments(pairs: list[str], cls) -> dict:
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in types:
            raise SystemExit(f"unknown {cls.__name__} field {key!r}; allowed: {', '.join(types)}")
        kind = str(types[key])
        out[key] = {"int": int, "float": float, "bool": lambda v: v.lower() in ("1", "true")}.get(kind, str)(value)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist5k")
    p.add_argument("--model", default="resnet8")
    p.add_argument("--forget", default="random:0.1")
    p.add_argument("--method", default="scissorhands")
    p.add_argument("--preset", default="auto")
    p.add_argument("--seeds", type=seeds_arg, default=[0, 1, 2])
    p.add_argument("--set", action="append", default=[], help="method knob KEY=VALUE")
    p.add_argument("--recipe", action="append", default=[], help="reference recipe KEY=VALUE")
    p.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("SCISSORHANDS_CACHE", "/tmp/refcache")))
    args = p.parse_args()
    set_threads()
    method = get_method(args.method)
    recipe = TrainRecipe(**assignments(args.recipe, TrainRecipe))
    base = RunConfig(dataset=args.dataset, model=args.model, forget=args.forget, recipe=recipe, method=method.name)
    preset = method.preset(args.preset, **get_task(base.TASK).preset_context(base))
    knobs = method.config(preset, **assignments(args.set, method.config_class))
    rows, diverged = [], []
    for seed in args.seeds:
        cfg = dataclasses.replace(base, seed=seed, knobs=knobs)
        try:
            result = run_unlearning(cfg, args.cache_dir, progress=False)
        except DivergenceError as exc:
            diverged.append(seed)
            print(json.dumps({"seed": seed, "diverged": str(exc)}), flush=True)
            continue
        r = result.report
        row = {"seed": seed, "avg_gap": r["avg_gap"], "avg_gap_original": r["avg_gap_original"],
               "unlearned": r["unlearned"], "original": r["original"], "retrain": r["retrain"],
               "stats": {k: v for k, v in result.extras.items() if isinstance(v, (int, float))}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {"forget": args.forget, "method": args.method, "preset": args.preset, "set": args.set, "recipe": args.recipe,
               "seeds": args.seeds, "diverged": diverged}
    if rows:
        for key in ("avg_gap", "avg_gap_original"):
            summary[key] = summarize(r[key] for r in rows).as_dict()
        for role in ("unlearned", "original", "retrain"):
            summary[role] = {k: summarize(r[role][k] for r in rows).mean for k in ("UA", "RA", "TA", "MIA")}
        imp, better = paired_improvement([r["avg_gap_original"] for r in rows], [r["avg_gap"] for r in rows])
        summary["improvement"] = imp.as_dict()
        summary["improves_on_original"] = better and not diverged
    print(json.dumps({"summary": summary}), flush=True)


if __name__ == "__main__":
    main()
