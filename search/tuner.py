"""Assemble and run a search: OptunaSearch (TPE) proposes, ASHA stops weak trials, MLflow records.

The flow: check the input, join Ray, start (or find) the parent run and the
search's state (`search.state`), build or restore the Tuner, run it, then make
MLflow and Optuna agree with Ray (`search.reconcile`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.cluster import check_config_for_cluster, probe, ray_init
from search.config import SearchConfig, SearchError, SearchStopped
from search.parent import best_child_run, start_parent
from search.reconcile import (
    adopt_optuna_ends,
    end_running,
    end_unfinished,
    prune_unknown_runs,
    reconcile,
    trial_id_of,
)
from search.settings import TrialSettings
from search.state import SearchState, checked_root, study_url
from search.tracking import Tracker
from vae import data
from vae.files import file_in_the_way
from vae.records import BATCH_SIZE, LOST_WRITES, LR, MODEL_PARAMS, RANKED_BY, EndState

METRIC, MODE = RANKED_BY, "min"


@dataclass
class Outcome:
    interrupted: bool
    trials: int
    best: dict[str, Any] | None
    experiment: str
    parent_run_id: str
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


def scheduler(cfg: SearchConfig) -> Any:
    """ASHA over epochs, ranking by the running minimum of the validation loss; or FIFO (no stops)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if cfg.scheduler == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="epoch",
        metric=METRIC,
        mode=MODE,
        max_t=cfg.budget.max_epochs,
        grace_period=cfg.asha.grace_period,
        reduction_factor=cfg.asha.reduction_factor,
    )


def sampler(cfg: SearchConfig) -> Any:
    """The Optuna sampler: TPE, or random search (the baseline a TPE search is measured against)."""
    import optuna

    if cfg.sampler.kind == "random":
        return optuna.samplers.RandomSampler(seed=cfg.sampler.seed)
    return optuna.samplers.TPESampler(seed=cfg.sampler.seed, n_startup_trials=cfg.sampler.n_startup_trials)


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
    folder: Path  # the search's folder under the storage root
    stored: SearchState | None  # the record of the search to resume
    tracking_uri: str | None  # the tracking server to use; None: the embedded one


def preflight(cfg: SearchConfig, resume: bool, address: str | None, log: Callable[[str], None] = print) -> Checked:
    """Every check that can refuse a search, before any server starts or any file is written."""
    folder = checked_root(cfg.storage_path) / cfg.name
    stored = _state(cfg, folder, resume, log)
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


