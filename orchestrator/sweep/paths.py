"""Layout of a sweep under ``--storage`` (default ./runs), the one place its paths are spelled:
    <storage>/mlflow.db                    default MLflow store (sqlite), artifacts in mlartifacts/<name>/
    <storage>/references/                  the references of every sweep here (per seed and role), each
                                           built once by a Ray task (a reference cache, content-keyed,
                                           ``orchestrator/cache.py``): two sweeps that need the same
                                           reference share it; trials/<trial>/<seed>/ the trials' files
    <storage>/<name>/spec.yaml             the search space as given
    <storage>/<name>/spec.resolved.json    the validated spec (what trials, frontier and pick read)
    <storage>/<name>/tune/                 Ray Tune experiment state (what --resume restores);
                                           a comparison has one tune-<method>/ per method
    <storage>/<name>/results.parquet       one row per trial
    <storage>/<name>/summary.json          trials, frontier, hypervolume, plots, timing, importance
    <storage>/<name>/optuna.db             the sweep as an Optuna study (sqlite; optuna-dashboard opens it),
                                           unless the spec's study_storage names another database
    <storage>/<name>/importance.png|.html  each searched knob's importance per objective
    <storage>/<name>/frontier.png|.html    trials, frontier, original and retrain marked
    <storage>/<name>/frontier_methods.png|.html  a comparison: every method's frontier
With a bucket as ``--storage`` the same layout lives there, and the local storage is its
node-local mirror (``sweep/store.py``); the MLflow store default stays node-local. A
:class:`SweepStore` takes the keys :meth:`SweepPaths.rel` gives.
"""
from __future__ import annotations

from pathlib import Path

MLFLOW_DB = "mlflow.db"
MLARTIFACTS = "mlartifacts"
SPEC_RESOLVED = "spec.resolved.json"
TUNE = "tune"
REFERENCES = "references"  # shared by the sweeps of one storage


def mlflow_db(storage: str | Path) -> Path:
    """The default MLflow store beside the sweeps (absolute: a sqlite URI needs it)."""
    return Path(storage).resolve() / MLFLOW_DB


class SweepPaths:
    """Every path of sweep ``name`` in the local folder ``storage`` (a folder ``--storage``,
    or a bucket's local mirror)."""

    def __init__(self, storage: str | Path, name: str):
        self.storage = Path(storage)
        self.name = name
        self.root = self.storage / name
        self.spec_yaml = self.root / "spec.yaml"
        self.spec_resolved = self.root / SPEC_RESOLVED
        self.references = self.storage / REFERENCES
        self.results = self.root / "results.parquet"
        self.summary = self.root / "summary.json"
        self.plot = self.root / "frontier.png"  # and its .html
        self.methods_plot = self.root / "frontier_methods.png"  # and its .html
        self.study = self.root / "optuna.db"
        self.importance_plot = self.root / "importance.png"  # and its .html

    def rel(self, path: str | Path) -> str:
        """``path`` (one of these, or a file inside) relative to the storage: a store's key."""
        return Path(path).relative_to(self.storage).as_posix()

    @property
    def synced(self) -> tuple[Path, ...]:
        """The files ``frontier``, ``pick`` and ``--resume`` pull from a bucket."""
        return self.spec_yaml, self.spec_resolved, self.results, self.summary, self.study

    def study_url(self, study_storage: str | None = None) -> str:
        """The Optuna study's database: the spec's ``study_storage``, else the sweep's sqlite file."""
        return study_storage or f"sqlite:///{self.study.resolve()}"

    @property
    def mlflow_db(self) -> Path:
        return mlflow_db(self.storage)

    @property
    def mlflow_artifacts(self) -> Path:
        """Where the default MLflow store keeps this sweep's artifacts."""
        return self.storage.resolve() / MLARTIFACTS / self.name

    @staticmethod
    def tune_name(method: str | None) -> str:
        """Tune's state of a sweep, or of one method of a comparison."""
        return TUNE if method is None else f"{TUNE}-{method}"

    def study_name(self, method: str | None) -> str:
        """The Optuna study of a sweep, or of one method of a comparison."""
        return self.name if method is None else f"{self.name}.{method}"

    @staticmethod
    def is_tune(folder_name: str) -> bool:
        """A folder of Tune state (``tune`` or ``tune-<method>``)."""
        return folder_name == TUNE or folder_name.startswith(f"{TUNE}-")

    def tune(self, method: str | None = None) -> Path:
        return self.root / self.tune_name(method)

    @staticmethod
    def trial_files(references: Path, trial_id: str, seed: int) -> Path:
        """A trial's files on one seed (sample grids): inside the references folder it ran
        against (the storage's, or a node's mirror of the bucket's)."""
        return Path(references) / "trials" / trial_id / str(seed)

    @staticmethod
    def sweeps(storage: str | Path) -> list[str]:
        """The names of the sweeps in ``storage`` (those with a resolved spec)."""
        return sorted(p.parent.name for p in Path(storage).glob(f"*/{SPEC_RESOLVED}"))
