"""The one config of a single training run, validated field by field."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any

from vae.errors import UserError
from vae.model import DECODERS
from vae.records import BATCH_SIZE, DECODER, HIDDEN, LATENT, LR

PRECISIONS = ("auto", "fp32", "bf16")


class ConfigError(UserError):
    """A config value is not allowed: the field, what is allowed, and what was given."""

    def __init__(self, field: str, allowed: str, got: object = None) -> None:
        super().__init__(field, allowed if got is None else f"{allowed} (got {got!r})")


def doc(default: Any, text: str) -> Any:
    """A field's default with its documentation, which the `train` flags use as help."""
    return dataclasses.field(default=default, metadata={"doc": text})


@dataclass(frozen=True)
class TrainConfig:
    """What makes a training run reproducible; stored in every checkpoint.

    The one definition of training's settings: `vaesearch train`'s flags and a
    search's `train:` section are derived from these fields and their docs.
    """

    decoder: int = doc(1, "decoder id, 1-6: the seed's six decoders (1 is its base model)")
    hidden: int = doc(128, "LSTM hidden size H")
    latent: int = doc(2, "latent size Z")
    epochs: int = doc(50, "at most this many epochs; early stopping may end sooner")
    batch_size: int = doc(64, "images per Adam step")
    lr: float = doc(1e-3, "Adam's learning rate")
    patience: int = doc(20, "stop after this many epochs without a lower validation loss")
    seed: int = doc(0, "seeds weights, shuffling and noise")
    precision: str = doc(
        "auto",
        "fp32 or bf16 (autocast of the training pass; validation stays fp32, so losses compare); "
        "auto takes bf16 where a probe shows it runs on this machine",
    )
    subset: int | None = doc(None, "train on the first N of the 50,000 training images (default all)")
    val_subset: int | None = doc(None, "validate on the first N of the 10,000 validation images (default all)")

    def __post_init__(self) -> None:
        if self.decoder not in DECODERS:
            raise ConfigError(DECODER, f"must be one of {min(DECODERS)}..{max(DECODERS)}", self.decoder)
        for name in (HIDDEN, LATENT, "epochs", BATCH_SIZE, "patience"):
            _positive_int(name, getattr(self, name))
        for name in ("subset", "val_subset"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if not isinstance(self.lr, (int, float)) or isinstance(self.lr, bool) or not 0 < self.lr < math.inf:
            raise ConfigError(LR, "must be a finite number > 0", self.lr)
        if self.precision not in PRECISIONS:
            raise ConfigError("precision", f"must be one of {', '.join(PRECISIONS)}", self.precision)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ConfigError("seed", "must be an integer >= 0", self.seed)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """Refuse unknown keys: a typo must not silently fall back to a default."""
        known = {f.name for f in fields(cls)}
        for key in values:
            if key not in known:
                raise ConfigError(str(key), f"unknown key; allowed: {', '.join(sorted(known))}")
        return cls(**values)


def _positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(name, "must be an integer >= 1", value)
