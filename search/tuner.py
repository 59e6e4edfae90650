"""Assemble and run a search: OptunaSearch (TPE) proposes, ASHA stops weak trials, MLflow records.

State that a resume needs lives beside Ray's own under the storage path:
`vaesearch.json` (the config, the MLflow parent run) and `optuna.db` (the study).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.config import SearchConfig, SearchError, SearchStopped, vaesearch_home
from search.status import STATE_FILE
from search.tracking import END_REASON, END_STATE, TRIAL_ID, Tracker
from vae import checkpoint, data
from vae.config import ConfigError
from vae.files import atomic_write, file_in_the_way

CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
METRIC, MODE = "best_val_loss", "min"


@dataclass
class Outcome:
    interrupted: bool
    trials: int
    best: dict[str, Any] | None
    experiment: str
    parent_run_id: str


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def space_spec(cfg: SearchConfig) -> dict[str, Any]:
    """The search space as Optuna distributions, one literal logged verbatim with the parent run."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    space: dict[str, Any] = {
        "hidden": CategoricalDistribution(cfg.space.hidden),
        "decoder": CategoricalDistribution(cfg.space.decoder),
        "latent": CategoricalDistribution(cfg.space.latent),
    }
    if cfg.space.lr:
        space["lr"] = FloatDistribution(cfg.space.lr.low, cfg.space.lr.high, log=cfg.space.lr.log)
    if cfg.space.batch_size:
        space["batch_size"] = IntDistribution(
            cfg.space.batch_size.low, cfg.space.batch_size.high, log=cfg.space.batch_size.log
        )
    return space


def study_url(search_dir: Path) -> str:
    """The Optuna study's storage: one SQLite file, written by the driver alone."""
    return f"sqlite:///{search_dir / 'optuna.db'}"


def storage_root(cfg: SearchConfig) -> Path:
    return Path(cfg.storage_path).expanduser().resolve() if cfg.storage_path else vaesearch_home() / "ray"


def check_storage(cfg: SearchConfig) -> Path:
    """The storage root, refused when it names a file (found before any server starts)."""
    root = storage_root(cfg)
    blocking = file_in_the_way(root)
    if blocking:
        raise SearchError(f"--storage-path: {blocking} is a file; give a folder")
    return root


def rung_epochs(max_epochs: int, grace_period: int, reduction_factor: float) -> list[int]:
    """The epochs at which ASHA may stop a trial (its milestones, as whole epochs), as Ray computes them."""
    rungs = int(math.log(max_epochs / grace_period) / math.log(reduction_factor) + 1)
    return sorted({math.ceil(grace_period * reduction_factor**k) for k in range(rungs)})


def asha(max_epochs: int, grace_period: int, reduction_factor: float):
    """ASHA over epochs, ranking by the running minimum of the validation loss."""
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="epoch",
        metric=METRIC,
        mode=MODE,
        max_t=max_epochs,
        grace_period=grace_period,
        reduction_factor=reduction_factor,
    )


def result_files() -> list:
    """Ray's per-trial result.json and progress.csv (its TensorBoard files are off: see `ray_init`)."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    return [JsonLoggerCallback(), CSVLoggerCallback()]


def settings_for(cfg: SearchConfig, tracking_uri: str, experiment_id: str, parent_run_id: str, data_dir: Path) -> dict:
    """What every trial shares: fixed training values, where data and MLflow are."""
    return {
        "tracking_uri": tracking_uri,
        "experiment_id": experiment_id,
        "parent_run_id": parent_run_id,
        "max_epochs": cfg.budget.max_epochs,
        "lr": cfg.train.lr,
        "batch_size": cfg.train.batch_size,
        "patience": cfg.train.patience,
        "precision": cfg.train.precision,
        "seed": cfg.train.seed,
        "subset": cfg.data.subset,
        "val_subset": cfg.data.val_subset,
        "data_dir": str(data_dir),
        "samples_every": cfg.tracking.samples_every,
        "system_metrics_s": cfg.tracking.system_metrics_s,
        # a pruned trial's last epoch must have its sample grid: draw one wherever ASHA may stop it
        "rung_epochs": rung_epochs(cfg.budget.max_epochs, cfg.asha.grace_period, cfg.asha.reduction_factor)
        if cfg.scheduler == "asha"
        else [],
        "cpus": cfg.resources.cpus,
        "gpus": cfg.resources.gpus,
    }


def _probe(address: str) -> None:
    """Refuse at once an address where nothing listens (ray.init would wait for minutes)."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise SearchError(f"--address: expected auto, HOST:PORT or ray://HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise SearchError(f"--address: no Ray cluster answers at {address} ({e.strerror or e})") from None


