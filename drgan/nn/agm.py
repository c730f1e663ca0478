"""Adaptive grading manipulation: AdaIN whose scale and bias come from the style code w."""
from __future__ import annotations

import torch
from torch import nn

from drgan.kernels import adain


class AdaIN(nn.Module):
    def __init__(
        self,
        channels: int,      # feature channels C
        w_dim: int,         # style-code size
        impl: str = "auto", # kernel implementation of drgan.kernels.adain
    ) -> None:
        super().__init__()
        self.affine = nn.Linear(w_dim, 2 * channels)  # w -> (gamma, beta)
        self.impl = impl
        self.channels = channels

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.affine(w).chunk(2, dim=1)
        # gamma is learned around 1 so a fresh block starts as plain instance normalization.
        return adain(x, 1.0 + gamma.to(x.dtype), beta.to(x.dtype), impl=self.impl)
