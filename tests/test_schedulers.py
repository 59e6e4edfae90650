"""The schedulers on a real Ray with a synthetic trainable whose curves are known: where epochs go.

Trial k's loss at epoch e is base_k + 10 / e, so every rung ranks the trials by
base. They arrive one at a time, a mediocre one first: Ray's ASHA (and ours, which
decides as Ray's does) has no cutoff at an empty rung and trains that one to the
end; the promotion scheduler pauses it at the first rung and never resumes it.
"""

from __future__ import annotations

import json
import signal
import sys
import tempfile
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from search.recorder import RecordCallback, Recorder
from search.schedulers import Asha, Promotion
from search.searcher import StudySearcher
from search.state import VERSION, SearchState
from vae.records import END_STATE, EndState

BASES = [5.0, 3.0, 4.0, 1.0, 6.0, 2.0, 7.0, 8.0, 9.0]  # in the order they arrive
MAX_EPOCHS, GRACE, ETA = 9, 1, 3  # rungs at epochs 1 and 3


def curve(config: dict, log: str) -> None:
    """Resumes from its checkpoint's epoch; each epoch it trains is one line of `log`."""
    from ray import tune

    start, checkpoint = 0, tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            start = int((Path(d) / "epoch").read_text())
    for epoch in range(start + 1, MAX_EPOCHS + 1):
        loss = config["base"] + 10 / epoch
        with open(log, "a") as f:
            f.write(json.dumps([config["base"], epoch]) + "\n")
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "epoch").write_text(str(epoch))
            result = {"epoch": epoch, "val_loss": loss, "best_val_loss": loss}
            if epoch == MAX_EPOCHS:
                result[END_STATE] = EndState.COMPLETED  # as the trainer's last report says
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(d))


class _Interrupt:
    """Ctrl-C at the driver as the `after`-th pause is recorded, which is where Ray's state and ours may part."""

    def __init__(self, after: int) -> None:
        self.after, self.pauses = after, 0

    def paused(self, trial_id: str, epoch: int, loss: float) -> None:
        self.pauses += 1
        if self.pauses == self.after:
            signal.raise_signal(signal.SIGINT)  # Ray's handler (wrapped by RecordCallback) ends tune.run

    def promoted(self, trial_id: str, epoch: int) -> None:
        pass


def _search(tmp: Path, kind: str, interrupt_after: int | None = None) -> tuple[dict[float, list[int]], Recorder]:
    """Run the nine trials under one scheduler, to the end (or interrupted, then resumed from the records):
    the epochs each trained, in order, by base."""
    from ray import tune

    tmp.mkdir()
    state = SearchState(kind, {"budget": {"num_samples": len(BASES)}}, "", "", "", version=VERSION)
    storage = f"sqlite:///{tmp / 'optuna.db'}"
    study = optuna.create_study(storage=storage, study_name=kind)
    for base in BASES:
        study.enqueue_trial({"base": base})
    log = tmp / "epochs.jsonl"
    for resume in (False, True) if interrupt_after else (False,):
        recorder = Recorder(SearchState.load(tmp) if resume else state, tmp)
        study = optuna.load_study(study_name=kind, storage=storage)
        space = {"base": CategoricalDistribution(BASES)}
        searcher = StudySearcher(study, space, recorder, lambda n: optuna.samplers.RandomSampler(seed=n))
        listeners: list = [searcher] + ([_Interrupt(interrupt_after)] if interrupt_after and not resume else [])
        if kind == "promotion":
            scheduler: Asha = Promotion(recorder, MAX_EPOCHS, GRACE, ETA, len(BASES), listeners)
        else:
            scheduler = Asha(recorder, MAX_EPOCHS, GRACE, ETA)
        tune.run(
            tune.with_resources(tune.with_parameters(curve, log=str(log)), {"cpu": 2}),  # one at a time: in order
            name=kind,
            storage_path=str(tmp / "ray"),
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=len(BASES),
            callbacks=[RecordCallback(recorder)],
            verbose=0,
            resume_config=tune.ResumeConfig() if resume else None,
        )
        if not resume and interrupt_after:
            assert recorder.state.ending == "interrupted"
            assert 0 < sum(1 for _ in log.read_text().splitlines()) < 21
        else:
            recorder.close()
    trained: dict[float, list[int]] = {}
    for base, epoch in map(json.loads, log.read_text().splitlines()):
        trained.setdefault(base, []).append(epoch)
    return trained, recorder


@pytest.fixture(scope="module")
def joined(ray_head: str):
    import ray
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import a test module
    ray.init(address=ray_head, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_promotion_spends_no_epochs_on_the_first_arrival_where_asha_trains_it_to_the_end(
    joined: None, tmp_path: Path
) -> None:
    """The promotion search is interrupted at its fifth pause and resumed: the same decisions, no epoch twice."""
    asha, _ = _search(tmp_path / "asha", "asha")
    promoted, recorder = _search(tmp_path / "promotion", "promotion", interrupt_after=5)
    study = optuna.load_study(study_name="promotion", storage=f"sqlite:///{tmp_path / 'promotion' / 'optuna.db'}")

    assert asha[5.0] == list(range(1, 10))  # the first arrival: every rung was empty when it got there
    assert promoted[5.0] == [1]  # paused at epoch 1; its rung never ranked it in the best third
    # successive halving by thirds: 9 trials to epoch 1, the best 3 (bases 1-3) to epoch 3, the best to 9;
    # a promoted trial resumes from its checkpoint and trains no epoch twice, nor does a resumed search
    assert promoted == {b: list(range(1, {1.0: 10, 2.0: 4, 3.0: 4}.get(b, 2))) for b in BASES}
    # ASHA trains bases 5, 3, 1 and 2 to the end (each was above Ray's cutoff when it reached a rung) and the
    # other five for one epoch: 41 trial-epochs for what promotion reaches in 21
    assert sum(map(len, promoted.values())) == 9 + 3 * 2 + 6 == 21
    assert {b: len(e) for b, e in asha.items()} == {b: 9 if b in (5.0, 3.0, 1.0, 2.0) else 1 for b in BASES}
    assert max(asha[1.0]) == max(promoted[1.0]) == MAX_EPOCHS  # both train the best to the end

    trials = recorder.state.trials
    by_base = {t["config"]["base"]: t for t in trials.values()}
    assert by_base[1.0]["end_state"] == "completed" and by_base[1.0]["promoted"]
    assert by_base[5.0]["end_state"] == "pruned" and by_base[5.0]["paused"] == 1
    assert by_base[5.0]["end_reason"].startswith("paused at epoch 1 and not promoted")
    promoted_ids = recorder.state.scheduler["promoted"]
    assert {trials[t]["config"]["base"] for t in promoted_ids["1"]} == {1.0, 2.0, 3.0}
    assert [trials[t]["config"]["base"] for t in promoted_ids["3"]] == [1.0]
    # Optuna: each trial PRUNED at its first pause with the rung's value; a promoted one's end is a trial of its own
    finals = [t for t in study.trials if "promoted_from" in t.user_attrs]
    assert sorted(t.params["base"] for t in finals) == [1.0, 2.0, 3.0]
    first = study.trials[finals[0].user_attrs["promoted_from"]]
    assert first.state == TrialState.PRUNED and first.params == finals[0].params
    best = min((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert best.params == {"base": 1.0} and best.value == pytest.approx(1.0 + 10 / 9)
