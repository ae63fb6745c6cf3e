"""What the searcher and the scheduler make of a trial's results.

A trial reports after each seed: the running seed means (``status: partial``, ``seeds_done``),
then the means over all seeds (``status: ok``, or ``eroded`` where the task's guard flags a seed),
or ``failed`` / ``pruned`` without objective values. :class:`SweepSearch` tells Optuna a failed trial FAILED (no penalty value distorts the
TPE / NSGA model of the objectives), an eroded one FAILED too (the searcher is not steered towards
it), and one stopped by racing PRUNED; :class:`RacingScheduler`
stops a configuration whose first seeds already trail the frontier by more than the seed spread.
"""
from __future__ import annotations

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from orchestrator.sweep.pareto import pareto_mask
from orchestrator.sweep.spec import SweepSpec

PARTIAL = "partial"  # a report after some of the seeds
ERODED = "eroded"  # measured on every seed, but the task's guard says it destroyed what it should keep


class SweepSearch(OptunaSearch):
    """OptunaSearch that records a trial without objective values as what it was."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        from optuna.trial import TrialState

        status = (result or {}).get("status", "ok")
        if error or status == "ok" or trial_id in self._completed_trials:
            return super().on_trial_complete(trial_id, result, error)
        state = TrialState.PRUNED if status == PARTIAL else TrialState.FAIL
        self._ot_study.tell(self._ot_trials[trial_id], None, state=state)
        self._completed_trials.add(trial_id)


class RacingScheduler(FIFOScheduler):
    """Successive halving over seeds: after each seed but the last, a configuration whose running
    means are beaten in every objective by a frontier trial by more than ``margin`` seed
    standard deviations is stopped (its seeds left unrun). The spread of an objective is the
    median per-seed std over the completed trials; nothing is stopped before ``min_trials``
    trials have completed."""

    def __init__(self, spec: SweepSpec):
        super().__init__()
        self.metrics = [o.metric for o in spec.objectives]
        self.sign = np.array([1.0 if o.direction == "min" else -1.0 for o in spec.objectives])
        self.margin, self.min_trials = spec.racing.margin, spec.racing.min_trials
        self.means: list[np.ndarray] = []  # completed trials, signed so that lower is better
        self.stds: list[np.ndarray] = []

    @property
    def supports_buffered_results(self) -> bool:
        return False  # every per-seed report must reach on_trial_result

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if result.get("status") != PARTIAL or not self.beaten(result):
            return TrialScheduler.CONTINUE
        return TrialScheduler.STOP

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        if result and result.get("status") == "ok":
            self.means.append(self.sign * np.array([result[m] for m in self.metrics], dtype=float))
            self.stds.append(np.array([result.get(f"{m}_std", np.nan) for m in self.metrics], dtype=float))

    def beaten(self, result: dict) -> bool:
        if len(self.means) < self.min_trials:
            return False
        point = self.sign * np.array([result[m] for m in self.metrics], dtype=float)
        means = np.array(self.means)
        frontier = means[pareto_mask(means, ["min"] * len(self.metrics))]
        stds = np.array(self.stds)
        if np.isnan(stds).all(axis=0).any():  # one seed per trial: no spread to race against
            return False
        spread = np.nanmedian(stds, axis=0)
        return bool(((point - frontier) > self.margin * spread).all(axis=1).any())


def racing_scheduler(spec: SweepSpec) -> TrialScheduler | None:
    """The scheduler a spec asks for: racing, or Tune's default (every trial runs every seed)."""
    return RacingScheduler(spec) if spec.racing and len(spec.seeds) > 1 else None