def ray_init(address: str | None, log: Callable[[str], None], verbose: bool = False) -> dict[str, Any]:
    """Start or join Ray; the cluster's shape (nodes, CPUs, GPUs) for the parent run."""
    import ray

    if address is not None:
        _probe(address)

    # Ray 2.60 turns token auth on by itself when a token file exists; say what we want.
    if address is None:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    if not verbose:  # Ray's new console prints its banner even at verbose=0; the legacy one stays quiet
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        # A trial that never reported (stopped before its first epoch) is not worth a warning here.
        logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    # Ray's result files, without TensorBoard's (MLflow is the record; TBX complains of a failure's inf).
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # Credentials for an MLflow server with auth reach trials through their environment, never as params.
    secrets = {k: v for k, v in os.environ.items() if k in CREDENTIALS}
    try:
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=verbose,
            configure_logging=False,
            runtime_env={"env_vars": secrets} if secrets else None,
        )
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise SearchError(f"--address: cannot join a Ray cluster at {address}: {str(e).splitlines()[0]}") from None
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus = sum(n["Resources"].get("CPU", 0) for n in nodes)
    gpus = sum(n["Resources"].get("GPU", 0) for n in nodes)
    log(f"ray: {len(nodes)} node(s), {cpus:g} CPUs, {gpus:g} GPUs{' at ' + address if address else ' (local)'}")
    return {"cluster_nodes": len(nodes), "cluster_cpus": cpus, "cluster_gpus": gpus}


