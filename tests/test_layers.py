"""Reformulated layers compute what the plain layers compute, with the same parameters."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from vae.layers import ChannelsLastUnflatten, ConvTranspose2dOn1x1
from vae.model import CHANNELS_LAST, DECODERS, decoder


def _plain(module: nn.Module) -> nn.Module:
    """A copy with every reformulated layer turned back into its plain class (same parameters)."""
    twin = copy.deepcopy(module)
    for layer in twin.modules():
        if isinstance(layer, ConvTranspose2dOn1x1):
            layer.__class__ = nn.ConvTranspose2d
        if isinstance(layer, ChannelsLastUnflatten):
            layer.__class__ = nn.Unflatten
    return twin


@pytest.mark.parametrize("decoder_id", sorted(DECODERS))
def test_each_decoder_equals_its_plain_form_forward_and_backward(decoder_id: int) -> None:
    torch.manual_seed(decoder_id)
    fast = decoder(decoder_id, latent=3).double()
    plain = _plain(fast)
    assert type(plain[3]) is nn.ConvTranspose2d
    z = torch.randn(5, 3, dtype=torch.float64)
    target = torch.rand(5, 1, 28, 28, dtype=torch.float64)
    out_fast, out_plain = fast(z), plain(z)
    torch.testing.assert_close(out_fast, out_plain, rtol=1e-10, atol=1e-10)
    for out in (out_fast, out_plain):
        nn.functional.binary_cross_entropy_with_logits(out, target).backward()
    for (name, p_fast), (_, p_plain) in zip(fast.named_parameters(), plain.named_parameters(), strict=True):
        torch.testing.assert_close(p_fast.grad, p_plain.grad, rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("decoder_id", [3, 4])
def test_the_reformulated_layer_keeps_the_plain_layers_state_dict(decoder_id: int) -> None:
    fast = decoder(decoder_id, latent=2)
    assert isinstance(fast[3], ConvTranspose2dOn1x1)
    c_in, c_out, k, s, p = DECODERS[decoder_id][2][0]
    plain_layer = nn.ConvTranspose2d(c_in, c_out, k, s, p)
    assert {k: v.shape for k, v in fast[3].state_dict().items()} == {
        k: v.shape for k, v in plain_layer.state_dict().items()
    }
    _plain(fast).load_state_dict(fast.state_dict())  # a checkpoint saved by either loads into the other
    fast.load_state_dict(_plain(fast).state_dict())


def test_inputs_larger_than_1x1_take_the_general_kernel() -> None:
    torch.manual_seed(0)
    layer = ConvTranspose2dOn1x1(4, 3, 3, 2, 1).double()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(layer(x), nn.functional.conv_transpose2d(x, layer.weight, layer.bias, 2, 1))


@pytest.mark.parametrize("decoder_id", sorted(DECODERS))
def test_channels_last_decoders_differ_from_the_plain_only_in_memory_layout(decoder_id: int) -> None:
    fast, nchw = decoder(decoder_id, latent=2), decoder(decoder_id, latent=2, channels_last=False)
    nchw.load_state_dict(fast.state_dict())  # strict, both ways: a checkpoint of either loads into the other
    fast.load_state_dict(nchw.state_dict())
    z = torch.randn(2, 2)
    hidden = fast[:3](z)  # what the first transposed convolution reads
    layout = torch.channels_last if decoder_id in CHANNELS_LAST else torch.contiguous_format
    assert hidden.is_contiguous(memory_format=layout)
    torch.testing.assert_close(fast(z), nchw(z))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # not measured there: the layout stays NCHW
        assert fast[:3](z).is_contiguous()
