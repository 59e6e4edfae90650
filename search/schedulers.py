"""The trial schedulers, whose decisions live in the search's record so that a resume continues them.

Ray saves no scheduler with its experiment state: its ASHA starts a resumed
search with empty rungs, and promotes differently from a search that ran
through. `Asha` here decides as Ray's `AsyncHyperBandScheduler` does (same
milestones, same cutoff, one bracket) over rungs kept in the record.
Both schedulers also end the search's trials once the recorder says it must
end (a budget, fail-fast): Ray's `Stopper` would be pickled into Ray's state.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from search.config import SearchConfig
from search.recorder import Recorder
from vae.records import DUPLICATE_OF, RANKED_BY, EndState, rung_epochs


class Fifo(FIFOScheduler):
    """Every trial runs its course, unless the search must end: then each stops at its next result."""

    def __init__(self, recorder: Recorder) -> None:
        super().__init__()
        self.recorder = recorder

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        if self.recorder.state.trials.get(trial.trial_id, {}).get("end_state"):
            return TrialScheduler.STOP  # ended in the record; Ray's older saved state resumed it
        self.recorder.reported(trial.trial_id, result)
        stop = self.recorder.stop_reason(trial.trial_id, result.get("epoch"))
        if stop:
            self.recorder.stopped(trial.trial_id, *stop)
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        """A search that must end starts nothing more, and ends the trials still waiting to start."""
        if self.recorder.state.ending is None:
            return super().choose_trial_to_run(tune_controller)
        stop = self.recorder.stop_reason("", None)  # None while interrupted: those resume
        # a copy: stop_trial (which Ray lets schedulers call) discards from the set get_live_trials returns
        for trial in list(tune_controller.get_live_trials()) if stop else []:
            if trial.status in (Trial.PENDING, Trial.PAUSED):
                self.recorder.stopped(trial.trial_id, *stop)  # type: ignore[misc]
                tune_controller.stop_trial(trial)
        return None


class Asha(Fifo):
    """Asynchronous successive halving over epochs, ranking by the running minimum of the validation loss.

    A trial that reaches a milestone is recorded there and stopped unless it is
    in the best 1/reduction_factor of the trials recorded there before it (Ray's
    cutoff: the percentile of the rung's values, NaN-aware). Its rungs are the
    record's `scheduler.rungs`, `{milestone: {trial id: value}}`.
    """

    def __init__(self, recorder: Recorder, max_epochs: int, grace_period: int, reduction_factor: float) -> None:
        super().__init__(recorder)
        self.max_epochs, self.rf = max_epochs, reduction_factor
        self.milestones = rung_epochs(max_epochs, grace_period, reduction_factor)
        rungs = recorder.state.scheduler.setdefault("rungs", {})
        self.rungs: dict[str, dict[str, float]] = {str(m): rungs.setdefault(str(m), {}) for m in self.milestones}

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        if super().on_trial_result(tune_controller, trial, result) == TrialScheduler.STOP:
            return TrialScheduler.STOP
        if "epoch" not in result or RANKED_BY not in result or result.get(DUPLICATE_OF):
            return TrialScheduler.CONTINUE  # a replay runs out its twin's epochs, stays out of the rungs, and ends
        epoch = int(result["epoch"])  # as its twin did: the twin's own results were judged when it trained
        if epoch >= self.max_epochs:  # the trial ends here by itself, as it reports
            return TrialScheduler.STOP
        if self.judge(trial.trial_id, epoch, result[RANKED_BY]):
            self.recorder.stopped(trial.trial_id, EndState.PRUNED, f"stopped by ASHA after epoch {epoch}")
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        """A trial that ended by itself (early stopping) still counts at the rung it reached."""
        if not result or result.get(DUPLICATE_OF) or "epoch" not in result or RANKED_BY not in result:
            return
        if int(result["epoch"]) < self.max_epochs:
            self.judge(trial.trial_id, int(result["epoch"]), result[RANKED_BY])

    def judge(self, trial_id: str, epoch: int, loss: float) -> bool:
        """Record the trial at the highest milestone it reached and has no value at; True: stop it."""
        for milestone in reversed(self.milestones):
            rung = self.rungs[str(milestone)]
            if epoch < milestone or trial_id in rung:
                continue
            rewards = [-v for v in rung.values()]  # Ray ranks rewards: minus the loss
            cutoff = np.nanpercentile(rewards, (1 - 1 / self.rf) * 100) if rewards else None
            rung[trial_id] = float(loss)
            self.recorder.save()
            return bool(cutoff is not None and -loss < cutoff)
        return False

    def debug_string(self) -> str:
        return f"vaesearch ASHA over epochs {self.milestones}: " + ", ".join(
            f"{m}: {len(self.rungs[str(m)])} recorded" for m in self.milestones
        )


def scheduler(cfg: SearchConfig, recorder: Recorder) -> Fifo:
    """ASHA (the default) or FIFO (no stops but the search's own end), built fresh from the record."""
    if cfg.scheduler == "fifo":
        return Fifo(recorder)
    return Asha(recorder, cfg.budget.max_epochs, cfg.asha.grace_period, cfg.asha.reduction_factor)
