"""SCA spatial attention: out_i = sum_j softmax_j(scale * q_i . k_j) v_j (DANet, scale 1).

At 320x320 the N x N score matrix would take 21 GB in bf16, so neither implementation ever holds
it: the reference walks over query chunks (and recomputes each chunk in backward through
activation checkpointing), the Triton kernel is flash-style with an online softmax.

`pv_fp8=True` (inference only, off by default) rounds P and V to float8 e4m3 for their product,
the larger of the kernel's two matrix products: Hopper's fp8 tensor cores take it at twice the bf16
rate. V is scaled per (sample, channel) to e4m3's largest magnitude and the scale undone after the
fp32 accumulation; the probabilities (in [0, 1]) are rounded as they are. The error is about ten
times bf16's (bench/results/fp8-pv-cpu.json), so the mode is opt-in and judged by its images.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from drgan.errors import DrganError
from drgan.kernels import dispatch

# Scores held at once by the reference: chunk_rows x N fp32 values (about 256 MB).
_REF_SCORE_BUDGET = 64 * 1024 * 1024
E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0  # largest finite e4m3fn magnitude


def spatial_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float = 1.0,
    impl: str = "auto",
    pv_fp8: bool = False,
) -> torch.Tensor:
    """q, k: (B, N, Dqk); v: (B, N, Dv) -> (B, N, Dv) in v's dtype; softmax in fp32. pv_fp8: P@V
    in float8 (module docstring), for inference."""
    if q.ndim != 3 or k.shape != q.shape:
        raise DrganError(f"spatial_attention: q {tuple(q.shape)} and k {tuple(k.shape)} must both be (B, N, Dqk)")
    if v.ndim != 3 or v.shape[:2] != q.shape[:2]:
        raise DrganError(f"spatial_attention: v {tuple(v.shape)} must be (B, N, Dv) with q {tuple(q.shape)}")
    if pv_fp8 and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise DrganError("spatial_attention: pv_fp8 is for inference; it has no backward (run under torch.no_grad)")
    chosen = dispatch.resolve("spatial_attention", impl, (q, k, v), _triton_unsupported(q, v, pv_fp8))
    if chosen == "gluon" and pv_fp8:
        raise DrganError("spatial_attention: impl='gluon' has no fp8 P@V; use impl='triton'")
    if chosen in ("triton", "gluon"):
        from drgan.kernels.spatial_attention_triton import spatial_attention_triton

        return spatial_attention_triton(q, k, v, scale, pv_fp8=pv_fp8, gluon_forward=chosen == "gluon")
    if chosen == "sdpa":
        if pv_fp8:
            raise DrganError("spatial_attention: impl='sdpa' has no fp8 P@V; use impl='triton' or 'ref'")
        return spatial_attention_sdpa(q, k, v, scale)
    return (spatial_attention_fp8_pv_ref if pv_fp8 else spatial_attention_ref)(q, k, v, scale)


def chunk_rows(q: torch.Tensor) -> int:
    """Query rows the reference takes at once: chunk x N fp32 scores per sample within _REF_SCORE_BUDGET."""
    n = q.shape[1]
    return max(1, min(n, _REF_SCORE_BUDGET // max(1, n * q.shape[0])))


def spatial_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Readable reference, chunked over queries so memory stays bounded at any N."""
    n, rows = q.shape[1], chunk_rows(q)
    kf, vf = k.float(), v.float()
    chunks = []
    for start in range(0, n, rows):
        qc = q[:, start : start + rows]
        if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
            chunks.append(checkpoint(_attend, qc, kf, vf, scale, use_reentrant=False))
        else:
            chunks.append(_attend(qc, kf, vf, scale))
    return torch.cat(chunks, dim=1).to(v.dtype)


