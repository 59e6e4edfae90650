"""The driver's account of a search, kept in its record: how each trial went, why the search stops.

One `Recorder` per driver session owns the record (`search.state.SearchState`)
and saves it at each fact that a resume needs. The scheduler reports results
and stops to it; the searcher and the callbacks take each trial's end from it
(`ended`), so that Optuna, MLflow and the console say the same, and the record
has the end before Optuna or MLflow hear of it (but for a trial Ray failed for
good, which Ray tells the searcher before any callback: Optuna FAIL, then the record).
"""

from __future__ import annotations

import math
import signal
import time
from pathlib import Path
from typing import Any

from ray import tune

from search.state import Place, SearchState
from vae.records import DUPLICATE_OF, END_REASON, END_STATE, ERROR_TYPE, RANKED_BY, EndState

BUDGET_SPENT = "stopped: the search's epoch budget was spent"
ASHA_STOP = "stopped by ASHA"  # how a reason of ASHA's own begins


class Ending:
    """Why a driver session ended, as the record's `ending` holds it."""

    FINISHED = "finished"  # every trial ran its course
    INTERRUPTED = "interrupted"  # Ctrl-C (SIGINT) or SIGUSR1: resumable
    TIME = "time"  # budget.time_limit_s ran out
    EPOCHS = "epochs"  # budget.max_total_epochs were trained
    FAIL_FAST = "fail-fast"  # the first trials all failed alike


def measured(result: dict) -> bool:
    """A result that holds an epoch's validation (not a failure's closing report)."""
    value = result.get(RANKED_BY)
    return "val_loss" in result and isinstance(value, float) and math.isfinite(value) and "epoch" in result


