"""`vaesearch train` and `evaluate` as library calls, with no argument parsing.

`train_to_folder` runs one training into a folder of files.

Writes checkpoint.pt (the best epoch), last.pt (the latest, to continue from),
metrics.csv (a row per epoch), config.json, and samples.png (plus manifold.png
for Z=2) drawn from the best weights.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

import torch

from vae import data
from vae.config import TrainConfig
from vae.figures import sample_grids
from vae.files import atomic_write
from vae.loss import PER_BATCH, iwae_bound
from vae.train import CSV_COLUMNS, EpochResult, Trainer, evaluate, load_model, to_float

IW_BATCH = 100  # images per importance-weighted pass: K x 100 decoder outputs in memory at once


def metrics_csv(history: list[dict[str, float]]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return buf.getvalue().encode()


def progress_line(result: EpochResult, config: TrainConfig, n_images: int) -> str:
    m = result.metrics
    rate = n_images / m["epoch_seconds"] if m["epoch_seconds"] > 0 else float("inf")
    mark = " *" if result.improved else ""
    return (
        f"epoch {result.epoch}/{config.epochs}  train {m['train_loss']:.2f}  val {m['val_loss']:.2f} "
        f"(recon {m['val_recon']:.2f}, kl {m['val_kl']:.2f})  {rate:,.0f} img/s  "
        f"{m['epoch_seconds']:.1f}s{mark}"
    )


def train_to_folder(
    config: TrainConfig,
    out_dir: Path,
    data_dir: Path | None = None,
    device: torch.device | str = "cpu",
    log: Callable[[str], None] = print,
) -> EpochResult:
    """Train until done, early stopped or diverged; every file written atomically."""
    splits = data.load(data_dir, device)
    trainer = Trainer(config, splits, device)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "config.json", json.dumps(config.to_dict(), indent=2).encode())
    log(f"config {json.dumps(config.to_dict())}  device {device}  -> {out_dir}")
    while True:
        result = trainer.step()
        if result.improved:
            trainer.save(out_dir / "checkpoint.pt")
        trainer.save(out_dir / "last.pt")
        atomic_write(out_dir / "metrics.csv", metrics_csv(trainer.history))
        log(progress_line(result, config, len(trainer.train_data)))
        if result.stop:
            break
    log(f"{result.stop}: {result.reason}; best val_loss {trainer.best_val_loss:.2f} at epoch {trainer.best_epoch}")
    if (out_dir / "checkpoint.pt").exists():
        model, _, _ = load_model(out_dir / "checkpoint.pt", device)
        sample_grids(model.decoder, config.latent, out_dir, seed=config.seed)
    return result


def evaluate_split(
    model: torch.nn.Module, config: TrainConfig, split: str, images: data.Split, iw_samples: int | None = None
) -> dict[str, float | int | str]:
    """A model's loss on a whole split in nats per image, and per batch of 64 as the seed reports.

    With `iw_samples` K, also the importance-weighted bound (K decoder passes per image).
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
