"""Everything a few minutes on a GPU should measure, in one command: at most 5 minutes on one GPU.

This project rarely has a GPU at hand, and then for minutes, with Python and torch
but no Ray, MLflow or internet: so this needs only torch and `vae/`, trains on
synthetic uint8 images where MNIST is not found, and keeps each measurement's
error in the output instead of stopping. It measures:

- `epochs`: each decoder's epoch time at the seed's batch size (64; H=128, Z=20) in
  fp32 and bf16 autocast, from a timed pass over `--images` training images after a
  warm-up, scaled to the 50,000 training and 10,000 validation images of an epoch;
- `processes`: aggregate training images per second of 1, 2, 4 and 8 processes
  sharing the device (decoder 1) against one, each timed over the same window;
- `graphs`: one training step of decoder 1 eager against `torch.compile(mode=
  "reduce-overhead")` of its forward and backward (CUDA graphs on a GPU), the
  launch-bound case docs/gpu.md predicts.

The last line printed is one JSON object; it is also written to $OUT/gpu_check.json
when OUT is set. `--device cpu --quick` runs the same code on a CPU in under 2
minutes (fewer images and processes; `torch.compile` with its eager backend, since
the CPU's inductor compile alone takes that long), so the script cannot rot before a
GPU arrives; the test suite runs it.

    python benchmarks/gpu_check.py [--device cuda] [--quick] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `vae/` beside this folder, uninstalled

from vae import data  # noqa: E402
from vae.config import TrainConfig  # noqa: E402
from vae.evaluation import evaluate  # noqa: E402
from vae.loss import neg_elbo  # noqa: E402
from vae.model import VAE  # noqa: E402
from vae.precision import bf16_support  # noqa: E402
from vae.train import Trainer, adam  # noqa: E402

DECODERS = (1, 2, 3, 4, 5, 6)
HIDDEN, LATENT, BATCH = 128, 20, 64
TRAIN_IMAGES, VAL_IMAGES = 50_000, 10_000


def splits(data_dir: str | None, n: int) -> tuple[dict[str, data.Split], str]:
    """MNIST where it is found (verified), else n synthetic uint8 images per split: the timing is the same."""
    try:
        return data.load(Path(data_dir) if data_dir else None), "mnist"
    except Exception:  # no MNIST on this machine: timing needs only the shapes
        gen = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=gen)
        split = data.Split(images, torch.zeros(n, dtype=torch.int64))
        return {"train": split, "val": split, "test": split}, "synthetic"


def guarded(measure: Callable[[], Any]) -> Any:
    """A measurement's result, or its error: minutes of a borrowed GPU are not lost to one failure."""
    try:
        return measure()
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}", "where": traceback.format_exc().strip().splitlines()[-3:]}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def epoch_time(decoder: int, precision: str, parts: dict, device: torch.device, images: int) -> dict[str, float]:
    """One decoder's training rate over `images` after a warm-up pass, and its validation rate."""
    config = TrainConfig(decoder=decoder, hidden=HIDDEN, latent=LATENT, batch_size=BATCH, precision=precision,
                         subset=images, val_subset=images)  # fmt: skip
    trainer = Trainer(config, parts, device)
    trainer.train_epoch()  # warm-up: allocator, cuDNN's choices, oneDNN's primitives
    _, _, seconds = trainer.train_epoch()
    sync(device)
    start = time.perf_counter()
    evaluate(trainer.model, trainer.val_data, seed=0)
    sync(device)
    val_seconds = time.perf_counter() - start
    train_ips, val_ips = images / seconds, images / val_seconds
    epoch = TRAIN_IMAGES / train_ips + VAL_IMAGES / val_ips
    return {"train_img_per_s": round(train_ips), "val_img_per_s": round(val_ips), "epoch_s": round(epoch, 2)}


def epochs(parts: dict, device: torch.device, images: int) -> dict[str, Any]:
    ok, why = bf16_support(device.type)
    out: dict[str, Any] = {"bf16": why}
    for precision in ("fp32", "bf16") if ok else ("fp32",):
        for decoder in DECODERS:
            measure = functools.partial(epoch_time, decoder, precision, parts, device, images)
            out[f"d{decoder}-{precision}"] = guarded(measure)
    return out


def _worker(
    rank: int, device: str, images: int, seconds: float, barrier: Any, queue: Any, data_dir: str | None
) -> None:
    """One of several training processes: trains decoder 1 in passes over `images` for `seconds`, counting images."""
    try:
        torch.set_num_threads(1)
        parts, _ = splits(data_dir, images)
        config = TrainConfig(decoder=1, hidden=HIDDEN, latent=LATENT, batch_size=BATCH, subset=images, seed=rank)
        trainer = Trainer(config, parts, torch.device(device))
        trainer.train_epoch()  # warm-up before the common start
        barrier.wait()
        start, done = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            trainer.train_epoch()  # ends in a device sync: the count is of finished work
            done += images
        queue.put((rank, done / (time.perf_counter() - start)))
    except Exception as e:
        barrier.abort()
        queue.put((rank, f"{type(e).__name__}: {e}"))