class Recorder:
    """The record of one search in a driver: its trials, its budgets, and how it ends."""

    def __init__(self, state: SearchState, folder: Place | Path, first: int = 4) -> None:
        self.state, self.folder = state, Place(folder)
        budget = state.config["budget"]
        self.time_limit_s: float | None = budget.get("time_limit_s")
        self.max_total_epochs: int | None = budget.get("max_total_epochs")
        self.first = min(first, budget["num_samples"])  # fail-fast judges this many first ends
        self.started = time.monotonic()
        self.trained_at_start = state.trained
        self.state.ending, self.state.ending_reason = None, ""  # this session's own

    def save(self) -> None:
        """The record as it stands, this session's time included (a driver killed later loses none)."""
        now = time.monotonic()
        self.state.spent_s += now - self.started
        self.started = now
        self.state.save(self.folder)

    def forget(self, trial_id: str) -> None:
        """A trial Ray's resumed state does not know (started after Ray last saved): gone, rungs too."""
        self.state.trials.pop(trial_id, None)
        for rung in self.state.scheduler.get("rungs", {}).values():
            rung.pop(trial_id, None)
        for promoted in self.state.scheduler.get("promoted", {}).values():
            if trial_id in promoted:
                promoted.remove(trial_id)

    def trial(self, trial_id: str) -> dict[str, Any]:
        return self.state.trials.setdefault(trial_id, {})

    def added(self, trial_id: str, config: dict[str, Any], number: int) -> None:
        """A trial the searcher proposed: saved before Ray starts it."""
        self.trial(trial_id).update(config=config, optuna=number)
        self.save()

    def reported(self, trial_id: str, result: dict) -> None:
        """A trial's epoch; the budgets that end the whole search are judged here."""
        if measured(result):
            trial = self.trial(trial_id)
            trial["epoch"] = max(trial.get("epoch", 0), int(result["epoch"]))
            trial["loss"] = min(trial.get("loss", math.inf), result[RANKED_BY])
            if result.get(DUPLICATE_OF):
                trial["replay"] = True
        if self.time_limit_s is not None and self.spent_s() >= self.time_limit_s:
            self.end(Ending.TIME, "the search's time budget ran out")
        elif self.max_total_epochs is not None and self.state.trained >= self.max_total_epochs:
            self.end(Ending.EPOCHS, f"{BUDGET_SPENT} ({self.max_total_epochs} epochs)")

    def spent_s(self) -> float:
        """Driver time the search has spent, over all its sessions."""
        return self.state.spent_s + time.monotonic() - self.started

    def stopped(self, trial_id: str, state: str, reason: str) -> None:
        """The scheduler stops a trial: why, before Ray tells anyone."""
        self.trial(trial_id)["stopped"] = [state, reason]

    def stop_reason(self, trial_id: str, epoch: Any) -> tuple[str, str] | None:
        """How a trial still running ends now that the search must end: None while it need not."""
        if self.state.ending == Ending.EPOCHS:
            after = f" after epoch {epoch}" if epoch is not None else " before it started"
            return EndState.PRUNED, f"{BUDGET_SPENT} ({self.max_total_epochs} epochs){after}"
        if self.state.ending == Ending.TIME:
            return EndState.KILLED, self.state.ending_reason
        if self.state.ending == Ending.FAIL_FAST:
            return EndState.KILLED, f"search stopped: {self.state.ending_reason}"
        return None

    def end_of(self, trial_id: str, last: dict | None) -> tuple[str, str]:
        """(end_state, end_reason): the trial's own word, else why the scheduler stopped it, else killed."""
        last = last or {}
        if last.get(END_STATE):
            return last[END_STATE], last.get(END_REASON, "")
        recorded = self.state.trials.get(trial_id, {})
        if recorded.get("end_state"):
            return recorded["end_state"], recorded.get("end_reason", "")
        if recorded.get("stopped"):
            return recorded["stopped"][0], recorded["stopped"][1]
        return EndState.KILLED, "stopped before it ran its course"

    def ended(self, trial_id: str, last: dict | None, error: str | None = None) -> tuple[str, str]:
        """Record a trial's end once (a resumed trial that ended before reports it again); fail-fast judges it."""
        trial = self.trial(trial_id)
        if trial.get("end_state"):
            return trial["end_state"], trial.get("end_reason", "")
        state, reason = (EndState.FAILED, error) if error else self.end_of(trial_id, last)
        trial.update(end_state=state, end_reason=reason)
        if len(self.state.first_ends) < self.first:
            failed = (last or {}).get(ERROR_TYPE) and reason
            self.state.first_ends.append(failed or None)
            ends = self.state.first_ends
            if len(ends) == self.first and ends[0] is not None and all(e == ends[0] for e in ends):
                self.end(Ending.FAIL_FAST, f"the first {self.first} trials failed with {ends[0]}")
        self.save()
        return state, reason

    def end(self, ending: str, reason: str) -> None:
        """The search must end (the first reason given stands)."""
        if self.state.ending is None:
            self.state.ending, self.state.ending_reason = ending, reason
            self.save()

    def close(self) -> None:
        """The session's end: why it ended, if nothing said so before (the loop ran out of trials)."""
        self.end(Ending.FINISHED, "every trial ran its course")
        self.save()


class RecordCallback(tune.Callback):
    """Records each trial's end, first among the callbacks, and an interrupt (results reach the
    recorder through the scheduler, which Ray asks before any callback hears of them).

    Ray's own SIGINT handler ends `tune.run` quietly and says nothing of it to the
    caller; `setup` wraps it, so the record says the search was interrupted.
    """

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def setup(
        self, stop: Any = None, num_samples: int | None = None, total_num_samples: int | None = None, **info: Any
    ) -> None:
        for sig in (signal.SIGINT, signal.SIGUSR1):
            rays = signal.getsignal(sig)
            if callable(rays):
                signal.signal(sig, self._interrupt(rays))

    def _interrupt(self, rays: Any) -> Any:
        def handler(sig: int, frame: Any) -> None:
            self.recorder.end(Ending.INTERRUPTED, f"interrupted by {signal.Signals(sig).name}")
            rays(sig, frame)

        return handler

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.recorder.ended(trial.trial_id, trial.last_result)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.recorder.ended(trial.trial_id, trial.last_result, error=error_line(trial))


def error_line(trial: Any) -> str:
    """The last line of a trial's error file: what Ray says when a trial failed for good."""
    try:
        lines = Path(trial.error_file).read_text().strip().splitlines()
        return lines[-1][:500] if lines else "error"
    except (OSError, TypeError):
        return "the trial raised an error (see Ray's trial folder)"
