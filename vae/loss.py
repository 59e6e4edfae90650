"""The negative ELBO in nats per image, and the importance-weighted bound.

BCE summed over the 784 pixels (on logits, for stability) plus the closed-form
KL of N(mu, sigma^2) to N(0, I) (Kingma and Welling 2014, Appendix B).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vae.model import VAE

PER_BATCH = 64  # the seed's tables are sums over a batch of 64


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) per image, shape (B,)."""
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)


def reconstruction(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x|z) per image, shape (B,): BCE summed over pixels."""
    bce = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    return bce.flatten(1).sum(dim=1)


def neg_elbo(
    logits: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, recon, kl), each summed over the batch; divide by B for nats per image."""
    recon = reconstruction(logits, x).sum()
    kl = kl_divergence(mu, logvar).sum()
    return recon + kl, recon, kl


def iwae_bound(model: VAE, x: torch.Tensor, k: int, chunk: int = 500) -> torch.Tensor:
    """log (1/K) sum_k p(x, z_k) / q(z_k | x), per image, shape (B,): the importance-weighted bound.

    Burda et al. (2016); costs K decoder passes per image, done `chunk` at a time.
    It bounds the model's log-likelihood from below, and is tighter than the
    ELBO. The pixels here are continuous (byte/255, not binarised), where the
    Bernoulli "likelihood" is not a normalised density: the bound is on that
    unnormalised score, comparable across models trained the same way, not on
    log p(x) of a distribution over images.
    """
    mu, logvar = model.encode(x)
    std = torch.exp(0.5 * logvar)
    log_w = []
    for start in range(0, k, chunk):
        n = min(chunk, k - start)
        eps = torch.randn((n, *mu.shape), device=mu.device, dtype=mu.dtype)  # (n, B, Z)
        z = mu + std * eps
        logits = model.decode(z.reshape(-1, mu.shape[1]))  # (n*B, 1, 28, 28)
        target = x.unsqueeze(0).expand(n, *x.shape).reshape(-1, *x.shape[1:])
        log_px_z = -reconstruction(logits, target).reshape(n, -1)
        log_pz = -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(-1)
        log_qz = -0.5 * (eps.pow(2) + logvar + math.log(2 * math.pi)).sum(-1)
        log_w.append(log_px_z + log_pz - log_qz)
    return torch.logsumexp(torch.cat(log_w), dim=0) - math.log(k)