def run_search(
    cfg: SearchConfig,
    tracking_uri: str,
    resume: bool = False,
    address: str | None = None,
    log: Callable[[str], None] = print,
    verbose: bool = False,
) -> Outcome:
    """Start (or resume) the search named cfg.name and wait for it; Ctrl-C saves state and returns."""
    root = check_storage(cfg)
    search_dir = root / cfg.name
    state_path = search_dir / STATE_FILE
    tracker = Tracker(tracking_uri)
    if resume:
        if not state_path.exists():
            raise SearchError(f"--resume: no search named {cfg.name} under {root}")
        state = json.loads(state_path.read_text())
        if state["config"] != cfg.model_dump():
            log("note: resuming with the config stored at the search's start")
        cfg = SearchConfig.model_validate(state["config"])
    elif state_path.exists():
        raise SearchError(
            f"--name: a search named {cfg.name} already exists under {root}; add --resume or choose another --name"
        )

    data_dir = Path(cfg.data.data_dir).expanduser().resolve() if cfg.data.data_dir else data.default_data_dir()
    md5s = data.prepare(data_dir, log=lambda m: None)
    check_precision(cfg, log)
    cluster = ray_init(address, log, verbose)  # before anything is written: an unreachable cluster leaves no run
    space, study_storage = space_spec(cfg), study_url(search_dir)
    if resume:
        experiment_id, parent = state["experiment_id"], state["parent_run_id"]
        tracker.set_tags(parent, {"resumed_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **cluster})
    else:
        experiment_id = tracker.experiment_id(cfg.name)
        parent = tracker.start_parent(
            experiment_id,
            cfg.name,
            params={
                "config": json.dumps(cfg.model_dump()),
                "search_space": json.dumps({k: repr(v) for k, v in space.items()}),
                "optuna_study": cfg.name,
                "optuna_storage": study_storage,
                "git_commit": git_commit(),
                **{f"md5_{k}": v for k, v in md5s.items()},
            },
            tags={"storage_path": str(root), "kind": "search", **cluster},
        )
        search_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "name": cfg.name,
            "config": cfg.model_dump(),
            "tracking_uri": tracking_uri,
            "experiment_id": experiment_id,
            "parent_run_id": parent,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        atomic_write(state_path, json.dumps(state, indent=2).encode())
    log(f"search {cfg.name}: experiment {experiment_id}, parent run {parent}")
    log(f"config {json.dumps(cfg.model_dump())}")

    try:
        settings = settings_for(cfg, tracking_uri, experiment_id, parent, data_dir)
        return _tune(cfg, tracker, resume, search_dir, space, settings, log, verbose)
    except SearchStopped:  # already said on the parent run
        raise
    except BaseException as e:  # a search that dies says so on its parent run
        interrupted = isinstance(e, KeyboardInterrupt)
        tracker.set_tags(parent, {"status": "interrupted" if interrupted else f"failed: {type(e).__name__}"})
        raise


def _tune(
    cfg: SearchConfig,
    tracker: Tracker,
    resume: bool,
    search_dir: Path,
    space: dict,
    settings: dict,
    log: Callable[[str], None],
    verbose: bool = False,
) -> Outcome:
    """Build (or restore) the Tuner, run it, then reconcile MLflow with what Ray knows."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from search.callbacks import FailFast, HonestOptunaSearch, TrackingCallback
    from search.console import Console
    from search.trainable import train_trial

    root = search_dir.parent
    experiment_id, parent = settings["experiment_id"], settings["parent_run_id"]
    if not verbose:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, settings=settings),
        {"cpu": cfg.resources.cpus, "gpu": cfg.resources.gpus},
    )
    if resume and (search_dir / "tuner.pkl").exists():
        tuner = tune.Tuner.restore(str(search_dir), trainable=trainable, resume_unfinished=True, resume_errored=True)
        # the one pickled with the search's callbacks (a search saved before fail-fast existed has none)
        fail_fast = tuner._local_tuner.get_run_config().stop or FailFast(min(4, cfg.budget.num_samples))
        adopt_optuna_ends(
            tracker, experiment_id, parent, optuna.load_study(study_name=cfg.name, storage=study_url(search_dir))
        )
    else:
        fail_fast = FailFast(min(4, cfg.budget.num_samples))
        sampler = optuna.samplers.TPESampler(seed=cfg.sampler.seed, n_startup_trials=cfg.sampler.n_startup_trials)
        searcher = HonestOptunaSearch(
            space=space,
            metric=METRIC,
            mode=MODE,
            sampler=sampler,
            points_to_evaluate=[dict(p) for p in cfg.points] or None,
            study_name=cfg.name,
            storage=optuna.storages.RDBStorage(study_url(search_dir)),
        )
        scheduler = (
            asha(cfg.budget.max_epochs, cfg.asha.grace_period, cfg.asha.reduction_factor)
            if cfg.scheduler == "asha"
            else FIFOScheduler()
        )
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=cfg.budget.num_samples,
                max_concurrent_trials=cfg.budget.max_concurrent,
                time_budget_s=cfg.budget.time_limit_s,
            ),
            run_config=tune.RunConfig(
                name=cfg.name,
                storage_path=str(root),
                stop=fail_fast,
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                failure_config=tune.FailureConfig(max_failures=2),  # lost workers only: trials catch their errors
                callbacks=[
                    *result_files(),
                    TrackingCallback(settings["tracking_uri"], experiment_id, parent, fail_fast),
                    Console(cfg.budget.num_samples, fail_fast),
                ],
                verbose=2 if verbose else 0,
            ),
        )
    started = time.monotonic()
    grid = tuner.fit()
    out_of_time = cfg.budget.time_limit_s is not None and time.monotonic() - started >= cfg.budget.time_limit_s
    if fail_fast.reason:
        end_unfinished(tracker, experiment_id, parent, f"search stopped: {fail_fast.reason}")
        tracker.set_tags(parent, {"status": f"stopped: {fail_fast.reason}"})
        tracker.finish(parent, "FAILED")
        raise SearchStopped(f"search stopped: {fail_fast.reason}")
    finished = grid.num_terminated + grid.num_errors
    interrupted = not out_of_time and (finished < len(grid) or len(grid) < cfg.budget.num_samples)
    if interrupted:
        end_unfinished(tracker, experiment_id, parent, "the search was interrupted", terminate=False)
        tracker.set_tags(parent, {"status": "interrupted"})
        return Outcome(True, len(grid), None, cfg.name, parent)

    # Ray's time budget stops trials without a word to the callbacks or the searcher: end them here.
    end_unfinished(tracker, experiment_id, parent, "the search's time budget ran out")
    fail_running(optuna.load_study(study_name=cfg.name, storage=study_url(search_dir)))
    reconcile(tracker, grid)
    removed = prune_unknown_runs(tracker, experiment_id, parent, {_trial_id_of(r) for r in grid})
    if removed:
        log(f"deleted {removed} MLflow run(s) of trials the restored search does not know")
    best = summarize(tracker, experiment_id, parent)
    tracker.set_tags(parent, {"status": "finished", **({"best_run_id": best["run_id"]} if best else {})})
    tracker.finish(parent)
    return Outcome(False, len(grid), best, cfg.name, parent)


def _trial_id_of(result: Any) -> str | None:
    """A trial's id from its last result, else from its folder's name (a trial that never reported)."""
    if result.metrics and result.metrics.get("trial_id"):
        return result.metrics["trial_id"]
    # Ray names a trial's folder {trainable}_{trial id}_{index}_{params}_{time}
    match = re.search(r"_([0-9a-f]{8}|[0-9a-f]{5}_\d{5})_\d+_", Path(result.path or "").name)
    return match.group(1) if match else None


def reconcile(tracker: Tracker, grid: Any) -> None:
    """Send every epoch a trial's checkpoint holds that MLflow lacks (lost with a driver or a server)."""
    for result in grid:
        run_id = (result.metrics or {}).get("mlflow_run_id")
        if not run_id or result.checkpoint is None:
            continue
        with result.checkpoint.as_directory() as d:
            last = Path(d) / "last.pt"
            if not last.exists():
                continue
            history = checkpoint.load(last)["history"]
        sent = tracker.log_epochs(run_id, history)
        if sent:
            tracker.set_tags(run_id, {"reconciled_epochs": ",".join(map(str, sent))})


def end_unfinished(tracker: Tracker, experiment_id: str, parent: str, reason: str, terminate: bool = True) -> None:
    """Tag `killed` every child run that has no end state; `terminate` also ends it in MLflow.

    An interrupted search leaves them RUNNING, for `--resume` to continue.
    """
    for run in tracker.children(experiment_id, parent):
        if END_STATE not in run.data.tags:
            tracker.set_tags(run.info.run_id, {END_STATE: "killed", END_REASON: reason})
            if terminate:
                tracker.finish(run.info.run_id, "KILLED")


def adopt_optuna_ends(tracker: Tracker, experiment_id: str, parent: str, study: Any) -> None:
    """Before a resume: a trial Optuna was told had ended, whose MLflow tag was lost with the driver, ends in MLflow.

    Ray's saved state may be older than Optuna's; the resumed trial finds the tag
    and reports its end at once instead of training on.
    """
    from optuna.trial import TrialState

    states = {TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}
    told = {t.user_attrs.get(TRIAL_ID): states[t.state] for t in study.trials if t.state in states}
    for run in tracker.children(experiment_id, parent):
        state = told.get(run.data.tags.get(TRIAL_ID))
        if state and run.data.tags.get(END_STATE) in (None, "killed"):
            reason = f"{state} before the driver was lost (Optuna's record)"
            tracker.set_tags(run.info.run_id, {END_STATE: state, END_REASON: reason})


def fail_running(study: Any) -> None:
    """Tell Optuna FAIL for trials still RUNNING after the search: Ray stopped them without telling the searcher."""
    from optuna.trial import TrialState

    for trial in study.trials:
        if trial.state == TrialState.RUNNING:
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)


def prune_unknown_runs(tracker: Tracker, experiment_id: str, parent: str, known: set) -> int:
    """Delete child runs of trials the (restored) search does not know: started after Ray last saved."""
    removed = 0
    for run in tracker.children(experiment_id, parent):
        if run.data.tags.get(TRIAL_ID) not in known:
            tracker.delete_run(run.info.run_id, "trial unknown to the resumed search (started after its last save)")
            removed += 1
    return removed


def summarize(tracker: Tracker, experiment_id: str, parent: str) -> dict[str, Any] | None:
    """The child run with the lowest best_val_loss; failed trials and replays of duplicates left out."""
    best = None
    for run in tracker.children(experiment_id, parent):
        loss = run.data.metrics.get("best_val_loss")
        if run.data.tags.get(END_STATE) == "failed" or "duplicate_of" in run.data.tags or loss is None or loss != loss:
            continue
        if best is None or loss < best["best_val_loss"]:
            best = {"run_id": run.info.run_id, "best_val_loss": loss, "params": dict(run.data.params)}
    return best


def check_precision(cfg: SearchConfig, log: Callable[[str], None]) -> None:
    """Refuse an explicit bf16 this machine cannot run; say what `auto` takes here."""
    import torch

    from vae.precision import resolve_precision

    device = "cuda" if cfg.resources.gpus > 0 and torch.cuda.is_available() else "cpu"
    precision, why = resolve_precision(cfg.train.precision, device, field="train.precision")
    if cfg.train.precision == "auto":
        log(f"precision: auto takes {precision} here: {why}; each trial decides on its own node (param `precision`)")


def check_config_for_cluster(address: str | None, tracking_uri: str | None) -> None:
    if address and not tracking_uri:
        raise ConfigError(
            "--tracking-uri", "required with --address: give a tracking server every node can reach (http://HOST:PORT)"
        )
