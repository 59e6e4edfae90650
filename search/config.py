"""The search config: one YAML file, validated before anything starts.

Unknown keys are refused and every error names its field (`budget.max_epochs`)
and what is allowed, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Annotated, Any, Literal, get_type_hints

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from vae.config import ConfigError, TrainConfig
from vae.errors import UserError
from vae.model import DECODERS
from vae.records import BATCH_SIZE, DECODER, LR, MODEL_PARAMS, SEARCHED


class SearchError(UserError):
    """Bad input to a search (a name, a path, a cluster address), found before any trial starts."""


class SearchStopped(RuntimeError):
    """The search could not work and was stopped early: printed as one line, exit 1."""


PositiveInt = Annotated[int, Field(strict=True, ge=1)]


class _FieldError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        self.field, self.message = field, message
        super().__init__(message)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Range(_Strict):
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> _Range:
        if self.high <= self.low:
            raise ValueError("high must be greater than low")
        return self


class FloatRange(_Range):
    """A continuous range, sampled uniformly (or log-uniformly)."""

    low: Annotated[float, Field(gt=0)]
    high: Annotated[float, Field(gt=0)]
    log: bool = True


class IntRange(_Range):
    """An integer range; `log` samples batch sizes evenly in powers."""

    low: PositiveInt
    high: PositiveInt
    log: bool = True


class Space(_Strict):
    """What Optuna samples: categorical choices, and optional ranges for lr and batch size."""

    hidden: Annotated[list[PositiveInt], Field(min_length=1)]
    decoder: Annotated[list[int], Field(min_length=1)]
    latent: Annotated[list[PositiveInt], Field(min_length=1)]
    lr: FloatRange | None = None
    batch_size: IntRange | None = None

    @field_validator(DECODER)
    @classmethod
    def _known_decoders(cls, ids: list[int]) -> list[int]:
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, int) or i not in DECODERS:
                raise ValueError(f"decoder ids must be in {min(DECODERS)}..{max(DECODERS)}, got {i!r}")
        return ids

    @field_validator(*MODEL_PARAMS)
    @classmethod
    def _distinct(cls, values: list[int]) -> list[int]:
        if len(set(values)) != len(values):
            raise ValueError(f"choices must be distinct, got {values}")
        return values


# TrainConfig's fields that a search's `train:` section sets for every trial; the others come from
# `space` (sampled), `budget.max_epochs` and `data`.
TRAIN_KEYS = (BATCH_SIZE, LR, "patience", "seed", "precision")


def _train_section() -> type[BaseModel]:
    """The `train:` section as a model derived from TrainConfig: its types, its defaults, its checks."""
    hints, defaults = get_type_hints(TrainConfig), TrainConfig()

    def check(section: BaseModel) -> BaseModel:
        try:
            TrainConfig(**section.model_dump())
        except ConfigError as e:
            raise _FieldError(f"train.{e.field}", e.message) from None
        return section

    validators: dict[str, Any] = {"check": model_validator(mode="after")(check)}
    fields: dict[str, Any] = {k: (hints[k], getattr(defaults, k)) for k in TRAIN_KEYS}
    return create_model(
        "Train",
        __base__=_Strict,
        __doc__="Training settings for every trial (the seed's values by default): TrainConfig's fields.",
        __validators__=validators,
        **fields,
    )


Train: Any = _train_section()


class Budget(_Strict):
    num_samples: PositiveInt
    max_epochs: PositiveInt
    max_concurrent: PositiveInt | None = None
    """At most this many trials at once (asha, fifo: 4 if not given); promotion runs as many as resources allow."""
    time_limit_s: Annotated[float, Field(gt=0)] | None = None
    """Stop the search once its driver has run this long, the sessions of a resumed search counted together."""
    max_total_epochs: PositiveInt | None = None
    """Stop the search once its trials have trained this many epochs between them (replays are free)."""


class Asha(_Strict):
    """ASHA over epochs; Ray's default reduction factor is 4."""

    grace_period: PositiveInt = 1
    reduction_factor: Annotated[float, Field(ge=2)] = 4


class Sampler(_Strict):
    """Optuna's TPE (with this many random start-up trials) or plain random search, seeded."""

    kind: Literal["tpe", "random"] = "tpe"
    seed: Annotated[int, Field(strict=True, ge=0)] = 0
    n_startup_trials: Annotated[int, Field(strict=True, ge=0)] = 10


class Resources(_Strict):
    """Per trial; a fractional gpus lets several small trials share one GPU."""

    cpus: Annotated[float, Field(gt=0)] = 1
    gpus: Annotated[float, Field(ge=0)] = 0


class Data(_Strict):
    subset: PositiveInt | None = None
    val_subset: PositiveInt | None = None
    data_dir: str | None = None


class Tracking(_Strict):
    """Where MLflow is; without a URI the embedded local server is used."""

    tracking_uri: str | None = None
    samples_every: PositiveInt = 5
    """Log sample grids every this many epochs, at every ASHA rung, and at the end."""
    system_metrics_s: Annotated[float, Field(ge=0)] = 10
    """Sample each trial's CPU, memory and GPU use every this many seconds (MLflow system metrics); 0: off."""


