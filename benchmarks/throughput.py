"""Training throughput: this trainer against a tutorial-style DataLoader loop.

Both train the base config (decoder 1, H=128, Z=2, batch 64, Adam 1e-3) over the
same first N training images, in one process, with the same threads. The
reference is what tutorials write: torchvision's MNIST dataset, ToTensor,
a shuffling DataLoader of batch 64, the images moved to the device per batch.

    python benchmarks/throughput.py [--images 20000] [--device auto] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from vae import data
from vae.config import TrainConfig
from vae.loss import neg_elbo
from vae.model import VAE
from vae.train import Trainer, resolve_device, set_seed


def ours(n: int, device: torch.device, splits: dict) -> tuple[float, float]:
    """Images/s and mean loss of one pass of vae.train.Trainer over n images."""
    trainer = Trainer(TrainConfig(decoder=1, hidden=128, latent=2, subset=n), splits, device)
    trainer.train_epoch()  # warm-up: allocator, kernels, caches
    loss, _, seconds = trainer.train_epoch()
    return n / seconds, loss


def reference(n: int, device: torch.device, data_dir) -> tuple[float, float]:
    """Images/s and mean loss of the tutorial loop over the same n images."""
    set_seed(0)
    dataset = Subset(
        datasets.MNIST(str(data_dir), train=True, download=False, transform=transforms.ToTensor()), range(n)
    )
    loader = DataLoader(dataset, batch_size=64, shuffle=True)
    model = VAE(1, 128, 2).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def one_pass() -> tuple[float, float]:
        total = 0.0
        start = time.perf_counter()
        for x, _ in loader:
            x = x.to(device)
            logits, mu, logvar = model(x)
            loss, _, _ = neg_elbo(logits, x, mu, logvar)
            optimizer.zero_grad()
            (loss / x.shape[0]).backward()
            optimizer.step()
            total += loss.item()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return n / (time.perf_counter() - start), total / n

    one_pass()  # warm-up, as for ours
    return one_pass()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--smoke", action="store_true", help="a tiny size, so that a test runs it")
    args = parser.parse_args()
    n = 512 if args.smoke else args.images
    device = resolve_device(args.device)
    data_dir = args.data_dir or data.default_data_dir()
    data.prepare(data_dir, log=lambda m: None)
    splits = data.load(data_dir, device)

    ref_rate, ref_loss = reference(n, device, data_dir)
    our_rate, our_loss = ours(n, device, splits)
    result = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "images": n,
        "reference_images_per_s": round(ref_rate, 1),
        "ours_images_per_s": round(our_rate, 1),
        "ratio": round(our_rate / ref_rate, 3),
        "seconds_per_50k_epoch_ours": round(50_000 / our_rate, 2),
        "reference_loss": round(ref_loss, 2),
        "ours_loss": round(our_loss, 2),
    }
    print(f"reference {ref_rate:,.0f} img/s   ours {our_rate:,.0f} img/s   ratio {our_rate / ref_rate:.2f}x")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
