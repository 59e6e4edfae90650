"""Assemble and run a search: Optuna (TPE) proposes, ASHA stops weak trials, MLflow records.

The flow: check the input, join Ray, start (or find) the parent run and the
search's record (`search.state`), build the searcher, scheduler and callbacks
fresh from the config and the record, run `tune.run` (resuming Ray's trials on
`--resume`), then close the books from the record (`search.reconcile`).

`tune.run(resume_config=...)` is the public path that resumes Ray's trials with
objects built by the caller; `Tuner.restore` takes only the trainable and
unpickles the rest, so a resume would run whatever classes were pickled.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.cluster import check_config_for_cluster, probe, ray_init
from search.config import SearchConfig, SearchError, SearchStopped
from search.parent import best_child_run, description, start_parent
from search.reconcile import end_unfinished, mend_from_record, reconcile
from search.recorder import Ending, Recorder
from search.settings import TrialSettings
from search.state import VERSION, Place, SearchState, checked_root, study_url
from search.tracking import Tracker, runs_page
from vae import data
from vae.files import file_in_the_way
from vae.records import BATCH_SIZE, LOST_WRITES, LR, MODEL_PARAMS, NOTE, RANKED_BY

METRIC, MODE = RANKED_BY, "min"
DEFAULT_CONCURRENCY = 4  # trials at once under asha and fifo when budget.max_concurrent is not given


@dataclass
class Outcome:
    interrupted: bool
    trials: int
    best: dict[str, Any] | None
    experiment: str
    parent_run_id: str
    ui: str  # the MLflow UI's page of the search's runs
    lost_writes: int = 0  # MLflow writes that never landed (artifacts, metrics, tags): the search fails


def space_spec(cfg: SearchConfig) -> dict[str, Any]:
    """The search space as Optuna distributions, one literal logged verbatim with the parent run."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    space: dict[str, Any] = {name: CategoricalDistribution(getattr(cfg.space, name)) for name in MODEL_PARAMS}
    if cfg.space.lr:
        space[LR] = FloatDistribution(cfg.space.lr.low, cfg.space.lr.high, log=cfg.space.lr.log)
    if cfg.space.batch_size:
        space[BATCH_SIZE] = IntDistribution(
            cfg.space.batch_size.low, cfg.space.batch_size.high, log=cfg.space.batch_size.log
        )
    return space


def sampler(cfg: SearchConfig, number: int = 0) -> Any:
    """The Optuna sampler for the study's `number`-th ask: TPE, or random search (TPE's baseline).

    Seeded by the config's seed and the number, so a resumed search proposes what one that ran
    through would have (a sampler's random state is not saved with the study).
    """
    import optuna

    seed = cfg.sampler.seed * 100_003 + number
    if cfg.sampler.kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=cfg.sampler.n_startup_trials)


