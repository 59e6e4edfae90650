"""Which precision the training pass may use on this machine, decided by trying it once.

bf16 autocast doubles a CPU's throughput where oneDNN has native bf16 kernels,
but on AVX2-only CPUs oneDNN cannot build the LSTM under autocast at all
("could not create a primitive descriptor"). CPU flags do not say this
reliably, so a tiny LSTM and transposed convolution run forward and backward
under autocast, once per process and device type.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from vae.config import ConfigError


@functools.cache
def bf16_support(device_type: str) -> tuple[bool, str]:
    """(works, why): whether bf16 autocast trains the model's layer types on this device type."""
    if device_type == "cuda":
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return ok, "the CUDA device supports bf16" if ok else "the CUDA device has no bf16 support"
    try:
        lstm = nn.LSTM(28, 4, batch_first=True)
        conv = nn.ConvTranspose2d(4, 1, 4, 2, 1)
        x = torch.rand(2, 28, 28)
        with torch.autocast(device_type, dtype=torch.bfloat16):
            _, (h, _) = lstm(x)
            out = conv(h[-1].reshape(2, 4, 1, 1))
        out.float().sum().backward()
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return False, f"bf16 autocast fails on this {device_type.upper()} ({first.split('. ')[0]})"
    return True, f"bf16 autocast works on this {device_type.upper()}"


def resolve_precision(requested: str, device: torch.device | str, field: str = "precision") -> tuple[str, str]:
    """(precision, why) for `requested` in {auto, fp32, bf16}; an explicit bf16 that cannot run is refused."""
    if requested == "fp32":
        return "fp32", "asked for"
    works, why = bf16_support(torch.device(device).type)
    if requested == "bf16" and not works:
        raise ConfigError(field, f"bf16 cannot run here: {why}; allowed on this machine: auto, fp32")
    if requested == "bf16":
        return "bf16", "asked for"
    return ("bf16" if works else "fp32"), why
