"""After a comparison sweep (``methods:``): pick each method's best trial by a rule, validate
it on held-out seeds (``scissorhands pick --method M``), and print one JSON line per method
plus the original / retrain rows and a Markdown table (mean and 95% interval over the
held-out seeds).

    python benchmarks/compare_methods.py mnist5k-methods-class3 --storage runs --validate-seeds 3
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.stats import summarize  # noqa: E402
from orchestrator.sweep.frontier_table import load_results  # noqa: E402
from orchestrator.sweep.pick import held_out_seeds, pick  # noqa: E402
from orchestrator.sweep.spec import parse_spec  # noqa: E402
from orchestrator.training import set_threads  # noqa: E402

COLUMNS = ("UA", "RA", "TA", "MIA", "RTE_s")


def interval(s: dict) -> str:
    return f"{s['mean']:.2f} [{s['ci95_low']:.2f}, {s['ci95_high']:.2f}]"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name")
    p.add_argument("--storage", type=Path, default=Path("runs"))
    p.add_argument("--rule", default="min-avg_gap")
    p.add_argument("--validate-seeds", type=int, default=3)
    args = p.parse_args()
    set_threads()
    df, spec_dict = load_results(args.storage, args.name)
    spec = parse_spec(spec_dict)
    rows = []
    for method in spec.methods:
        chosen, _ = pick(args.storage, args.name, args.rule, [], alias=f"best-{method}",
                         model_name=f"{args.name}-{method}", validate_seeds=args.validate_seeds, progress=False,
                         method=method)
        v = chosen["validation"]
        row = {"method": method, "trial_id": chosen["trial_id"], "config": chosen["config"],
               "search_avg_gap": chosen["search"].get("avg_gap"), "diverged": v["diverged"],
               "avg_gap": v.get("avg_gap"), "improvement": v.get("improvement"),
               **{k: v["metrics"][k] for k in COLUMNS if k in v["metrics"]}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    # The references of the held-out seeds (cached by the picks' validation).
    task = spec.per_method()[0].task_contract
    seeds = held_out_seeds(spec.seeds, args.validate_seeds)
    refs = [task.build_references(spec.per_method()[0].run_config({}, s), args.storage / args.name / "references",
                                  progress=False) for s in seeds]
    for role in ("original", "retrain"):
        row = {"method": role, **{k: summarize(r[role][k] for r in refs).as_dict() for k in COLUMNS if k != "RTE_s"}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n| method | Avg. Gap (held-out seeds {seeds[0]}-{seeds[-1]}) | UA | RA | TA | MIA | RTE (s) |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        gap = interval(row["avg_gap"]) if row.get("avg_gap") else "-"
        cells = [f"{row[k]['mean']:.2f}" if k in row else "-" for k in COLUMNS]
        print(f"| {row['method']} | {gap} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
