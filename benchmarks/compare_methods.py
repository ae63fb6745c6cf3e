"""After a comparison sweep (``methods:``): pick each method's best trial by a rule, validate
it on held-out seeds (``scissorhands pick --method M``), and print one JSON line per method
plus the original / retrain rows and a Markdown table (mean and 95% interval over the
held-out seeds). The verdict is paired: Scissorhands' headline metric minus each rival's on
the same held-out seeds (negative: Scissorhands is closer to retrain), mean and 95% interval,
"scissorhands" / rival / "no clear difference" by whether the interval excludes zero.

    python benchmarks/compare_methods.py mnist5k-methods-class3 --storage runs --validate-seeds 5
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.errors import UserError  # noqa: E402
from orchestrator.stats import Summary, summarize  # noqa: E402
from orchestrator.sweep.frontier_table import load_results  # noqa: E402
from orchestrator.sweep.paths import SweepPaths  # noqa: E402
from orchestrator.sweep.pick import held_out_seeds, pick  # noqa: E402
from orchestrator.sweep.spec import parse_spec  # noqa: E402
from orchestrator.training import set_threads  # noqa: E402


def interval(s: dict) -> str:
    return f"{s['mean']:.2f} [{s['ci95_low']:.2f}, {s['ci95_high']:.2f}]"


def paired_difference(ours: dict[int, float], rival: dict[int, float], rival_name: str) -> dict:
    """Scissorhands minus the rival on the seeds both finished, with the verdict."""
    seeds = sorted(set(ours) & set(rival))
    s: Summary = summarize(ours[k] - rival[k] for k in seeds)
    verdict = ("scissorhands" if s.ci95_high < 0 else rival_name if s.ci95_low > 0 else "no clear difference")
    return {**s.as_dict(), "seeds": seeds, "closer_to_retrain": verdict}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name")
    p.add_argument("--storage", type=Path, default=Path("runs"))
    p.add_argument("--rule", default=None, help="default: min- the task's headline metric")
    p.add_argument("--validate-seeds", type=int, default=5)
    p.add_argument("--also", nargs="*", default=[], metavar="NAME",
                   help="more comparison sweeps of the same seeds and forget set; their methods replace these")
    args = p.parse_args()
    set_threads()
    df, spec_dict = load_results(args.storage, args.name)
    spec = parse_spec(spec_dict)
    sweeps = [(args.name, method) for method in spec.methods]
    for extra in args.also:
        other = parse_spec(load_results(args.storage, extra)[1])
        for key in ("seeds", "forget", "dataset", "model", "recipe"):
            if getattr(other, key, None) != getattr(spec, key, None):
                raise SystemExit(f"--also {extra}: its {key} {getattr(other, key, None)!r} differs from "
                                 f"{args.name}'s {getattr(spec, key, None)!r}; a comparison needs the same")
        sweeps = [(n, m) for n, m in sweeps if m not in other.methods] + [(extra, m) for m in other.methods]
    sweeps.sort(key=lambda sweep: sweep[1] != "scissorhands")  # first: every rival is paired with it
    task = spec.per_method()[0].task_contract
    headline = task.headline_metric
    # The task's table metrics but its headline (a column of its own), then the time.
    columns = (*(m for m in task.table_metrics if m != headline), task.time_metric)
    rows, ours = [], None
    for name, method in sweeps:
        try:
            chosen, _ = pick(args.storage, name, args.rule, [], alias=f"best-{method}",
                             model_name=f"{name}-{method}", validate_seeds=args.validate_seeds, progress=False,
                             method=method)
        except UserError as exc:  # e.g. every trial of the method failed: nothing to validate
            row = {"method": method, "sweep": name, "no_pick": str(exc)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            continue
        v = chosen["validation"]
        row = {"method": method, "sweep": name, "trial_id": chosen["trial_id"], "config": chosen["config"],
               f"search_{headline}": chosen["search"].get(headline), "diverged": v["diverged"],
               headline: v.get(headline), "improvement": v.get("improvement"),
               **{k: v["metrics"][k] for k in columns if k in v["metrics"]}}
        per_seed = {r["seed"]: r[headline] for r in v["per_seed"] if headline in r}
        row[f"per_seed_{headline}"] = per_seed
        if method == "scissorhands":
            ours = per_seed
        elif ours is not None:
            row["scissorhands_minus_method"] = paired_difference(ours, per_seed, method)
        rows.append(row)
        print(json.dumps(row), flush=True)
    # The references of the held-out seeds (cached by the picks' validation).
    seeds = held_out_seeds(spec.seeds, args.validate_seeds)
    references = SweepPaths(args.storage, args.name).references
    refs = [task.build_references(spec.per_method()[0].run_config({}, s), references, progress=False) for s in seeds]
    for role in ("original", "retrain"):
        row = {"method": role, **{k: summarize(r[role][k] for r in refs).as_dict() for k in columns
                                  if k != task.time_metric}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    names = [*columns[:-1], f"{task.time_metric.removesuffix('_s')} (s)"]
    print(f"\n| method | {task.headline_label} (held-out seeds {seeds[0]}-{seeds[-1]}) | Scissorhands minus method "
          "(paired) | closer to retrain | " + " | ".join(names) + " |")
    print("|---" * (len(columns) + 4) + "|")
    for row in rows:
        if "no_pick" in row:
            print(f"| {row['method']} | no pick: {row['no_pick']} |" + " - |" * (len(columns) + 2))
            continue
        gap = interval(row[headline]) if row.get(headline) else "-"
        paired = row.get("scissorhands_minus_method")
        diff = interval(paired) if paired and paired["n"] > 1 else "-"
        verdict = paired["closer_to_retrain"] if paired and paired["n"] > 1 else "-"
        diverged = f" ({len(row['diverged'])} seeds diverged)" if row.get("diverged") else ""
        cells = [f"{row[k]['mean']:.2f}" if k in row else "-" for k in columns]
        print(f"| {row['method']}{diverged} | {gap} | {diff} | {verdict} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
