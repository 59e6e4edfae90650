"""`vaesearch train` as a library call: one training run into a folder of files.

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
from vae.checkpoint import load_model
from vae.config import TrainConfig
from vae.figures import sample_grids
from vae.files import atomic_write
from vae.records import CSV_COLUMNS
from vae.train import EpochResult, Trainer


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
            trainer.save_weights(out_dir / "checkpoint.pt")
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