def result_files() -> list:
    """Ray's per-trial result.json and progress.csv (its TensorBoard files are off: see `ray_init`)."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    return [JsonLoggerCallback(), CSVLoggerCallback()]


def check_precision(cfg: SearchConfig, address: str | None, log: Callable[[str], None]) -> None:
    """Judge the precision where trials run: here for a local Ray, on each trial's node on a cluster.

    A local search refuses an explicit bf16 this machine cannot run before anything starts; on a
    cluster the driver's machine says nothing of the workers', and a trial that cannot run it fails
    with the reason (as `auto` decides per node).
    """
    import torch

    from vae.precision import resolve_precision

    if address is not None:
        if cfg.train.precision != "fp32":
            log(f"precision: {cfg.train.precision}, judged by each trial on its node (param `precision`)")
        return
    device = "cuda" if cfg.resources.gpus > 0 and torch.cuda.is_available() else "cpu"
    precision, why = resolve_precision(cfg.train.precision, device, field="train.precision")
    if cfg.train.precision == "auto":
        log(f"precision: auto takes {precision} here: {why}; each trial decides on its own node (param `precision`)")


@dataclass(frozen=True)
class Checked:
    """A search that passed every check that can refuse it; nothing has been started or written yet."""

    cfg: SearchConfig  # the stored config when resuming
    folder: Place  # the search's folder under the storage root (here or in an object store)
    stored: SearchState | None  # the record of the search to resume
    tracking_uri: str | None  # the tracking server to use; None: the embedded one


def preflight(
    cfg: SearchConfig, resume: bool, address: str | None, log: Callable[[str], None] = print, if_exists: bool = False
) -> Checked:
    """Every check that can refuse a search, before any server starts or any file is written.

    `if_exists`: resume the search if its record exists, else start it (`--resume-if-exists`)."""
    folder = checked_root(cfg.storage_path) / cfg.name
    stored = _state(cfg, folder, resume or (if_exists and SearchState.exists(folder)), log)
    if stored is None:
        _study_storage_for_a_new_search(cfg, folder)
    elif cfg.study_storage and cfg.study_storage != stored.config.get("study_storage"):
        raise SearchError(
            "study_storage",
            f"the search {stored.name} keeps its study in {stored.config.get('study_storage') or 'its folder'}; "
            "resume it there (leave out `study_storage`)",
        )
    uri = cfg.tracking.tracking_uri if stored is None else _resumed_uri(cfg.tracking.tracking_uri, stored)
    if stored is not None:
        cfg = SearchConfig.model_validate(stored.config)
    check_config_for_cluster(address, uri)
    if address is not None:
        probe(address)
    check_precision(cfg, address, log)
    blocking = file_in_the_way(data_folder(cfg))
    if blocking:
        raise SearchError("data.data_dir", f"{blocking} is a file; give a folder")
    return Checked(cfg, folder, stored, uri)


def _study_storage_for_a_new_search(cfg: SearchConfig, folder: Place) -> None:
    """An object store needs a study database; in a shared one, the search's name must be free (a study of
    that name with nothing but waiting trials is what a start that died before its record left)."""
    if folder.is_remote and not cfg.study_storage:  # a resume takes its record's
        raise SearchError(
            "study_storage",
            f"needed with an object-store storage_path ({folder.parent}): the Optuna study must be in a "
            "database every driver reaches, e.g. postgresql+psycopg://user@host/db",
        )
    if not cfg.study_storage:
        return  # a SQLite file in the new search's own folder
    import optuna
    from optuna.trial import TrialState

    try:
        if cfg.name not in optuna.get_all_study_names(cfg.study_storage):
            return
        study = optuna.load_study(study_name=cfg.name, storage=cfg.study_storage)
    except Exception as e:  # SQLAlchemy's errors: a database that does not answer, a driver not installed
        line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SearchError("study_storage", f"cannot use {cfg.study_storage}: {line}") from None
    if any(t.state != TrialState.WAITING for t in study.get_trials(deepcopy=False)):
        raise SearchError(
            "name", f"a study named {cfg.name} already exists in {cfg.study_storage}; choose another `name`"
        )  # one with nothing but waiting trials is replaced by `_study`


def _resumed_uri(given: str | None, stored: SearchState) -> str | None:
    """A resumed search goes on where its runs are: the server it ran on (None: the embedded one, as then)."""
    if given and given.rstrip("/") != stored.tracking_uri.rstrip("/"):
        raise SearchError(
            "tracking_uri",
            f"the search {stored.name} ran on {stored.tracking_uri}, where its runs are; "
            "resume it there (leave out `tracking_uri`)",
        )
    return given or stored.config["tracking"]["tracking_uri"]


def data_folder(cfg: SearchConfig) -> Path:
    """Where the search's MNIST copy is: the config's `data.data_dir`, else the user's cache."""
    return Path(cfg.data.data_dir).expanduser().resolve() if cfg.data.data_dir else data.default_data_dir()


def _state(cfg: SearchConfig, folder: Place, resume: bool, log: Callable[[str], None]) -> SearchState | None:
    """The stored state of the search to resume (its config is the one to run); a new search must not exist yet."""
    if resume:
        if not SearchState.exists(folder):
            raise SearchError("resume", f"no search named {cfg.name} under {folder.parent}")
        stored = SearchState.load(folder)
        if stored.version != VERSION:
            raise SearchError(
                "resume",
                f"the search {cfg.name} was saved by vaesearch 0.1.0, whose state this version cannot resume; "
                "start it again under another `name`",
            )
        if stored.config != cfg.model_dump():
            log("note: resuming with the config stored at the search's start")
        return stored
    if SearchState.exists(folder):
        raise SearchError(
            "name",
            f"a search named {cfg.name} already exists under {folder.parent}; add `resume` or choose another `name`",
        )
    return None


