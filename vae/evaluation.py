"""A model's loss on a split: the negative ELBO per epoch, and the importance-weighted bound on demand.

`vaesearch evaluate` and promotion call these; the trainer calls `evaluate` after every epoch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from vae import data
from vae.checkpoint import load_model
from vae.config import TrainConfig
from vae.data import Split, to_float
from vae.loss import PER_BATCH, iwae_bound, neg_elbo
from vae.model import VAE

EVAL_BATCH = 1000  # evaluation needs no gradients; larger batches are faster
IW_BATCH = 100  # images per importance-weighted pass: K x 100 decoder outputs in memory at once


@torch.no_grad()
def evaluate(model: VAE, split: Split, seed: int = 0) -> dict[str, float]:
    """Negative ELBO, reconstruction and KL in nats per image over a split.

    The noise comes from a generator seeded afresh, so the same weights always
    give the same value and epochs compare fairly.
    """
    was_training = model.training
    model.eval()
    device = split.images.device
    gen = torch.Generator(device=device).manual_seed(seed)
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    for start in range(0, len(split), EVAL_BATCH):
        x = to_float(split.images[start : start + EVAL_BATCH])
        logits, mu, logvar = model(x, gen)
        totals += torch.stack(neg_elbo(logits, x, mu, logvar)).double()
    model.train(was_training)
    loss, recon, kl = (totals / len(split)).tolist()
    return {"loss": loss, "recon": recon, "kl": kl}


def evaluate_split(
    model: VAE,
    config: TrainConfig,
    split: str,
    images: data.Split,
    iw_samples: int | None = None,
    progress: Callable[[int], object] | None = None,
) -> dict[str, float | int | str]:
    """A model's loss on a whole split in nats per image, and per batch of 64 as the seed reports.

    With `iw_samples` K, also the importance-weighted bound (K decoder passes per image, minutes on
    a CPU for K=100: `progress` hears how many more images each batch bounded).
    """
    values = evaluate(model, images, seed=config.seed)
    result: dict[str, float | int | str] = {"split": split, **values, "loss_per64": values["loss"] * PER_BATCH}
    if iw_samples:
        torch.manual_seed(config.seed)
        total = 0.0
        with torch.no_grad():
            for start in range(0, len(images), IW_BATCH):
                x = to_float(images.images[start : start + IW_BATCH])
                total += iwae_bound(model, x, iw_samples).sum().item()
                if progress is not None:
                    progress(len(x))
        result["iwae"] = -total / len(images)  # a loss, nats per image, comparable to `loss`
        result["iw_samples"] = iw_samples
    return result


def evaluate_checkpoint(
    path: Path,
    split: str = "val",
    iw_samples: int | None = None,
    data_dir: Path | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, float | int | str]:
    """`vaesearch evaluate`: a checkpoint file on one split."""
    model, config, _ = load_model(path, device)
    return evaluate_split(model, config, split, data.load(data_dir, device)[split], iw_samples)
