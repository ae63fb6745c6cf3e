"""The ``scissorhands`` command: each subcommand turns its flags into one library call and prints
the result; ``frontier`` and ``pick`` also sync the sweep store (``--storage``, a folder or a
bucket): they pull the sweep's results, and ``pick`` pushes the held-out seeds' references back."""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
from pathlib import Path

from orchestrator.errors import DivergenceError, FieldError, UserError
from orchestrator.flags import add_config_flags, config_from_args, flag_for, picked


def add_run_flags(parser: argparse.ArgumentParser, task, method=None) -> None:
    """The flags of ``task``'s run config, and with a method its knobs and presets."""
    parser.add_argument("--cache-dir", type=Path, default=None, help="reference-model cache")
    parser.add_argument("--no-progress", action="store_true")
    add_config_flags(parser, task.config_class, f"{task.name} run")
    if method is not None:
        group = parser.add_argument_group(f"method {method.name} (default: preset auto)")
        group.add_argument("--preset", default="auto", help=" | ".join(method.presets))
        add_config_flags(parser, method.config_class, f"{method.name} knobs")


def run_config(args, task, method=None):
    """The run config the flags describe: preset, then every knob the user set; validated."""
    cfg = config_from_args(args, task.config_class, method=method.name if method else task.default_method)
    if method is not None:
        preset = method.preset(args.preset, **task.preset_context(cfg))
        cfg = dataclasses.replace(cfg, knobs=method.config(preset, **picked(args, method.config_class)))
    cfg.validate()
    return cfg


def _cache_dir(args) -> Path:
    from orchestrator.cache import default_cache_dir

    return args.cache_dir or default_cache_dir()


def cmd_train(args, task) -> int:
    from orchestrator.training import set_threads

    set_threads()
    cfg = run_config(args, task)
    for role, metrics in task.build_references(cfg, _cache_dir(args), progress=not args.no_progress).items():
        print(f"{role:<9} {metrics}")
    print(f"references cached in {_cache_dir(args)}")
    return 0


def cmd_unlearn(args, task, method) -> int:
    from orchestrator.storage import atomic_write_json
    from orchestrator.training import set_threads

    set_threads()
    if args.json and not Path(args.json).parent.exists():
        raise UserError(f"--json {args.json}: folder {Path(args.json).parent} does not exist")
    cfg = run_config(args, task, method)
    result = task.run(cfg, _cache_dir(args), progress=not args.no_progress)
    print(task.format_table(result.report))
    set_knobs = picked(args, method.config_class)  # the note is about the preset's own values
    note = None if set_knobs else method.preset_note(args.preset, **task.preset_context(cfg))
    if note:
        print(f"note: {note}")
    for path in result.extras.get("artifacts", []):
        print(f"sample grid: {path}")
    if args.json:
        atomic_write_json(args.json, result.report)
        print(f"wrote {args.json}")
    return 0


def _storage(args):
    """--storage as a store: a folder, or a bucket mirrored on this machine."""
    from orchestrator.sweep.store import SweepStore

    return SweepStore(args.storage)


def cmd_sweep(args) -> int:
    from orchestrator.sweep.frontier_table import format_frontier
    from orchestrator.sweep.paths import SweepPaths
    from orchestrator.sweep.spec import load_spec

    spec = load_spec(args.space)  # every YAML problem surfaces here, before Ray starts
    if args.trials is not None and args.trials < 1:
        raise UserError(f"--trials {args.trials}: must be >= 1")
    from orchestrator.sweep.tuner import run_sweep

    if args.resource_wait < 0:
        raise UserError(f"--resource-wait {args.resource_wait}: must be >= 0 seconds")
    store = _storage(args)
    summary = run_sweep(
        spec, storage=store, trials=args.trials, name=args.name, address=args.address,
        tracking_uri=args.tracking_uri, resume=args.resume, progress=not args.no_progress,
        spec_text=Path(args.space).read_text(), resource_wait_s=args.resource_wait,
    )
    paths = SweepPaths(store.root, args.name or spec.name)
    print(format_frontier(store.root, paths.name))
    print(f"\nresults: {store.uri(paths.rel(paths.results))}")
    for plot in summary.get("plots", []):
        print(f"plot:    {store.uri(paths.rel(paths.root / Path(plot).name))}")
    for warning in summary.get("warnings", []):
        print(f"warning: {warning}")
    if "hypervolume" in summary:
        print(f"hypervolume: {summary['hypervolume']:.4g} (reference point {summary['hypervolume_reference_point']})")
    print(f"dashboard: scissorhands ui {paths.name} --storage {args.storage}   (it prints the sweep's runs and charts "
          "views on http://127.0.0.1:5000)")
    return 0


def cmd_frontier(args) -> int:
    from orchestrator.sweep.frontier_table import format_frontier

    store = _storage(args)
    store.pull_results(args.name)
    print(format_frontier(store.root, args.name, show_all=args.all))
    if args.importance:
        from orchestrator.sweep.frontier_table import stored_spec
        from orchestrator.sweep.importance import format_importance, sweep_importance
        from orchestrator.sweep.paths import SweepPaths
        from orchestrator.sweep.spec import parse_spec

        spec = parse_spec(stored_spec(store.root, args.name))
        print("\n" + format_importance(sweep_importance(spec, SweepPaths(store.root, args.name))))
    return 0


