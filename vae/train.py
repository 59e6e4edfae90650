"""The training loop: epochs over data held on the device, early stopping, checkpoints.

A `Trainer` advances one epoch per `step()` and can be saved and restored at
any epoch boundary, so the same loop serves `vaesearch train` and a Ray Tune
trial that resumes after a crash.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vae import checkpoint
from vae.config import TrainConfig
from vae.data import Split, to_float
from vae.evaluation import evaluate
from vae.loss import neg_elbo
from vae.model import VAE
from vae.precision import resolve_precision
from vae.records import EndState

DIVERGED = "loss diverged"  # how a non-finite loss's end reason begins


def set_seed(seed: int) -> None:
    """One helper seeds python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """`auto` takes CUDA when present; `cuda` without a GPU is refused by the caller."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def adam(params: Any, lr: float) -> torch.optim.Adam:
    """Adam with the fused kernel: one pass over each tensor instead of a dozen elementwise ops.

    On a CPU the unfused update of decoder 4's 5.7M parameters cost as much as its
    matrix products (docs/benchmarks.md); the maths is Adam's either way.
    """
    return torch.optim.Adam(params, lr=lr, fused=True)


def train_step(
    model: VAE, optimizer: torch.optim.Optimizer, x: torch.Tensor, noise: torch.Generator, bf16: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on batch `x`: the batch's summed (loss, kl), detached.

    The forward pass runs under bf16 autocast when asked; the loss is computed in fp32
    either way. The trainer and the speed benchmarks time this same step.
    """
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits, mu, logvar = model(x, noise)
    loss, _, kl = neg_elbo(logits.float(), x, mu.float(), logvar.float())
    optimizer.zero_grad(set_to_none=True)
    (loss / x.shape[0]).backward()
    optimizer.step()
    return loss.detach(), kl.detach()


@dataclass
class EpochResult:
    """One epoch's metrics; `stop` names why training ends here, if it does."""

    epoch: int
    metrics: dict[str, float]
    improved: bool
    stop: str | None = None  # completed, early_stopped or failed
    reason: str = ""


class Trainer:
    """A VAE, its optimizer and its data, advanced an epoch at a time."""

    def __init__(self, config: TrainConfig, splits: dict[str, Split], device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        # The precision actually used is what the config (and so every checkpoint) records.
        precision, _ = resolve_precision(config.precision, self.device)
        self.config = config = dataclasses.replace(config, precision=precision)
        set_seed(config.seed)
        self.model = VAE(config.decoder, config.hidden, config.latent).to(self.device)
        self.optimizer = adam(self.model.parameters(), config.lr)
        self.train_data = _on(splits["train"].head(config.subset), self.device)
        self.val_data = _on(splits["val"].head(config.val_subset), self.device)
        # Shuffling and the reparameterisation noise have generators of their own,
        # saved with the checkpoint, so a resumed run draws what an unbroken one would.
        self.shuffle = torch.Generator(device=self.device).manual_seed(config.seed)
        self.noise = torch.Generator(device=self.device).manual_seed(config.seed + 1)
        self.epoch = 0
        self.best_val_loss = math.inf
        self.best_epoch = 0
        self.history: list[dict[str, float]] = []

    @property
    def epochs_since_best(self) -> int:
        return self.epoch - self.best_epoch

    def train_epoch(self) -> tuple[float, float, float]:
        """One pass over the training images: (loss, kl) per image and the seconds it took."""
        self.model.train()
        data, bs = self.train_data, self.config.batch_size
        n = len(data)
        start = time.perf_counter()
        perm = torch.randperm(n, generator=self.shuffle, device=self.device)
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        bf16 = self.config.precision == "bf16"
        for i in range(0, n, bs):
            x = to_float(data.images[perm[i : i + bs]])
            loss, kl = train_step(self.model, self.optimizer, x, self.noise, bf16)
            total += torch.stack((loss, kl)).double()
        loss, kl = (total / n).tolist()  # one device sync per epoch, not per batch
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return loss, kl, time.perf_counter() - start

    def step(self) -> EpochResult:
        """Train one epoch, validate, keep the best; say whether training should end."""
        train_loss, train_kl, seconds = self.train_epoch()
        val = evaluate(self.model, self.val_data, seed=self.config.seed)
        self.epoch += 1
        improved = val["loss"] < self.best_val_loss
        if improved:
            self.best_val_loss, self.best_epoch = val["loss"], self.epoch
        metrics = {
            "train_loss": train_loss,
            "train_kl": train_kl,
            "val_loss": val["loss"],
            "val_recon": val["recon"],
            "val_kl": val["kl"],
            "best_val_loss": self.best_val_loss,
            "epoch_seconds": seconds,
        }
        self.history.append({"epoch": self.epoch, **metrics})
        return EpochResult(self.epoch, metrics, improved, *self.end_state())

    def end_state(self) -> tuple[str | None, str]:
        """(stop, reason) after the last epoch: why training ends here, or (None, "") to go on.

        Read from the history, so a trainer restored from its final checkpoint knows it is done.
        """
        if not self.history:
            return None, ""
        last = self.history[-1]
        if not all(math.isfinite(last[k]) for k in ("train_loss", "val_loss")):
            return EndState.FAILED, f"{DIVERGED} to {last['train_loss']} (train) / {last['val_loss']} (val)"
        if self.epochs_since_best >= self.config.patience:
            return EndState.EARLY_STOPPED, f"no lower validation loss for {self.config.patience} epochs"
        if self.epoch >= self.config.epochs:
            return EndState.COMPLETED, f"reached {self.config.epochs} epochs"
        return None, ""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: weights, optimizer, generators, history."""
        return {
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "best_val_loss": self.best_val_loss,
            "best_epoch": self.best_epoch,
            "history": self.history,
            "rng": {"shuffle": self.shuffle.get_state(), "noise": self.noise.get_state()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = state["epoch"]
        self.best_val_loss = state["best_val_loss"]
        self.best_epoch = state["best_epoch"]
        self.history = list(state["history"])
        self.shuffle.set_state(state["rng"]["shuffle"])
        self.noise.set_state(state["rng"]["noise"])

    def save(self, path: str | Path) -> None:
        checkpoint.save(self.state_dict(), path)

    def save_weights(self, path: str | Path) -> None:
        """The best-weights file (`vaesearch train`'s checkpoint.pt, a trial's best.pt): what evaluation and
        promotion load, config and weights without the optimizer. Call it when an epoch improved."""
        state = {"config": self.config.to_dict(), "model": self.model.state_dict()}
        checkpoint.save({**state, "epoch": self.epoch, "best_val_loss": self.best_val_loss}, path)

    def restore(self, path: str | Path) -> None:
        """Continue from a saved state; read on the CPU (a generator takes only a CPU state), copied over after."""
        self.load_state_dict(checkpoint.load(path, map_location="cpu"))


def _on(split: Split, device: torch.device) -> Split:
    return Split(split.images.to(device), split.labels.to(device))
