"""Training throughput: this trainer against a tutorial-style DataLoader loop.

Both train one config (the base one by default: decoder 1, H=128, Z=2; batch 64,
Adam 1e-3) over the same first N training images, in one process, with the same threads. The
reference is what tutorials write: torchvision's MNIST dataset, ToTensor,
a shuffling DataLoader of batch 64, the images moved to the device per batch.

It also trains in bf16 autocast (`--precision bf16`) and checks that after a
few full epochs the fp32 validation loss of both stays within 0.5%. Whether
bf16 pays differs by decoder and CPU (decoder 6 ran slower in bf16 on an AVX-512
EPYC without AMX), so `--decoder` measures any of them.

    python benchmarks/throughput.py [--images 20000] [--decoder 1 --hidden 128 --latent 2]
                                    [--device auto] [--smoke]
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
from vae.precision import bf16_support
from vae.records import DECODER, HIDDEN, LATENT, MODEL_PARAMS
from vae.train import Trainer, resolve_device, set_seed

BASE = {DECODER: 1, HIDDEN: 128, LATENT: 2}


def ours(
    n: int, device: torch.device, splits: dict, precision: str = "fp32", model: dict = BASE
) -> tuple[float, float]:
    """Images/s and mean loss of one pass of vae.train.Trainer over n images."""
    trainer = Trainer(TrainConfig(**model, subset=n, precision=precision), splits, device)
    trainer.train_epoch()  # warm-up: allocator, kernels, caches
    loss, _, seconds = trainer.train_epoch()
    return n / seconds, loss


def reference(n: int, device: torch.device, data_dir, model: dict = BASE) -> tuple[float, float]:
    """Images/s and mean loss of the tutorial loop over the same n images."""
    set_seed(0)
    dataset = Subset(
        datasets.MNIST(str(data_dir), train=True, download=False, transform=transforms.ToTensor()), range(n)
    )
    loader = DataLoader(dataset, batch_size=64, shuffle=True)
    vae = VAE(model[DECODER], model[HIDDEN], model[LATENT]).to(device)
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)

    def one_pass() -> tuple[float, float]:
        total = 0.0
        start = time.perf_counter()
        for x, _ in loader:
            x = x.to(device)
            logits, mu, logvar = vae(x)
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


def agreement(epochs: int, n: int, device: torch.device, splits: dict, model: dict = BASE) -> dict[str, float]:
    """Validation loss (fp32, all 10,000 images) after the same epochs trained in fp32 and in bf16."""
    out = {}
    for precision in ("fp32", "bf16"):
        config = TrainConfig(**model, subset=n, precision=precision, epochs=epochs)
        trainer = Trainer(config, splits, device)
        for _ in range(epochs):
            result = trainer.step()
        out[precision] = result.metrics["val_loss"]
    out["relative_difference"] = abs(out["bf16"] - out["fp32"]) / out["fp32"]
    return out


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    for name in MODEL_PARAMS:
        parser.add_argument(f"--{name}", type=int, default=BASE[name])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--agreement-epochs", type=int, default=3, help="epochs of the fp32/bf16 loss check")
    parser.add_argument("--smoke", action="store_true", help="a tiny size, so that a test runs it")
    return parser.parse_args()


def main() -> None:
    args = _args()
    n = 512 if args.smoke else args.images
    agree_images, agree_epochs = (512, 1) if args.smoke else (data.N_TRAIN, args.agreement_epochs)
    device = resolve_device(args.device)
    data_dir = args.data_dir or data.default_data_dir()
    data.prepare(data_dir, log=lambda m: None)
    splits = data.load(data_dir, device)

    model = {name: getattr(args, name) for name in MODEL_PARAMS}
    ref_rate, ref_loss = reference(n, device, data_dir, model)
    our_rate, our_loss = ours(n, device, splits, model=model)
    bf16_native, why = bf16_support(device.type)
    result = {
        "device": str(device),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "images": n,
        **model,
        "bf16": why,
        "reference_images_per_s": round(ref_rate, 1),
        "ours_images_per_s": round(our_rate, 1),
        "ratio": round(our_rate / ref_rate, 3),
        "seconds_per_50k_epoch_ours": round(50_000 / our_rate, 2),
        "reference_loss": round(ref_loss, 2),
        "ours_loss": round(our_loss, 2),
    }
    line = f"reference {ref_rate:,.0f} img/s   ours fp32 {our_rate:,.0f} img/s ({our_rate / ref_rate:.2f}x)   "
    if bf16_native:  # where bf16 cannot run (AVX2-only CPUs), `auto` trains in fp32 and there is nothing to compare
        bf16_rate, _ = ours(n, device, splits, "bf16", model)
        agree = agreement(agree_epochs, agree_images, device, splits, model)
        result.update(
            ours_bf16_images_per_s=round(bf16_rate, 1),
            ratio_bf16=round(bf16_rate / ref_rate, 3),
            seconds_per_50k_epoch_ours_bf16=round(50_000 / bf16_rate, 2),
            agreement={"epochs": agree_epochs, "images": agree_images, **{k: round(v, 5) for k, v in agree.items()}},
        )
        line += (
            f"ours bf16 {bf16_rate:,.0f} img/s ({bf16_rate / ref_rate:.2f}x)   "
            f"val loss after {agree_epochs} epochs: fp32 {agree['fp32']:.2f}, bf16 {agree['bf16']:.2f} "
            f"({100 * agree['relative_difference']:.2f}% apart)"
        )
    else:
        line += f"bf16 not measured: {why}"
    print(line)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
