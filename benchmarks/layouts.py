"""Which decoders train faster with channels-last (NHWC) activations on this CPU.

Per decoder and hidden size: images per second of a full training step (forward,
loss, backward, fused Adam) at batch 64, Z=2, with the decoder's activations in
PyTorch's default layout (NCHW) and in channels-last, round after round, each
going first in every other round, so that a shared machine's drift and any
advantage of a place in the order fall on both alike; the median of the rounds
is reported. Decoders 3 and 4 unflatten to 1x1, where both layouts are the same
memory: their rows measure the noise. One thread by default: a search's trial of `cpus: 1` runs
with one (Ray sets OMP_NUM_THREADS). `vae.model.CHANNELS_LAST` is the set this
benchmark showed to pay.

    python benchmarks/layouts.py [--threads 1] [--hidden 64 128 256] [--rounds 6] [--seconds 1] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from vae.model import DECODERS, VAE
from vae.records import DECODER, HIDDEN
from vae.train import adam, train_step


def build(decoder_id: int, hidden: int, channels_last: bool) -> tuple[VAE, torch.optim.Optimizer]:
    torch.manual_seed(0)
    vae = VAE(decoder_id, hidden, 2, channels_last=channels_last)
    return vae, adam(vae.parameters(), 1e-3)


def rate(vae: VAE, optimizer: torch.optim.Optimizer, x: torch.Tensor, seconds: float) -> float:
    """Images per second of training steps on one fixed batch for about `seconds`."""
    noise, steps = torch.Generator().manual_seed(1), 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        train_step(vae, optimizer, x, noise)
        steps += 1
    return steps * x.shape[0] / (time.perf_counter() - start)


def compare(decoder_id: int, hidden: int, rounds: int, seconds: float) -> dict:
    x = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    variants = {"nchw": build(decoder_id, hidden, False), "channels_last": build(decoder_id, hidden, True)}
    for vae, optimizer in variants.values():  # warm-up: allocator, oneDNN primitives
        rate(vae, optimizer, x, seconds / 2)
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(rounds):  # each layout goes first in every other round: no place in the order is favoured
        for name in list(variants)[:: 1 if i % 2 == 0 else -1]:
            vae, optimizer = variants[name]
            rates[name].append(rate(vae, optimizer, x, seconds))
    nchw, nhwc = (statistics.median(rates[name]) for name in variants)
    return {
        DECODER: decoder_id,
        HIDDEN: hidden,
        "nchw_images_per_s": round(nchw),
        "channels_last_images_per_s": round(nhwc),
        "speedup": round(nhwc / nchw, 3),
        "rounds": {name: [round(r) for r in values] for name, values in rates.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=1.0, help="per round and variant")
    parser.add_argument("--smoke", action="store_true", help="a tiny size, so that a test runs it")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hiddens, rounds, seconds = ([16], 1, 0.05) if args.smoke else (args.hidden, args.rounds, args.seconds)
    rows = []
    for hidden in hiddens:
        for decoder_id in sorted(DECODERS):
            rows.append(compare(decoder_id, hidden, rounds, seconds))
            row = rows[-1]
            print(
                f"H={hidden} decoder {decoder_id}: NCHW {row['nchw_images_per_s']:,} img/s, "
                f"channels-last {row['channels_last_images_per_s']:,} img/s ({row['speedup']:.2f}x)",
                flush=True,
            )
    result = {"threads": args.threads, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "rows": rows}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