def processes(device: torch.device, counts: tuple[int, ...], images: int, seconds: float, data_dir: str | None) -> dict:
    """Aggregate training images per second of n processes sharing the device, against one."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")  # CUDA cannot be forked
    out: dict[str, Any] = {}
    for n in counts:
        barrier, queue = ctx.Barrier(n), ctx.Queue()
        procs = [ctx.Process(target=_worker, args=(r, str(device), images, seconds, barrier, queue, data_dir))
                 for r in range(n)]  # fmt: skip
        for p in procs:
            p.start()
        rates = [queue.get(timeout=seconds + 300) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        errors = [r for _, r in rates if isinstance(r, str)]
        out[str(n)] = {"error": errors[0]} if errors else {"img_per_s": round(sum(r for _, r in rates))}
    one = out.get("1", {}).get("img_per_s")
    for entry in out.values():
        if one and "img_per_s" in entry:
            entry["vs_one"] = round(entry["img_per_s"] / one, 2)
    return out


class Step(torch.nn.Module):
    """Forward and loss of one batch, the noise given: what a compiler may capture whole."""

    def __init__(self, model: VAE) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        mu, logvar = self.model.encode(x)
        logits = self.model.decode(mu + torch.exp(0.5 * logvar) * eps)
        loss, _, _ = neg_elbo(logits, x, mu, logvar)
        return loss / x.shape[0]


def step_ms(step: Callable, optimizer: torch.optim.Optimizer, x: torch.Tensor, eps: torch.Tensor,
            device: torch.device, steps: int) -> float:  # fmt: skip
    for _ in range(3):  # warm-up; a compiled step records its graphs here
        optimizer.zero_grad(set_to_none=True)
        step(x, eps).backward()
        optimizer.step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        step(x, eps).backward()
        optimizer.step()
    sync(device)
    return (time.perf_counter() - start) / steps * 1000


def graphs(device: torch.device, steps: int, backend: str) -> dict[str, Any]:
    """Decoder 1's training step eager and compiled; compile time apart."""
    torch.manual_seed(0)
    x = torch.rand(BATCH, 1, 28, 28, device=device)
    eps = torch.randn(BATCH, LATENT, device=device)
    out: dict[str, Any] = {"backend": backend}
    model = VAE(1, HIDDEN, LATENT).to(device)
    out["eager_ms"] = round(step_ms(Step(model), adam(model.parameters(), 1e-3), x, eps, device, steps), 3)

    def compiled() -> dict[str, float]:
        model = VAE(1, HIDDEN, LATENT).to(device)
        kwargs = {"mode": "reduce-overhead"} if backend == "inductor" else {"backend": backend}
        step = torch.compile(Step(model), **kwargs)
        start = time.perf_counter()
        optimizer = adam(model.parameters(), 1e-3)
        first = step_ms(step, optimizer, x, eps, device, 1)  # includes the compile
        ms = step_ms(step, optimizer, x, eps, device, steps)
        return {"compiled_ms": round(ms, 3), "compile_s": round(time.perf_counter() - start - first / 1000, 1)}

    out.update(guarded(compiled))
    if "compiled_ms" in out:
        out["speedup"] = round(out["eager_ms"] / out["compiled_ms"], 2)
    return out


def environment(device: torch.device, source: str) -> dict[str, Any]:
    env: dict[str, Any] = {"torch": torch.__version__, "device": str(device), "data": source,
                           "cpu_threads": torch.get_num_threads()}  # fmt: skip
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                   memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)  # fmt: skip
    return env


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--quick", action="store_true", help="the same paths, small: a CPU check of the script")
    parser.add_argument("--data-dir", default=None, help="MNIST folder (default: synthetic images if none is found)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here (--device cpu --quick checks the script on a CPU)")
    device = torch.device(args.device)
    images, counts, window = (256, (1, 2), 2.0) if args.quick else (10_000, (1, 2, 4, 8), 15.0)
    started = time.perf_counter()
    parts, source = splits(args.data_dir, images)
    result: dict[str, Any] = {"environment": environment(device, source), "images_per_measurement": images}
    result["epochs"] = epochs(parts, device, images)
    result["processes"] = guarded(lambda: processes(device, counts, images, window, args.data_dir))
    backend = "inductor" if device.type == "cuda" or not args.quick else "eager"
    result["graphs"] = guarded(lambda: graphs(device, 5 if args.quick else 200, backend))
    result["seconds"] = round(time.perf_counter() - started, 1)
    line = json.dumps(result)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_check.json").write_text(line + "\n")
    print(line)
    return result


if __name__ == "__main__":
    main()