class SearchConfig(_Strict):
    """A whole search; flags on the command line override these values."""

    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    space: Space
    budget: Budget
    train: Train = Train()
    asha: Asha = Asha()
    sampler: Sampler = Sampler()
    resources: Resources = Resources()
    data: Data = Data()
    tracking: Tracking = Tracking()
    storage_path: str | None = None
    """The search's record and Ray's trial state: a folder every node reaches (NFS), or an object-store URI
    (s3://bucket/prefix, gs://..., read with the endpoint and credentials the environment gives)."""
    study_storage: str | None = None
    """The Optuna study's database (postgresql+psycopg://user@host/db); default: a SQLite file beside the
    record, which an object-store storage_path cannot hold."""
    scheduler: Literal["asha", "promotion", "fifo"] = "asha"
    """asha stops weak trials early; promotion pauses each at a rung (the asha section's) and resumes the
    best once the rung can rank them; fifo runs every trial to max_epochs or early stopping (a report's protocol)."""
    points: list[dict[str, Any]] = []
    """Trials to run first, before the sampler proposes: each a full set of the space's values (a warm start)."""

    @model_validator(mode="after")
    def _grace_within_budget(self) -> SearchConfig:
        if self.asha.grace_period > self.budget.max_epochs:
            raise _FieldError(
                "asha.grace_period",
                f"must be at most budget.max_epochs ({self.budget.max_epochs}), got {self.asha.grace_period}",
            )
        return self

    @model_validator(mode="after")
    def _study_storage_without_a_password(self) -> SearchConfig:
        if self.study_storage is None:
            return self
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(self.study_storage)
        except ArgumentError:
            raise _FieldError(
                "study_storage",
                f"must be a database URL such as postgresql+psycopg://user@host/db, got {self.study_storage!r}",
            ) from None
        if url.password:
            raise _FieldError(
                "study_storage",
                "holds a password, which would be logged with the search: leave it out of the URL and give it "
                "as PGPASSWORD or in ~/.pgpass",
            )
        return self

    @model_validator(mode="after")
    def _concurrency_by_resources(self) -> SearchConfig:
        if self.scheduler == "promotion" and self.budget.max_concurrent is not None:
            raise _FieldError(
                "budget.max_concurrent",
                "not used with scheduler: promotion (paused trials would hold its slots); "
                "resources.cpus and resources.gpus per trial set how many run at once",
            )
        return self

    @model_validator(mode="after")
    def _points_in_space(self) -> SearchConfig:
        keys = [k for k in SEARCHED if getattr(self.space, k) is not None]
        for i, point in enumerate(self.points):
            if sorted(point) != sorted(keys):
                raise _FieldError(f"points.{i}", f"must give exactly {', '.join(keys)}, got {sorted(point)}")
            for key in keys:
                allowed = getattr(self.space, key)
                value = point[key]
                ok = value in allowed if isinstance(allowed, list) else allowed.low <= value <= allowed.high
                if isinstance(value, bool) or not isinstance(value, int | float) or not ok:
                    raise _FieldError(f"points.{i}.{key}", f"must be in the space's {key} ({allowed}), got {value!r}")
        if len(self.points) > self.budget.num_samples:
            raise _FieldError(
                "points", f"{len(self.points)} points but budget.num_samples is {self.budget.num_samples}"
            )
        return self

    def override(self, **values: Any) -> SearchConfig:
        """A copy with dotted keys replaced (`tracking.tracking_uri`), validated again."""
        data = self.model_dump()
        for dotted, value in values.items():
            if value is None:
                continue
            node = data
            *parents, leaf = dotted.split(".")
            for key in parents:
                node = node[key]
            node[leaf] = value
        return validate(data)


def validate(data: Any) -> SearchConfig:
    if not isinstance(data, dict):
        raise ConfigError("config", "must be a YAML mapping with keys name, space, budget, ...")
    try:
        return SearchConfig.model_validate(data)
    except ValidationError as e:
        _did_you_mean(e.errors())
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "config"
        ctx = err.get("ctx", {}).get("error")
        if isinstance(ctx, _FieldError):
            raise ConfigError(ctx.field, ctx.message) from None
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        raise ConfigError(field, message, err.get("input") if err["type"] != "missing" else None) from None


def _did_you_mean(errors: list[Any]) -> None:
    """An unknown key beside a missing one it nearly spells (`num_sampels`) is named first, with the fix."""
    missing = [tuple(err["loc"]) for err in errors if err["type"] == "missing"]
    for err in errors:
        if err["type"] != "extra_forbidden":
            continue
        *parent, key = err["loc"]
        near = difflib.get_close_matches(str(key), [str(m[-1]) for m in missing if list(m[:-1]) == parent], n=1)
        if near:
            raise ConfigError(".".join(map(str, err["loc"])), f"unknown key; did you mean {near[0]}?") from None


def load(path: str | Path) -> SearchConfig:
    """Read and validate a YAML config; every problem is a ConfigError naming its field."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError("config", f"no such file: {path}") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise ConfigError("config", f"cannot read {path}: {type(e).__name__}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError("config", f"{path} is not valid YAML{where}") from None
    if data is None:
        raise ConfigError("config", f"{path} is empty")
    return validate(data)


def vaesearch_home() -> Path:
    """Where the embedded server and default Ray storage live: $VAESEARCH_HOME, else ~/vaesearch."""
    return Path(os.environ.get("VAESEARCH_HOME") or Path.home() / "vaesearch").expanduser().resolve()
