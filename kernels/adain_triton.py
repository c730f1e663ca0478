"""Triton AdaIN, forward and backward, for contiguous and channels_last (B, C, H, W) maps.

Each direction is a reduction kernel and an elementwise kernel over the same tiles. The
reduction splits H*W into chunks so that a 640x640x64 map still gives the GPU hundreds of
programs (one program per (b, c) would leave most SMs idle); the elementwise kernel combines the
chunks' fp32 partial sums itself, so no other op runs between them. Tiles are BLOCK_C channels x
BLOCK_HW positions, shaped so the loads along the unit-stride axis are wide (positions for
contiguous maps, channels for channels_last).

Forward sums (x - shift) and (x - shift)^2 with shift = x[b, c, 0, 0], which keeps the biased
variance accurate when |mean| >> std. Backward sums dy and dy * xhat, then
dx = rstd * gamma * (dy - mean(dy) - xhat * mean(dy * xhat)).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from drgan.kernels.spec import INPUT, KernelSpec, Layout

NUM_WARPS = 4
# Reduction programs to aim for when splitting H*W: a few waves of an H100's 132 SMs.
TARGET_PROGRAMS = 1024


def tile(channels_last: bool) -> dict[str, int]:
    """BLOCK_C x BLOCK_HW tile: 64 contiguous elements along the unit-stride axis."""
    return {"BLOCK_C": 64, "BLOCK_HW": 32} if channels_last else {"BLOCK_C": 4, "BLOCK_HW": 256}


@triton.jit
def _reduce_kernel(
    X, DY, SHIFT_OR_MEAN, RSTD, PART,
    stride_xb, stride_xc, stride_xp,
    stride_gb, stride_gc, stride_gp,
    C, HW, chunk, splits,
    BACKWARD: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):
    """PART[b, c, s] = (sum a, sum a * a') over chunk s, with (a, a') = (x - shift, x - shift)
    forward and (dy, dy * xhat) backward."""
    c_blocks = tl.cdiv(C, BLOCK_C)
    b = (tl.program_id(0) // c_blocks).to(tl.int64)
    offs_c = (tl.program_id(0) % c_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    pid_s = tl.program_id(1)
    offs_p = tl.arange(0, BLOCK_HW)
    c_ok = offs_c < C
    x_ptrs = X + b * stride_xb + offs_c[:, None] * stride_xc + offs_p[None, :] * stride_xp
    if BACKWARD:
        g_ptrs = DY + b * stride_gb + offs_c[:, None] * stride_gc + offs_p[None, :] * stride_gp
        mean = tl.load(SHIFT_OR_MEAN + b * C + offs_c, mask=c_ok, other=0.0)
        rstd = tl.load(RSTD + b * C + offs_c, mask=c_ok, other=0.0)
    else:
        shift = tl.load(X + b * stride_xb + offs_c * stride_xc, mask=c_ok, other=0.0).to(tl.float32)
    sum1 = tl.zeros([BLOCK_C, BLOCK_HW], tl.float32)
    sum2 = tl.zeros([BLOCK_C, BLOCK_HW], tl.float32)
    start = pid_s * chunk
    stop = tl.minimum(start + chunk, HW)
    for pos in range(start, stop, BLOCK_HW):
        mask = c_ok[:, None] & (pos + offs_p[None, :] < stop)
        x = tl.load(x_ptrs + pos * stride_xp, mask=mask, other=0.0).to(tl.float32)
        if BACKWARD:
            g = tl.load(g_ptrs + pos * stride_gp, mask=mask, other=0.0).to(tl.float32)
            sum1 += g
            sum2 += g * (x - mean[:, None]) * rstd[:, None]
        else:
            a = tl.where(mask, x - shift[:, None], 0.0)
            sum1 += a
            sum2 += a * a
    out = PART + ((b * C + offs_c) * splits + pid_s) * 2
    tl.store(out, tl.sum(sum1, 1), mask=c_ok)
    tl.store(out + 1, tl.sum(sum2, 1), mask=c_ok)


@triton.jit
def _sums(PART, b, C, offs_c, c_ok, splits):
    """The chunks' partial sums of `_reduce_kernel`, combined: (sum a, sum a * a') per channel."""
    sum1 = tl.zeros(offs_c.shape, tl.float32)
    sum2 = tl.zeros(offs_c.shape, tl.float32)
    for s in range(0, splits):
        part = PART + ((b * C + offs_c) * splits + s) * 2
        sum1 += tl.load(part, mask=c_ok, other=0.0)
        sum2 += tl.load(part + 1, mask=c_ok, other=0.0)
    return sum1, sum2


@triton.jit
def _forward_kernel(
    X, GAMMA, BETA, Y, PART, MEAN, RSTD,
    stride_xb, stride_xc, stride_xp,
    stride_yb, stride_yc, stride_yp,
    C, HW, chunk, splits, eps,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):
    c_blocks = tl.cdiv(C, BLOCK_C)
    b = (tl.program_id(0) // c_blocks).to(tl.int64)
    offs_c = (tl.program_id(0) % c_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    pid_s = tl.program_id(1)
    offs_p = tl.arange(0, BLOCK_HW)
    c_ok = offs_c < C
    sum1, sum2 = _sums(PART, b, C, offs_c, c_ok, splits)
    shifted_mean = sum1 / HW
    var = tl.maximum(sum2 / HW - shifted_mean * shifted_mean, 0.0)
    mean = tl.load(X + b * stride_xb + offs_c * stride_xc, mask=c_ok, other=0.0).to(tl.float32) + shifted_mean
    rstd = 1.0 / tl.sqrt(var + eps)
    if pid_s == 0:
        tl.store(MEAN + b * C + offs_c, mean, mask=c_ok)
        tl.store(RSTD + b * C + offs_c, rstd, mask=c_ok)
    gamma = tl.load(GAMMA + b * C + offs_c, mask=c_ok, other=0.0).to(tl.float32)
    beta = tl.load(BETA + b * C + offs_c, mask=c_ok, other=0.0).to(tl.float32)
    scale = rstd * gamma
    bias = beta - mean * scale

    x_ptrs = X + b * stride_xb + offs_c[:, None] * stride_xc + offs_p[None, :] * stride_xp
    y_ptrs = Y + b * stride_yb + offs_c[:, None] * stride_yc + offs_p[None, :] * stride_yp
    start = pid_s * chunk
    stop = tl.minimum(start + chunk, HW)
    for pos in range(start, stop, BLOCK_HW):
        mask = c_ok[:, None] & (pos + offs_p[None, :] < stop)
        x = tl.load(x_ptrs + pos * stride_xp, mask=mask, other=0.0).to(tl.float32)
        y = x * scale[:, None] + bias[:, None]
        tl.store(y_ptrs + pos * stride_yp, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _backward_kernel(
    X, DY, GAMMA, MEAN, RSTD, PART, DX, DGAMMA, DBETA,
    stride_xb, stride_xc, stride_xp,
    stride_gb, stride_gc, stride_gp,
    stride_db, stride_dc, stride_dp,
    C, HW, chunk, splits,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):
    c_blocks = tl.cdiv(C, BLOCK_C)
    b = (tl.program_id(0) // c_blocks).to(tl.int64)
    offs_c = (tl.program_id(0) % c_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    pid_s = tl.program_id(1)
    offs_p = tl.arange(0, BLOCK_HW)
    c_ok = offs_c < C
    sum_dy, sum_dy_xhat = _sums(PART, b, C, offs_c, c_ok, splits)
    if pid_s == 0:
        tl.store(DGAMMA + b * C + offs_c, sum_dy_xhat, mask=c_ok)
        tl.store(DBETA + b * C + offs_c, sum_dy, mask=c_ok)
    mean = tl.load(MEAN + b * C + offs_c, mask=c_ok, other=0.0)
    rstd = tl.load(RSTD + b * C + offs_c, mask=c_ok, other=0.0)
    gamma = tl.load(GAMMA + b * C + offs_c, mask=c_ok, other=0.0).to(tl.float32)
    mean_dy = sum_dy / HW
    mean_dy_xhat = sum_dy_xhat / HW

    x_ptrs = X + b * stride_xb + offs_c[:, None] * stride_xc + offs_p[None, :] * stride_xp
    g_ptrs = DY + b * stride_gb + offs_c[:, None] * stride_gc + offs_p[None, :] * stride_gp
    d_ptrs = DX + b * stride_db + offs_c[:, None] * stride_dc + offs_p[None, :] * stride_dp
    start = pid_s * chunk
    stop = tl.minimum(start + chunk, HW)
    for pos in range(start, stop, BLOCK_HW):
        mask = c_ok[:, None] & (pos + offs_p[None, :] < stop)
        x = tl.load(x_ptrs + pos * stride_xp, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptrs + pos * stride_gp, mask=mask, other=0.0).to(tl.float32)
        xhat = (x - mean[:, None]) * rstd[:, None]
        dx = (rstd * gamma)[:, None] * (g - mean_dy[:, None] - xhat * mean_dy_xhat[:, None])
        tl.store(d_ptrs + pos * stride_dp, dx.to(DX.dtype.element_ty), mask=mask)


def _layouts(*tensors: str) -> dict[str, Layout]:
    """Unit stride along positions (contiguous) or channels (channels_last), each with its tile."""
    return {layout: Layout(tuple(f"stride_{t}{axis}" for t in tensors), tile(layout == "channels_last"))
            for layout, axis in (("contiguous", "p"), ("channels_last", "c"))}


_CONFIG = (triton.Config({}, num_warps=NUM_WARPS),)
# The forward passes x for the statistics it does not read; the backward its fp32 mean and rstd.
REDUCE = KernelSpec("adain_reduce", _reduce_kernel,
                    {"X": INPUT, "DY": INPUT, "SHIFT_OR_MEAN": "fp32", "RSTD": "fp32", "PART": "fp32"},
                    configs=_CONFIG, layouts=_layouts("x", "g"))
FORWARD = KernelSpec("adain_forward", _forward_kernel,
                     {"X": INPUT, "GAMMA": INPUT, "BETA": INPUT, "Y": INPUT, "PART": "fp32", "MEAN": "fp32", "RSTD": "fp32"},
                     ("eps",), _CONFIG, _layouts("x", "y"))
BACKWARD = KernelSpec("adain_backward", _backward_kernel,
                      {"X": INPUT, "DY": INPUT, "GAMMA": INPUT, "MEAN": "fp32", "RSTD": "fp32", "PART": "fp32",
                       "DX": INPUT, "DGAMMA": "fp32", "DBETA": "fp32"},
                      configs=_CONFIG, layouts=_layouts("x", "g", "d"))


def flat_strides(t: torch.Tensor) -> tuple[int, int, int] | None:
    """(b, c, position) strides of a (B, C, H, W) tensor whose H and W merge into one axis."""
    if t.shape[2] > 1 and t.shape[3] > 1 and t.stride(2) != t.shape[3] * t.stride(3):
        return None
    position = t.stride(3) if t.shape[3] > 1 else t.stride(2)
    return t.stride(0), t.stride(1), position


def splits_for(batch: int, channels: int, positions: int, meta: dict[str, int]) -> tuple[int, int]:
    """(splits, chunk): H*W cut into chunks (multiples of BLOCK_HW) for enough reduction programs."""
    programs = batch * triton.cdiv(channels, meta["BLOCK_C"])
    splits = max(1, min(triton.cdiv(TARGET_PROGRAMS, programs), triton.cdiv(positions, 4 * meta["BLOCK_HW"])))
    chunk = triton.cdiv(triton.cdiv(positions, splits), meta["BLOCK_HW"]) * meta["BLOCK_HW"]
    return triton.cdiv(positions, chunk), chunk


def _plan(x: torch.Tensor) -> tuple[dict[str, int], int, int, tuple[int, int, int]]:
    b, c, h, w = x.shape
    meta = tile(channels_last=x.stride(1) == 1 and c > 1)
    splits, chunk = splits_for(b, c, h * w, meta)
    grid = (b * triton.cdiv(c, meta["BLOCK_C"]), splits)
    return meta, splits, chunk, grid


class _AdaIN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gamma, beta, eps: float):
        b, c, h, w = x.shape
        meta, splits, chunk, grid = _plan(x)
        gamma_c, beta_c = gamma.contiguous(), beta.contiguous()
        part = torch.empty((b, c, splits, 2), device=x.device, dtype=torch.float32)
        _reduce_kernel[grid](
            x, x, x, x, part, *flat_strides(x), 0, 0, 0, c, h * w, chunk, splits,
            BACKWARD=False, **meta, num_warps=NUM_WARPS,
        )
        y = torch.empty_like(x)
        mean = torch.empty((b, c), device=x.device, dtype=torch.float32)
        rstd = torch.empty_like(mean)
        _forward_kernel[grid](
            x, gamma_c, beta_c, y, part, mean, rstd, *flat_strides(x), *flat_strides(y),
            c, h * w, chunk, splits, eps, **meta, num_warps=NUM_WARPS,
        )
        ctx.save_for_backward(x, gamma_c, mean, rstd)
        ctx.param_dtypes = (gamma.dtype, beta.dtype)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, gamma, mean, rstd = ctx.saved_tensors
        b, c, h, w = x.shape
        if flat_strides(dy) is None:
            dy = dy.contiguous(memory_format=torch.channels_last if x.stride(1) == 1 else torch.contiguous_format)
        meta, splits, chunk, grid = _plan(x)
        part = torch.empty((b, c, splits, 2), device=x.device, dtype=torch.float32)
        _reduce_kernel[grid](
            x, dy, mean, rstd, part, *flat_strides(x), *flat_strides(dy), c, h * w, chunk, splits,
            BACKWARD=True, **meta, num_warps=NUM_WARPS,
        )
        dx = torch.empty_like(x)
        dgamma = torch.empty((b, c), device=x.device, dtype=torch.float32)
        dbeta = torch.empty_like(dgamma)
        _backward_kernel[grid](
            x, dy, gamma, mean, rstd, part, dx, dgamma, dbeta,
            *flat_strides(x), *flat_strides(dy), *flat_strides(dx),
            c, h * w, chunk, splits, **meta, num_warps=NUM_WARPS,
        )
        return dx, dgamma.to(ctx.param_dtypes[0]), dbeta.to(ctx.param_dtypes[1]), None


def adain_triton(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """x: (B, C, H, W) whose H, W merge (contiguous or channels_last); gamma, beta: (B, C)."""
    return _AdaIN.apply(x, gamma, beta, float(eps))