def _state(cfg: SearchConfig, folder: Path, resume: bool, log: Callable[[str], None]) -> SearchState | None:
    """The stored state of the search to resume (its config is the one to run); a new search must not exist yet."""
    if resume:
        if not SearchState.exists(folder):
            raise SearchError("resume", f"no search named {cfg.name} under {folder.parent}")
        stored = SearchState.load(folder)
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
    tracker = Tracker(tracking_uri)
    cluster = ray_init(address, log, verbose)  # before anything is written: an unreachable cluster leaves no run
    data_dir = data_folder(cfg)
    md5s = data.prepare(data_dir, log=lambda m: None)
    space = space_spec(cfg)
    if stored is not None:
        state = stored
        tracker.set_tags(state.parent_run_id, {"resumed_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **cluster})
    else:
        tags = {"storage_path": str(folder.parent), **cluster}
        experiment_id, parent = start_parent(tracker, cfg, space, study_url(folder), md5s, tags)
        state = SearchState(cfg.name, cfg.model_dump(), tracking_uri, experiment_id, parent)
        state.save(folder)
    log(f"search {cfg.name}: experiment {state.experiment_id}, parent run {state.parent_run_id}")
    log(f"config {json.dumps(cfg.model_dump())}")
    try:
        settings = TrialSettings.of(cfg, tracking_uri, state.experiment_id, state.parent_run_id, data_dir)
        return _tune(cfg, tracker, stored is not None, folder, space, settings, log, verbose)
    except SearchStopped:  # already said on the parent run
        raise
    except BaseException as e:  # a search that dies says so on its parent run
        interrupted = isinstance(e, KeyboardInterrupt)
        tracker.set_tags(
            state.parent_run_id, {"status": "interrupted" if interrupted else f"failed: {type(e).__name__}"}
        )
        raise


def _tuner(cfg: SearchConfig, folder: Path, space: dict, settings: TrialSettings, trainable: Any, verbose: bool):
    """A new Tuner, and the fail-fast stopper it shares with the tracking callback."""
    import optuna
    from ray import tune

    from search.callbacks import PruningAwareOptunaSearch, SearchStopper, TrackingCallback
    from search.console import Console

    fail_fast = SearchStopper(min(4, cfg.budget.num_samples), cfg.budget.max_total_epochs)
    searcher = PruningAwareOptunaSearch(
        space=space,
        metric=METRIC,
        mode=MODE,
        sampler=sampler(cfg),
        points_to_evaluate=[dict(p) for p in cfg.points] or None,
        study_name=cfg.name,
        storage=optuna.storages.RDBStorage(study_url(folder)),
    )
    tracking = TrackingCallback(settings.tracking_uri, settings.experiment_id, settings.parent_run_id, fail_fast)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler(cfg),
            num_samples=cfg.budget.num_samples,
            max_concurrent_trials=cfg.budget.max_concurrent,
            time_budget_s=cfg.budget.time_limit_s,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=cfg.name,
            storage_path=str(folder.parent),
            stop=fail_fast,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=2),  # lost workers only: trials catch their errors
            callbacks=[*result_files(), tracking, Console(cfg.budget.num_samples, fail_fast)],
            verbose=2 if verbose else 0,
        ),
    )
    return tuner, fail_fast, tracking


def _restored_tuner(cfg: SearchConfig, folder: Path, tracker: Tracker, settings: TrialSettings, trainable: Any):
    """The saved Tuner, after MLflow has adopted the ends Optuna was told of since Ray last saved."""
    import optuna
    from ray import tune

    from search.callbacks import SearchStopper, TrackingCallback

    tuner = tune.Tuner.restore(str(folder), trainable=trainable, resume_unfinished=True, resume_errored=True)
    # the one pickled with the search's callbacks (a search saved before fail-fast existed has none)
    saved = tuner._local_tuner
    assert saved is not None  # a Tuner restored on the driver runs there
    fail_fast = saved.get_run_config().stop or SearchStopper(min(4, cfg.budget.num_samples))
    callbacks = saved.get_run_config().callbacks or []
    tracking = next((c for c in callbacks if isinstance(c, TrackingCallback)), None)  # None: saved before it was
    study = optuna.load_study(study_name=cfg.name, storage=study_url(folder))
    adopt_optuna_ends(tracker, settings.experiment_id, settings.parent_run_id, study)
    return tuner, fail_fast, tracking


def _tune(
    cfg: SearchConfig,
    tracker: Tracker,
    resume: bool,
    folder: Path,
    space: dict,
    settings: TrialSettings,
    log: Callable[[str], None],
    verbose: bool = False,
) -> Outcome:
    """Build (or restore) the Tuner, run it, then reconcile MLflow with what Ray knows."""
    import optuna
    from ray import tune

    from search.trainable import train_trial

    if not verbose:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, settings=settings), {"cpu": settings.cpus, "gpu": settings.gpus}
    )
    if resume and (folder / "tuner.pkl").exists():
        tuner, fail_fast, tracking = _restored_tuner(cfg, folder, tracker, settings, trainable)
    else:
        tuner, fail_fast, tracking = _tuner(cfg, folder, space, settings, trainable, verbose)
    started = time.monotonic()
    grid = tuner.fit()
    out_of_time = cfg.budget.time_limit_s is not None and time.monotonic() - started >= cfg.budget.time_limit_s
    budget = "time" if out_of_time else "epoch" if fail_fast.spent else None
    # what never reached MLflow, as each trial last counted it (by its run) and as the driver did
    lost = {str(r.metrics.get("mlflow_run_id")): int(r.metrics.get(LOST_WRITES) or 0) for r in grid if r.metrics}
    lost["driver"] = tracking.lost if tracking is not None else 0
    return _after(cfg, tracker, folder, settings, grid, (fail_fast.reason, budget), log, lost)


