"""Triton forward of the SCA channel attention: out = softmax(rowmax(E) - E) X with E = X X^T.

Two kernels: the C x C Gram matrix (fp32 accumulation, split over N so a small C still fills the
GPU; the fp32 partials are summed), then one kernel fusing the softmax with A X so A never exists
in memory. softmax(rowmax(E) - E) is softmax(-E) row by row, evaluated stably as
exp(rowmin(E) - E) / sum; E (C x C fp32, 1 MB per sample at C = 512) is read from L2 by every
output tile. The backward recomputes through the reference: C x C work, small next to the
spatial attention.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from drgan.kernels import spatial_attention_triton
from drgan.kernels.spatial_attention_triton import dot_precision
from drgan.kernels.spec import INPUT, KernelSpec, Layout

LOG2E = tl.constexpr(spatial_attention_triton.LOG2E)  # read inside the kernel
# Gram tiles: BLOCK_M x BLOCK_M channels over BLOCK_K positions. Output tiles: BLOCK_M channels x
# BLOCK_N positions, reducing over BLOCK_J channels. Fixed, not tuned: the op costs a few percent
# of an SCA block (2 C^2 N FLOPs twice, against N^2 (Dqk + Dv) for the spatial attention).
GRAM_META = {"BLOCK_M": 64, "BLOCK_K": 64}
APPLY_META = {"BLOCK_M": 64, "BLOCK_J": 32, "BLOCK_N": 64}
SUM_META = {"BLOCK": 1024}
NUM_WARPS = 4
NUM_STAGES = 3
# Gram programs to aim for when splitting N: a few waves of an H100's 132 SMs.
TARGET_PROGRAMS = 512


@triton.jit
def _gram_kernel(
    X, E_PART,
    stride_xb, stride_xc, stride_xn,
    B, C, N, chunk,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
):
    """E_part[s, b, rows, cols] = X[b, rows, chunk s] X[b, cols, chunk s]^T, in fp32."""
    tiles = tl.cdiv(C, BLOCK_M)
    pid_i = tl.program_id(0) // tiles
    pid_j = tl.program_id(0) % tiles
    pid_s = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs_i = pid_i * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_j = pid_j * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = X + b * stride_xb + offs_i[:, None] * stride_xc + offs_k[None, :] * stride_xn
    bt_ptrs = X + b * stride_xb + offs_j[None, :] * stride_xc + offs_k[:, None] * stride_xn
    acc = tl.zeros([BLOCK_M, BLOCK_M], tl.float32)
    start = pid_s * chunk
    stop = tl.minimum(start + chunk, N)
    for pos in range(start, stop, BLOCK_K):
        k_ok = pos + offs_k < stop
        a = tl.load(a_ptrs + pos * stride_xn, mask=(offs_i[:, None] < C) & k_ok[None, :], other=0.0)
        bt = tl.load(bt_ptrs + pos * stride_xn, mask=k_ok[:, None] & (offs_j[None, :] < C), other=0.0)
        acc = tl.dot(a, bt, acc, input_precision=PRECISION)
    out = E_PART + ((pid_s * B + b) * C + offs_i[:, None]) * C + offs_j[None, :]
    tl.store(out, acc, mask=(offs_i[:, None] < C) & (offs_j[None, :] < C))


@triton.jit
def _sum_parts_kernel(PART, OUT, count, splits, BLOCK: tl.constexpr):
    """OUT[i] = sum_s PART[s, i]: the Gram partials summed before the softmax (the native build's
    launcher; Python sums them with torch)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < count
    acc = tl.zeros([BLOCK], tl.float32)
    for s in range(0, splits):
        acc += tl.load(PART + s.to(tl.int64) * count + offs, mask=ok, other=0.0)
    tl.store(OUT + offs, acc, mask=ok)


