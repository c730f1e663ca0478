"""GradeNet: ResNet-50 DR grader whose pooled feature spans the grading spaces.

Written here rather than imported from torchvision because torchvision does not import beside
the CPU torch build the project tests on; parameter names follow torchvision's resnet50, so its
state dicts load (`load_state_dict(..., strict=False)` ignores the replaced 1000-way fc).
"""
from __future__ import annotations

import torch
from torch import nn


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_planes != out:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + identity)


class GradeNet(nn.Module):
    def __init__(
        self,
        num_grades: int = 5,    # output classes
        width: int = 64,        # base width (64 = torchvision resnet50; feature size is 32 * width)
        in_channels: int = 3,   # RGB
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_planes = width
        for i, blocks in enumerate((3, 4, 6, 3)):
            planes = width * 2**i
            layer = []
            for j in range(blocks):
                layer.append(Bottleneck(in_planes, planes, stride=2 if (j == 0 and i > 0) else 1))
                in_planes = planes * Bottleneck.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_grades)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled feature (B, 32 * width): the grading vector of an image."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 3, H, W) in [-1, 1] -> (logits (B, num_grades), pooled feature)."""
        feat = self.features(x)
        return self.fc(feat), feat
