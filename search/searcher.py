"""The searcher Ray Tune asks for configs: Optuna's ask/tell API over the study in the search's folder.

Ray's OptunaSearch tells COMPLETE with the partial loss when ASHA stops a trial,
and offers no public way to say PRUNED; this one tells Optuna exactly how each
trial ended, as the recorder has it. Its state is the study (each Optuna trial
carries its Ray trial id) and the record's trial table, so Ray's own copy of
searcher state is neither written nor read (`save_to_dir`, `restore_from_dir`).

Under the promotion scheduler a trial paused at a rung is told PRUNED there and
then, with its rung value: TPE learns from it at once (running, it would count
as the worst trial under TPE's constant liar, and not at all without it), and a
pause that lasts to the end is exactly a prune. Optuna cannot reopen a finished
trial, so a trial promoted later ends as a second Optuna trial of the same
values (`promoted_from` names the first): TPE sees the rung value and the final one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import TrialState, create_trial
from ray.tune.search import Searcher

from search.recorder import Ending, Recorder, measured
from vae.records import RANKED_BY, TRIAL_ID, EndState

OPTUNA_STATE: dict[str, TrialState] = {
    EndState.COMPLETED: TrialState.COMPLETE,
    EndState.EARLY_STOPPED: TrialState.COMPLETE,
    EndState.PRUNED: TrialState.PRUNED,  # with its last intermediate value, as Optuna's tell sets it
    EndState.FAILED: TrialState.FAIL,
    EndState.KILLED: TrialState.FAIL,
}


class StudySearcher(Searcher):
    """Asks the study for each new trial's values and tells it each epoch and each end."""

    def __init__(
        self,
        study: optuna.Study,
        space: dict[str, Any],
        recorder: Recorder,
        sampler: Callable[[int], optuna.samplers.BaseSampler],
    ) -> None:
        super().__init__(metric=RANKED_BY, mode="min")
        self.study, self.space, self.recorder, self.sampler = study, space, recorder, sampler
        numbers = {tid: t["optuna"] for tid, t in recorder.state.trials.items() if "optuna" in t}
        running = {t.number: t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        # Optuna hands out a trial's handle only from ask(); a resumed trial's is rebuilt from its storage
        # id, which FrozenTrial keeps as `_trial_id` (Optuna has no public accessor for it)
        self.trials = {tid: optuna.Trial(study, running[n]._trial_id) for tid, n in numbers.items() if n in running}
        self.reported = {tid: set(running[n].intermediate_values) for tid, n in numbers.items() if n in running}

    def suggest(self, trial_id: str) -> dict | None:
        ending = self.recorder.state.ending
        if ending is not None:  # an interrupted search is resumed: Ray must not save it as finished
            return None if ending == Ending.INTERRUPTED else Searcher.FINISHED  # type: ignore[return-value]
        self.study.sampler = self.sampler(len(self.study.get_trials(deepcopy=False)))  # seeded by the count
        trial = self.study.ask(self.space)  # fixed points first: they wait in the study, enqueued at its start
        trial.set_user_attr(TRIAL_ID, trial_id)
        self.trials[trial_id], self.reported[trial_id] = trial, set()
        self.recorder.added(trial_id, trial.params, trial.number)
        return dict(trial.params)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.trials and measured(result):
            self._report(trial_id, result)

    def _report(self, trial_id: str, result: dict) -> None:
        """The trial's value at its epoch (not Ray's iteration, which counts replays and resumes), once."""
        epoch = int(result["epoch"])
        if epoch not in self.reported[trial_id]:
            self.trials[trial_id].report(result[RANKED_BY], epoch)
            self.reported[trial_id].add(epoch)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        trial = self.trials.get(trial_id)
        if trial is not None and result and measured(result):
            self._report(trial_id, result)  # the last value, which Ray withholds from on_trial_result at a stop
        # the record first, then Optuna: a driver lost between the two is mended from the record on resume
        state = EndState.FAILED if error else self.recorder.ended(trial_id, result)[0]
        if trial is None:  # told PRUNED when paused (or told in an earlier session)
            recorded = self.recorder.state.trials.get(trial_id, {})
            if recorded.get("promoted"):
                tell_promoted_end(self.study, trial_id, recorded, state)
            return
        told, value = OPTUNA_STATE[state], (result or {}).get(RANKED_BY)
        if told == TrialState.COMPLETE and not (isinstance(value, float) and math.isfinite(value)):
            told = TrialState.FAIL  # Optuna takes COMPLETE only with a value; nothing to rank it by
        self.study.tell(trial, value if told == TrialState.COMPLETE else None, state=told, skip_if_finished=True)
        del self.trials[trial_id], self.reported[trial_id]

    def paused(self, trial_id: str, epoch: int, loss: float) -> None:
        """Paused at a rung: PRUNED with the rung's value (a promoted trial paused again was told before)."""
        if trial_id not in self.trials:
            return
        self._report(trial_id, {"epoch": epoch, RANKED_BY: loss})
        self.study.tell(self.trials[trial_id], state=TrialState.PRUNED, skip_if_finished=True)
        del self.trials[trial_id], self.reported[trial_id]

    def promoted(self, trial_id: str, epoch: int) -> None:
        """Nothing to tell yet: the promoted trial's end becomes an Optuna trial of its own."""

    def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
        """Nothing for Ray to keep: the study and the record are the searcher's state."""

    def restore_from_dir(self, checkpoint_dir: str) -> None:
        """A resumed searcher is built from the study and the record, before Ray calls this."""


def tell_promoted_end(study: optuna.Study, trial_id: str, recorded: dict[str, Any], end_state: str) -> None:
    """A promoted trial's end as a finished Optuna trial beside the PRUNED one of its first pause, once."""
    trials = study.get_trials(deepcopy=False)
    first = trials[recorded["optuna"]]
    if any(t.user_attrs.get("promoted_from") == first.number for t in trials):
        return  # added before the driver was lost
    state, loss = OPTUNA_STATE[end_state], recorded.get("loss")
    value = float(loss) if isinstance(loss, float) and math.isfinite(loss) else None
    if state == TrialState.COMPLETE and value is None:
        state = TrialState.FAIL
    steps = (
        {int(recorded["epoch"]): value}
        if value is not None and state != TrialState.FAIL and "epoch" in recorded
        else {}
    )
    study.add_trial(
        create_trial(
            params=first.params,
            distributions=first.distributions,
            value=value if state != TrialState.FAIL else None,  # PRUNED: the last value, as `tell` sets it
            state=state,
            intermediate_values=steps,
            user_attrs={TRIAL_ID: trial_id, "promoted_from": first.number},
        )
    )
