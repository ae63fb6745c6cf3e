"""`scissorhands pick`: choose a trial by rule, validate it on seeds the search never saw, and
register its model; the alias goes only to a pick that beats doing nothing on those seeds."""
from __future__ import annotations

import math
import operator
import re
from pathlib import Path

from orchestrator.errors import UserError
from orchestrator.stats import Summary, headline_pair, interval_text, paired_improvement, summarize
from orchestrator.sweep.frontier_table import load_results
from orchestrator.sweep.paths import SweepPaths
from orchestrator.sweep.references import reference_warnings
from orchestrator.sweep.spec import parse_spec
from orchestrator.sweep.store import SweepStore
from orchestrator.sweep.tracking import default_tracking_uri

_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


def default_rule(task) -> str:
    """``min-<headline>``: the pick a task's verdict is about; a task without one needs ``--rule``."""
    if task.headline_metric is None:
        raise UserError(f"--rule: task {task.name} has no headline metric to pick by; give min-METRIC or "
                        f"max-METRIC with one of {', '.join(task.metrics)}")
    return f"min-{task.headline_metric}"


def side_by_side_metrics(task) -> tuple[str, ...]:
    """The metrics pick's search-vs-held-out table shows: the task's table metrics and the
    untouched original's headline."""
    return tuple(dict.fromkeys([*task.table_metrics, *filter(None, [task.headline_baseline])]))


CLOSEST = "closest-to-retrain"
DISTANCE = "distance_to_retrain"


def parse_rule(rule: str) -> tuple[str, str]:
    """'min-avg-gap' / 'max-RA' -> (direction, metric); dashes in the metric may stand for
    underscores; ``closest-to-retrain`` -> ('min', 'distance_to_retrain')."""
    if rule == CLOSEST:
        return "min", DISTANCE
    m = re.fullmatch(r"(min|max)-(.+)", rule)
    if not m:
        raise UserError(f"--rule {rule!r}: expected min-METRIC, max-METRIC (e.g. min-avg-gap, max-RA) or {CLOSEST}")
    return m.group(1), m.group(2)


def with_distance_to_retrain(df, task):
    """Deep Unlearn's rule (Cadet et al. 2024, ``munl/hpsearch/find_trials.py``): the Euclidean
    norm of a trial's differences from the retrain model; here over the task's per-metric gaps
    (classification: |UA|, |RA|, |TA|, |MIA| gaps in points, seed means, unweighted)."""
    gaps = [m for m in task.gap_metrics if m.startswith("gap_") and m in df]
    if not gaps:
        raise UserError(f"--rule {CLOSEST}: the trials have no gap to a retrain model ({', '.join(task.gap_metrics) or 'none'}"
                        "); it needs a sweep with a retrain reference")
    return df.assign(**{DISTANCE: (df[gaps].astype(float) ** 2).sum(axis=1) ** 0.5})


def _column(df, metric: str, flag: str) -> str:
    for candidate in (metric, metric.replace("-", "_")):
        if candidate in df:
            return candidate
    allowed = sorted(c for c in df.columns if df[c].dtype.kind == "f")
    raise UserError(f"{flag}: unknown metric {metric!r}; allowed: {', '.join(allowed)}")


def choose(df, rule: str, where: list[str], frontier_only: bool):
    """The completed trial that is best by ``rule`` among those meeting every ``where``."""
    direction, metric = parse_rule(rule)
    df = df[df.get("status") == "ok"] if "status" in df else df.iloc[0:0]
    col = _column(df, metric, "--rule")
    for cond in where:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*(>=|<=|>|<)\s*([-+0-9.eE]+)\s*", cond)
        if not m:
            raise UserError(f"--where {cond!r}: expected METRIC>=X, METRIC<=X, METRIC>X or METRIC<X")
        df = df[_OPS[m.group(2)](df[_column(df, m.group(1), '--where')], float(m.group(3)))]
    if frontier_only:
        df = df[df["pareto"].fillna(False).astype(bool)]
    if df.empty:
        raise UserError(f"no completed trial satisfies {' and '.join(where) or 'the rule'}")
    return df.sort_values(col, ascending=direction == "min").iloc[0], col


def searched_config(spec, row) -> dict:
    """The trial's searched knobs, typed as the search space says (Parquet keeps ints as floats)."""
    out = {}
    for key, dist in spec.search.items():
        value = row[f"config.{key}"]
        out[key] = int(value) if dist.type == "int" else (float(value) if dist.type != "choice" else value)
    return out


def held_out_seeds(search_seeds: list[int], count: int) -> list[int]:
    first = max(search_seeds) + 1
    return list(range(first, first + count))