def spatial_attention_grads_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grad: torch.Tensor,
                                rows: torch.Tensor, cols: torch.Tensor, scale: float = 1.0
                                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The reference's output (every row, fp32) and the gradients of sum(out * grad) for q at
    query `rows` and for k and v at key `cols`, in fp32, by the softmax's closed-form backward:
    exact for those rows and columns, without the N x N graph that autograd of the reference
    recomputes (minutes at N = 102,400; this is one pass of the forward's cost).

    With P = softmax(scale q k^T) and dP = grad v^T: dS = P * (dP - rowsum(grad * out)),
    dq = scale dS k, dk = scale dS^T q, dv = P^T grad.
    """
    b, n, dqk = q.shape
    assert k.shape == q.shape and v.shape[:2] == (b, n) and grad.shape == v.shape, (q.shape, k.shape, v.shape, grad.shape)
    assert rows.ndim == 1 and cols.ndim == 1, (rows.shape, cols.shape)
    qf, kf, vf, gf = (t.detach().float() for t in (q, k, v, grad))
    out = torch.empty(b, n, v.shape[2], device=v.device)
    dq = torch.zeros(b, len(rows), dqk, device=q.device)
    dk = torch.zeros(b, len(cols), dqk, device=q.device)
    dv = torch.zeros(b, len(cols), v.shape[2], device=v.device)
    v_cols = vf[:, cols]
    step = chunk_rows(q)
    for start in range(0, n, step):
        qc, gc = qf[:, start : start + step], gf[:, start : start + step]
        p = torch.softmax(torch.bmm(qc, kf.transpose(1, 2)) * scale, dim=-1)   # (B, chunk, N)
        oc = torch.bmm(p, vf)
        out[:, start : start + step] = oc
        delta = (gc * oc).sum(-1, keepdim=True)                                 # rowsum(grad * out)
        p_cols = p[:, :, cols]
        ds_cols = p_cols * (torch.bmm(gc, v_cols.transpose(1, 2)) - delta)
        dv += torch.bmm(p_cols.transpose(1, 2), gc)
        dk += scale * torch.bmm(ds_cols.transpose(1, 2), qc)
        here = torch.nonzero((rows >= start) & (rows < start + step)).flatten()
        if len(here):
            local = rows[here] - start
            ds_rows = p[:, local] * (torch.bmm(gc[:, local], vf.transpose(1, 2)) - delta[:, local])
            dq[:, here] = scale * torch.bmm(ds_rows, kf)
    return out, dq, dk, dv


def fp8_values(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """v (B, N, Dv) -> (e4m3 values, fp32 scale (B, 1, Dv)): each (sample, channel) scaled so its
    largest magnitude is E4M3_MAX; value * scale restores v up to e4m3 rounding."""
    scale = v.detach().abs().amax(dim=1, keepdim=True).float().clamp_min(torch.finfo(torch.float32).tiny) / E4M3_MAX
    # v / scale promotes to fp32 in one new tensor, which the clamp may then overwrite.
    return (v.detach() / scale).clamp_(-E4M3_MAX, E4M3_MAX).to(E4M3), scale


def spatial_attention_fp8_pv_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """The reference with P and V rounded to e4m3 before their product (pv_fp8), fp32 otherwise:
    p = exp(s - rowmax) in [0, 1], row sums of the unrounded p. (The kernel rounds p relative to its
    running maximum instead, which changes which values round where, not how much they do.)"""
    n, rows = q.shape[1], chunk_rows(q)
    v8, v_scale = fp8_values(v)
    kf, v8f = k.float(), v8.float()
    chunks = []
    for start in range(0, n, rows):
        scores = torch.bmm(q[:, start : start + rows].float(), kf.transpose(1, 2)) * scale
        p = torch.exp(scores - scores.amax(dim=-1, keepdim=True))
        chunks.append(torch.bmm(p.to(E4M3).float(), v8f) / p.sum(dim=-1, keepdim=True))
    return (torch.cat(chunks, dim=1) * v_scale).to(v.dtype)


def spatial_attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Through F.scaled_dot_product_attention: exports to ONNX `Attention`; on CPU it may hold N x N."""
    out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], scale=scale)
    return out[:, 0]


def _attend(qc: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    scores = torch.bmm(qc.float(), k.transpose(1, 2)) * scale
    return torch.bmm(torch.softmax(scores, dim=-1), v)


def fp8_pv_unsupported(dtype: torch.dtype, device: torch.device) -> str | None:
    """Why the Triton kernel cannot run the fp8 P@V for inputs of `dtype` on `device`; None if it can."""
    if dtype == torch.float32:
        return "fp8 P@V takes float16/bfloat16 inputs"
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
        return "fp8 P@V needs fp8 tensor cores (compute capability 8.9 or newer)"
    return None


def _triton_unsupported(q: torch.Tensor, v: torch.Tensor, pv_fp8: bool = False) -> str | None:
    if not dispatch.triton_available():
        return "the triton package is not installed"
    if not (q.is_cuda or dispatch.interpreting()):
        return "CPU tensors run the reference (the kernel needs CUDA or TRITON_INTERPRET=1)"
    if pv_fp8 and (reason := fp8_pv_unsupported(q.dtype, q.device)):
        return reason
    from drgan.kernels.spatial_attention_triton import MAX_QK_DIM, MAX_QK_DIM_FP32, MAX_V_DIM  # imports triton

    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16) or v.dtype != q.dtype:
        return f"q {q.dtype} and v {v.dtype} must share one dtype of float32, float16, bfloat16"
    if q.dtype == torch.float32 and q.shape[2] > MAX_QK_DIM_FP32:
        return f"float32 q {tuple(q.shape)}: QK dim above {MAX_QK_DIM_FP32} needs float16/bfloat16 (shared memory)"
    if not (1 <= q.shape[2] <= MAX_QK_DIM and 1 <= v.shape[2] <= MAX_V_DIM and q.shape[1] >= 1 and q.shape[0] >= 1):
        return (
            f"shape q {tuple(q.shape)}, v {tuple(v.shape)}: needs a batch and N >= 1, QK dim 1..{MAX_QK_DIM}, "
            f"V dim 1..{MAX_V_DIM} (tile sizes held in registers)"
        )
    return None
