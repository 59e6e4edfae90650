"""What every run records, under one name each, and which run counts as the best.

The bottom of the import graph: the trainer writes these metrics, the search logs
them and its tags to MLflow, analysis reads them back, and search and analysis
never import each other. Plain strings; nothing here talks to a tracker.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from enum import StrEnum
from typing import Any, TypeVar

# The searched parameters, by the names Optuna samples, MLflow logs as params and analysis reads back.
HIDDEN, DECODER, LATENT, LR, BATCH_SIZE = "hidden", "decoder", "latent", "lr", "batch_size"
MODEL_PARAMS = (HIDDEN, DECODER, LATENT)  # the model's shape: every search samples these
SEARCHED = (*MODEL_PARAMS, LR, BATCH_SIZE)  # all a search may sample, in the order reports show them


class EndState(StrEnum):
    """How a trial ended: its run's `end_state` tag, its last Tune report's, the Console's word."""

    COMPLETED = "completed"  # trained its epochs
    EARLY_STOPPED = "early_stopped"  # no better validation loss for `patience` epochs
    PRUNED = "pruned"  # stopped by ASHA at a rung, or cut as ASHA would by the epoch budget
    FAILED = "failed"  # training raised, or the loss diverged to inf/NaN
    KILLED = "killed"  # stopped from outside before it ran its course: a time budget, fail-fast, an interrupt


# The per-epoch metrics, by the names used everywhere: metrics.csv, Tune reports, MLflow.
METRICS = ("train_loss", "train_kl", "val_loss", "val_recon", "val_kl", "best_val_loss", "epoch_seconds")
CSV_COLUMNS = ("epoch", *(m for m in METRICS if m != "best_val_loss"))  # metrics.csv: the running min is derived
RANKED_BY = "best_val_loss"  # the running minimum of val_loss: what ASHA, Optuna and "best" compare

# Tags on MLflow runs.
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: nests a trial's run under its search's
SEARCH_TAG = "vaesearch.search"  # on a search's parent run: the search's name
KIND = "kind"  # "search" on a parent run, "promotion" on a promotion's run
TRIAL_ID = "ray_trial_id"  # on a trial's run (and an Optuna user attr): Ray's trial id
CONFIG_KEY = "config_key"  # a trial's sampled values as canonical JSON: equal keys, equal training
END_STATE, END_REASON = "end_state", "end_reason"  # how and why a trial ended
ERROR_TYPE = "error_type"  # on a run whose training raised: the exception's class
DUPLICATE_OF = "duplicate_of"  # on a run that replayed a finished twin instead of training
NOTE = "mlflow.note.content"  # MLflow's own: a run's description (Markdown), the first thing its page shows
PAUSED_AT = "paused_at"  # on a trial's run while the promotion scheduler holds it at a rung: that rung's epoch
LOST_WRITES = "lost_writes"  # on a trial's run and its reports, and on the parent: MLflow writes that never landed
ENDED = (EndState.COMPLETED, EndState.EARLY_STOPPED, EndState.PRUNED, EndState.FAILED)  # ran its course
REPLAYABLE_STATES = ENDED  # a twin in one of these has a history a duplicate can replay (failed: diverged)

T = TypeVar("T")


def rankable(tags: Mapping[str, str], best_val_loss: float | None) -> bool:
    """In the ranking: not failed, not a replay of another trial, a finite best loss."""
    finite = isinstance(best_val_loss, (int, float)) and math.isfinite(best_val_loss)
    return finite and tags.get(END_STATE) != EndState.FAILED and not tags.get(DUPLICATE_OF)


def rung_epochs(max_epochs: int, grace_period: int, reduction_factor: float) -> tuple[int, ...]:
    """The epochs at which ASHA may stop a trial early, as Ray's AsyncHyperBand computes its milestones.

    Ray checks a milestone m once a trial reports epoch >= m, so a fractional one is met at its ceiling.
    A milestone at max_epochs is left out: every trial stops there anyway, none is judged.
    """
    count = int(math.log(max_epochs / grace_period) / math.log(reduction_factor) + 1)
    milestones = {math.ceil(grace_period * reduction_factor**k) for k in range(count)}
    return tuple(sorted(m for m in milestones if m < max_epochs))


def best(runs: Iterable[T], tags: Callable[[T], Mapping[str, str]], loss: Callable[[T], float | None]) -> T | None:
    """The rankable run with the lowest validation loss at any epoch (the seed's criterion); the first of ties."""
    ranked = [r for r in runs if rankable(tags(r), loss(r))]
    return min(ranked, key=lambda r: loss(r)) if ranked else None  # type: ignore[arg-type,return-value]


def epoch_rows(keys: Iterable[str], history: Callable[[str], Iterable[Any]]) -> list[dict[str, float]]:
    """Metric histories (objects with `.step` and `.value`, as MLflow returns them) as rows {epoch, key: value}."""
    rows: dict[int, dict[str, float]] = {}
    for key in keys:
        for m in history(key):
            rows.setdefault(m.step, {"epoch": m.step})[key] = m.value
    return [rows[e] for e in sorted(rows)]
