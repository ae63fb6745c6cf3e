"""The ``scissorhands`` command: argument parsing only; each subcommand calls one function."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from orchestrator.config import PRESETS, RunConfig, ScissorhandsConfig, TrainRecipe, method_preset
from orchestrator.errors import DivergenceError, UserError

def _bool(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"{text!r}: allowed true or false")
    return text.lower() in ("true", "1", "yes")


_TYPES = {"int": int, "float": float, "str": str, "bool": _bool}


def _add_dataclass_flags(parser: argparse.ArgumentParser, cls, prefix: str = "") -> None:
    """One --flag per field; defaults are None so presets fill what the user did not set."""
    for f in dataclasses.fields(cls):
        flag = f"--{prefix}{f.name}".replace("_", "-")
        type_name = str(f.type)
        if "tuple" in type_name:
            parser.add_argument(flag, dest=f"{prefix}{f.name}", nargs="+", metavar="REGEX", default=None)
        else:
            base = type_name.split("|")[0].strip()
            parser.add_argument(flag, dest=f"{prefix}{f.name}", type=_TYPES[base], default=None)


def _add_run_flags(parser: argparse.ArgumentParser, with_method: bool) -> None:
    parser.add_argument("--dataset", default="mnist5k", help="mnist5k | cifar10 | npz:PATH")
    parser.add_argument("--data-dir", default=None, help="CIFAR-10 python batch folder")
    parser.add_argument("--model", default="resnet8", help="resnet8 | resnet20 | resnet18")
    parser.add_argument("--width", type=int, default=None, help="base channel width (default per model)")
    parser.add_argument("--forget", default="class:3", help="class:K, random:FRACTION or mislabeled:FRACTION")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split-seed", type=int, default=0, help="train/test split seed (kept fixed)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="reference-model cache")
    parser.add_argument("--no-progress", action="store_true")
    recipe = parser.add_argument_group("reference training recipe")
    _add_dataclass_flags(recipe, TrainRecipe, prefix="train_")
    if with_method:
        method = parser.add_argument_group("Scissorhands knobs (default: the measured preset)")
        method.add_argument("--preset", default="auto", help=f"{' | '.join(PRESETS)}")
        method.add_argument("--kernels", default=None, help="kernel backend: reference | fused | triton")
        _add_dataclass_flags(method, ScissorhandsConfig)


def _picked(args, cls, prefix: str = "") -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f"{prefix}{f.name}", None)
        if value is not None:
            out[f.name] = tuple(value) if isinstance(value, list) else value
    return out


def run_config(args, with_method: bool = True) -> RunConfig:
    from orchestrator.data import ForgetSpec
    from orchestrator.models import model_info

    recipe = dataclasses.replace(TrainRecipe(), **_picked(args, TrainRecipe, "train_"))
    method = ScissorhandsConfig()
    kernels = None
    if with_method:
        preset = method_preset(args.preset, model_info(args.model).size, ForgetSpec.parse(args.forget).kind)
        method = dataclasses.replace(preset, **_picked(args, ScissorhandsConfig))
        kernels = args.kernels
    return RunConfig(
        dataset=args.dataset, data_dir=args.data_dir, model=args.model, width=args.width, forget=args.forget,
        seed=args.seed, split_seed=args.split_seed, recipe=recipe, method=method, kernels=kernels,
    )


def _cache_dir(args) -> Path:
    from orchestrator.references import default_cache_dir

    return args.cache_dir or default_cache_dir()


def format_table(report: dict) -> str:
    lines = [f"{'model':<10} {'UA':>7} {'RA':>7} {'TA':>7} {'MIA':>7} {'RTE_s':>8}"]
    for role in ("original", "retrain", "unlearned"):
        m = report[role]
        rte = f"{m['RTE_s']:>8.1f}" if "RTE_s" in m else f"{'':>8}"
        lines.append(f"{role:<10} {m['UA']:>7.2f} {m['RA']:>7.2f} {m['TA']:>7.2f} {m['MIA']:>7.2f} {rte}")
    lines.append(f"Avg. Gap vs retrain: unlearned {report['avg_gap']:.3f}, original {report['avg_gap_original']:.3f}")
    return "\n".join(lines)


def cmd_train(args) -> int:
    from orchestrator.references import get_references
    from orchestrator.training import set_threads
    from orchestrator.trial import core, prepare

    set_threads()
    cfg = run_config(args, with_method=False)
    data = prepare(cfg)
    refs = get_references(cfg, data, _cache_dir(args), progress=not args.no_progress)
    for ref in (refs.original, refs.retrain):
        print(f"{ref.role:<9} {ref.path}  {core(ref.metrics(data))}")
    return 0


def cmd_unlearn(args) -> int:
    from orchestrator.storage import atomic_write_json
    from orchestrator.training import set_threads
    from orchestrator.trial import run_unlearning

    set_threads()
    if args.json and not Path(args.json).parent.exists():
        raise UserError(f"--json {args.json}: folder {Path(args.json).parent} does not exist")
    if args.task == "diffusion":
        from orchestrator.diffusion.cli import diffusion_config_from_args, format_diffusion_table
        from orchestrator.diffusion.run import run_diffusion_unlearning

        result = run_diffusion_unlearning(diffusion_config_from_args(args), _cache_dir(args),
                                          progress=not args.no_progress)
        print(format_diffusion_table(result.report))
        for path in result.extras.get("artifacts", []):
            print(f"sample grid: {path}")
    else:
        result = run_unlearning(run_config(args), _cache_dir(args), progress=not args.no_progress)
        print(format_table(result.report))
    if args.json:
        atomic_write_json(args.json, result.report)
        print(f"wrote {args.json}")
    return 0


def _storage(args) -> Path:
    # The reference cache, Parquet table and file locks need POSIX files that every node shares.
    if "://" in str(args.storage):
        raise UserError(f"--storage {args.storage!r}: object-store URIs are not supported; give a path every "
                        "node mounts (NFS, EFS, Filestore, or the bucket through s3fs / gcsfuse)")
    return Path(args.storage)


def cmd_sweep(args) -> int:
    from orchestrator.sweep.spec import load_spec
    from orchestrator.sweep.frontier_table import format_frontier

    spec = load_spec(args.space)  # every YAML problem surfaces here, before Ray starts
    if args.trials is not None and args.trials < 1:
        raise UserError(f"--trials {args.trials}: must be >= 1")
    from orchestrator.sweep.tuner import run_sweep

    summary = run_sweep(
        spec, storage=_storage(args), trials=args.trials, name=args.name, address=args.address,
        tracking_uri=args.tracking_uri, resume=args.resume, progress=not args.no_progress,
        spec_text=Path(args.space).read_text(),
    )
    name = args.name or spec.name
    print(format_frontier(_storage(args), name))
    root = _storage(args) / name
    print(f"\nresults: {root / 'results.parquet'}")
    for plot in summary.get("plots", []):
        print(f"plot:    {plot}")
    if "hypervolume" in summary:
        print(f"hypervolume: {summary['hypervolume']:.4g} (reference point {summary['hypervolume_reference_point']})")
    print(f"dashboard: scissorhands ui --storage {args.storage}   (then open http://127.0.0.1:5000)")
    return 0


def cmd_frontier(args) -> int:
    from orchestrator.sweep.frontier_table import format_frontier

    print(format_frontier(_storage(args), args.name, show_all=args.all))
    return 0


def cmd_pick(args) -> int:
    from orchestrator.sweep.pick import pick

    from orchestrator.storage import atomic_write_json

    if args.json and not Path(args.json).parent.exists():
        raise UserError(f"--json {args.json}: folder {Path(args.json).parent} does not exist")
    chosen, table = pick(_storage(args), args.name, args.rule, args.where or [], alias=args.alias,
                         model_name=args.model_name, tracking_uri=args.tracking_uri,
                         frontier_only=args.frontier_only, validate_seeds=args.validate_seeds,
                         progress=not args.no_progress)
    print(f"trial {chosen['trial_id']}: {json.dumps(chosen['config'])}")
    print(table)
    validation = chosen["validation"]
    if validation and validation.get("diverged"):
        print(f"diverged on held-out seeds: {', '.join(str(d['seed']) for d in validation['diverged'])}")
    if chosen["alias"]:
        print(f"registered {chosen['model_uri']}; load it with: mlflow.pytorch.load_model({chosen['model_uri']!r})")
    else:
        imp = validation["improvement"]
        print(f"not better than doing nothing on {len(validation['seeds'])} held-out seeds (Avg. Gap improvement "
              f"{imp['mean']:.3f}, 95% CI [{imp['ci95_low']:.3f}, {imp['ci95_high']:.3f}]): registered as "
              f"{chosen['model_uri']} without the {args.alias!r} alias")
    if args.json:
        atomic_write_json(args.json, chosen)
        print(f"wrote {args.json}")
    return 0


def cmd_ui(args) -> int:
    import os
    import shutil

    from orchestrator.sweep.tracking import default_tracking_uri

    uri = args.tracking_uri or default_tracking_uri(_storage(args))
    if uri.startswith("sqlite:") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise UserError(f"no MLflow store at {uri}; run a sweep first or pass --tracking-uri")
    exe = shutil.which("mlflow") or str(Path(sys.executable).parent / "mlflow")
    cmd = [exe, "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(args.port)]
    print(" ".join(cmd), flush=True)
    os.execv(exe, cmd)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scissorhands", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train (or load from cache) the original and retrain reference models")
    _add_run_flags(p, with_method=False)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("unlearn", help="one Scissorhands run, evaluated against original and retrain")
    p.add_argument("--task", choices=("classification", "diffusion"), default="classification",
                   help="classifier unlearning, or class/concept erasure from a diffusion model")
    _add_run_flags(p, with_method=True)
    from orchestrator.diffusion.cli import add_diffusion_flags

    add_diffusion_flags(p)  # flags shared with the classifier (--seed, --lr, ...) are reused
    p.add_argument("--json", default=None, help="write the result JSON here")
    p.set_defaults(func=cmd_unlearn)

    storage_help = "folder holding sweeps (and the default MLflow store): ./runs"
    p = sub.add_parser("sweep", help="Ray Tune + Optuna multi-objective sweep over a search space YAML")
    p.add_argument("space", help="search_spaces/*.yaml")
    p.add_argument("--trials", type=int, default=None, help="override the YAML's number of trials")
    p.add_argument("--name", default=None, help="sweep name (default: the YAML's name)")
    p.add_argument("--address", default=None, help="Ray cluster: auto | ray://HOST:10001 | HOST:6379 (default: local)")
    p.add_argument("--storage", default="runs", help=storage_help)
    p.add_argument("--tracking-uri", default=None, help="MLflow URI (default: $MLFLOW_TRACKING_URI or sqlite in --storage)")
    p.add_argument("--resume", action="store_true", help="finish an interrupted sweep of the same name")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("frontier", help="print a sweep's Pareto frontier (no Ray needed)")
    p.add_argument("name")
    p.add_argument("--storage", default="runs", help=storage_help)
    p.add_argument("--all", action="store_true", help="every trial, not only the frontier")
    p.set_defaults(func=cmd_frontier)

    p = sub.add_parser("pick", help="register a sweep trial's model in the MLflow Model Registry")
    p.add_argument("name")
    p.add_argument("--rule", default="min-avg_gap", help="min-METRIC or max-METRIC, e.g. min-avg-gap, max-RA")
    p.add_argument("--where", action="append", help="constraint METRIC>=X / METRIC<=X (repeatable), e.g. UA>=90")
    p.add_argument("--frontier-only", action="store_true", help="choose among frontier trials only")
    p.add_argument("--alias", default="champion")
    p.add_argument("--model-name", default=None, help="registered model name (default: the sweep name)")
    p.add_argument("--validate-seeds", type=int, default=5,
                   help="re-run the pick on N seeds the search never used before registering (0 skips)")
    p.add_argument("--json", default=None, help="write the pick and its validation here")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--storage", default="runs", help=storage_help)
    p.add_argument("--tracking-uri", default=None)
    p.set_defaults(func=cmd_pick)

    p = sub.add_parser("ui", help="start the MLflow UI on 127.0.0.1 for the sweep store")
    p.add_argument("--storage", default="runs", help=storage_help)
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=cmd_ui)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"scissorhands: error: {exc}", file=sys.stderr)
        return 2
    except DivergenceError as exc:
        print(f"scissorhands: diverged: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
