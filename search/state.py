"""The one record of a search that a resume reads first, and where it lives.

A search named NAME lives in `<storage root>/NAME/`: `vaesearch.json` (this
module's `SearchState`, written by the driver alone), Ray's experiment state (the
trials' checkpoints) and, on a local root, `optuna.db` (the study, which the
searcher asks and tells). Ray saves neither the scheduler nor why a search ended;
the record does, so a resume builds fresh objects from it and trusts no pickle.

The root is a local folder or an object-store URI (`s3://bucket/prefix`, `gs://`,
anything pyarrow's file systems take, which read the endpoint and credentials from
the environment as those libraries do: `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, ...).
On an object store the study cannot be a SQLite file: it lives in the database
`study_storage` names (PostgreSQL), which every driver reaches, so a search can be
resumed from another machine that shares nothing with the first but those.
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


def is_uri(location: str | Path) -> bool:
    return "://" in str(location)


class Place:
    """A folder on this machine or in an object store, read and written a whole file at a time."""

    def __init__(self, location: str | Path | Place) -> None:
        text = str(location)
        self.uri = text.rstrip("/") if is_uri(text) else str(Path(text).expanduser().resolve())

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"Place({self.uri!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Place) and other.uri == self.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    def __truediv__(self, name: str) -> Place:
        return Place(f"{self.uri}/{name}")

    @property
    def parent(self) -> Place:
        return Place(self.uri.rpartition("/")[0]) if self.is_remote else Place(Path(self.uri).parent)

    @property
    def name(self) -> str:
        return self.uri.rpartition("/")[2]

    @property
    def is_remote(self) -> bool:
        return is_uri(self.uri)

    @property
    def path(self) -> Path:
        """The local folder (a remote place has none)."""
        if self.is_remote:
            raise ValueError(f"{self.uri} is not on this machine")
        return Path(self.uri)

    def _fs(self) -> tuple[Any, str]:
        from pyarrow import fs

        return fs.FileSystem.from_uri(self.uri) if self.is_remote else (fs.LocalFileSystem(), self.uri)

    def is_file(self) -> bool:
        if not self.is_remote:
            return self.path.is_file()
        from pyarrow import fs

        filesystem, path = self._fs()
        return filesystem.get_file_info(path).type == fs.FileType.File

    def read_bytes(self) -> bytes:
        if not self.is_remote:
            return self.path.read_bytes()
        filesystem, path = self._fs()
        with filesystem.open_input_stream(path) as stream:
            return stream.read()

    def write_bytes(self, data: bytes) -> None:
        """Whole or not at all: a local file is renamed into place, an object is one PUT."""
        if not self.is_remote:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, data)
            return
        filesystem, path = self._fs()
        for wait in (1, 2, 4, 8, None):  # a store's passing refusal (S3's 503 SlowDown, a dropped link) is retried
            try:
                with filesystem.open_output_stream(path) as stream:
                    stream.write(data)
                return
            except OSError:
                if wait is None:
                    raise
                time.sleep(wait)

    def children(self) -> list[Place]:
        """What the folder holds, by name ([] for a folder that does not exist)."""
        if not self.is_remote:
            return [Place(p) for p in sorted(self.path.iterdir())] if self.path.is_dir() else []
        from pyarrow import fs

        filesystem, path = self._fs()
        infos = filesystem.get_file_info(fs.FileSelector(path, allow_not_found=True))
        return [self / info.base_name for info in sorted(infos, key=lambda i: i.base_name)]

    def reachable(self) -> str | None:
        """None, or why the object store cannot be read (endpoint, credentials, bucket): one line."""
        if not self.is_remote:
            return None
        try:
            self.children()
        except Exception as e:  # pyarrow raises OSError (and ValueError for a URI it cannot parse)
            return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return None


def searches_root(storage_path: str | None) -> Place:
    """Where searches keep their state: the given folder or URI, else ~/vaesearch/ray."""
    return Place(storage_path) if storage_path else Place(vaesearch_home() / "ray")


def checked_root(storage_path: str | None) -> Place:
    """The storage root, refused when it names a file or an object store that cannot be read (found before
    any server starts)."""
    root = searches_root(storage_path)
    if root.is_remote:
        why = root.reachable()
        if why:
            raise SearchError("storage_path", f"cannot read {root}: {why}")
        return root
    blocking = file_in_the_way(root.path)
    if blocking:
        raise SearchError("storage_path", f"{blocking} is a file; give a folder")
    return root


def study_url(config: dict[str, Any], folder: Place) -> str:
    """The Optuna study's storage: `study_storage` if the config names one, else a SQLite file in the
    search's (local) folder, written by the driver alone."""
    return config.get("study_storage") or f"sqlite:///{folder.path / 'optuna.db'}"


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
    def exists(folder: Place | Path) -> bool:
        return (Place(folder) / STATE_FILE).is_file()

    @classmethod
    def load(cls, folder: Place | Path) -> SearchState:
        return cls(**json.loads((Place(folder) / STATE_FILE).read_bytes()))

    @property
    def trained(self) -> int:
        """Epochs the trials trained between them (a replay trains none), for `budget.max_total_epochs`."""
        return sum(t.get("epoch", 0) for t in self.trials.values() if not t.get("replay"))

    def save(self, folder: Place | Path) -> None:
        """Written atomically: a search killed here has either the whole record or none."""
        (Place(folder) / STATE_FILE).write_bytes(json.dumps(dataclasses.asdict(self), indent=2).encode())


def saved_searches(root: Place) -> list[SearchState]:
    """Every search under a storage root, by name."""
    return [SearchState.load(p) for p in root.children() if SearchState.exists(p)]


def study_of(storage_path: str | None, name: str) -> str:
    """The Optuna storage URL of the search `name`."""
    root = searches_root(storage_path)
    if not SearchState.exists(root / name):
        raise SearchError("name", f"no search named {name!r} under {root} (see vaesearch searches)")
    config = json.loads((root / name / STATE_FILE).read_bytes()).get("config") or {}  # its study is all it needs
    return study_url(config, root / name)
