"""VGG19 feature extractor for the perceptual loss, with torchvision's parameter names.

Written here because torchvision does not import beside the CPU torch build the project tests on,
and because no weights can be downloaded: they come from a local safetensors file holding
torchvision's `vgg19` state dict (only the `features.*` convolutions are read).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from drgan.checkpoint import load_tensors
from drgan.errors import DrganError, ParameterError, name_list

# torchvision's vgg19 `features`: 'M' is a 2x2 max pool, numbers are 3x3 conv widths.
_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512)
# Indices in `features` of relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 (pix2pixHD's VGGLoss taps).
TAPS = (1, 6, 11, 20, 29)
# pix2pixHD's per-tap weights: the deep, coarse layers dominate.
TAP_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
_MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics the torchvision weights expect
_STD = (0.229, 0.224, 0.225)


class VGG19Features(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for item in _LAYOUT:
            if len(layers) > TAPS[-1]:
                break
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(in_ch, int(item), 3, padding=1), nn.ReLU(inplace=False)]
                in_ch = int(item)
        self.features = nn.Sequential(*layers[: TAPS[-1] + 1])
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x (B, 3, H, W) in [-1, 1] -> activations at TAPS."""
        x = ((x + 1) / 2 - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in TAPS:
                out.append(x)
        return out


def load_vgg19(path: str | Path | None) -> VGG19Features:
    """VGG19 features with weights from a local torchvision-format safetensors file, frozen."""
    if path is None:
        raise ParameterError(
            "{perceptual} vgg19 needs {vgg19_weights} FILE (torchvision vgg19 weights as safetensors; "
            "nothing is downloaded), or choose {perceptual} grader|none"
        )
    if not Path(path).is_file():
        raise ParameterError(f"{{vgg19_weights}} {path}: file not found")
    net = VGG19Features()
    state = load_tensors(path)
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or wrong:
        raise ParameterError(f"{{vgg19_weights}} {path}: not torchvision vgg19 weights (missing {name_list(missing) or 'none'}, wrong shape {name_list(wrong) or 'none'})")
    net.load_state_dict({k: state[k] for k in own})
    return net.requires_grad_(False).eval()
