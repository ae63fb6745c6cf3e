"""The README's concept-erasure table: each text-to-image method at its defaults on the bundled
digits pipeline (erase "three"), and Scissorhands on the class-erasure task, over seeds (a seed:
new references, new unlearning randomness); mean and 95% t-interval of every metric, and what
the utility guard flagged.

    python benchmarks/t2i_methods.py --seeds 0-2

Every reference and every (method, seed) run is a Ray task of one CPU, the trial function
``scissorhands unlearn`` runs; the driver only collects. One JSON line per run, then one per
method with the summaries, then a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.seed_stats import seeds_arg  # noqa: E402
from orchestrator.stats import summarize  # noqa: E402

T2I_METHODS = ("scissorhands_diffusion", "esd_x", "esd_u", "salun")
METRICS = ("forget_acc", "retained_acc", "fid", "RTE_s")


def _config(task: str, method: str, seed: int, overrides: dict):
    from orchestrator.tasks import get_task

    t = get_task(task)
    return t.config_class.from_dict({"seed": seed, "method": method, **overrides.get(task, {})})


def _config_of(task: str, config: dict):
    from orchestrator.tasks import get_task

    return get_task(task).config_class.from_dict({k: v for k, v in config.items() if k != "task"})


def build(task: str, seed: int, role: str, cache: str, overrides: dict) -> str:
    from orchestrator.tasks import get_task
    from orchestrator.training import set_threads

    set_threads()
    get_task(task).build_reference(_config(task, get_task(task).default_method, seed, overrides), role, Path(cache),
                                   progress=False)
    return role


def run(task: str, method: str, seed: int, cache: str, overrides: dict) -> dict:
    from orchestrator.tasks import get_task
    from orchestrator.training import set_threads

    set_threads()
    report = get_task(task).run(_config(task, method, seed, overrides), Path(cache), progress=False,
                                build=False).report
    return {"task": task, "method": method, "seed": seed, "report": report}


def table(rows: list[dict], tasks: list[str]) -> str:
    """Per task and model, each metric's mean [95% interval] over the rows' seeds (one JSON line
    each, printed too), as a Markdown table."""
    from orchestrator.tasks import get_task

    lines = ["| task | model | forget_acc | retained_acc | fid | RTE (s) | eroded |", "|---|---|---|---|---|---|---|"]
    for task in tasks:
        mine = [r for r in rows if r["task"] == task]
        models = [("original", "original"), ("retrain", "retrain")] + [
            (m, "unlearned") for m in dict.fromkeys(r["method"] for r in mine)]
        for name, role in models:
            reports = [r["report"] for r in mine if role != "unlearned" or r["method"] == name]
            if role != "unlearned":  # a reference's figures: once per reference seed
                t = get_task(task)
                reports = list({t.reference_seed(_config_of(task, r["config"])): r for r in reports}.values())
            summary = {k: summarize(rep[role][k] for rep in reports).as_dict() for k in METRICS if k in reports[0][role]}
            flagged = [rep["config"]["seed"] for rep in reports if role == "unlearned" and rep.get("eroded")]
            print(json.dumps({"task": task, "model": name, "seeds": len(reports), **summary, "eroded_seeds": flagged}))
            cells = ["" if k not in summary else f"{summary[k]['mean']:.2f}" if summary[k]["n"] == 1  # one pipeline
                     else f"{summary[k]['mean']:.2f} [{summary[k]['ci95_low']:.2f}, {summary[k]['ci95_high']:.2f}]"
                     for k in METRICS]
            eroded = "" if role != "unlearned" else f"{len(flagged)}/{len(reports)}"
            lines.append(f"| {task} | {name} | {' | '.join(cells)} | {eroded} |")
    return "\n".join(lines)


def main() -> None:
    import ray

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=seeds_arg, default=[0, 1, 2])
    p.add_argument("--cache-dir", default=os.environ.get("SCISSORHANDS_CACHE", "/tmp/t2icache"))
    p.add_argument("--overrides", type=json.loads, default={},
                   help='JSON: per task, config keys, e.g. {"text_to_image": {"generator": {"steps": 500}}}')
    p.add_argument("--tasks", nargs="+", default=["text_to_image", "diffusion"])
    p.add_argument("--table-from", metavar="FILE", help="only the table, from an earlier run's JSON lines")
    args = p.parse_args()
    if args.table_from:
        lines = Path(args.table_from).read_text().splitlines()
        print(table([json.loads(line) for line in lines if line.startswith('{"task"') and '"report"' in line],
                    args.tasks))
        return
    from orchestrator.tasks import get_task

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    build_task, run_task = ray.remote(num_cpus=1)(build), ray.remote(num_cpus=1)(run)
    # The autoencoder / classifier come first: the UNets of a seed share them (a lock would serialise them anyway).
    # Seeds with one reference seed (the bundled pipeline's pipeline_seed) share one build.
    for stage in (("classifier",), ("original", "retrain")):
        builds = {}
        for task in args.tasks:
            t = get_task(task)
            for seed in args.seeds:
                cfg = _config(task, t.default_method, seed, args.overrides)
                for role in stage:
                    if role in t.reference_roles(cfg):
                        builds.setdefault((task, t.reference_seed(cfg), role), seed)
        ray.get([build_task.remote(task, seed, role, args.cache_dir, args.overrides)
                 for (task, _, role), seed in builds.items()])
    jobs = [(task, method) for task in args.tasks
            for method in (T2I_METHODS if task == "text_to_image" else ("scissorhands_diffusion",))]
    rows = ray.get([run_task.remote(task, method, seed, args.cache_dir, args.overrides)
                    for task, method in jobs for seed in args.seeds])
    for row in rows:
        print(json.dumps(row), flush=True)
    print(table(rows, args.tasks))
    ray.shutdown()


if __name__ == "__main__":
    main()
