"""The one config of a single training run, validated field by field."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields

from vae.model import DECODERS

PRECISIONS = ("auto", "fp32", "bf16")


class ConfigError(ValueError):
    """A value a user gave is not allowed; the message names the field and what is."""

    def __init__(self, field: str, allowed: str, got: object = None) -> None:
        self.field = field
        got_text = "" if got is None else f" (got {got!r})"
        super().__init__(f"{field}: {allowed}{got_text}")


@dataclass(frozen=True)
class TrainConfig:
    """What makes a training run reproducible; stored in every checkpoint."""

    decoder: int = 1
    """Decoder id, 1-6, as in DESIGN.md's table (1 is the seed's base model)."""
    hidden: int = 128
    """LSTM hidden size H."""
    latent: int = 2
    """Latent size Z."""
    epochs: int = 50
    """Upper bound on epochs; early stopping may end sooner."""
    batch_size: int = 64
    lr: float = 1e-3
    """Adam's learning rate."""
    patience: int = 20
    """Stop after this many epochs without a lower validation loss."""
    seed: int = 0
    precision: str = "auto"
    """auto, fp32 or bf16: bf16 autocasts the training pass (validation stays fp32, so losses compare);
    auto takes bf16 where a probe shows it runs here (`vae.precision`), else fp32."""
    subset: int | None = None
    """Train on the first N of the 50,000 training images; None for all."""
    val_subset: int | None = None
    """Validate on the first N of the 10,000 validation images; None for all."""

    def __post_init__(self) -> None:
        if self.decoder not in DECODERS:
            raise ConfigError("decoder", f"must be one of {min(DECODERS)}..{max(DECODERS)}", self.decoder)
        for name in ("hidden", "latent", "epochs", "batch_size", "patience"):
            _positive_int(name, getattr(self, name))
        for name in ("subset", "val_subset"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if not isinstance(self.lr, (int, float)) or isinstance(self.lr, bool) or not 0 < self.lr < math.inf:
            raise ConfigError("lr", "must be a finite number > 0", self.lr)
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
