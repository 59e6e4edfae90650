"""The one record of a search that a resume reads first, and where it lives.

A search named NAME lives in `<storage root>/NAME/`: `vaesearch.json` (this
module's `SearchState`, written by the driver alone), `optuna.db` (the study,
which the searcher asks and tells) and Ray's experiment state (the trials'
checkpoints). Ray saves neither the scheduler nor why a search ended; the
record does, so a resume builds fresh objects from it and trusts no pickle.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.config import SearchError, vaesearch_home
from vae.files import atomic_write, file_in_the_way

STATE_FILE = "vaesearch.json"
VERSION = 2  # 1: vaesearch 0.1.0, whose resumes rebuilt Ray's pickled objects; it had no `version`


def searches_root(storage_path: str | None) -> Path:
    """Where searches keep their state: the given path, else ~/vaesearch/ray."""
    return Path(storage_path).expanduser().resolve() if storage_path else vaesearch_home() / "ray"


def checked_root(storage_path: str | None) -> Path:
    """The storage root, refused when it names a file (found before any server starts)."""
    root = searches_root(storage_path)
    blocking = file_in_the_way(root)
    if blocking:
        raise SearchError("storage_path", f"{blocking} is a file; give a folder")
    return root


def study_url(folder: Path) -> str:
    """The Optuna study's storage: one SQLite file in the search's folder, written by the driver alone."""
    return f"sqlite:///{folder / 'optuna.db'}"


@dataclass
class SearchState:
    """A search's record: its config as validated at the start, where MLflow keeps it, and how far it got.

    `trials` maps each Ray trial id to what the driver knows of it: `config` (the
    sampled values), `optuna` (its number in the study), `epoch` (the last one
    reported), `end_state` and `end_reason` once it ended, `stopped` (why the
    scheduler stopped it, if it did), and under the promotion scheduler `paused`
    (the rung it waits at) and `promoted` (it was, at least once). `scheduler` is
    the scheduler's own state (ASHA and promotion: the rungs, `{epoch: {trial id:
    recorded value}}`; promotion also `promoted`, `{epoch: [trial id]}`). `ending` says why
    the last session of the driver ended (`finished`, `interrupted`, a budget,
    fail-fast); `spent_s` is the driver time earlier sessions spent, for the time budget.
    """

    name: str
    config: dict[str, Any]
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    created: str = dataclasses.field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S"))
    lost_writes: int = 0  # MLflow writes its trials or driver gave up on, kept here even when MLflow is gone
    version: int = 1  # a record without one is 0.1.0's
    trials: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    scheduler: dict[str, Any] = dataclasses.field(default_factory=dict)
    ending: str | None = None  # a `search.recorder.Ending`
    ending_reason: str = ""
    spent_s: float = 0.0
    first_ends: list[str | None] = dataclasses.field(default_factory=list)  # fail-fast: the first trials' errors

    @staticmethod
    def exists(folder: Path) -> bool:
        return (folder / STATE_FILE).is_file()

    @classmethod
    def load(cls, folder: Path) -> SearchState:
        return cls(**json.loads((folder / STATE_FILE).read_text()))

    @property
    def trained(self) -> int:
        """Epochs the trials trained between them (a replay trains none), for `budget.max_total_epochs`."""
        return sum(t.get("epoch", 0) for t in self.trials.values() if not t.get("replay"))

    def save(self, folder: Path) -> None:
        """Written atomically: a search killed here has either the whole record or none."""
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / STATE_FILE, json.dumps(dataclasses.asdict(self), indent=2).encode())


def saved_searches(root: Path) -> list[SearchState]:
    """Every search under a storage root, by name."""
    return [SearchState.load(p.parent) for p in sorted(root.glob(f"*/{STATE_FILE}"))]


def study_of(storage_path: str | None, name: str) -> str:
    """The Optuna storage URL of the search `name`."""
    root = searches_root(storage_path)
    if not SearchState.exists(root / name):
        raise SearchError("name", f"no search named {name!r} under {root} (see vaesearch searches)")
    return study_url(root / name)
