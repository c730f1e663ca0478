"""SCA channel attention (DANet): E = X X^T, A = softmax(rowmax(E) - E), out = A X."""
from __future__ import annotations

import torch

from drgan.errors import DrganError
from drgan.kernels import dispatch


def channel_attention(x: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """x: (B, C, N), any strides (a channels_last map flattened is (B, C, N) with stride 1 on C)."""
    if x.ndim != 3:
        raise DrganError(f"channel_attention: x {tuple(x.shape)} must be (B, C, N)")
    if dispatch.resolve("channel_attention", impl, (x,), _triton_unsupported(x)) == "triton":
        from drgan.kernels.channel_attention_triton import channel_attention_triton

        return channel_attention_triton(x)
    return channel_attention_ref(x)


def channel_attention_ref(x: torch.Tensor) -> torch.Tensor:
    """Readable reference in fp32; the output has x's dtype."""
    xf = x.float()
    energy = torch.bmm(xf, xf.transpose(1, 2))
    energy = energy.amax(dim=-1, keepdim=True) - energy
    return torch.bmm(torch.softmax(energy, dim=-1), xf).to(x.dtype)


def _triton_unsupported(x: torch.Tensor) -> str | None:
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"x dtype {x.dtype} is not float32, float16 or bfloat16"
    if x.shape[1] < 1 or x.shape[2] < 1:
        return f"x {tuple(x.shape)} is empty"
    return None
