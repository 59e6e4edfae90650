"""Sample grids: the seed's Figure 6 (a 10x10 walk over z in [-1, 1]^2) and Figure 7 (z ~ N(0, I))."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib.image  # imsave writes PNGs without a GUI backend
import numpy as np
import torch
from torch import nn

from vae.files import atomic_write


def manifold_latents(n: int = 10, lo: float = -1.0, hi: float = 1.0) -> torch.Tensor:
    """(n*n, 2) grid of z over [lo, hi]^2, rows top to bottom as z2 falls, as the seed draws it."""
    axis = torch.linspace(lo, hi, n)
    z1, z2 = torch.meshgrid(axis, axis.flip(0), indexing="xy")
    return torch.stack([z1.reshape(-1), z2.reshape(-1)], dim=1)


def prior_latents(latent: int, n: int = 100, seed: int = 0) -> torch.Tensor:
    """(n, Z) draws from N(0, I), from a generator of their own: the same seed, the same digits."""
    return torch.randn(n, latent, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def decode_images(decoder: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Images (B, 1, 28, 28) in [0, 1] from a decoder that returns logits."""
    device = next(decoder.parameters()).device
    return torch.sigmoid(decoder(z.to(device))).cpu()


def tile(images: torch.Tensor, rows: int = 10) -> torch.Tensor:
    """(B, 1, 28, 28) -> one (rows*28, cols*28) image, row-major."""
    b = images.shape[0]
    cols = -(-b // rows)
    padded = torch.zeros(rows * cols, 28, 28)
    padded[:b] = images.reshape(b, 28, 28)
    return padded.reshape(rows, cols, 28, 28).permute(0, 2, 1, 3).reshape(rows * 28, cols * 28)


def png_bytes(images: torch.Tensor, rows: int = 10) -> bytes:
    buf = io.BytesIO()
    matplotlib.image.imsave(buf, tile(images, rows).numpy(), cmap="gray", vmin=0.0, vmax=1.0, format="png")
    return buf.getvalue()


def save_grid(images: torch.Tensor, path: str | Path, rows: int = 10) -> Path:
    """Write a grid PNG atomically."""
    path = Path(path)
    atomic_write(path, png_bytes(images, rows))
    return path


def grids(decoder: nn.Module, latent: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """The grids a run shows, as images in [0, 1]: prior draws (`samples`) and, for Z=2, the `manifold`."""
    out = {"samples": decode_images(decoder, prior_latents(latent, seed=seed))}
    if latent == 2:
        out["manifold"] = decode_images(decoder, manifold_latents())
    return out


def grid_pixels(images: torch.Tensor, rows: int = 10) -> np.ndarray:
    """A tiled grid as 8-bit grayscale pixels (rows*28, cols*28), what an image logger takes."""
    return (tile(images, rows) * 255).round().to(torch.uint8).numpy()


def sample_grids(decoder: nn.Module, latent: int, out_dir: str | Path, seed: int = 0) -> list[Path]:
    """samples.png (prior draws) and, for Z=2, manifold.png (the walk over [-1, 1]^2)."""
    out_dir = Path(out_dir)
    return [save_grid(images, out_dir / f"{name}.png") for name, images in grids(decoder, latent, seed).items()]