def validate(spec, searched: dict, seeds: list[int], location: str, progress: bool) -> dict:
    """Re-run the configuration on ``seeds`` (new forget sets, new references, new unlearning
    randomness) as Ray tasks: each seed's references, then its run once they exist, on
    whichever nodes have the resources. A seed that diverges counts as a failure of the pick.
    The verdict is the paired improvement of the task's headline metric over the original's:
    a task without one cannot be validated (refused before anything runs)."""
    from orchestrator.sweep.work import (distinct_records, gather, gather_references, submit_references,
                                         submit_validation)

    task = spec.task_contract
    pair = headline_pair(task)
    if pair is None:
        raise UserError(f"--validate-seeds {len(seeds)}: task {task.name} has no headline metric to compare a pick "
                        "with doing nothing on held-out seeds; pass --validate-seeds 0 to register it unvalidated")
    metric, baseline = pair
    held_out = spec.model_copy(update={"seeds": seeds})
    references = submit_references(held_out, location)
    runs = {seed: submit_validation(spec, searched, seed, location, [r for s, _, r in references if s == seed])
            for seed in seeds}
    built = gather_references(references, "held-out references", progress)
    held_out_refs: dict[int, dict] = {}
    for (seed, role), record in built.items():
        if record["metrics"] is not None:
            held_out_refs.setdefault(seed, {})[role] = record["metrics"]
    done = gather(runs, _describe_run, "validate on held-out seeds", progress)
    records = [done[seed] for seed in seeds]
    per_seed = [r["metrics"] for r in records if "metrics" in r]
    diverged = [{"seed": r["seed"], "error": r["diverged"]} for r in records if "diverged" in r]
    # Each held-out seed's own figures too: a mean hides which seed fell short.
    out: dict = {"seeds": seeds, "diverged": diverged,
                 "per_seed": [{"seed": r["seed"], **r["metrics"]} for r in records if "metrics" in r],
                 "work": [{"what": f"reference {r['role']}", **_where(r)} for r in distinct_records(built)]
                 + [{"what": "unlearning run", **_where(r)} for r in records],
                 "warnings": reference_warnings(held_out, held_out_refs)}
    keys = per_seed[0] if per_seed else {}
    out["metrics"] = {k: summarize(m[k] for m in per_seed).as_dict() for k in keys}
    for key in pair:
        if key in out["metrics"]:
            out[key] = _interval(out["metrics"][key])
    # Without a retrain model no seed reports the headline: nothing to compare (every seed
    # diverged: a failed pick, compared over no seeds).
    if not per_seed or (metric in keys and baseline in keys):
        s, better = paired_improvement([m[baseline] for m in per_seed], [m[metric] for m in per_seed])
        out["improvement"] = _interval(s.as_dict())
        out["improves_on_original"] = better and not diverged
    return out


def stored_warnings(storage: Path, name: str) -> list[str]:
    """The warnings a finished sweep recorded about its references (``summary.json``)."""
    import json

    path = SweepPaths(storage, name).summary
    return json.loads(path.read_text()).get("warnings", []) if path.is_file() else []


def _where(record: dict) -> dict:
    return {k: record[k] for k in ("seed", "node_id", "node_ip", "pid", "seconds")}


def _describe_run(record: dict) -> str:
    outcome = "diverged" if "diverged" in record else "done"
    return (f"held-out seed {record['seed']}: {outcome} in {record['seconds']:.1f} s on node "
            f"{record['node_id'][:8]} ({record['node_ip']})")


def _interval(s: dict) -> dict:
    return {"mean": s["mean"], "ci95_low": s["ci95_low"], "ci95_high": s["ci95_high"]}


def _search_summary(row, key: str) -> Summary:
    mean, half = float(row[key]), float(row.get(f"{key}_ci95", math.nan))
    n = int(row.get(f"{key}_n", 0) or 0)
    return Summary(mean, float(row.get(f"{key}_std", math.nan)), float(row.get(f"{key}_se", math.nan)), n,
                   mean - half, mean + half)


def side_by_side(row, validation: dict | None, metrics: tuple[str, ...]) -> str:
    """Search vs validated means with 95% intervals, one metric a line (those of ``metrics``
    the trial has), then the paired improvement."""
    lines = [f"{'metric':<18} {'search seeds':<28} {'held-out seeds':<28}"]
    for key in metrics:
        if key not in row:
            continue
        held = validation["metrics"].get(key) if validation else None
        held_text = interval_text(Summary(**held)) if held else "-"
        lines.append(f"{key:<18} {interval_text(_search_summary(row, key)):<28} {held_text:<28}")
    if "improvement" in row:
        search = f"{row['improvement']:.3f} [{row['improvement_ci95_low']:.3f}, {row['improvement_ci95_high']:.3f}]"
        held = validation.get("improvement") if validation else None
        held_text = f"{held['mean']:.3f} [{held['ci95_low']:.3f}, {held['ci95_high']:.3f}]" if held else "-"
        lines.append(f"{'improvement':<18} {search:<28} {held_text:<28}")
    return "\n".join(lines)


