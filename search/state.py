"""Where a search keeps what a resume needs, beside Ray's own state, and the type of that record.

A search named NAME lives in `<storage root>/NAME/`: Ray's experiment state,
`vaesearch.json` (this module's `SearchState`) and `optuna.db` (the study).
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


@dataclass(frozen=True)
class SearchState:
    """A search's record: its config as validated at the start, and where MLflow keeps it."""

    name: str
    config: dict[str, Any]
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    created: str = dataclasses.field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S"))
    lost_writes: int = 0  # MLflow writes its trials or driver gave up on, kept here even when MLflow is gone

    @staticmethod
    def exists(folder: Path) -> bool:
        return (folder / STATE_FILE).is_file()

    @classmethod
    def load(cls, folder: Path) -> SearchState:
        return cls(**json.loads((folder / STATE_FILE).read_text()))

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
