"""How much of this machine's arithmetic each decoder's training step uses.

Per decoder and hidden size: images per second of a full training step (forward,
loss, backward, Adam) at batch 64, FLOPs per image, and the share of the
machine's own fp32 matmul rate (a 2048x2048 product, timed in the same run)
that those FLOPs per second make. FLOPs come from torch.utils.flop_counter,
which counts matmuls and (transposed) convolutions but not the LSTM: its gate
products, 2 x 4H x (28 + H) per row and 28 rows, forward, and twice that
backward, are added by hand. Elementwise work (activations, the loss, Adam) is
not counted, so the share is a slight underestimate. Leaf ops are the ATen
operations of one profiled step; on a GPU each is about one kernel launch
(docs/gpu.md).

    python benchmarks/efficiency.py [--threads 2] [--hidden 64 128 256] [--seconds 3] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from vae.model import DECODERS, VAE
from vae.precision import bf16_support
from vae.records import DECODER, HIDDEN
from vae.train import adam, train_step

BATCH = 64


def matmul_rate(seconds: float, n: int = 2048) -> float:
    """FLOP/s of an n x n fp32 matmul on this machine, best of a few timed runs."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


def lstm_flops_per_image(hidden: int) -> float:
    """The LSTM's gate products, forward and backward (the counter does not see them)."""
    forward = 28 * 2 * 4 * hidden * (28 + hidden)
    return 3 * forward


def measure(decoder: int, hidden: int, latent: int, precision: str, seconds: float) -> dict:
    torch.manual_seed(0)
    model = VAE(decoder, hidden, latent)
    opt = adam(model.parameters(), 1e-3)  # the trainer's own optimizer
    x = torch.rand(BATCH, 1, 28, 28)
    gen = torch.Generator().manual_seed(1)
    bf16 = precision == "bf16"
    with FlopCounterMode(display=False) as counter:
        train_step(model, opt, x, gen, bf16=False)
    flops = counter.get_total_flops() / BATCH + lstm_flops_per_image(hidden)
    with profile(activities=[ProfilerActivity.CPU]) as prof:  # leaf ATen ops: on a GPU, about one launch each
        train_step(model, opt, x, gen, bf16)
    leaf_ops = sum(1 for e in prof.events() if e.name.startswith("aten::") and not e.cpu_children)
    for _ in range(3):  # warm-up: oneDNN builds its primitives on first use
        train_step(model, opt, x, gen, bf16)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        train_step(model, opt, x, gen, bf16)
        steps += 1
    rate = steps * BATCH / (time.perf_counter() - start)
    return {
        DECODER: decoder,
        HIDDEN: hidden,
        "precision": precision,
        "images_per_s": rate,
        "mflop_per_image": flops / 1e6,
        "leaf_ops_per_step": leaf_ops,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--latent", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per row")
    parser.add_argument("--smoke", action="store_true", help="one short row per decoder, so that a test runs it")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hidden, seconds = ([16], 0.2) if args.smoke else (args.hidden, args.seconds)
    native, why = bf16_support("cpu")
    precisions = ["fp32", "bf16"] if native and not args.smoke else ["fp32"]
    peak = matmul_rate(1.0 if args.smoke else 5.0)
    rows = []
    for precision in precisions:
        for h in hidden:
            for d in sorted(DECODERS):
                row = measure(d, h, args.latent, precision, seconds)
                row["share_of_matmul"] = row["images_per_s"] * row["mflop_per_image"] * 1e6 / peak
                rows.append(row)
                print(
                    f"| {d} | {h} | {precision} | {row['images_per_s']:,.0f} | {row['mflop_per_image']:.1f} | "
                    f"{100 * row['share_of_matmul']:.0f}% |",
                    flush=True,
                )
    summary = {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": args.threads,
        "bf16": why,
        "matmul_gflop_s": round(peak / 1e9, 1),
        "rows": [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in rows],
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
