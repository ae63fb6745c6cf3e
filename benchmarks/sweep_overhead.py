"""Orchestration overhead: per-trial wall time through the sweep vs the same trial function
called in-process, and how many times reference models were built. Prints one JSON object.

    python benchmarks/sweep_overhead.py [--space search_spaces/mnist5k_random.yaml] [--trials 4]

Trials run one at a time with one CPU each, in the sweep and in-process alike, so the
difference is Ray + MLflow + Parquet + model logging, not parallelism.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's packages before benchmarks/

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--space", default=str(Path(__file__).parents[1] / "search_spaces" / "mnist5k_random.yaml"))
    parser.add_argument("--trials", type=int, default=4)
    args = parser.parse_args()

    import torch

    from orchestrator.sweep.paths import SweepPaths
    from orchestrator.sweep.results import ResultsTable
    from orchestrator.sweep.spec import load_spec
    from orchestrator.sweep.tuner import run_sweep
    from orchestrator.trial import run_unlearning

    work = Path(tempfile.mkdtemp(prefix="sweep-overhead-"))
    build_log = work / "builds.log"
    os.environ["SCISSORHANDS_BUILD_LOG"] = str(build_log)
    # No early stopping: a pruned trial would be short in the sweep and full-length in-process.
    # One seed, so a trial and its in-process replay do the same work.
    spec = load_spec(args.space).model_copy(update={"trials": args.trials, "max_concurrent": 1,
                                                    "early_stopping": None, "seeds": [0]})
    spec = spec.model_copy(update={"resources": spec.resources.model_copy(update={"cpu": 1})})

    paths = SweepPaths(work / "runs", spec.name)
    summary = run_sweep(spec, storage=paths.storage, progress=False)
    per_trial_sweep = summary["timing"]["trials_s"] / args.trials
    df = ResultsTable(paths.results).read()

    # The same trial function, in this process, on the same configs, with one thread like a trial.
    torch.set_num_threads(1)
    cache = paths.references
    in_process, rte_in_process = [], []
    for _, row in df.iterrows():
        searched = {k: row[f"config.{k}"] for k in spec.search}
        searched = {k: (int(v) if spec.search[k].type == "int" else v) for k, v in searched.items()}
        cfg = spec.run_config(searched, spec.seeds[0])
        start = time.perf_counter()
        result = run_unlearning(cfg, cache, build=False, progress=False)
        in_process.append(time.perf_counter() - start)
        rte_in_process.append(result.report["unlearned"][spec.task_contract.time_metric])
    per_trial_direct = sum(in_process) / len(in_process)
    # Ray's own clock of each trial function (time_total_s): the rest of the sweep's wall time
    # per trial is scheduling between trials and the driver's callbacks.
    results = [json.loads(p.read_text().splitlines()[-1]) for p in paths.tune().glob("*/result.json")]
    trainable_s = sum(r["time_total_s"] for r in results) / len(results)
    builds = build_log.read_text().splitlines() if build_log.exists() else []
    print(json.dumps({
        "space": spec.name, "trials": args.trials,
        "sweep_per_trial_s": round(per_trial_sweep, 2),
        "in_process_per_trial_s": round(per_trial_direct, 2),
        "overhead_fraction": round(per_trial_sweep / per_trial_direct - 1, 4),
        "trial_function_in_ray_s": round(trainable_s, 2),
        "between_trials_s": round(per_trial_sweep - trainable_s, 2),
        "unlearning_rte_sweep_s": round(float(df[spec.task_contract.time_metric].mean()), 2),
        "unlearning_rte_in_process_s": round(sum(rte_in_process) / len(rte_in_process), 2),
        "references_build_s": round(summary["timing"]["references_s"], 1),
        "reference_models_built": len(builds),
        "reference_builds": [b.split()[0] for b in builds],
        "trials_completed": int((df["status"] == "ok").sum()),
    }))


if __name__ == "__main__":
    main()
