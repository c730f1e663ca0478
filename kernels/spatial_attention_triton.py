"""Flash-style Triton kernels for the SCA spatial attention, forward and backward.

The score matrix never exists: each program holds a BLOCK_M x BLOCK_N tile of scores in fp32 and
an online softmax (exp2, log2(e) folded into the scale). Q/K are zero-padded to the tensor-core
minimum K = 16 (the paper's QK dims 4 and 16 would otherwise be rejected by `tl.dot`): the wrapper
stores them padded and contiguous (QK_PADDED), so every key row is one aligned vector that
cp.async pipelines, instead of 2-byte masked loads on the critical path (the C launcher passes
unpadded Q/K and QK_PADDED=False). V is tiled along Dv (grid axis 1) so the accumulator stays
BLOCK_M x BLOCK_DV; every score's exp is computed once per Dv tile, so Hopper's tiles keep Dv =
128 (the paper's N = 102,400 block) in one tile.

Backward: delta = rowsum(dO * O), then one kernel per key block that recomputes the probabilities
from the saved log-sum-exp, accumulates dV and dK in registers and adds each query block's share
of dQ = dS K into an fp32 buffer with atomics (FlashAttention-2's dQ accumulation). The paper's
Q/K are 4 and 16 wide (16 padded), so that is 16 floats per query row and key block, while every
score's exponential and its dO V^T product are computed once. Atomic adds land in no fixed order,
so under torch.use_deterministic_algorithms the backward splits dQ into a second kernel per query
block instead (no atomics), which recomputes the exponentials and dO V^T: about 1.5x the work.
With V tiled, ds = p * (dp - delta) is linear in the per-tile dp_t = dO_t V_t^T, so each Dv tile
adds (or writes) a partial dK / dQ in fp32 and the partials are summed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from drgan.kernels.dispatch import interpreting
from drgan.kernels.spatial_attention import fp8_values
from drgan.kernels.spec import INPUT, KernelSpec, Layout

LOG2E = 1.4426950408889634
MIN_BLOCK_D = 16  # tensor-core minimum K of tl.dot: Q/K are zero-padded up to it
MAX_QK_DIM = 128  # Q/K tiles are BLOCK_M x BLOCK_D in registers
MAX_QK_DIM_FP32 = 64  # fp32 tiles twice the bytes: beyond 64 the backward's exceed Hopper's shared memory
MAX_V_DIM = 512  # V is tiled; larger Dv works but the partial dK/dQ buffers grow with Dv / BLOCK_DV


def _config(block_m: int, block_n: int, block_dv: int, warps: int, stages: int, **choices) -> triton.Config:
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_DV": block_dv, **choices},
                         num_warps=warps, num_stages=stages)


# Hopper tiles (what `python -m drgan.kernels.compile_check --launches` reports for a launch of the
# paper's shapes, sm_90a): 128 x 64 x 128 (8 warps, 154 registers) and 128 x 128 x 128 (8 warps,
# 2 stages, 214 registers) hold Dv = 128 (the N = 102,400 block) in one tile, 128 x 64 x 256 (232
# registers) Dv = 256 (N = 25,600): one exp per score, no spills; 256 x 64 x 128 (16 warps, 128
# registers) doubles the warps resident per SM to hide the loads' latency. 64 x 64 x 64 is the small
# tile for Dv = 512 and the sm_80 choice of the native library (index 2). Tiles with 4 warps per 128
# rows spill, and 64-row tiles with 8 warps compute each exp twice (both warpgroups hold the same
# rows). The lazy rescale (_fwd_block) skips 64 multiplies per thread and key block but needs a
# block-wide maximum (one more barrier): a candidate for the autotuner, unmeasured so far.
# whole_dv_tiles narrows the choice per shape; the autotuner then picks by measurement.
FWD_CONFIGS = [
    _config(128, 64, 128, 8, 3),
    _config(128, 128, 128, 8, 2),
    _config(64, 64, 64, 4, 3),
    _config(256, 64, 128, 16, 3),
    _config(128, 64, 256, 8, 2),
    _config(128, 64, 128, 8, 3, LAZY_RESCALE=True),
]
# The fp8 P@V forward (e4m3 V, transposed: fp8_pv_forward) at sm_90a: 128 x 64 x 128 159 registers,
# 128 x 128 x 128 218, 256 x 64 x 128 128, all with QGMMA (fp8 wgmma) and V through cp.async. For
# Dv = 256, 64 keys per step spill (255 registers); 32 keys hold it in 231 (one QGMMA of K = 32).
FP8_FWD_CONFIGS = [_config(128, 32, 256, 8, 2) if c.kwargs["BLOCK_DV"] == 256 else c for c in FWD_CONFIGS]
# Backward: the key-block kernel's MMA rows are its BLOCK_N keys, the query-block kernel's its
# BLOCK_M queries; 8 warps need 128 of them, or both warpgroups compute the same exponentials.
# sm_90a at N >= 25,600: 232 registers (dK/dV), 106-109 (dQ), no spills, one exp per score. dK/dV
# with Dv = 256 in one tile spills, so that block's dK/dV splits Dv in two.
DKDV_CONFIGS = [
    _config(64, 128, 128, 8, 2),
    _config(64, 64, 128, 4, 2),
    _config(64, 64, 64, 4, 3),
]
# The key-block kernel with the atomic dQ (DQ_ATOMIC): the same tiles. The transposed dS it
# stages in shared memory for ds K takes ptxas to 245 registers; capped at 240 it needs 236
# (8 warps) and 240 (4 warps), no spills, and one CTA (8 warps) or two (4) per SM either way.
DKDV_DQ_CONFIGS = [triton.Config(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages, maxnreg=240)
                   for c in DKDV_CONFIGS]
DQ_CONFIGS = [
    _config(128, 64, 128, 8, 2),
    _config(64, 64, 128, 4, 2),
    _config(64, 64, 64, 4, 3),
    _config(128, 64, 256, 8, 2),
]
# The interpreter runs every program in numpy: one small configuration, no tuning.
INTERPRET_CONFIG = _config(32, 32, 64, 4, 1)
DELTA_CONFIG = triton.Config({"BLOCK_M": 64, "BLOCK_DV": 64})


@triton.jit
def _qk_columns(offs_d, DQK, BLOCK_D: tl.constexpr, QK_PADDED: tl.constexpr):
    """Which of the BLOCK_D Q/K columns hold data. QK_PADDED: Q/K are stored BLOCK_D wide, zero-
    padded, so the mask is a constant the compiler drops: rows load as whole 16-byte vectors."""
    if QK_PADDED:
        return tl.full([BLOCK_D], 1, tl.int1)
    return offs_d < DQK


@triton.jit
def _fwd_block(
    acc, l_i, m_i, q, kt_ptrs, v_ptrs, start, N, offs_n, d_ok, v_ok, stride_kn, stride_vn, qk_scale,
    RAGGED: tl.constexpr, PRECISION: tl.constexpr, LAZY_RESCALE: tl.constexpr,
):
    """One key block of the online softmax; RAGGED masks the keys past N (the last, partial block).

    LAZY_RESCALE moves the running maxima only when one grows by more than 8 (log2 units), as
    FlashAttention-4 does: until then p = exp2(s - m) <= 256, exact enough in fp32 and bf16, and the
    block skips the accumulator's rescale (BLOCK_DV multiplies per row) and its exponentials."""
    cols = start + offs_n
    if RAGGED:
        kt = tl.load(kt_ptrs + start * stride_kn, mask=d_ok[:, None] & (cols[None, :] < N), other=0.0)
        v = tl.load(v_ptrs + start * stride_vn, mask=(cols[:, None] < N) & v_ok[None, :], other=0.0)
    else:
        kt = tl.load(kt_ptrs + start * stride_kn, mask=d_ok[:, None], other=0.0)
        v = tl.load(v_ptrs + start * stride_vn, mask=v_ok[None, :], other=0.0)
    qk = tl.dot(q, kt, input_precision=PRECISION)
    if RAGGED:
        qk = tl.where(cols[None, :] < N, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
    if LAZY_RESCALE:
        if tl.max(m_new - m_i, 0) > 8.0:
            alpha = tl.math.exp2(m_i - m_new)
            acc = acc * alpha[:, None]
            l_i = l_i * alpha
            m_i = m_new
        p = tl.math.exp2(qk * qk_scale - m_i[:, None])
        l_i = l_i + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PRECISION)
        return acc, l_i, m_i
    p = tl.math.exp2(qk * qk_scale - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
    return acc, l_i, m_new


@triton.jit
def _fwd_kernel(
    Q, K, V, O, LSE,
    stride_qb, stride_qn, stride_qd,
    stride_kb, stride_kn, stride_kd,
    stride_vb, stride_vn, stride_vd,
    stride_ob, stride_on, stride_od,
    N, DQK, DV, qk_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    PRECISION: tl.constexpr, QK_PADDED: tl.constexpr, LAZY_RESCALE: tl.constexpr = False,
):
    pid_m = tl.program_id(0)
    pid_v = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_v = pid_v * BLOCK_DV + tl.arange(0, BLOCK_DV)
    d_ok = _qk_columns(offs_d, DQK, BLOCK_D, QK_PADDED)
    v_ok = offs_v < DV

    q = tl.load(
        Q + b * stride_qb + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd,
        mask=(offs_m[:, None] < N) & d_ok[None, :], other=0.0,
    )
    kt_ptrs = K + b * stride_kb + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd
    v_ptrs = V + b * stride_vb + offs_n[:, None] * stride_vn + offs_v[None, :] * stride_vd

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    # Full key blocks need no masking; the ragged last block is done once, masked.
    n_full = N - N % BLOCK_N
    for start in range(0, n_full, BLOCK_N):
        acc, l_i, m_i = _fwd_block(acc, l_i, m_i, q, kt_ptrs, v_ptrs, start, N, offs_n, d_ok, v_ok,
                                   stride_kn, stride_vn, qk_scale, RAGGED=False, PRECISION=PRECISION,
                                   LAZY_RESCALE=LAZY_RESCALE)
    if n_full < N:
        acc, l_i, m_i = _fwd_block(acc, l_i, m_i, q, kt_ptrs, v_ptrs, n_full, N, offs_n, d_ok, v_ok,
                                   stride_kn, stride_vn, qk_scale, RAGGED=True, PRECISION=PRECISION,
                                   LAZY_RESCALE=LAZY_RESCALE)

    acc = acc / l_i[:, None]
    row_ok = offs_m < N
    tl.store(
        O + b * stride_ob + offs_m[:, None] * stride_on + offs_v[None, :] * stride_od,
        acc.to(O.dtype.element_ty), mask=row_ok[:, None] & v_ok[None, :],
    )
    if pid_v == 0:
        # log2-domain log-sum-exp of the scaled scores, for the backward.
        tl.store(LSE + b * N + offs_m, m_i + tl.math.log2(l_i), mask=row_ok)


@triton.jit
def _bwd_delta_kernel(
    O, DO, DELTA,
    stride_ob, stride_on, stride_od,
    stride_gb, stride_gn, stride_gd,
    N, DV,
    BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    pid_m = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_v = tl.arange(0, BLOCK_DV)
    delta = tl.zeros([BLOCK_M], tl.float32)
    for start in range(0, DV, BLOCK_DV):
        mask = (offs_m[:, None] < N) & (start + offs_v[None, :] < DV)
        o = tl.load(O + b * stride_ob + offs_m[:, None] * stride_on + (start + offs_v[None, :]) * stride_od, mask=mask, other=0.0)
        g = tl.load(DO + b * stride_gb + offs_m[:, None] * stride_gn + (start + offs_v[None, :]) * stride_gd, mask=mask, other=0.0)
        delta += tl.sum(o.to(tl.float32) * g.to(tl.float32), 1)
    tl.store(DELTA + b * N + offs_m, delta, mask=offs_m < N)


@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK_PART, DV_OUT, DQ_ACC,
    stride_qb, stride_qn, stride_qd,
    stride_kb, stride_kn, stride_kd,
    stride_vb, stride_vn, stride_vd,
    stride_gb, stride_gn, stride_gd,
    stride_xb, stride_xn, stride_xd,
    B, N, DQK, DV, qk_scale, scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    PRECISION: tl.constexpr, QK_PADDED: tl.constexpr, DQ_ATOMIC: tl.constexpr = False,
):
    """One key block and one Dv tile: dV tile, and this tile's share of dK; with DQ_ATOMIC also its
    share of dQ, added into DQ_ACC ((B, N, BLOCK_D) fp32, zeroed; otherwise unused)."""
    pid_n = tl.program_id(0)
    pid_v = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_v = pid_v * BLOCK_DV + tl.arange(0, BLOCK_DV)
    d_ok = _qk_columns(offs_d, DQK, BLOCK_D, QK_PADDED)
    v_ok = offs_v < DV
    key_ok = offs_n < N

    k = tl.load(K + b * stride_kb + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd,
                mask=key_ok[:, None] & d_ok[None, :], other=0.0)
    v = tl.load(V + b * stride_vb + offs_n[:, None] * stride_vn + offs_v[None, :] * stride_vd,
                mask=key_ok[:, None] & v_ok[None, :], other=0.0)
    qt_ptrs = Q + b * stride_qb + offs_m[None, :] * stride_qn + offs_d[:, None] * stride_qd
    do_ptrs = DO + b * stride_gb + offs_m[:, None] * stride_gn + offs_v[None, :] * stride_gd
    dq_ptrs = DQ_ACC + (b * N + offs_m[:, None]) * BLOCK_D + offs_d[None, :]
    # Only tile 0 subtracts delta, so the tiles' partial dK sum to the full p * (dp - delta) term.
    delta_scale = tl.where(pid_v == 0, 1.0, 0.0)

    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    for start in range(0, N, BLOCK_M):
        rows = start + offs_m
        row_ok = rows < N
        qt = tl.load(qt_ptrs + start * stride_qn, mask=d_ok[:, None] & row_ok[None, :], other=0.0)
        do = tl.load(do_ptrs + start * stride_gn, mask=row_ok[:, None] & v_ok[None, :], other=0.0)
        # Rows past N get lse = +inf, hence probability 0.
        lse = tl.load(LSE + b * N + rows, mask=row_ok, other=float("inf"))
        delta = tl.load(DELTA + b * N + rows, mask=row_ok, other=0.0) * delta_scale
        st = tl.dot(k, qt, input_precision=PRECISION)
        pt = tl.math.exp2(st * qk_scale - lse[None, :])
        dv = tl.dot(pt.to(do.dtype), do, dv, input_precision=PRECISION)
        dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        dst = pt * (dpt - delta[None, :])
        dk = tl.dot(dst.to(qt.dtype), tl.trans(qt), dk, input_precision=PRECISION)
        if DQ_ATOMIC:
            # This key block's term of dQ for these query rows: ds K (BLOCK_M x BLOCK_D).
            dq = tl.dot(tl.trans(dst.to(k.dtype)), k, input_precision=PRECISION)
            tl.atomic_add(dq_ptrs + start * BLOCK_D, dq * scale, mask=row_ok[:, None], sem="relaxed")

    tl.store(DV_OUT + b * stride_xb + offs_n[:, None] * stride_xn + offs_v[None, :] * stride_xd,
             dv.to(DV_OUT.dtype.element_ty), mask=key_ok[:, None] & v_ok[None, :])
    part = DK_PART + ((pid_v * B + b) * N + offs_n[:, None]) * BLOCK_D + offs_d[None, :]
    tl.store(part, dk * scale, mask=key_ok[:, None])


@triton.jit
def _bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ_PART,
    stride_qb, stride_qn, stride_qd,
    stride_kb, stride_kn, stride_kd,
    stride_vb, stride_vn, stride_vd,
    stride_gb, stride_gn, stride_gd,
    B, N, DQK, DV, qk_scale, scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    PRECISION: tl.constexpr, QK_PADDED: tl.constexpr,
):
    """One query block and one Dv tile: this tile's share of dQ."""
    pid_m = tl.program_id(0)
    pid_v = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_v = pid_v * BLOCK_DV + tl.arange(0, BLOCK_DV)
    d_ok = _qk_columns(offs_d, DQK, BLOCK_D, QK_PADDED)
    v_ok = offs_v < DV
    row_ok = offs_m < N

    q = tl.load(Q + b * stride_qb + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd,
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    do = tl.load(DO + b * stride_gb + offs_m[:, None] * stride_gn + offs_v[None, :] * stride_gd,
                 mask=row_ok[:, None] & v_ok[None, :], other=0.0)
    lse = tl.load(LSE + b * N + offs_m, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + b * N + offs_m, mask=row_ok, other=0.0) * tl.where(pid_v == 0, 1.0, 0.0)
    kt_ptrs = K + b * stride_kb + offs_n[None, :] * stride_kn + offs_d[:, None] * stride_kd
    vt_ptrs = V + b * stride_vb + offs_n[None, :] * stride_vn + offs_v[:, None] * stride_vd

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(0, N, BLOCK_N):
        col_ok = start + offs_n < N
        # Keys past N load as zero: their ds multiplies a zero key row, so they add nothing.
        kt = tl.load(kt_ptrs + start * stride_kn, mask=d_ok[:, None] & col_ok[None, :], other=0.0)
        vt = tl.load(vt_ptrs + start * stride_vn, mask=v_ok[:, None] & col_ok[None, :], other=0.0)
        s = tl.dot(q, kt, input_precision=PRECISION)
        p = tl.math.exp2(s * qk_scale - lse[:, None])
        dp = tl.dot(do, vt, input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(kt.dtype), tl.trans(kt), dq, input_precision=PRECISION)

    part = DQ_PART + ((pid_v * B + b) * N + offs_m[:, None]) * BLOCK_D + offs_d[None, :]
    tl.store(part, dq * scale, mask=row_ok[:, None])


# Q, K, V (and O, dO) are (B, N, D) with unit stride along D.
_QKV = {"Q": INPUT, "K": INPUT, "V": INPUT}
_UNIT = ("stride_qd", "stride_kd", "stride_vd")
FWD = KernelSpec("spatial_fwd", _fwd_kernel, {**_QKV, "O": INPUT, "LSE": "fp32"}, ("qk_scale",), tuple(FWD_CONFIGS),
                 {"contiguous": Layout(_UNIT + ("stride_od",))})
DKDV = KernelSpec("spatial_dkdv", _bwd_dkdv_kernel,
                  {**_QKV, "DO": INPUT, "LSE": "fp32", "DELTA": "fp32", "DK_PART": "fp32", "DV_OUT": INPUT, "DQ_ACC": "fp32"},
                  ("qk_scale", "scale"), tuple(DKDV_CONFIGS), {"contiguous": Layout(_UNIT + ("stride_gd", "stride_xd"))})
DQ = KernelSpec("spatial_dq", _bwd_dq_kernel, {**_QKV, "DO": INPUT, "LSE": "fp32", "DELTA": "fp32", "DQ_PART": "fp32"},
                ("qk_scale", "scale"), tuple(DQ_CONFIGS), {"contiguous": Layout(_UNIT + ("stride_gd",))})
DELTA = KernelSpec("spatial_delta", _bwd_delta_kernel, {"O": INPUT, "DO": INPUT, "DELTA": "fp32"}, configs=(DELTA_CONFIG,),
                   layouts={"contiguous": Layout(("stride_od", "stride_gd"))})


def whole_dv_tiles(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Every Dv tile recomputes all scores and their exponentials: where some configurations hold
    Dv in one tile, only those with the narrowest such tile (wider ones waste MMA on masked
    columns). Where none does, all of them, and the autotuner measures."""
    whole = [config.kwargs["BLOCK_DV"] for config in configs if config.kwargs["BLOCK_DV"] >= named_args["DV"]]
    return [config for config in configs if config.kwargs["BLOCK_DV"] == min(whole)] if whole else configs


# Every autotuned launch: name -> (kernel, configurations). The interpreter runs INTERPRET_CONFIG.
# "dkdv" and "dq" are the deterministic backward, "dkdv_dq" the default one (atomic dQ).
TUNED = {"fwd": (_fwd_kernel, FWD_CONFIGS), "fwd_fp8": (_fwd_kernel, FP8_FWD_CONFIGS),
         "dkdv": (_bwd_dkdv_kernel, DKDV_CONFIGS), "dq": (_bwd_dq_kernel, DQ_CONFIGS),
         "dkdv_dq": (_bwd_dkdv_kernel, DKDV_DQ_CONFIGS)}
# Buffers a launch adds into: zeroed before each configuration the autotuner times, and by the caller.
ACCUMULATED = {"dkdv_dq": ["DQ_ACC"]}


def autotuner(name: str, configs: list[triton.Config] | None = None, do_bench=None) -> triton.runtime.Autotuner:
    """Launch `name`'s kernel tuned over `configs` (default: its TUNED ones) per (N, DQK, DV);
    `do_bench` replaces the timing (tests)."""
    kernel, tuned = TUNED[name]
    return triton.autotune(configs=configs or tuned, key=["N", "DQK", "DV"], do_bench=do_bench,
                           reset_to_zero=ACCUMULATED.get(name),
                           prune_configs_by={"early_config_prune": whole_dv_tiles})(kernel)


tuners = {} if interpreting() else {name: autotuner(name) for name in TUNED}


def _launch(name: str, grid, *args, **constexprs) -> dict:
    """Run launch `name`; returns the meta-parameters it ran with (the autotuner's pick, once tuned)."""
    tuner = tuners.get(name)
    if tuner is None:
        meta = dict(INTERPRET_CONFIG.kwargs)
        TUNED[name][0][grid(meta)](*args, **constexprs, **meta, num_warps=INTERPRET_CONFIG.num_warps)
        return meta
    tuner[grid](*args, **constexprs)
    return tuner.best_config.kwargs


def block_d(qk_dim: int) -> int:
    """Q/K width in registers: the next power of two, at least the tensor-core minimum."""
    return max(MIN_BLOCK_D, triton.next_power_of_2(qk_dim))


def dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs: three TF32 products per dot keep ~fp32 accuracy (scores feed exp);
    # fp16/bf16 inputs ignore the setting.
    return "tf32x3" if dtype == torch.float32 else "tf32"


def padded_qk(t: torch.Tensor) -> torch.Tensor:
    """(B, N, Dqk) -> (B, N, block_d(Dqk)), contiguous, zero columns past Dqk: the layout the kernels
    load without a column mask (QK_PADDED). A tensor already in it is returned as is."""
    width = block_d(t.shape[2])
    if t.shape[2] == width and t.is_contiguous():
        return t
    return F.pad(t, (0, width - t.shape[2])).contiguous()


def _forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, qk_scale: float, qk_dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k padded (padded_qk) from `qk_dim` columns; returns out (q's dtype) and the log-sum-exp.
    An e4m3 v makes the kernel's P@V an fp8 product (p is cast to v's dtype)."""
    b, n, bd = q.shape
    dv = v.shape[2]
    out = torch.empty((b, n, dv), device=v.device, dtype=q.dtype)
    lse = torch.empty((b, n), device=q.device, dtype=torch.float32)
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_M"]), triton.cdiv(dv, meta["BLOCK_DV"]), b)  # noqa: E731
    _launch(
        "fwd_fp8" if v.dtype == torch.float8_e4m3fn else "fwd", grid,
        q, k, v, out, lse, *q.stride(), *k.stride(), *v.stride(), *out.stride(), n, qk_dim, dv, qk_scale,
        BLOCK_D=bd, PRECISION=dot_precision(q.dtype), QK_PADDED=True,
    )
    return out, lse


def _backward(q, k, v, out, lse, grad, qk_scale: float, scale: float, qk_dim: int):
    """q, k padded (padded_qk) from `qk_dim` columns; returns dq, dk (fp32, `qk_dim` wide) and dv.
    Deterministic (separate dQ kernel) under torch.use_deterministic_algorithms, else atomic dQ."""
    b, n, bd = q.shape
    dv = v.shape[2]
    delta = torch.empty((b, n), device=q.device, dtype=torch.float32)
    _bwd_delta_kernel[(triton.cdiv(n, DELTA_CONFIG.kwargs["BLOCK_M"]), b)](
        out, grad, delta, *out.stride(), *grad.stride(), n, dv, **DELTA_CONFIG.kwargs,
    )
    dv_out = torch.empty_like(v, memory_format=torch.contiguous_format)
    # One partial dK / dQ per Dv tile, room for the smallest BLOCK_DV. While autotuning, every
    # configuration writes its tiles here; only those of the configuration that ran last are summed.
    max_tiles = triton.cdiv(dv, min(c.kwargs["BLOCK_DV"] for c in DKDV_CONFIGS + DQ_CONFIGS + [INTERPRET_CONFIG]))
    dk_part = torch.empty((max_tiles, b, n, bd), device=q.device, dtype=torch.float32)
    strides = (*q.stride(), *k.stride(), *v.stride(), *grad.stride())
    precision = dot_precision(q.dtype)
    grid_k = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), triton.cdiv(dv, meta["BLOCK_DV"]), b)  # noqa: E731
    atomic = not torch.are_deterministic_algorithms_enabled()
    # Atomic: every Dv tile adds its partial dQ into dq_acc. Deterministic: unused by the key-block kernel.
    dq_acc = torch.zeros((b, n, bd), device=q.device, dtype=torch.float32) if atomic else dk_part
    meta_k = _launch(
        "dkdv_dq" if atomic else "dkdv", grid_k,
        q, k, v, grad, lse, delta, dk_part, dv_out, dq_acc, *strides, *dv_out.stride(), b, n, qk_dim, dv, qk_scale, scale,
        BLOCK_D=bd, PRECISION=precision, QK_PADDED=True, DQ_ATOMIC=atomic,
    )
    dk = dk_part[: triton.cdiv(dv, meta_k["BLOCK_DV"])].sum(0)[..., :qk_dim]
    if atomic:
        return dq_acc[..., :qk_dim], dk, dv_out
    dq_part = torch.empty((max_tiles, b, n, bd), device=q.device, dtype=torch.float32)
    grid_q = lambda meta: (triton.cdiv(n, meta["BLOCK_M"]), triton.cdiv(dv, meta["BLOCK_DV"]), b)  # noqa: E731
    meta_q = _launch(
        "dq", grid_q,
        q, k, v, grad, lse, delta, dq_part, *strides, b, n, qk_dim, dv, qk_scale, scale,
        BLOCK_D=bd, PRECISION=precision, QK_PADDED=True,
    )
    dq = dq_part[: triton.cdiv(dv, meta_q["BLOCK_DV"])].sum(0)[..., :qk_dim]
    return dq, dk, dv_out


def _gluon_forward(q_pad, k_pad, v, qk_scale: float):
    """The Hopper Gluon forward (same out and lse), or one clear error where it does not apply."""
    from drgan.errors import DrganError
    from drgan.kernels import spatial_attention_gluon

    reason = spatial_attention_gluon.unsupported(q_pad, v) or spatial_attention_gluon.unsupported(k_pad, v)
    if reason is not None:
        raise DrganError(f"spatial_attention: impl='gluon' does not support this call: {reason}")
    return spatial_attention_gluon.forward(q_pad, k_pad, v, qk_scale)


def _scaled_qk(q: torch.Tensor, k: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor, int, float]:
    """Padded q, k, the sign moved onto q and the positive scale left. The kernels take max(scores) *
    scale as the running maximum, which needs scale > 0: a negative scale is moved onto q's sign, a
    zero scale becomes q = 0 (uniform weights)."""
    sign = (scale > 0) - (scale < 0)
    return padded_qk(q if sign == 1 else q * sign), padded_qk(k), sign, abs(scale) if sign else 1.0


class _SpatialAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, scale: float, gluon_forward: bool):
        q_pad, k_pad, sign, scale_eff = _scaled_qk(q, k, scale)
        if gluon_forward:
            out, lse = _gluon_forward(q_pad, k_pad, v, scale_eff * LOG2E)
        else:
            out, lse = _forward(q_pad, k_pad, v, scale_eff * LOG2E, q.shape[2])
        ctx.save_for_backward(q_pad, k_pad, v, out, lse)
        ctx.sign, ctx.scale, ctx.qk_dim = sign, scale_eff, q.shape[2]
        return out

    @staticmethod
    def backward(ctx, grad):
        q_pad, k_pad, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _backward(q_pad, k_pad, v, out, lse, grad, ctx.scale * LOG2E, ctx.scale, ctx.qk_dim)
        return (dq * ctx.sign).to(q_pad.dtype), dk.to(k_pad.dtype), dv, None, None


def fp8_pv_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """The forward with P@V in e4m3 (spatial_attention's pv_fp8), no autograd. V goes in scaled
    per channel and transposed, tokens contiguous: fp8 wgmma reads its B operand K-major, and the
    transposed copy lets the tile load straight into that layout."""
    v8, v_scale = fp8_values(v)
    v8 = v8.transpose(1, 2).contiguous().transpose(1, 2)
    q_pad, k_pad, _, scale_eff = _scaled_qk(q, k, scale)
    out, _ = _forward(q_pad, k_pad, v8, scale_eff * LOG2E, q.shape[2])
    return out.mul_(v_scale)


def spatial_attention_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float = 1.0, pv_fp8: bool = False,
    gluon_forward: bool = False,
) -> torch.Tensor:
    """q, k: (B, N, Dqk), v: (B, N, Dv), any strides, one dtype (fp32/fp16/bf16) -> (B, N, Dv).
    pv_fp8: fp8_pv_forward. gluon_forward: the forward runs the Hopper Gluon kernel
    (spatial_attention_gluon), the backward the same Triton kernels, from the same log-sum-exp."""
    if pv_fp8:
        return fp8_pv_forward(q, k.to(q.dtype), v, float(scale))
    return _SpatialAttention.apply(q, k.to(q.dtype), v, float(scale), gluon_forward)