def run_search(
    checked: Checked,
    tracking_uri: str,
    address: str | None = None,
    log: Callable[[str], None] = print,
    verbose: bool = False,
) -> Outcome:
    """Start (or resume) the search `preflight` checked and wait for it; Ctrl-C saves state and returns."""
    cfg, folder, stored = checked.cfg, checked.folder, checked.stored
    import optuna

    if not verbose:  # Optuna's own lines ("A new study created ...") are for --verbose
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    tracker = Tracker(tracking_uri)
    cluster = ray_init(address, log, verbose)  # before anything is written: an unreachable cluster leaves no run
    data_dir = data_folder(cfg)
    md5s = data.prepare(data_dir, log=lambda m: None)
    space = space_spec(cfg)
    if stored is not None:
        state = stored
        tracker.experiment_id(cfg.name)  # tags it as classic ML, as a search started before that was not
        tracker.set_tags(state.parent_run_id, {"resumed_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **cluster})
    else:
        tags = {"storage_path": str(folder.parent), **cluster}
        experiment_id, parent = start_parent(tracker, cfg, space, study_url(cfg.model_dump(), folder), md5s, tags)
        state = SearchState(cfg.name, cfg.model_dump(), tracking_uri, experiment_id, parent, version=VERSION)
        _study(cfg, folder, resume=False)  # before the record: a record always has its study
        state.save(folder)
    log(f"search {cfg.name}: experiment {state.experiment_id}, parent run {state.parent_run_id}")
    log(f"MLflow UI: {runs_page(tracking_uri, state.experiment_id)}")
    log(f"config {json.dumps(cfg.model_dump())}")
    recorder = Recorder(state, folder)
    try:
        import ray

        mnist = ray.put(data.packed(data_dir))  # a node without MNIST takes the driver's, not the internet's
        settings = TrialSettings.of(cfg, tracking_uri, state.experiment_id, state.parent_run_id, mnist)
        return _tune(cfg, tracker, recorder, stored is not None, space, settings, log, verbose)
    except SearchStopped:  # already said on the parent run
        raise
    except BaseException as e:  # a search that dies says so on its parent run
        interrupted = isinstance(e, KeyboardInterrupt)
        tracker.set_tags(
            state.parent_run_id, {"status": "interrupted" if interrupted else f"failed: {type(e).__name__}"}
        )
        raise


def _study(cfg: SearchConfig, folder: Place, resume: bool) -> Any:
    """The search's Optuna study (in its folder, or the config's database); a new one holds the config's fixed
    points, waiting in order."""
    import optuna

    if not folder.is_remote:
        folder.path.mkdir(parents=True, exist_ok=True)  # a new search's SQLite file comes before its record
    storage = optuna.storages.RDBStorage(study_url(cfg.model_dump(), folder))
    if resume:
        return optuna.load_study(study_name=cfg.name, storage=storage, sampler=sampler(cfg))
    if cfg.name in optuna.get_all_study_names(storage):  # left by a start that died before its record
        optuna.delete_study(study_name=cfg.name, storage=storage)  # (preflight refused one that had trials)
    study = optuna.create_study(study_name=cfg.name, storage=storage, sampler=sampler(cfg), direction="minimize")
    for point in cfg.points:
        study.enqueue_trial(dict(point))
    return study


def _ray_saved(folder: Place) -> bool:
    """Ray saved its experiment state (a driver killed in its first seconds may not have): there is
    something for `tune.run` to resume, which otherwise logs a traceback and starts afresh."""
    names = [p.name for p in folder.children()]  # Ray's TuneController.CKPT_FILE_TMPL
    return any(n.startswith("experiment_state-") and n.endswith(".json") for n in names)


def _resume_config() -> Any:
    """Ray's trials resume where they were, errored ones too (a trial that failed for good reports its
    end again at once, from its run)."""
    from ray import tune

    return tune.ResumeConfig(errored=tune.ResumeConfig.ResumeType.RESUME)  # type: ignore[arg-type]


def _tune(
    cfg: SearchConfig,
    tracker: Tracker,
    recorder: Recorder,
    resume: bool,
    space: dict,
    settings: TrialSettings,
    log: Callable[[str], None],
    verbose: bool = False,
) -> Outcome:
    """Build the searcher, scheduler and callbacks from the config and the record, run them, close the books."""
    from ray import tune

    from search.callbacks import TrackingCallback
    from search.console import Console
    from search.recorder import RecordCallback
    from search.schedulers import scheduler
    from search.searcher import StudySearcher
    from search.trainable import train_trial

    trainable = tune.with_resources(
        tune.with_parameters(train_trial, settings=settings), {"cpu": settings.cpus, "gpu": settings.gpus}
    )
    folder = recorder.folder
    study = _study(cfg, folder, resume=True)  # made at the search's start, before its record
    resumable = resume and _ray_saved(folder)
    if resume:
        known = {t.trial_id for t in tune.ExperimentAnalysis(str(folder)).trials} if resumable else set()
        mend_from_record(recorder, tracker, study, known)
    tracking = TrackingCallback(settings.tracking_uri, settings.experiment_id, settings.parent_run_id, recorder)
    console = Console(cfg.budget.num_samples, recorder)
    searcher = StudySearcher(study, space, recorder, lambda number: sampler(cfg, number))
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGUSR1)}
    # Ray's concurrency limit frees a slot only when a trial ends: paused trials would hold every slot
    limit = None if cfg.scheduler == "promotion" else cfg.budget.max_concurrent or DEFAULT_CONCURRENCY
    analysis = tune.run(
        trainable,
        name=cfg.name,
        storage_path=str(folder.parent),
        search_alg=searcher,
        scheduler=scheduler(cfg, recorder, [searcher, tracking, console]),
        num_samples=cfg.budget.num_samples,
        max_concurrent_trials=limit,
        reuse_actors=True,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        max_failures=2,  # lost workers only: trials catch their errors
        callbacks=[*result_files(), RecordCallback(recorder), tracking, console],
        verbose=2 if verbose else 0,
        raise_on_failed_trial=False,
        resume_config=_resume_config() if resumable else None,
    )
    for sig, handler in handlers.items():  # Ray leaves its own installed: a Ctrl-C from here on interrupts
        signal.signal(sig, handler)
    recorder.close()
    # what never reached MLflow, as each trial last counted it (by its run) and as the driver did
    lasts = [t.last_result or {} for t in analysis.trials]
    lost = {str(last.get("mlflow_run_id")): int(last.get(LOST_WRITES) or 0) for last in lasts}
    lost["driver"] = tracking.lost
    return _after(cfg, tracker, recorder, study, settings, analysis.trials, log, lost)


