"""Checkpoints written atomically and read without general pickle.

A checkpoint is a dict of tensors, numbers, strings and lists, so that
`torch.load(weights_only=True)` admits it; random-generator states are stored
as tensors for the same reason.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from vae.config import TrainConfig
from vae.errors import UserError
from vae.files import atomic_write
from vae.model import VAE


def save(state: dict[str, Any], path: str | Path) -> Path:
    """Serialize in memory, then write atomically: a crash leaves the previous checkpoint."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return atomic_write(path, buf.getvalue())


class CheckpointError(UserError):
    """A file is not a readable checkpoint; the field is the file."""


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with weights_only=True: no code runs from the file."""
    try:
        state = torch.load(Path(path), map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(str(path), "no such file") from None
    except Exception as e:  # truncated zip, foreign pickle, refused global: all mean "not ours"
        raise CheckpointError(str(path), f"not a readable checkpoint ({type(e).__name__})") from None
    if not isinstance(state, dict) or not {"config", "model"} <= state.keys():
        raise CheckpointError(str(path), "not a vaesearch checkpoint (no config and model)")
    return state


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[VAE, TrainConfig, dict[str, Any]]:
    """A checkpoint's model in eval mode, its config, and the whole state."""
    state = load(path, map_location=device)
    config = TrainConfig.from_dict(state["config"])
    model = VAE(config.decoder, config.hidden, config.latent).to(device)
    model.load_state_dict(state["model"])
    model.eval()
    return model, config, state