@triton.jit
def _apply_kernel(
    X, E, OUT,
    stride_xb, stride_xc, stride_xn,
    stride_ob, stride_oc, stride_on,
    C, N,
    BLOCK_M: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):
    """OUT[b, rows, positions] = softmax(-E[b, rows, :]) X[b, :, positions]."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_j = tl.arange(0, BLOCK_J)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = offs_m < C
    e_ptrs = E + (b * C + offs_m[:, None]) * C + offs_j[None, :]

    # Pass 1 over the rows of E: minimum and normalizer (columns past C count as +inf energy).
    e_min = tl.full([BLOCK_M], float("inf"), tl.float32)
    for j in range(0, C, BLOCK_J):
        e = tl.load(e_ptrs + j, mask=row_ok[:, None] & (j + offs_j[None, :] < C), other=float("inf"))
        e_min = tl.minimum(e_min, tl.min(e, 1))
    e_min = tl.where(row_ok, e_min, 0.0)  # rows past C: finite, so no inf - inf
    denom = tl.zeros([BLOCK_M], tl.float32)
    for j in range(0, C, BLOCK_J):
        e = tl.load(e_ptrs + j, mask=row_ok[:, None] & (j + offs_j[None, :] < C), other=float("inf"))
        denom += tl.sum(tl.math.exp2((e_min[:, None] - e) * LOG2E), 1)

    denom = tl.where(row_ok, denom, 1.0)

    # Pass 2: normalized probabilities times X, accumulated in fp32.
    x_ptrs = X + b * stride_xb + offs_j[:, None] * stride_xc + offs_n[None, :] * stride_xn
    n_ok = offs_n < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for j in range(0, C, BLOCK_J):
        e = tl.load(e_ptrs + j, mask=row_ok[:, None] & (j + offs_j[None, :] < C), other=float("inf"))
        p = tl.math.exp2((e_min[:, None] - e) * LOG2E) / denom[:, None]
        x = tl.load(x_ptrs + j * stride_xc, mask=(j + offs_j[:, None] < C) & n_ok[None, :], other=0.0)
        acc = tl.dot(p.to(x.dtype), x, acc, input_precision=PRECISION)
    out = OUT + b * stride_ob + offs_m[:, None] * stride_oc + offs_n[None, :] * stride_on
    tl.store(out, acc.to(OUT.dtype.element_ty), mask=row_ok[:, None] & n_ok[None, :])


def _layouts(*tensors: str) -> dict[str, Layout]:
    """(B, C, N) views of a contiguous map have unit stride along N, of a channels_last map along C."""
    return {layout: Layout(tuple(f"stride_{t}{axis}" for t in tensors)) for layout, axis in
            (("contiguous", "n"), ("channels_last", "c"))}


GRAM = KernelSpec("channel_gram", _gram_kernel, {"X": INPUT, "E_PART": "fp32"},
                  configs=(triton.Config(GRAM_META, num_warps=NUM_WARPS, num_stages=NUM_STAGES),), layouts=_layouts("x"))
APPLY = KernelSpec("channel_apply", _apply_kernel, {"X": INPUT, "E": "fp32", "OUT": INPUT},
                   configs=(triton.Config(APPLY_META, num_warps=NUM_WARPS, num_stages=NUM_STAGES),),
                   layouts=_layouts("x", "o"))
SUM = KernelSpec("channel_sum", _sum_parts_kernel, {"PART": "fp32", "OUT": "fp32"},
                 configs=(triton.Config(SUM_META, num_warps=NUM_WARPS, num_stages=1),))


def gram_splits(batch: int, channels: int, positions: int) -> tuple[int, int]:
    """(splits, chunk): N cut into chunks (multiples of BLOCK_K) so the Gram grid has enough programs."""
    block_k = GRAM_META["BLOCK_K"]
    tiles = triton.cdiv(channels, GRAM_META["BLOCK_M"]) ** 2 * batch
    splits = max(1, min(triton.cdiv(TARGET_PROGRAMS, tiles), triton.cdiv(positions, 8 * block_k)))
    chunk = triton.cdiv(triton.cdiv(positions, splits), block_k) * block_k
    return triton.cdiv(positions, chunk), chunk


def _forward(x: torch.Tensor) -> torch.Tensor:
    b, c, n = x.shape
    precision = dot_precision(x.dtype)
    splits, chunk = gram_splits(b, c, n)
    e_part = torch.empty((splits, b, c, c), device=x.device, dtype=torch.float32)
    _gram_kernel[(triton.cdiv(c, GRAM_META["BLOCK_M"]) ** 2, splits, b)](
        x, e_part, *x.stride(), b, c, n, chunk, **GRAM_META, PRECISION=precision,
        num_warps=NUM_WARPS, num_stages=NUM_STAGES,
    )
    energy = e_part.sum(0) if splits > 1 else e_part[0]
    # The output keeps x's layout, so a channels_last map stays channels_last when reshaped back.
    out = torch.empty_like(x)
    grid = (triton.cdiv(c, APPLY_META["BLOCK_M"]), triton.cdiv(n, APPLY_META["BLOCK_N"]), b)
    _apply_kernel[grid](
        x, energy, out, *x.stride(), *out.stride(), c, n, **APPLY_META, PRECISION=precision,
        num_warps=NUM_WARPS, num_stages=NUM_STAGES,
    )
    return out


class _ChannelAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return _forward(x)

    @staticmethod
    def backward(ctx, grad):
        from drgan.kernels.channel_attention import channel_attention_ref

        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            (dx,) = torch.autograd.grad(channel_attention_ref(xr), xr, grad)
        return dx


def channel_attention_triton(x: torch.Tensor) -> torch.Tensor:
    """x: (B, C, N), any strides, fp32/fp16/bf16 -> (B, C, N) in x's dtype and layout."""
    return _ChannelAttention.apply(x)