def pick(storage: str | Path | SweepStore, name: str, rule: str | None, where: list[str], *, alias: str = "champion",
         model_name: str | None = None, tracking_uri: str | None = None, frontier_only: bool = False,
         validate_seeds: int = 5, progress: bool = True, method: str | None = None,
         address: str | None = None, trust_retrain: bool = False) -> tuple[dict, str]:
    """Returns the pick (the ``--json`` contract) and a search-vs-validation table. ``rule``
    None: the task's :func:`default_rule`. The validation runs on the Ray cluster at
    ``address`` (None: a local Ray). A sweep (or held-out seed) whose references the task
    warns about gets no alias unless ``trust_retrain``."""
    from mlflow.tracking import MlflowClient

    from orchestrator.sweep.work import ensure_ray

    if validate_seeds < 0:
        raise UserError(f"--validate-seeds {validate_seeds}: must be >= 0 (0 skips validation)")
    store = storage if isinstance(storage, SweepStore) else SweepStore(storage)
    storage = store.root
    df, spec_dict = load_results(storage, name)
    if method is not None:  # one method of a comparison
        methods = sorted(df["method"].dropna().unique()) if "method" in df else []
        if method not in methods:
            raise UserError(f"--method {method!r}: no trials of it in sweep {name!r}; methods there: "
                            f"{', '.join(methods) or 'none'}")
        df = df[df["method"] == method]
    specs = {s.method_contract.name: s for s in parse_spec(spec_dict).per_method()}
    task = next(iter(specs.values())).task_contract  # a comparison's methods share one task
    rule = default_rule(task) if rule is None else rule
    if rule == CLOSEST:
        df = with_distance_to_retrain(df, task)
    best, col = choose(df, rule, where, frontier_only)
    spec = specs[best["method"]] if "method" in best.index and best["method"] in specs else next(iter(specs.values()))
    searched = searched_config(spec, best)
    validation = None
    if validate_seeds:
        seeds = held_out_seeds(spec.seeds, validate_seeds)
        ensure_ray(address)
        validation = validate(spec, searched, seeds, store.location, progress)

    warnings = stored_warnings(storage, name) + (validation or {}).get("warnings", [])

    uri = tracking_uri or default_tracking_uri(Path(storage))
    client = MlflowClient(uri)
    run_id = best["mlflow_run_id"]
    run = client.get_run(run_id)
    if validation:
        for key, s in validation["metrics"].items():
            for stat in ("mean", "ci95_low", "ci95_high"):
                if math.isfinite(s[stat]):
                    client.log_metric(run_id, f"validation.{key}.{stat}", s[stat])
        if "improvement" in validation:
            client.log_metric(run_id, "validation.improves_on_original", float(validation["improves_on_original"]))
        client.set_tag(run_id, "validation.seeds", ",".join(map(str, validation["seeds"])))
        client.set_tag(run_id, "validation.node_ids", ",".join(sorted({w["node_id"] for w in validation["work"]})))

    registered = model_name or name
    if not client.search_registered_models(f"name = '{registered}'"):
        client.create_registered_model(registered)
    tags = {"selection_rule": rule + "".join(f" where {w}" for w in where) + (" frontier-only" if frontier_only else ""),
            "trial_id": str(best["trial_id"]), "search_seeds": ",".join(map(str, spec.seeds)),
            "forget_digest": run.data.tags.get("forget_digest", "")}
    if validation:
        tags["validation_seeds"] = ",".join(map(str, validation["seeds"]))
        for key in (*headline_pair(task), "improvement"):
            if key in validation:
                v = validation[key]
                tags[f"validated_{key}"] = f"{v['mean']:.4f} [{v['ci95_low']:.4f}, {v['ci95_high']:.4f}]"
        if "improves_on_original" in validation:
            tags["improves_on_original"] = str(validation["improves_on_original"]).lower()
    if "preprocessing" in run.data.tags:  # how inputs must be prepared for the registered model
        tags["preprocessing"] = run.data.tags["preprocessing"]
    if warnings:
        tags["reference_warnings"] = " | ".join(warnings)[:5000]
    version = client.create_model_version(registered, f"{run.info.artifact_uri}/model", run_id=run_id, tags=tags)
    # The alias is what users deploy: it goes only to a pick that held up on unseen seeds, measured
    # against references worth measuring against.
    withheld = None
    if validation is not None and not validation.get("improves_on_original", True):
        withheld = "not better than doing nothing on the held-out seeds"
    elif warnings and not trust_retrain:
        withheld = "the sweep's references are flagged (warnings); pass --trust-retrain to set it anyway"
    endorsed = withheld is None
    if endorsed:
        client.set_registered_model_alias(registered, alias, version.version)
    search = {k: float(best[k]) for k in (*task.metrics, *task.baseline_metrics, "improvement") if k in best.index}
    return {
        "trial_id": str(best["trial_id"]), "config": searched, "search": search, "validation": validation,
        "model_uri": f"models:/{registered}@{alias}" if endorsed else f"models:/{registered}/{version.version}",
        "run_id": run_id, "rule": rule, "where": where, col: float(best[col]),
        "pareto": bool(best.get("pareto", False)), "registered_model": registered, "version": int(version.version),
        "alias": alias if endorsed else None, "alias_withheld": withheld, "warnings": warnings, "tracking_uri": uri,
    }, side_by_side(best, validation, side_by_side_metrics(task))