def cmd_pick(args) -> int:
    from orchestrator.storage import atomic_write_json
    from orchestrator.sweep.frontier_table import sweep_task
    from orchestrator.sweep.pick import pick

    if args.json and not Path(args.json).parent.exists():
        raise UserError(f"--json {args.json}: folder {Path(args.json).parent} does not exist")
    store = _storage(args)
    store.pull_results(args.name)
    chosen, table = pick(store, args.name, args.rule, args.where or [], alias=args.alias,
                         model_name=args.model_name, tracking_uri=args.tracking_uri,
                         frontier_only=args.frontier_only, validate_seeds=args.validate_seeds,
                         progress=not args.no_progress, method=args.pick_method, address=args.address,
                         trust_retrain=args.trust_retrain)
    print(f"trial {chosen['trial_id']}: {json.dumps(chosen['config'])}")
    print(table)
    validation = chosen["validation"]
    if validation and validation.get("diverged"):
        print(f"diverged on held-out seeds: {', '.join(str(d['seed']) for d in validation['diverged'])}")
    for warning in chosen["warnings"]:
        print(f"warning: {warning}")
    if chosen["alias"]:
        print(f"registered {chosen['model_uri']}; load it with: mlflow.pytorch.load_model({chosen['model_uri']!r})")
    elif validation is None or validation.get("improves_on_original", True):
        print(f"registered as {chosen['model_uri']} without the {args.alias!r} alias: {chosen['alias_withheld']}")
    else:
        imp, label = validation["improvement"], sweep_task(store.root, args.name).headline_label
        print(f"not better than doing nothing on {len(validation['seeds'])} held-out seeds ({label} improvement "
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

    uri = args.tracking_uri or default_tracking_uri(_storage(args).root)
    if uri.startswith("sqlite:") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise UserError(f"no MLflow store at {uri}; run a sweep first or pass --tracking-uri")
    from orchestrator.sweep.dashboard import published_views

    views = published_views(uri, f"http://127.0.0.1:{args.port}", args.name)
    if args.name and not views:
        raise UserError(f"sweep {args.name!r}: no such experiment with a published view in {uri}")
    exe = shutil.which("mlflow") or str(Path(sys.executable).parent / "mlflow")
    cmd = [exe, "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(args.port)]
    print(" ".join(cmd), flush=True)
    for name, urls in views.items():  # open these: the sweep's runs and charts, not MLflow's GenAI overview
        print(f"{name}: runs   {urls['runs']}\n{' ' * len(name)}  charts {urls['charts']}", flush=True)
    os.execv(exe, cmd)  # replaces this process: never returns


def cmd_dashboard(args) -> int:
    import os
    import shutil

    from orchestrator.sweep.frontier_table import stored_spec
    from orchestrator.sweep.paths import SweepPaths
    from orchestrator.sweep.spec import parse_spec

    store = _storage(args)
    store.pull_results(args.name)
    paths = SweepPaths(store.root, args.name)
    url = paths.study_url(parse_spec(stored_spec(store.root, args.name)).study_storage)
    if url.startswith("sqlite:") and not paths.study.is_file() and url.endswith(str(paths.study.resolve())):
        raise UserError(f"sweep {args.name!r} has no Optuna study database at {paths.study} (a sweep run before "
                        "studies were stored); run it again to get one")
    exe = shutil.which("optuna-dashboard") or str(Path(sys.executable).parent / "optuna-dashboard")
    cmd = [exe, url, "--host", "127.0.0.1", "--port", str(args.port)]
    print(" ".join(cmd), flush=True)
    print(f"open http://127.0.0.1:{args.port}/dashboard (study {args.name}: Pareto front, trials, importance)",
          flush=True)
    os.execv(exe, cmd)  # replaces this process: never returns


def build_parser(task_name: str = "classification", method_name: str | None = None) -> argparse.ArgumentParser:
    """The parser; ``train`` and ``unlearn`` carry the flags of the chosen task and method."""
    from orchestrator.methods import list_methods, method_for
    from orchestrator.tasks import get_task, list_tasks

    task = get_task(task_name)
    method = method_for(method_name or task.default_method, task.name)
    parser = argparse.ArgumentParser(prog="scissorhands", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    selectors = argparse.ArgumentParser(add_help=False)
    selectors.add_argument("--task", choices=list_tasks(), default="classification",
                           help="classifier unlearning, class erasure from a diffusion model, or concept erasure "
                                "from a text-to-image pipeline")

    p = sub.add_parser("train", parents=[selectors], help="train (or load from cache) the reference models")
    add_run_flags(p, task)
    p.set_defaults(func=functools.partial(cmd_train, task=task), config_classes=(task.config_class,))

    p = sub.add_parser("unlearn", parents=[selectors], help="one unlearning run, evaluated against its references")
    p.add_argument("--method", default=task.default_method,
                   help=f"{' | '.join(list_methods(task.name))} (--method NAME --help lists its knobs)")
    add_run_flags(p, task, method)
    p.add_argument("--json", default=None, help="write the result JSON here")
    p.set_defaults(func=functools.partial(cmd_unlearn, task=task, method=method),
                   config_classes=(task.config_class, method.config_class))

    storage_help = ("where sweeps live: a folder (default ./runs, also the default MLflow store) or a bucket, "
                    "s3://BUCKET/PREFIX or gs://BUCKET/PREFIX, credentials from the environment")
    p = sub.add_parser("sweep", help="Ray Tune + Optuna multi-objective sweep over a search space YAML")
    p.add_argument("space", help="search_spaces/*.yaml")
    p.add_argument("--trials", type=int, default=None, help="override the YAML's number of trials")
    p.add_argument("--name", default=None, help="sweep name (default: the YAML's name)")
    p.add_argument("--address", default=None, help="Ray cluster: auto | ray://HOST:10001 | HOST:6379 (default: local)")
    p.add_argument("--storage", default="runs", help=storage_help)
    p.add_argument("--tracking-uri", default=None, help="MLflow URI (default: $MLFLOW_TRACKING_URI or sqlite in --storage)")
    p.add_argument("--resource-wait", type=float, default=300.0, metavar="SECONDS",
                   help="with --address: how long to wait for a node that can hold one trial (an autoscaler "
                        "adding it) before refusing the sweep (default 300)")
    p.add_argument("--resume", action="store_true", help="finish an interrupted sweep of the same name")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("frontier", help="print a sweep's Pareto frontier (no Ray needed)")
    p.add_argument("name")
    p.add_argument("--storage", default="runs", help=storage_help)
    p.add_argument("--all", action="store_true", help="every trial, not only the frontier")
    p.add_argument("--importance", action="store_true",
                   help="each searched knob's importance per objective (PED-ANOVA and fANOVA over completed trials)")
    p.set_defaults(func=cmd_frontier)

    p = sub.add_parser("pick", help="register a sweep trial's model in the MLflow Model Registry")
    p.add_argument("name")
    p.add_argument("--rule", default=None,
                   help="min-METRIC or max-METRIC, e.g. min-avg-gap, max-RA (default: min- the task's headline "
                        "metric, min-avg_gap for classification), or closest-to-retrain (Deep Unlearn's: the "
                        "Euclidean norm of the per-metric gaps to the retrain model)")
    p.add_argument("--where", action="append", help="constraint METRIC>=X / METRIC<=X (repeatable), e.g. UA>=90")
    p.add_argument("--frontier-only", action="store_true", help="choose among frontier trials only")
    p.add_argument("--method", dest="pick_method", default=None,
                   help="a comparison sweep: choose among this method's trials")
    p.add_argument("--alias", default="champion")
    p.add_argument("--model-name", default=None, help="registered model name (default: the sweep name)")
    p.add_argument("--validate-seeds", type=int, default=5,
                   help="re-run the pick on N seeds the search never used before registering (0 skips)")
    p.add_argument("--trust-retrain", action="store_true",
                   help="set the alias even where the retrain reference is flagged as far below the original")
    p.add_argument("--json", default=None, help="write the pick and its validation here")
    p.add_argument("--address", default=None,
                   help="Ray cluster the held-out seeds run on: auto | ray://HOST:10001 | HOST:6379 (default: local)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--storage", default="runs", help=storage_help)
    p.add_argument("--tracking-uri", default=None)
    p.set_defaults(func=cmd_pick)

    p = sub.add_parser("ui", help="start the MLflow UI on 127.0.0.1 for the sweep store")
    p.add_argument("name", nargs="?", default=None, help="the sweep whose view to print (default: every sweep)")
    p.add_argument("--storage", default="runs", help=storage_help)
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser("dashboard", help="start optuna-dashboard on 127.0.0.1 for a sweep's Optuna study")
    p.add_argument("name")
    p.add_argument("--storage", default="runs", help=storage_help)
    p.add_argument("--port", type=int, default=8080)
    p.set_defaults(func=cmd_dashboard)
    return parser


def error_line(exc: UserError, args: argparse.Namespace | None) -> str:
    """The one place a config field becomes its flag: a FieldError from a command whose config
    the flags built (train, unlearn) names the flag; any other error reads as raised."""
    classes = getattr(args, "config_classes", ())
    if isinstance(exc, FieldError) and classes:
        return exc.named(flag_for(exc.field, *classes))
    return str(exc)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    selectors = argparse.ArgumentParser(add_help=False)
    selectors.add_argument("--task", default="classification")
    selectors.add_argument("--method", default=None)
    chosen, _ = selectors.parse_known_args(argv)
    args = None
    try:
        args = build_parser(chosen.task, chosen.method).parse_args(argv)
        return args.func(args)
    except UserError as exc:
        print(f"scissorhands: error: {error_line(exc, args)}", file=sys.stderr)
        return 2
    except DivergenceError as exc:
        print(f"scissorhands: diverged: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
