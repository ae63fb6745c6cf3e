"""Layout of a sweep under ``--storage`` (default ./runs):
    <storage>/mlflow.db                    default MLflow store (sqlite), artifacts in mlartifacts/
    <storage>/<name>/spec.yaml             the search space as given
    <storage>/<name>/references/           the references (per seed), built once
    <storage>/<name>/tune/                 Ray Tune experiment state (what --resume restores)
    <storage>/<name>/results.parquet       one row per trial
    <storage>/<name>/frontier.png|.html    trials, frontier, original and retrain marked
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SweepPaths:
    root: Path

    @property
    def references(self) -> Path:
        return self.root / "references"

    @property
    def tune(self) -> Path:
        return self.root / "tune"

    @property
    def results(self) -> Path:
        return self.root / "results.parquet"

    @property
    def plot(self) -> Path:
        return self.root / "frontier.png"
