"""Multi-scale discriminators with a real/fake head and a grade head (multi-task)."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from drgan.errors import DrganError


class DiscOutput(NamedTuple):
    features: list[torch.Tensor]  # every intermediate activation (feature matching)
    logit: torch.Tensor           # (B,) real/fake logit, globally average-pooled
    grade_logits: torch.Tensor    # (B, num_grades)


class PatchDiscriminator(nn.Module):
    def __init__(
        self,
        in_channels: int,           # masks + image channels (8 + 3)
        channels: tuple[int, ...],  # widths of the conv4x4 stride-2 layers
        num_grades: int,            # grade-head classes
    ) -> None:
        super().__init__()
        widths = (in_channels, *channels)
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Conv2d(widths[i], widths[i + 1], 4, stride=2, padding=1), nn.LeakyReLU(0.2))
            for i in range(len(channels))
        )
        self.real_fake = nn.Conv2d(channels[-1], 1, 3, padding=1)
        self.grade = nn.Conv2d(channels[-1], num_grades, 3, padding=1)
        for layer in self.layers:
            # He initialisation for LeakyReLU(0.2): activations keep their scale through the stack.
            # PyTorch's default shrinks them about 6x in variance per layer, which leaves the pooled
            # logits of a fresh discriminator nearly input-independent and its training stalled.
            nn.init.kaiming_normal_(layer[0].weight, a=0.2, nonlinearity="leaky_relu")
            nn.init.zeros_(layer[0].bias)

    def forward(self, x: torch.Tensor) -> DiscOutput:
        features = []
        for layer in self.layers:
            x = layer(x)
            features.append(x)
        logit = self.real_fake(x).mean(dim=(1, 2, 3)).float()
        grades = self.grade(x).mean(dim=(2, 3)).float()
        return DiscOutput(features, logit, grades)


class MultiScaleDiscriminator(nn.Module):
    """Identical discriminators on the image at full, 1/2 and 1/4 size (avg-pool downsampling)."""

    def __init__(
        self,
        cond_channels: int,         # mask channels
        img_channels: int,          # image channels
        channels: tuple[int, ...],  # per-discriminator widths
        num_grades: int,            # grade-head classes
        num_scales: int = 3,        # discriminators, finest first
    ) -> None:
        super().__init__()
        self.nets = nn.ModuleList(
            PatchDiscriminator(cond_channels + img_channels, channels, num_grades) for _ in range(num_scales)
        )

    def forward(self, cond: torch.Tensor, image: torch.Tensor) -> list[DiscOutput]:
        if cond.shape[-2:] != image.shape[-2:]:
            raise DrganError(f"cond {tuple(cond.shape)} and image {tuple(image.shape)} differ in size")
        x = torch.cat([cond.to(image.dtype), image], dim=1)
        outputs = []
        for i, net in enumerate(self.nets):
            if i > 0:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            outputs.append(net(x))
        return outputs
