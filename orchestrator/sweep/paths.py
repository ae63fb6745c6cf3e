"""Layout of a sweep under ``--storage`` (default ./runs):
    <storage>/mlflow.db                    default MLflow store (sqlite), artifacts in mlartifacts/
    <storage>/<name>/spec.yaml             the search space as given
    <storage>/<name>/references/           the references (per seed), built once
    <storage>/<name>/tune/                 Ray Tune experiment state (what --resume restores);
                                           a comparison has one tune-<method>/ per method
    <storage>/<name>/results.parquet       one row per trial
    <storage>/<name>/frontier.png|.html    trials, frontier, original and retrain marked
With a bucket as ``--storage`` the same layout lives there, and ``root`` is its node-local
mirror (``sweep/store.py``); the MLflow store default stays node-local.
"""
from __future__ import annotations

from pathlib import Path


class SweepPaths:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.references = self.root / "references"
        self.results = self.root / "results.parquet"
        self.plot = self.root / "frontier.png"

    @staticmethod
    def tune_name(method: str | None) -> str:
        """Tune's state of a sweep, or of one method of a comparison."""
        return "tune" if method is None else f"tune-{method}"
