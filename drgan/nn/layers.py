"""Small building blocks shared by the networks."""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from drgan.errors import DrganError
from drgan.kernels.dispatch import NETWORK_IMPLS


def assert_shape(tensor: torch.Tensor, shape: tuple[int | None, ...], name: str = "tensor") -> None:
    """Check a tensor's shape; None matches any size along that axis."""
    if tensor.ndim != len(shape) or any(s is not None and s != t for t, s in zip(tensor.shape, shape)):
        raise AssertionError(f"{name} has shape {tuple(tensor.shape)}, expected {shape}")


def norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.Identity()


def conv_norm_relu(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    norm: str = "batch",
    transposed: bool = False,
) -> nn.Sequential:
    """Conv (or transposed conv doubling the size) with 'same' padding, normalization, ReLU."""
    if transposed:
        conv = nn.ConvTranspose2d(
            in_channels, out_channels, kernel_size, stride=2, padding=kernel_size // 2, output_padding=1
        )
    else:
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2)
    return nn.Sequential(conv, norm_layer(norm, out_channels), nn.ReLU(inplace=True))


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """An inference copy of `module` in which every BatchNorm2d that directly follows a convolution
    in a Sequential is folded into that convolution's weights (eval statistics): one pass over the
    activations less per layer. `module` itself is left as it is (its weights hash is unchanged)."""
    folded = copy.deepcopy(module).eval()
    for seq in folded.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        for i in range(len(seq) - 1):
            conv, norm = seq[i], seq[i + 1]
            if isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)) and isinstance(norm, nn.BatchNorm2d):
                seq[i] = fuse_conv_bn_eval(conv, norm, transpose=isinstance(conv, nn.ConvTranspose2d))
                seq[i + 1] = nn.Identity()
    return folded


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C): a view when x is channels_last, a copy otherwise."""
    b, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b, h * w, c)


def from_tokens(t: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, H*W, C) -> (B, C, H, W) laid out channels_last (a view of contiguous tokens)."""
    b, n, c = t.shape
    return t.reshape(b, height, width, c).permute(0, 3, 1, 2)


def set_attention_fp8(module: nn.Module, enabled: bool) -> nn.Module:
    """Every SCA's spatial attention with P@V in float8 e4m3 (drgan.kernels.spatial_attention's
    pv_fp8: opt-in, inference only) or as its inputs."""
    for m in module.modules():
        if hasattr(m, "pv_fp8"):
            m.pv_fp8 = enabled
    return module


def set_kernel_impl(module: nn.Module, impl: str) -> nn.Module:
    """Switch every kernel-backed submodule (SCA, AdaIN) to impl 'auto' | 'ref' | 'triton' | 'sdpa'
    (drgan.kernels.dispatch); an unknown name, or 'gluon' (spatial attention alone has that kernel),
    is refused here, not at the first forward pass."""
    if impl not in NETWORK_IMPLS:
        raise DrganError(f"kernel impl {impl!r} is not one of {', '.join(NETWORK_IMPLS)}"
                         + (" ('gluon' exists only for drgan.kernels.spatial_attention)" if impl == "gluon" else ""))
    for m in module.modules():
        if hasattr(m, "impl"):
            m.impl = impl
    return module
