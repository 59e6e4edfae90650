"""Exact, faster forms of layers whose general kernels are slow for the shapes the decoders use."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvTranspose2dOn1x1(nn.ConvTranspose2d):
    """A transposed convolution fed a 1x1 input: mathematically one matrix product.

    With a 1x1 input and no padding, out[b, o, i, j] = sum_c x[b, c] W[c, o, i, j] + bias[o],
    so (B, C_in) @ W.reshape(C_in, C_out*kh*kw) gives the output. PyTorch's CPU
    deconvolution runs decoder 4's ConvTranspose2d(6272, 56, 4) about ten times
    slower than that product. Parameters, their shapes and `state_dict` keys stay
    nn.ConvTranspose2d's, so checkpoints load either way; any other input falls
    back to the general kernel.
    """

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        plain = (
            x.shape[-2:] != (1, 1)
            or output_size is not None
            or self.padding != (0, 0)
            or self.output_padding != (0, 0)
            or self.dilation != (1, 1)
            or self.groups != 1
        )
        if plain:
            return super().forward(x, output_size)
        kh, kw = self.kernel_size
        weight = self.weight.reshape(self.in_channels, self.out_channels * kh * kw)  # (C_in, C_out*kh*kw)
        bias = None if self.bias is None else self.bias.repeat_interleave(kh * kw)
        y = F.linear(x.flatten(1), weight.t(), bias)  # (B, C_out*kh*kw)
        return y.view(x.shape[0], self.out_channels, kh, kw)


class ChannelsLastUnflatten(nn.Unflatten):
    """nn.Unflatten whose (B, C, H, W) output is laid out channels-last (NHWC) in memory, on a CPU in fp32.

    The transposed convolutions after it then take oneDNN's NHWC kernels, which on
    a CPU are faster for some decoders' shapes and slower for others
    (`vae.model.CHANNELS_LAST` lists where it paid). Only strides differ, so values
    agree to rounding. Where it was not measured (CUDA, bf16 autocast) the layout is
    left as nn.Unflatten gives it. No parameters: a decoder's `state_dict` keys and
    checkpoints are nn.Unflatten's.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        if x.device.type != "cpu" or torch.is_autocast_enabled("cpu"):
            return x
        return x.contiguous(memory_format=torch.channels_last)
