"""The seed's VAE: an LSTM encoder over an image's 28 rows and six transposed-conv decoders.

The decoders' shapes are the table `DECODERS` below: the seed report's text has shape errors (layers
whose sizes do not chain to 28x28), and this table is the corrected one each decoder is built from.
The decoder returns logits; a sigmoid is applied only when an image is drawn. `Generator`,
`LatentCode` and `Reconstruction` wrap a trained VAE as one forward each, for a registered model.
"""

from __future__ import annotations

import torch
from torch import nn

from vae.layers import ChannelsLastUnflatten, ConvTranspose2dOn1x1

# id -> (linear width, reshape to (C, H, W), transposed convs (in, out, kernel, stride, padding))
DECODERS: dict[int, tuple[int, tuple[int, int, int], list[tuple[int, int, int, int, int]]]] = {
    1: (6272, (128, 7, 7), [(128, 64, 4, 2, 1), (64, 1, 4, 2, 1)]),
    2: (3136, (64, 7, 7), [(64, 32, 4, 2, 1), (32, 16, 4, 2, 1), (16, 1, 3, 1, 1)]),
    3: (64, (64, 1, 1), [(64, 56, 4, 1, 0), (56, 28, 4, 2, 1), (28, 14, 3, 2, 1), (14, 1, 2, 2, 1)]),
    4: (6272, (6272, 1, 1), [(6272, 56, 4, 1, 0), (56, 28, 4, 2, 1), (28, 14, 3, 2, 1), (14, 1, 2, 2, 1)]),
    5: (6272, (128, 7, 7), [(128, 56, 3, 1, 1), (56, 28, 3, 2, 1), (28, 14, 4, 2, 1), (14, 1, 3, 1, 0)]),
    6: (3136, (64, 7, 7), [(64, 56, 4, 2, 1), (56, 28, 4, 1, 1), (28, 14, 4, 2, 2), (14, 1, 3, 1, 1)]),
}
# Decoders whose transposed convolutions ran faster on a CPU in fp32 with channels-last activations
# (benchmarks/layouts.py; docs/benchmarks.md). On CUDA and under bf16 autocast the layout stays NCHW.
CHANNELS_LAST: frozenset[int] = frozenset({2})


def decoder(decoder_id: int, latent: int, channels_last: bool | None = None) -> nn.Sequential:
    """Build decoder `decoder_id`: z (B, Z) -> logits (B, 1, 28, 28); ReLU after all but the last layer.

    `channels_last` None: as `CHANNELS_LAST` says for this decoder. Decoders 3 and 4 unflatten to 1x1, where
    both layouts are one: for them it changes nothing (their rows in benchmarks/layouts.py measure its noise).
    """
    width, shape, convs = DECODERS[decoder_id]
    if channels_last is None:
        channels_last = decoder_id in CHANNELS_LAST
    unflatten = ChannelsLastUnflatten if channels_last else nn.Unflatten
    layers: list[nn.Module] = [nn.Linear(latent, width), nn.ReLU(), unflatten(1, shape)]
    for i, (c_in, c_out, k, s, p) in enumerate(convs):
        on_1x1 = i == 0 and shape[1:] == (1, 1)  # decoders 3 and 4: the same layer, as one matrix product
        layers.append((ConvTranspose2dOn1x1 if on_1x1 else nn.ConvTranspose2d)(c_in, c_out, k, s, p))
        if i < len(convs) - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """One LSTM layer reads the image row by row; its last hidden state gives mu and logvar."""

    def __init__(self, hidden: int, latent: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size=28, hidden_size=hidden, batch_first=True)
        self.fc_mu = nn.Linear(hidden, latent)
        self.fc_logvar = nn.Linear(hidden, latent)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = x.reshape(x.shape[0], 28, 28)  # (B, T=28 rows, 28 pixels)
        _, (h, _) = self.lstm(rows)  # h: (1, B, H)
        h = h[-1]
        return self.fc_mu(h), self.fc_logvar(h)


class VAE(nn.Module):
    """encode, reparameterize, decode, as in Kingma and Welling (2014)."""

    def __init__(self, decoder_id: int, hidden: int, latent: int, channels_last: bool | None = None) -> None:
        super().__init__()
        if decoder_id not in DECODERS:
            raise ValueError(f"decoder must be one of {sorted(DECODERS)}, got {decoder_id}")
        self.latent = latent
        self.encoder = Encoder(hidden, latent)
        self.decoder = decoder(decoder_id, latent, channels_last)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x)

    @staticmethod
    def reparameterize(
        mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + torch.exp(0.5 * logvar) * eps

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Logits (B, 1, 28, 28)."""
        return self.decoder(z)

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar, generator)
        return self.decode(z), mu, logvar


class Generator(nn.Module):
    """The decoder alone with a sigmoid: latent vectors (B, Z) -> images (B, 1, 28, 28) in [0, 1].

    What a registered model exposes: its forward is all a pt2 export keeps.
    """

    def __init__(self, vae: VAE) -> None:
        super().__init__()
        self.decoder = vae.decoder
        self.latent = vae.latent

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(z))


class LatentCode(nn.Module):
    """The encoder's mean: images (B, 28, 28) in [0, 1] -> latent codes (B, Z), no sampling.

    Like `Generator`, the whole interface of a registered model: a pt2 export keeps only forward.
    """

    def __init__(self, vae: VAE) -> None:
        super().__init__()
        self.encoder = vae.encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)[0]


class Reconstruction(nn.Module):
    """Images (B, 28, 28) in [0, 1] -> the decoder's image of their latent means, (B, 1, 28, 28) in [0, 1]."""

    def __init__(self, vae: VAE) -> None:
        super().__init__()
        self.encoder, self.decoder = vae.encoder, vae.decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(self.encoder(x)[0]))
