"""VGG19 feature extractor for the perceptual loss, with torchvision's parameter names.

Written here because torchvision does not import beside the CPU torch build the project tests on,
and because no weights can be downloaded: they come from a local file holding torchvision's `vgg19`
state dict (only the `features.*` convolutions are read): safetensors, or torchvision's own .pth,
read with `weights_only=True` so that loading it executes no code. Where torchvision has already
downloaded them (`torch.hub.get_dir()/checkpoints/vgg19-dcbb9e9d.pth`) they are found without a flag.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from drgan.checkpoint import load_tensors
from drgan.errors import ParameterError, name_list

# torchvision's vgg19 `features`: 'M' is a 2x2 max pool, numbers are 3x3 conv widths.
_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512)
# Indices in `features` of relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 (pix2pixHD's VGGLoss taps).
TAPS = (1, 6, 11, 20, 29)
# pix2pixHD's per-tap weights: the deep, coarse layers dominate.
TAP_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
TORCHVISION_FILE = "vgg19-dcbb9e9d.pth"  # torchvision's VGG19_Weights.IMAGENET1K_V1
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


def torchvision_weights_path() -> Path:
    """Where torchvision keeps its downloaded VGG19 weights ($TORCH_HOME/hub, default ~/.cache/torch/hub)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILE


def find_vgg19_weights(given: str | Path | None) -> Path | None:
    """The weights file given, else torchvision's download when it exists, else None."""
    if given is not None:
        return Path(given)
    found = torchvision_weights_path()
    return found if found.is_file() else None


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_tensors(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling and zip errors of every kind: not a plain state dict
        raise ParameterError(f"{{vgg19_weights}} {path}: not a torch state dict ({type(exc).__name__})") from None
    if not isinstance(state, dict):
        raise ParameterError(f"{{vgg19_weights}} {path}: holds a {type(state).__name__}, not a state dict")
    return state


def load_vgg19(path: str | Path | None) -> VGG19Features:
    """VGG19 features with weights from a local torchvision-format file (.safetensors or .pth), frozen."""
    if path is None:
        raise ParameterError(
            f"{{perceptual}} vgg19 needs {{vgg19_weights}} FILE (torchvision vgg19 weights, safetensors or .pth; "
            f"nothing is downloaded; also found at {torchvision_weights_path()}), or choose {{perceptual}} grader|none"
        )
    path = Path(path)
    if not path.is_file():
        raise ParameterError(f"{{vgg19_weights}} {path}: file not found")
    net = VGG19Features()
    state = _read_state(path)
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or wrong:
        raise ParameterError(f"{{vgg19_weights}} {path}: not torchvision vgg19 weights (missing {name_list(missing) or 'none'}, wrong shape {name_list(wrong) or 'none'})")
    net.load_state_dict({k: state[k] for k in own})
    return net.requires_grad_(False).eval()
