"""Spatial and channel attention (SCA), DANet style, on a synthesis block's fused features."""
from __future__ import annotations

import torch
from torch import nn

from drgan.kernels import channel_attention, spatial_attention
from drgan.nn.layers import from_tokens, to_tokens


class SCA(nn.Module):
    def __init__(
        self,
        channels: int,      # input and output channels C
        qk_dim: int,        # query/key channels C/d
        impl: str = "auto", # kernel implementation of drgan.kernels
    ) -> None:
        super().__init__()
        self.query = nn.Conv2d(channels, qk_dim, 1)
        self.key = nn.Conv2d(channels, qk_dim, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma_s = nn.Parameter(torch.zeros(1))  # DANet: attention branches start switched off
        self.gamma_c = nn.Parameter(torch.zeros(1))
        self.out_s = nn.Conv2d(channels, channels, 1)
        self.out_c = nn.Conv2d(channels, channels, 1)
        self.impl = impl
        self.pv_fp8 = False  # spatial attention's P@V in float8 (inference; drgan.nn.set_attention_fp8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        # With channels_last x the conv outputs are channels_last and to_tokens is a free view.
        q, k, v = to_tokens(self.query(x)), to_tokens(self.key(x)), to_tokens(self.value(x))
        attended = from_tokens(spatial_attention(q, k, v, impl=self.impl, pv_fp8=self.pv_fp8), h, w)
        spatial = x + self.gamma_s.to(x.dtype) * attended
        # flatten(2) of a channels_last map is a (B, C, N) view with stride C along N.
        channel = x + self.gamma_c.to(x.dtype) * channel_attention(x.flatten(2), impl=self.impl).reshape(b, c, h, w)
        return self.out_s(spatial) + self.out_c(channel)
