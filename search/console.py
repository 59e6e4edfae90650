"""What a person watching a search reads: one line per trial event and a progress line now and then.

Ray's own tables and tracebacks are for `--verbose`; by default this is the console.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

from ray import tune

from search.recorder import ASHA_STOP, Recorder
from vae.records import DUPLICATE_OF, END_STATE, RANKED_BY, EndState, rankable

PROGRESS_EVERY_S = 30.0


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _values(config: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(config.items()))


def _duplicate(result: dict[str, Any]) -> dict[str, str]:
    """A replayed trial's duplicate tag, as its run holds it: the ranking leaves replays out."""
    return {DUPLICATE_OF: result[DUPLICATE_OF]} if result.get(DUPLICATE_OF) else {}


class Console(tune.Callback):
    """Trial events as single lines on stdout, and every `every` seconds where the search stands."""

    def __init__(self, num_samples: int, recorder: Recorder, every: float = PROGRESS_EVERY_S) -> None:
        self.num_samples = num_samples
        self.recorder = recorder
        self.every = every
        # what the record held when this process started: rates for the time to go count only its own work
        self._started = self._last = time.monotonic()
        self._done_at_start = len(self.ends)
        self._epochs_at_start = recorder.state.trained

    @property
    def ends(self) -> dict[str, str]:
        """Trial id -> end state, as the record has it."""
        return {tid: t["end_state"] for tid, t in self.recorder.state.trials.items() if t.get("end_state")}

    def say(self, line: str) -> None:
        print(line, file=sys.stdout, flush=True)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        epoch = self.recorder.state.trials.get(trial.trial_id, {}).get("epoch")
        again = f", from its checkpoint of epoch {epoch}" if epoch else ""  # promoted, retried or resumed
        self.say(f"trial {trial.trial_id} started: {_values(trial.config)}{again}")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.say(f"trial {trial.trial_id} lost its worker; Ray retries it from its last checkpoint")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.say(f"trial {trial.trial_id} failed for good after Ray's retries (see its run's end_reason)")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        state, reason = self.recorder.ended(trial.trial_id, trial.last_result)
        last = trial.last_result or {}
        epoch, best = last.get("epoch"), last.get("best_val_loss")
        loss = f"best {best:.2f}" if isinstance(best, float) and math.isfinite(best) else "no loss"
        replay = (
            f" (a replay of run {last[DUPLICATE_OF]}: same values, trained nothing)" if last.get(DUPLICATE_OF) else ""
        )
        lines: dict[str, str] = {
            EndState.PRUNED: f"pruned by ASHA at epoch {epoch}, {loss}"
            if reason.startswith(ASHA_STOP) and not last.get(DUPLICATE_OF)
            else f"{reason}, {loss}",  # the epoch budget, a replay's twin, a pause that lasted to the end
            EndState.EARLY_STOPPED: f"early stopped at epoch {epoch}, {loss}",
            EndState.COMPLETED: f"completed {epoch} epochs, {loss}",
            EndState.FAILED: f"failed: {reason}",
            EndState.KILLED: f"stopped: {reason}",
        }
        self.say(f"trial {trial.trial_id} {lines.get(state, state)}{replay}")

    def paused(self, trial_id: str, epoch: int, loss: float) -> None:
        self.say(f"trial {trial_id} paused at epoch {epoch}, best {loss:.2f}: it waits for its rung to rank it")

    def promoted(self, trial_id: str, epoch: int) -> None:
        self.say(f"trial {trial_id} promoted from epoch {epoch}: among the best of its rung, it trains on")

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.monotonic()
        if now - self._last < self.every:
            return
        self._last = now
        self.say(self.progress(trials, now - self._started))

    def progress(self, trials: list, elapsed: float) -> str:
        ends = self.ends
        states = list(ends.values())
        done = len(states)
        running = sum(t.status == "RUNNING" for t in trials)
        held = sum(bool(t.get("paused")) and not t.get("end_state") for t in self.recorder.state.trials.values())
        paused = f", {held} paused" if held else ""
        losses = [
            last[RANKED_BY]
            for t in trials
            if rankable({END_STATE: ends.get(t.trial_id, ""), **_duplicate(last := t.last_result or {})},
                        last.get(RANKED_BY))
        ]  # fmt: skip
        best = f"best {min(losses):.2f}" if losses else "no best yet"
        epochs = self.recorder.state.trained
        budget = self.recorder.max_total_epochs
        spent = f", {epochs}/{budget} epochs of the budget" if budget else ""
        left = self.time_to_go(elapsed, done, epochs)
        to_go = f", about {_duration(left)} to go" if left is not None else ""
        pruned, failed = states.count(EndState.PRUNED), states.count(EndState.FAILED)
        return (
            f"progress: {done}/{self.num_samples} trials done ({running} running{paused}, {pruned} pruned, "
            f"{failed} failed){spent}, {best}, {_duration(elapsed)} elapsed{to_go}"
        )

    def time_to_go(self, elapsed: float, done: int, epochs: int) -> float | None:
        """At this process's pace, when the samples run out or the epoch budget is spent, whichever is first."""
        estimates = []
        if done > self._done_at_start:
            estimates.append(elapsed / (done - self._done_at_start) * (self.num_samples - done))
        budget = self.recorder.max_total_epochs
        if budget and epochs > self._epochs_at_start:
            estimates.append(elapsed / (epochs - self._epochs_at_start) * max(budget - epochs, 0))
        return min(estimates) if estimates else None
