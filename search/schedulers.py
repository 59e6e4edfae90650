"""The trial schedulers, whose decisions live in the search's record so that a resume continues them.

Ray saves no scheduler with its experiment state: its ASHA starts a resumed
search with empty rungs, and promotes differently from a search that ran
through. `Asha` here decides as Ray's `AsyncHyperBandScheduler` does (same
milestones, same cutoff, one bracket) over rungs kept in the record.
`Promotion` is successive halving that pauses trials at rungs and promotes the
best, which Ray does not offer. All of them also end the search's trials once the
recorder says it must end (a budget, fail-fast): Ray's `Stopper` would be pickled
into Ray's state.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from search.config import SearchConfig
from search.recorder import ASHA_STOP, Recorder
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
        # a copy: stop_trial (which Ray lets schedulers call) discards from the set get_live_trials returns
        for trial in list(tune_controller.get_live_trials()):
            if trial.status not in (Trial.PENDING, Trial.PAUSED):
                continue
            epoch = self.recorder.state.trials.get(trial.trial_id, {}).get("epoch")  # a paused trial has one
            stop = self.recorder.stop_reason(trial.trial_id, epoch)  # None while interrupted: those resume
            if stop:
                self.recorder.stopped(trial.trial_id, *stop)
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
            self.recorder.stopped(trial.trial_id, EndState.PRUNED, f"{ASHA_STOP} after epoch {epoch}")
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


class Listener(Protocol):
    """Who hears of pauses and promotions, which Ray's callbacks and searchers have no hook for."""

    def paused(self, trial_id: str, epoch: int, loss: float) -> None: ...

    def promoted(self, trial_id: str, epoch: int) -> None: ...


