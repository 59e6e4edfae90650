"""The search's parent run in MLflow: what it records at the start, and the best of its trials at the end."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from search.config import SearchConfig
from search.tracking import Tracker
from vae import records
from vae.records import DUPLICATE_OF, END_STATE, NOTE, RANKED_BY


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def start_parent(
    tracker: Tracker, cfg: SearchConfig, space: dict[str, Any], study: str, md5s: dict[str, str], tags: dict[str, Any]
) -> tuple[str, str]:
    """(experiment id, parent run id) of a new search: everything needed to rerun it, as params."""
    experiment_id = tracker.experiment_id(cfg.name)
    parent = tracker.start_parent(
        experiment_id,
        cfg.name,
        params={
            "config": json.dumps(cfg.model_dump()),
            "search_space": json.dumps({k: repr(v) for k, v in space.items()}),
            "optuna_study": cfg.name,
            "optuna_storage": study,
            "git_commit": git_commit(),
            **{f"md5_{k}": v for k, v in md5s.items()},
        },
        tags={**tags, NOTE: description(cfg)},
    )
    return experiment_id, parent


def description(cfg: SearchConfig, best: dict[str, Any] | None = None, trials: int | None = None) -> str:
    """What a reader of the parent run needs first: what this search is, its best run, how to read the rest."""
    space = ", ".join(f"{k} {v}" for k, v in cfg.model_dump()["space"].items() if v)
    halving = f"grace {cfg.asha.grace_period}, reduction factor {cfg.asha.reduction_factor}"
    stopper = {
        "fifo": "FIFO: every trial to max_epochs",
        "promotion": f"successive halving by promotion ({halving}; a trial waiting at a rung is tagged paused_at)",
    }.get(cfg.scheduler, f"ASHA ({halving})")
    lines = [
        f"**vaesearch search `{cfg.name}`**: {cfg.budget.num_samples} trials of the LSTM-encoder VAE on MNIST, "
        f"sampled by Optuna ({cfg.sampler.kind}, seed {cfg.sampler.seed}) over {space}; {stopper}; "
        f"at most {cfg.budget.max_epochs} epochs each.",
        "",
        f"Each child run is one trial. `{RANKED_BY}` is its lowest validation loss (negative ELBO, nats per "
        f"image, lower is better); the tag `{END_STATE}` says how it ended (completed, early_stopped, pruned by "
        f"the scheduler, failed, killed). A run tagged `{DUPLICATE_OF}` trained nothing: it replayed the run it names, "
        "which holds the metrics. The params `config` and `search_space` are the whole search as started.",
    ]
    if best is not None:  # first: the page shows the description's opening lines
        params = ", ".join(f"{k}={v}" for k, v in best["params"].items())
        lines = [f"**Best run** ({trials} trials ran): `{best['run_id']}`, {RANKED_BY} {best[RANKED_BY]:.2f} "
                 f"({params}); its weights are the artifact `checkpoint/best.pt`, which `vaesearch promote` "
                 "registers.", "", *lines]  # fmt: skip
    return "\n".join(lines)


def best_child_run(tracker: Tracker, experiment_id: str, parent: str) -> dict[str, Any] | None:
    """The search's best trial (`vae.records.best`) as the command prints it: run id, loss, params."""
    run = records.best(
        tracker.children(experiment_id, parent), lambda r: r.data.tags, lambda r: r.data.metrics.get(RANKED_BY)
    )
    if run is None:
        return None
    return {"run_id": run.info.run_id, "best_val_loss": run.data.metrics[RANKED_BY], "params": dict(run.data.params)}
