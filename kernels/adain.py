"""AdaIN: gamma * (x - mean_hw) / sqrt(var_hw + eps) + beta, per sample and channel."""
from __future__ import annotations

import torch

from drgan.errors import DrganError
from drgan.kernels import dispatch


def adain(
    x: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    eps: float = 1e-5,
    impl: str = "auto",
) -> torch.Tensor:
    """x: (B, C, H, W), contiguous or channels_last; gamma, beta: (B, C). Output keeps x's layout."""
    if x.ndim != 4:
        raise DrganError(f"adain: x {tuple(x.shape)} must be (B, C, H, W)")
    if gamma.shape != x.shape[:2] or beta.shape != x.shape[:2]:
        raise DrganError(f"adain: gamma {tuple(gamma.shape)} and beta {tuple(beta.shape)} must be (B, C) = {tuple(x.shape[:2])}")
    if dispatch.resolve("adain", impl, (x, gamma, beta), _triton_unsupported(x)) == "triton":
        from drgan.kernels.adain_triton import adain_triton

        return adain_triton(x, gamma, beta, eps)
    return adain_ref(x, gamma, beta, eps)


def adain_ref(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Readable reference: statistics in fp32 over H*W (biased variance); output in x's dtype."""
    xf = x.float()
    var, mean = torch.var_mean(xf, dim=(2, 3), keepdim=True, correction=0)
    y = (xf - mean) * torch.rsqrt(var + eps)
    y = y * gamma.float()[:, :, None, None] + beta.float()[:, :, None, None]
    return y.to(x.dtype)


def _triton_unsupported(x: torch.Tensor) -> str | None:
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"x dtype {x.dtype} is not float32, float16 or bfloat16"
    if x.numel() == 0:
        return f"x {tuple(x.shape)} is empty"
    if x.shape[2] > 1 and x.shape[3] > 1 and x.stride(2) != x.shape[3] * x.stride(3):
        return f"x strides {x.stride()} do not merge H and W into one axis (use contiguous or channels_last)"
    return None