class Promotion(Asha):
    """Successive halving by promotion (the ASHA paper's algorithm; Syne Tune's `type="promotion"`).

    A trial that reaches a rung is recorded there and paused (Ray keeps its last
    checkpoint). A paused trial among the best floor(n / reduction_factor) of its
    rung's n recorded values is promoted, the top rung first, as soon as Ray asks
    for a trial to run; Ray resumes it from its checkpoint once resources allow,
    and it trains to the next rung. Promotion is final, as in the paper. A rung
    thus promotes nothing before it holds reduction_factor results, the fewest
    that rank one trial above others: Ray's ASHA, with no cutoff while a rung is empty, lets the first
    arrival run on whatever it is worth. Otherwise a new trial starts; once none
    is left to start and nothing runs, the trials still paused end as pruned.

    The record keeps the rungs, `scheduler.promoted` (`{milestone: [trial id]}`)
    and each paused trial's `paused` milestone, so a resume makes the same
    decisions. Replays report without checkpoints and are never paused.
    """

    def __init__(
        self, recorder: Recorder, max_epochs: int, grace_period: int, reduction_factor: float,
        num_samples: int, listeners: list[Listener],
    ) -> None:  # fmt: skip
        super().__init__(recorder, max_epochs, grace_period, reduction_factor)
        self.num_samples, self.listeners = num_samples, listeners
        promoted = recorder.state.scheduler.setdefault("promoted", {})
        self.promoted: dict[str, list[str]] = {str(m): promoted.setdefault(str(m), []) for m in self.milestones}

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        """A trial the record has paused stays paused on resume (Ray resumes its paused trials as pending)."""
        if self._paused_at(trial.trial_id) is not None and trial.status == Trial.PENDING:
            trial.set_status(Trial.PAUSED)  # before Ray files the trial by its status, right after this call

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        if Fifo.on_trial_result(self, tune_controller, trial, result) == TrialScheduler.STOP:
            return TrialScheduler.STOP
        if "epoch" not in result or RANKED_BY not in result or result.get(DUPLICATE_OF):
            return TrialScheduler.CONTINUE  # a replay has no checkpoint to resume from: it runs out, unjudged
        epoch, loss = int(result["epoch"]), float(result[RANKED_BY])
        if epoch >= self.max_epochs:
            return TrialScheduler.STOP
        rung = self._rung(epoch)
        if rung is None or trial.trial_id in self.rungs[str(rung)]:
            return TrialScheduler.CONTINUE
        self.rungs[str(rung)][trial.trial_id] = loss
        self.recorder.trial(trial.trial_id)["paused"] = rung
        self.recorder.save()
        for listener in self.listeners:
            listener.paused(trial.trial_id, epoch, loss)
        return TrialScheduler.PAUSE

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        """A promotion first, from the top rung down; else a new trial; else, with nothing left, the end."""
        if self.recorder.state.ending is not None:
            return super().choose_trial_to_run(tune_controller)
        live = [t for t in tune_controller.get_trials() if t in tune_controller.get_live_trials()]  # in order
        trials = {t.trial_id: t for t in live}
        for milestone in reversed(self.milestones):
            for trial_id in self.promotable(milestone):
                if trial_id in trials and trials[trial_id].status in (Trial.PAUSED, Trial.PENDING):
                    self.promote(trial_id, milestone)
                    return trials[trial_id]
        waiting = [t for t in live if t.status == Trial.PENDING and self._paused_at(t.trial_id) is None]
        if waiting:
            return waiting[0]
        busy = any(t.status in (Trial.RUNNING, Trial.PENDING) for t in live)  # a failed one may stay live: not busy
        if len(self.recorder.state.trials) >= self.num_samples and not busy:
            for trial in [t for t in live if t.status == Trial.PAUSED]:  # nothing runs, nothing is left to propose
                rung = self._paused_at(trial.trial_id)
                reason = f"paused at epoch {rung} and not promoted: not in the best 1/{self.rf:g} of its rung"
                self.recorder.stopped(trial.trial_id, EndState.PRUNED, reason)
                tune_controller.stop_trial(trial)
        return None

    def promotable(self, milestone: int) -> list[str]:
        """The rung's paused trials among its best floor(n / reduction_factor), best first."""
        rung = self.rungs[str(milestone)]
        ranked = sorted(rung, key=lambda tid: rung[tid] if not math.isnan(rung[tid]) else math.inf)  # NaN: last
        best = ranked[: int(len(rung) // self.rf)]
        return [tid for tid in best if tid not in self.promoted[str(milestone)] and self._paused_at(tid) == milestone]

    def promote(self, trial_id: str, milestone: int) -> None:
        """Recorded before Ray resumes the trial: a resume finds it promoted, not paused."""
        self.promoted[str(milestone)].append(trial_id)
        trial = self.recorder.trial(trial_id)
        trial.pop("paused", None)
        trial["promoted"] = True
        self.recorder.save()
        for listener in self.listeners:
            listener.promoted(trial_id, milestone)

    def _rung(self, epoch: int) -> int | None:
        """The highest rung at or below `epoch`; None before the first."""
        return next((m for m in reversed(self.milestones) if m <= epoch), None)

    def _paused_at(self, trial_id: str) -> int | None:
        return self.recorder.state.trials.get(trial_id, {}).get("paused")

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        """A trial that ended by itself before a rung still counts there (it is not paused: it ended)."""
        if result and not result.get(DUPLICATE_OF) and "epoch" in result and RANKED_BY in result:
            epoch = int(result["epoch"])
            rung = self._rung(epoch)
            if rung is not None and epoch < self.max_epochs:
                self.rungs[str(rung)].setdefault(trial.trial_id, float(result[RANKED_BY]))
                self.recorder.save()

    def debug_string(self) -> str:
        return f"vaesearch promotion over epochs {self.milestones}: " + ", ".join(
            f"{m}: {len(self.rungs[str(m)])} recorded, {len(self.promoted[str(m)])} promoted" for m in self.milestones
        )


def scheduler(cfg: SearchConfig, recorder: Recorder, listeners: list[Listener] | None = None) -> Fifo:
    """ASHA (the default), promotion or FIFO (no stops but the search's own end), built fresh from the record."""
    if cfg.scheduler == "fifo":
        return Fifo(recorder)
    halving = (recorder, cfg.budget.max_epochs, cfg.asha.grace_period, cfg.asha.reduction_factor)
    if cfg.scheduler == "promotion":
        return Promotion(*halving, cfg.budget.num_samples, listeners or [])
    return Asha(*halving)