def _after(
    cfg: SearchConfig,
    tracker: Tracker,
    folder: Path,
    settings: TrialSettings,
    grid: Any,
    stops: tuple[str | None, str | None],
    log: Callable[[str], None],
    lost: dict[str, int],
) -> Outcome:
    """Close the search's books: how it ended, on the parent run, in MLflow and in Optuna."""
    import optuna

    experiment_id, parent = settings.experiment_id, settings.parent_run_id
    stopped, budget = stops  # the fail-fast stopper's reason; the budget (time, epoch) that ran out
    _keep_lost(folder, sum(lost.values()))  # first: the server may be why they were lost
    if stopped:
        end_unfinished(tracker, experiment_id, parent, f"search stopped: {stopped}")
        tracker.set_tags(parent, {"status": f"stopped: {stopped}"})
        tracker.finish(parent, "FAILED")
        total = _tally_lost(tracker, settings, folder, lost)
        also = f"; {total} write(s) to MLflow never landed" if total else ""
        raise SearchStopped(f"search stopped: {stopped}{also}")
    finished = grid.num_terminated + grid.num_errors
    if budget is None and (finished < len(grid) or len(grid) < cfg.budget.num_samples):
        end_unfinished(tracker, experiment_id, parent, "the search was interrupted", terminate=False)
        tracker.set_tags(parent, {"status": "interrupted"})
        return Outcome(True, len(grid), None, cfg.name, parent)
    # A budget (time, epochs) stops trials the callbacks may not hear of, and leaves Optuna's last ones RUNNING.
    # The epoch budget cuts them as ASHA would, with what they measured intact: pruned, as end_of names them.
    if budget == "epoch":
        from search.callbacks import budget_cut

        state, reason = budget_cut(cfg.budget.max_total_epochs)
    else:
        state, reason = EndState.KILLED, f"the search's {budget} budget ran out"
    end_unfinished(tracker, experiment_id, parent, reason, state=state)
    end_running(optuna.load_study(study_name=cfg.name, storage=study_url(folder)), pruned=state == EndState.PRUNED)
    reconcile(tracker, grid)
    removed = prune_unknown_runs(tracker, experiment_id, parent, {trial_id_of(r) for r in grid})
    if removed:
        log(f"deleted {removed} MLflow run(s) of trials the restored search does not know")
    best = best_child_run(tracker, experiment_id, parent)
    lost_writes = _tally_lost(tracker, settings, folder, lost)
    tracker.set_tags(parent, {"status": "finished", **({"best_run_id": best["run_id"]} if best else {})})
    tracker.finish(parent)
    return Outcome(False, len(grid), best, cfg.name, parent, lost_writes)


def _keep_lost(folder: Path, count: int, final: bool = False) -> None:
    """The count of lost writes in the search's record, which needs no server: a first count raises it, the
    final tally (`final`) replaces it."""
    state = SearchState.load(folder)
    if count != state.lost_writes and (final or count > state.lost_writes):
        dataclasses.replace(state, lost_writes=count).save(folder)


def _tally_lost(tracker: Tracker, settings: TrialSettings, folder: Path, lost: dict[str, int]) -> int:
    """Lost writes in all: each trial's as its run's tag has it (its final word, written after its last
    report), else as its last report did, and the driver's; on the parent run and in the record."""
    runs = tracker.children(settings.experiment_id, settings.parent_run_id)
    tagged = {r.info.run_id: int(r.data.tags[LOST_WRITES]) for r in runs if LOST_WRITES in r.data.tags}
    total = sum(tagged.get(run, lost.get(run, 0)) for run in {*lost, *tagged})
    if total:
        tracker.set_tags(settings.parent_run_id, {LOST_WRITES: str(total)})
    _keep_lost(folder, total, final=True)
    return total
