"""Layout of a sweep under ``--storage`` (default ./runs):
    <storage>/mlflow.db                    default MLflow store (sqlite), artifacts in mlartifacts/
    <storage>/<name>/spec.yaml             the search space as given
    <storage>/<name>/references/           the references (per seed), built once
    <storage>/<name>/tune/                 Ray Tune experiment state (what --resume restores);
                                           a comparison has one tune-<method>/ per method
    <storage>/<name>/results.parquet       one row per trial
    <storage>/<name>/frontier.png|.html    trials, frontier, original and retrain marked
"""
from __future__ import annotations

from pathlib import Path


class SweepPaths:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.references = self.root / "references"
        self.tune = self.root / "tune"  # what --resume restores
        self.results = self.root / "results.parquet"
        self.plot = self.root / "frontier.png"

    def tune_dir(self, method: str | None) -> Path:
        """Tune's state of a sweep, or of one method of a comparison."""
        return self.tune if method is None else self.root / f"tune-{method}"

    def started(self) -> bool:
        return self.tune.exists() or any(self.root.glob("tune-*"))
