"""The searcher and the scheduler: what Optuna is told of a failed or raced trial, and when
racing stops a configuration. A real Optuna study; the sweep tests run both end to end."""
from __future__ import annotations

import pytest
from optuna.trial import TrialState
from ray import tune
from ray.tune.schedulers import TrialScheduler

from orchestrator.sweep.racing import PARTIAL, RacingScheduler, SweepSearch
from orchestrator.sweep.spec import Racing
from tests.measured import tiny_space_spec

OBJECTIVES = (("forget_gap", "min"), ("RA", "max"))


def _searcher() -> SweepSearch:
    return SweepSearch(space={"x": tune.uniform(0, 1)}, metric=["forget_gap", "RA"], mode=["min", "max"])


@pytest.mark.parametrize("status, state", [("failed", TrialState.FAIL), ("pruned", TrialState.FAIL),
                                           (PARTIAL, TrialState.PRUNED), ("ok", TrialState.COMPLETE)])
def test_the_study_records_what_happened_to_a_trial(status, state):
    searcher = _searcher()
    assert "x" in searcher.suggest("t1")
    result = {"status": status, "error": "loss became nan"}
    if status in ("ok", PARTIAL):
        result.update(forget_gap=1.5, RA=97.0)
    searcher.on_trial_complete("t1", result)
    (trial,) = searcher._ot_study.trials
    assert trial.state == state
    assert trial.values == ([1.5, 97.0] if state == TrialState.COMPLETE else None)  # no penalty values


def test_an_errored_trial_fails_and_a_second_completion_is_ignored():
    searcher = _searcher()
    searcher.suggest("t1")
    searcher.on_trial_complete("t1", None, error=True)
    searcher.on_trial_complete("t1", {"status": "failed"})
    assert [t.state for t in searcher._ot_study.trials] == [TrialState.FAIL]


def _scheduler(margin=1.0, min_trials=2) -> RacingScheduler:
    spec = tiny_space_spec(seeds="[0, 1, 2]", objectives=OBJECTIVES)
    return RacingScheduler(spec.model_copy(update={"racing": Racing(margin=margin, min_trials=min_trials)}))


def _done(scheduler, forget_gap, ra, std=(1.0, 0.5)):
    scheduler.on_trial_complete(None, None, {"status": "ok", "forget_gap": forget_gap, "RA": ra,
                                             "forget_gap_std": std[0], "RA_std": std[1]})


def _partial(forget_gap, ra):
    return {"status": PARTIAL, "seeds_done": 1, "forget_gap": forget_gap, "RA": ra}


def test_racing_stops_only_what_a_frontier_trial_beats_by_more_than_the_spread_in_every_objective():
    scheduler = _scheduler()
    _done(scheduler, 2.0, 98.0)
    # One completed trial is fewer than min_trials: nothing is stopped yet.
    assert scheduler.on_trial_result(None, None, _partial(50.0, 10.0)) == TrialScheduler.CONTINUE
    _done(scheduler, 4.0, 99.0, std=(3.0, 1.5))  # spreads: median std 2.0 (forget_gap), 1.0 (RA)
    assert scheduler.on_trial_result(None, None, _partial(4.1, 96.9)) == TrialScheduler.STOP  # 2.1 and 1.1 behind
    assert scheduler.on_trial_result(None, None, _partial(3.9, 96.9)) == TrialScheduler.CONTINUE  # within 2.0
    assert scheduler.on_trial_result(None, None, _partial(50.0, 98.5)) == TrialScheduler.CONTINUE  # RA within 1.0
    # The final report (all seeds) is never stopped, however bad.
    final = {**_partial(50.0, 10.0), "status": "ok"}
    assert scheduler.on_trial_result(None, None, final) == TrialScheduler.CONTINUE
    # A wider margin asks for more.
    wide = _scheduler(margin=3.0)
    _done(wide, 2.0, 98.0)
    _done(wide, 4.0, 99.0, std=(3.0, 1.5))
    assert wide.on_trial_result(None, None, _partial(4.1, 96.9)) == TrialScheduler.CONTINUE


def test_racing_needs_a_seed_spread():
    scheduler = _scheduler(min_trials=1)
    _done(scheduler, 2.0, 98.0, std=(float("nan"), float("nan")))
    assert scheduler.on_trial_result(None, None, _partial(90.0, 1.0)) == TrialScheduler.CONTINUE
