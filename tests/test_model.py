import pytest
import torch

from vae.model import DECODERS, VAE, Generator


@pytest.mark.parametrize("decoder_id", sorted(DECODERS))
@pytest.mark.parametrize("latent", [2, 20])
def test_every_decoder_gives_28x28_and_finite_gradients(decoder_id: int, latent: int) -> None:
    model = VAE(decoder_id, hidden=16, latent=latent)
    x = torch.rand(5, 1, 28, 28)
    logits, mu, logvar = model(x)
    assert logits.shape == (5, 1, 28, 28)
    assert mu.shape == logvar.shape == (5, latent)
    logits.sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_decoder_4_is_the_large_one() -> None:
    """About 5.7M decoder parameters, nearly all in its first layer (6272 x 56 x 4 x 4)."""
    n = sum(p.numel() for p in VAE(4, 128, 2).decoder.parameters())
    assert 5.6e6 < n < 5.8e6


def test_generator_maps_latents_to_images_in_unit_range() -> None:
    gen = Generator(VAE(6, 32, 5))
    images = gen(torch.randn(7, 5))
    assert images.shape == (7, 1, 28, 28)
    assert images.min() >= 0 and images.max() <= 1


def test_unknown_decoder_is_refused() -> None:
    with pytest.raises(ValueError, match="decoder"):
        VAE(7, 16, 2)
