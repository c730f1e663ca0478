"""SCA spatial attention: out_i = sum_j softmax_j(scale * q_i . k_j) v_j (DANet, scale 1).

At 320x320 the N x N score matrix would take 21 GB in bf16, so neither implementation ever holds
it: the reference walks over query chunks (and recomputes each chunk in backward through
activation checkpointing), the Triton kernel is flash-style with an online softmax.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from drgan.errors import DrganError
from drgan.kernels import dispatch

# Scores held at once by the reference: chunk_rows x N fp32 values (about 256 MB).
_REF_SCORE_BUDGET = 64 * 1024 * 1024


def spatial_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float = 1.0,
    impl: str = "auto",
) -> torch.Tensor:
    """q, k: (B, N, Dqk); v: (B, N, Dv) -> (B, N, Dv) in v's dtype; softmax in fp32."""
    if q.ndim != 3 or k.shape != q.shape:
        raise DrganError(f"spatial_attention: q {tuple(q.shape)} and k {tuple(k.shape)} must both be (B, N, Dqk)")
    if v.ndim != 3 or v.shape[:2] != q.shape[:2]:
        raise DrganError(f"spatial_attention: v {tuple(v.shape)} must be (B, N, Dv) with q {tuple(q.shape)}")
    chosen = dispatch.resolve("spatial_attention", impl, (q, k, v), _triton_unsupported(q, v))
    if chosen in ("triton", "gluon"):
        from drgan.kernels.spatial_attention_triton import spatial_attention_triton

        return spatial_attention_triton(q, k, v, scale, gluon_forward=chosen == "gluon")
    if chosen == "sdpa":
        return spatial_attention_sdpa(q, k, v, scale)
    return spatial_attention_ref(q, k, v, scale)


def spatial_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Readable reference, chunked over queries so memory stays bounded at any N."""
    n = q.shape[1]
    rows = max(1, min(n, _REF_SCORE_BUDGET // max(1, n * q.shape[0])))
    kf, vf = k.float(), v.float()
    chunks = []
    for start in range(0, n, rows):
        qc = q[:, start : start + rows]
        if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
            chunks.append(checkpoint(_attend, qc, kf, vf, scale, use_reentrant=False))
        else:
            chunks.append(_attend(qc, kf, vf, scale))
    return torch.cat(chunks, dim=1).to(v.dtype)


def spatial_attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Through F.scaled_dot_product_attention: exports to ONNX `Attention`; on CPU it may hold N x N."""
    out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], scale=scale)
    return out[:, 0]


def _attend(qc: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    scores = torch.bmm(qc.float(), k.transpose(1, 2)) * scale
    return torch.bmm(torch.softmax(scores, dim=-1), v)


def _triton_unsupported(q: torch.Tensor, v: torch.Tensor) -> str | None:
    if not dispatch.triton_available():
        return "the triton package is not installed"
    if not (q.is_cuda or dispatch.interpreting()):
        return "CPU tensors run the reference (the kernel needs CUDA or TRITON_INTERPRET=1)"
    from drgan.kernels.spatial_attention_triton import MAX_QK_DIM, MAX_QK_DIM_FP32, MAX_V_DIM

    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16) or v.dtype != q.dtype:
        return f"q {q.dtype} and v {v.dtype} must share one dtype of float32, float16, bfloat16"
    if q.dtype == torch.float32 and q.shape[2] > MAX_QK_DIM_FP32:
        return f"float32 q {tuple(q.shape)}: QK dim above {MAX_QK_DIM_FP32} needs float16/bfloat16 (shared memory)"
    if not (1 <= q.shape[2] <= MAX_QK_DIM and 1 <= v.shape[2] <= MAX_V_DIM and q.shape[1] >= 1):
        return (
            f"shape q {tuple(q.shape)}, v {tuple(v.shape)}: needs N >= 1, QK dim 1..{MAX_QK_DIM}, "
            f"V dim 1..{MAX_V_DIM} (tile sizes held in registers)"
        )
    return None