def _after(
    cfg: SearchConfig,
    tracker: Tracker,
    recorder: Recorder,
    study: Any,
    settings: TrialSettings,
    trials: list,
    log: Callable[[str], None],
    lost: dict[str, int],
) -> Outcome:
    """Close the search's books from the record: how it ended, on the parent run, in MLflow and in Optuna."""
    state = recorder.state
    experiment_id, parent = settings.experiment_id, settings.parent_run_id
    ui = runs_page(settings.tracking_uri, experiment_id)
    _keep_lost(recorder, sum(lost.values()))  # first: the server may be why they were lost
    if state.ending == Ending.INTERRUPTED:
        tracker.set_tags(parent, {"status": "interrupted"})
        return Outcome(True, len(trials), None, cfg.name, parent, ui)
    end_unfinished(recorder, tracker, study, experiment_id, parent)
    if state.ending == Ending.FAIL_FAST:
        tracker.set_tags(parent, {"status": f"stopped: {state.ending_reason}"})
        tracker.finish(parent, "FAILED")
        total = _tally_lost(tracker, settings, recorder, lost)
        also = f"; {total} write(s) to MLflow never landed" if total else ""
        raise SearchStopped(f"search stopped: {state.ending_reason}{also}")
    reconcile(tracker, trials)
    best = best_child_run(tracker, experiment_id, parent)
    lost_writes = _tally_lost(tracker, settings, recorder, lost)
    done = {"status": "finished", NOTE: description(cfg, best, len(trials))}
    tracker.set_tags(parent, {**done, **({"best_run_id": best["run_id"]} if best else {})})
    tracker.finish(parent)
    return Outcome(False, len(trials), best, cfg.name, parent, ui, lost_writes)


def _keep_lost(recorder: Recorder, count: int, final: bool = False) -> None:
    """The count of lost writes in the search's record, which needs no server: a first count raises it, the
    final tally (`final`) replaces it."""
    state = recorder.state
    if count != state.lost_writes and (final or count > state.lost_writes):
        state.lost_writes = count
        recorder.save()


def _tally_lost(tracker: Tracker, settings: TrialSettings, recorder: Recorder, lost: dict[str, int]) -> int:
    """Lost writes in all: each trial's as its run's tag has it (its final word, written after its last
    report), else as its last report did, and the driver's; on the parent run and in the record."""
    runs = tracker.children(settings.experiment_id, settings.parent_run_id)
    tagged = {r.info.run_id: int(r.data.tags[LOST_WRITES]) for r in runs if LOST_WRITES in r.data.tags}
    total = sum(tagged.get(run, lost.get(run, 0)) for run in {*lost, *tagged})
    if total:
        tracker.set_tags(settings.parent_run_id, {LOST_WRITES: str(total)})
    _keep_lost(recorder, total, final=True)
    return total
