"""AGM mapping network: grading vector z -> style code w."""
from __future__ import annotations

import torch
from torch import nn

from drgan.errors import DrganError


class MappingNetwork(nn.Module):
    def __init__(
        self,
        z_dim: int,         # grading-vector size (the grader's pooled feature)
        w_dim: int,         # style-code size
        num_layers: int,    # fully connected layers (paper: 4)
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(num_layers):
            layers += [nn.Linear(z_dim if i == 0 else w_dim, w_dim), nn.LeakyReLU(0.2)]
        self.net = nn.Sequential(*layers)
        self.z_dim = z_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise DrganError(f"z {tuple(z.shape)} must be (B, {self.z_dim})")
        # Grading vectors are un-normalized ResNet features; unit RMS keeps the first layer in range.
        z = z * torch.rsqrt(z.float().square().mean(dim=1, keepdim=True) + 1e-8).to(z.dtype)
        return self.net(z)
