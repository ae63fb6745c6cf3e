"""How far apart two retrain models are, against how far the original is from one.

For each seed's forget set, a second retrain model is trained on the same retain set with
another training seed (seed + 1000); the Avg. Gap between the two retrain models is the
retrain model's own seed spread, the floor no unlearning method can get below. Where the
original's Avg. Gap is within it (random forgetting of a model that generalises), unlearning
can only add noise.

    python benchmarks/retrain_spread.py --forget random:0.1 --seeds 3-7

Prints one JSON line per seed and a summary line (means and 95% intervals, and the paired
difference original-gap minus retrain-to-retrain gap).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.seed_stats import seeds_arg  # noqa: E402
from orchestrator.stats import summarize  # noqa: E402
from orchestrator.tasks.classification.config import RunConfig  # noqa: E402
from orchestrator.tasks.classification.evaluation import avg_gap  # noqa: E402
from orchestrator.tasks.classification.references import get_reference, reference_metrics  # noqa: E402
from orchestrator.tasks.classification.task import prepare  # noqa: E402
from orchestrator.training import set_threads  # noqa: E402

OTHER_TRAINING_SEED = 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--forget", default="random:0.1")
    p.add_argument("--seeds", type=seeds_arg, default=[3, 4, 5, 6, 7])
    p.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("SCISSORHANDS_CACHE", "/tmp/refcache")))
    args = p.parse_args()
    set_threads()
    rows = []
    for seed in args.seeds:
        cfg = RunConfig(forget=args.forget, seed=seed)
        data = prepare(cfg)  # the forget set of this seed, for both retrain models
        other = dataclasses.replace(cfg, seed=seed + OTHER_TRAINING_SEED)
        retrain = reference_metrics(get_reference("retrain", cfg, data, args.cache_dir, progress=False), data)
        second = reference_metrics(get_reference("retrain", other, data, args.cache_dir, progress=False), data)
        original = reference_metrics(get_reference("original", cfg, data, args.cache_dir, progress=False), data)
        row = {"seed": seed, "retrain_to_retrain": avg_gap(second, retrain), "original_to_retrain": avg_gap(original, retrain),
               "retrain": retrain, "second_retrain": second, "original": original}
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {key: summarize(r[key] for r in rows).as_dict() for key in ("retrain_to_retrain", "original_to_retrain")}
    summary["original_minus_spread"] = summarize(r["original_to_retrain"] - r["retrain_to_retrain"] for r in rows).as_dict()
    print(json.dumps({"summary": {"forget": args.forget, "seeds": args.seeds, **summary}}), flush=True)


if __name__ == "__main__":
    main()
