import math

import torch

from vae.loss import iwae_bound, kl_divergence, neg_elbo, reconstruction
from vae.model import VAE


def test_closed_form_kl_matches_monte_carlo() -> None:
    gen = torch.Generator().manual_seed(0)
    mu = torch.randn(4, 3, generator=gen)
    logvar = torch.randn(4, 3, generator=gen) * 0.5
    std = torch.exp(0.5 * logvar)
    z = mu + std * torch.randn(200_000, 4, 3, generator=gen)
    log_q = (-0.5 * (((z - mu) / std) ** 2 + logvar + math.log(2 * math.pi))).sum(-1)
    log_p = (-0.5 * (z**2 + math.log(2 * math.pi))).sum(-1)
    mc = (log_q - log_p).mean(0)
    torch.testing.assert_close(kl_divergence(mu, logvar), mc, atol=0.02, rtol=0.01)


def test_kl_is_zero_at_the_prior() -> None:
    assert torch.allclose(kl_divergence(torch.zeros(2, 5), torch.zeros(2, 5)), torch.zeros(2))


def test_reconstruction_is_bce_summed_over_pixels() -> None:
    x = torch.rand(3, 1, 28, 28)
    logits = torch.randn(3, 1, 28, 28)
    p = torch.sigmoid(logits)
    manual = -(x * torch.log(p) + (1 - x) * torch.log(1 - p)).flatten(1).sum(1)
    torch.testing.assert_close(reconstruction(logits, x), manual, rtol=1e-4, atol=1e-3)


def test_neg_elbo_is_recon_plus_kl() -> None:
    x = torch.rand(3, 1, 28, 28)
    logits, mu, logvar = torch.randn(3, 1, 28, 28), torch.randn(3, 2), torch.randn(3, 2)
    loss, recon, kl = neg_elbo(logits, x, mu, logvar)
    torch.testing.assert_close(loss, recon + kl)


def test_iwae_bound_is_tighter_than_the_elbo() -> None:
    """log p(x) >= IWAE_K >= ELBO on average: the IW loss is at most the ELBO loss."""
    torch.manual_seed(0)
    model = VAE(1, 16, 2).eval()
    x = torch.rand(8, 1, 28, 28).round()
    with torch.no_grad():
        logits, mu, logvar = model(x)
        elbo = -(reconstruction(logits, x) + kl_divergence(mu, logvar))
        iw = iwae_bound(model, x, k=64, chunk=16)
    assert iw.shape == (8,)
    assert iw.mean() >= elbo.mean()


class _PriorPosterior(torch.nn.Module):
    """q(z|x) equal to the prior and a decoder that ignores z: every importance weight is p(x|z)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(x.shape[0], 3), torch.zeros(x.shape[0], 3)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(z.shape[0], *self.logits.shape[1:])


def test_iwae_equals_the_reconstruction_term_when_every_weight_is_equal() -> None:
    """The mean over K weights needs its -log K: without it the bound would grow with K."""
    torch.manual_seed(0)
    x = torch.rand(5, 1, 28, 28)
    logits = torch.randn(1, 1, 28, 28)
    model = _PriorPosterior(logits)
    want = -reconstruction(logits.expand_as(x), x)
    for k in (1, 7, 64):
        torch.testing.assert_close(iwae_bound(model, x, k=k, chunk=5), want, rtol=1e-5, atol=1e-3)
