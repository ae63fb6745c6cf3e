"""`scissorhands pick`: choose a trial by rule and register its model under an alias."""
from __future__ import annotations

import operator
import re
from pathlib import Path

from orchestrator.errors import UserError
from orchestrator.sweep.frontier_table import load_results
from orchestrator.sweep.tracking import default_tracking_uri

_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


def parse_rule(rule: str) -> tuple[str, str]:
    """'min-avg-gap' / 'max-RA' -> (direction, metric); dashes in the metric may stand for underscores."""
    m = re.fullmatch(r"(min|max)-(.+)", rule)
    if not m:
        raise UserError(f"--rule {rule!r}: expected min-METRIC or max-METRIC (e.g. min-avg-gap, max-RA)")
    return m.group(1), m.group(2)


def _column(df, metric: str, flag: str) -> str:
    for candidate in (metric, metric.replace("-", "_")):
        if candidate in df:
            return candidate
    allowed = sorted(c for c in df.columns if df[c].dtype.kind == "f")
    raise UserError(f"{flag}: unknown metric {metric!r}; allowed: {', '.join(allowed)}")


def pick(storage: Path, name: str, rule: str, where: list[str], *, alias: str = "champion",
         model_name: str | None = None, tracking_uri: str | None = None, frontier_only: bool = False) -> dict:
    from mlflow.tracking import MlflowClient

    df, _ = load_results(storage, name)
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
        raise UserError(f"no completed trial of sweep {name!r} satisfies {' and '.join(where) or 'the rule'}")
    best = df.sort_values(col, ascending=direction == "min").iloc[0]

    uri = tracking_uri or default_tracking_uri(Path(storage))
    client = MlflowClient(uri)
    registered = model_name or name
    if not client.search_registered_models(f"name = '{registered}'"):
        client.create_registered_model(registered)
    run = client.get_run(best["mlflow_run_id"])
    version = client.create_model_version(registered, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    client.set_registered_model_alias(registered, alias, version.version)
    return {
        "trial_id": best["trial_id"], "run_id": best["mlflow_run_id"], "rule": rule, "where": where,
        col: float(best[col]), "pareto": bool(best.get("pareto", False)),
        "registered_model": registered, "version": int(version.version), "alias": alias,
        "uri": f"models:/{registered}@{alias}", "tracking_uri": uri,
    }
