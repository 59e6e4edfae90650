"""A search read back from MLflow, the one source of truth: its parent run, its trials and their curves.

Nothing here reads Ray's folders; a search on a cluster is analysed from the
tracking server alone.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from vae import records
from vae.errors import UserError
from vae.records import DUPLICATE_OF, END_STATE, KIND, METRICS, MODEL_PARAMS, PARENT_TAG, PAUSED_AT, RANKED_BY


class AnalysisError(UserError):
    """An experiment, run or model that is not there."""


LOGGED_AT = "logged_at"  # in a trial's history: when the epoch's val_loss reached MLflow (s), the order of training


@dataclass
class Trial:
    run_id: str
    name: str
    params: dict[str, Any]
    tags: dict[str, str]
    best_val_loss: float
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def end_state(self) -> str:
        """How it ended; "paused" while the promotion scheduler holds it at a rung, else "running"."""
        return self.tags.get(END_STATE, "paused" if PAUSED_AT in self.tags else "running")

    @property
    def duplicate_of(self) -> str | None:
        return self.tags.get(DUPLICATE_OF)

    @property
    def epochs(self) -> int:
        return len(self.history)

    @property
    def best_epoch(self) -> int | None:
        finite = [r for r in self.history if _finite(r.get("val_loss"))]
        return int(min(finite, key=lambda r: r["val_loss"])["epoch"]) if finite else None

    @property
    def key(self) -> tuple[int, int, int]:
        hidden, decoder, latent = (int(self.params[p]) for p in MODEL_PARAMS)
        return hidden, decoder, latent

    @property
    def rankable(self) -> bool:
        """In the ranking, as `vae.records.rankable` decides."""
        return records.rankable(self.tags, self.best_val_loss)


@dataclass
class Search:
    experiment_id: str
    name: str
    parent: Any
    trials: list[Trial]

    @property
    def config(self) -> dict[str, Any]:
        """The search's config as its parent run holds it ({} for a search read back from a trials.csv)."""
        return json.loads(self.parent.data.params.get("config", "{}")) if self.parent is not None else {}

    def best(self) -> Trial | None:
        """The search's best trial, as `vae.records.best` decides."""
        return records.best(self.trials, lambda t: t.tags, lambda t: t.best_val_loss)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def history(client: MlflowClient, run_id: str) -> list[dict[str, float]]:
    """A trial's rows {epoch, metric: value, logged_at}, in epoch order."""
    logged: dict[int, float] = {}

    def fetch(key: str) -> list[Any]:
        found = client.get_metric_history(run_id, key)
        if key == "val_loss":
            logged.update({m.step: m.timestamp / 1000 for m in found})
        return found

    rows = records.epoch_rows(METRICS, fetch)
    for row in rows:
        if row["epoch"] in logged:
            row[LOGGED_AT] = logged[int(row["epoch"])]
    return rows


def load_search(client: MlflowClient, experiment: str, with_history: bool = True) -> Search:
    """The latest search in an experiment (its parent run) and every trial nested under it."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None or exp.lifecycle_stage != "active":
        raise AnalysisError("experiment", f"no experiment named {experiment!r} on {client.tracking_uri}")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=5000)
    parents = [r for r in runs if PARENT_TAG not in r.data.tags and r.data.tags.get(KIND) == "search"]
    if not parents:
        raise AnalysisError("experiment", f"{experiment!r} holds no search (no parent run)")
    parent = parents[0]
    trials = []
    for run in runs:
        if run.data.tags.get(PARENT_TAG) != parent.info.run_id:
            continue
        best = run.data.metrics.get(RANKED_BY, math.nan)
        trial = Trial(run.info.run_id, run.info.run_name, dict(run.data.params), dict(run.data.tags), best)
        if with_history:
            trial.history = history(client, run.info.run_id)
            finite = [r["val_loss"] for r in trial.history if _finite(r.get("val_loss"))]
            trial.best_val_loss = min(finite) if finite else math.nan
        trials.append(trial)
    by_run = {t.run_id: t for t in trials}
    for trial in trials:  # a replay's run holds no metrics: what it replayed is its twin's history
        twin = by_run.get(trial.duplicate_of or "")
        if twin is not None and not trial.history and trial.end_state == twin.end_state:  # a killed one: unknown
            trial.history = [dict(row) for row in twin.history]
    return Search(exp.experiment_id, experiment, parent, trials)


def search_from_csv(path: Path) -> Search:
    """A search read back from the trials.csv that `vaesearch report` wrote: its trials and their curves.

    What a committed CSV keeps after the tracking server that held the search is gone; the search
    is named after the file.
    """
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise AnalysisError("experiment", f"cannot read {path}: {err}") from None
    needed = {"run_id", "name", *MODEL_PARAMS, "epoch", "val_loss", END_STATE, DUPLICATE_OF}
    if not rows or not needed <= set(rows[0]):
        raise AnalysisError("experiment", f"{path} is not a trials.csv written by `vaesearch report`")
    params = [k for k in rows[0] if k not in {"run_id", "name", END_STATE, DUPLICATE_OF, "epoch", LOGGED_AT, *METRICS}]
    trials: dict[str, Trial] = {}
    for row in rows:
        trial = trials.get(row["run_id"])
        if trial is None:
            tags = {END_STATE: row[END_STATE], **({DUPLICATE_OF: row[DUPLICATE_OF]} if row[DUPLICATE_OF] else {})}
            values = {k: row[k] for k in params}
            trial = trials[row["run_id"]] = Trial(row["run_id"], row["name"], values, tags, math.nan)
        numbers = {k: float(v) for k, v in row.items() if k in (*METRICS, LOGGED_AT) and v != ""}
        trial.history.append({"epoch": int(row["epoch"]), **numbers})
    for trial in trials.values():
        trial.history.sort(key=lambda r: r["epoch"])
        finite = [r["val_loss"] for r in trial.history if _finite(r.get("val_loss"))]
        trial.best_val_loss = min(finite) if finite else math.nan
    return Search("", path.stem, None, list(trials.values()))


def is_trials_csv(name: str) -> bool:
    """Whether `name` names a trials.csv file (read without a server) rather than a search."""
    return name.endswith(".csv")


def source(client: MlflowClient | None, name: str) -> Search:
    """A search by its name on the server, or from a trials.csv file (a name ending in .csv)."""
    if is_trials_csv(name):
        path = Path(name)
        if not path.is_file():
            raise AnalysisError("experiment", f"no such trials.csv: {name}")
        return search_from_csv(path)
    if client is None:
        raise AnalysisError("experiment", f"{name} is not a trials.csv, and no tracking server was given")
    return load_search(client, name)


def same_config(trial: Trial) -> tuple[tuple[str, str], ...]:
    """What makes two trials the same experiment: every sampled param, not the precision the machine chose."""
    return tuple(sorted((k, str(v)) for k, v in trial.params.items() if k != "precision"))


def combine(searches: list[Search]) -> Search:
    """Several searches read as one, a later search's trials replacing an earlier one's of the same config.

    For a protocol run in parts: a config rerun after its machine went (its fixed trial, say) stands in for
    the stopped trial, and the configs that had finished are kept. The parent (and so the config) is the
    last search's that has one.
    """
    if len(searches) == 1:
        return searches[0]
    trials: list[Trial] = []
    for search in searches:
        rerun = {same_config(t) for t in search.trials}
        trials = [t for t in trials if same_config(t) not in rerun] + list(search.trials)
    holder = next((s for s in reversed(searches) if s.parent is not None), searches[-1])
    name = " + ".join(s.name for s in searches)
    return Search(holder.experiment_id, name, holder.parent, trials)
