"""Hopper (sm_90) forward of the SCA spatial attention in Gluon, FlashAttention-3 style.

At the paper's largest block (N = 102,400, Dqk 4 padded to 16, Dv 128) the QK^T product is almost
free and the time splits between the softmax's exponentials (MUFU) and the P @ V products (tensor
cores). The portable `tl` kernel runs them one after the other in every warp; this kernel is laid
out to overlap them. One program covers 2 x BLOCK_M query rows with three warp-specialized partitions:

- a one-warp load partition streams K and V blocks through a ring of STAGES shared-memory buffers
  with TMA (out-of-bounds rows arrive as zeros), each buffer guarded by mbarriers: ready (bytes
  landed) and empty (both consumers' products on it finished);
- two consumer warpgroups, each with its own BLOCK_M query rows, sharing the K/V ring. Each issues
  S_j = Q K_j^T and P_{j-1} V_{j-1} as asynchronous warpgroup MMAs and waits for S_j, then for
  P_{j-1} V_{j-1}, with the softmax of block j between the two waits in program order. The
  exponentials of one warpgroup run while the other's MMAs keep the tensor cores busy. Within a
  warpgroup, ptxas (Triton 3.6) moves the second wait ahead of the exponentials at Dv = 128
  (SASS: none under P @ V; at Dv = 256 16 of 34), so there the overlap is the other warpgroup's.

Same contract as spatial_attention_triton._forward: the same online softmax in the exp2 domain
(qk_scale includes log2(e), positive), out = sum p v / l and lse = m + log2(l) per row (fp32,
log2 units), which the Triton backward consumes.
"""
from __future__ import annotations

import torch
import triton

from drgan.kernels.dispatch import interpreting

MAX_V_DIM = 256  # the accumulator BLOCK_M x Dv lives in one warpgroup's registers; TMA boxes <= 256
NUM_WARPS = 4  # the default partition: consumer 0, one warpgroup
# Worker partitions, consumer 1 and the loads: warps and registers per thread (setmaxnreg); the
# load warp needs few, leaving the register file to the consumers.
WORKER_WARPS = triton.language.constexpr((4, 1))
WORKER_REGS = triton.language.constexpr((240, 24))


def _tile(block_dv: int) -> dict:
    """Tiles per consumer warpgroup (64 query rows: each thread holds 2 rows of every MMA result).
    compile_check --launches, sm_90a, bf16, batch 8 (consumer loop per step):
    Dv <= 128: 64 x 128 keys, 3 stages; S 64, P 32, O 64 registers per thread; loop 189 registers
      of 240, 66 MUFU.EX2 (64 scores + 2 rescales), 9 HGMMA, 115 KB shared, no spills.
    Dv = 256: 64 x 64 keys, 3 stages; S 32, P 16, O 128; loop 200 registers, 34 MUFU.EX2, 5 HGMMA,
      109 KB shared, no spills. 128-row consumers would hold O in 128 (256) registers plus S."""
    return {"BLOCK_M": 64, "BLOCK_N": 128 if block_dv <= 128 else 64, "STAGES": 3}


if not interpreting():
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    @gluon.constexpr_function
    def _tile_layout(desc_layout):
        """The shared layout of one (1, rows, cols) TMA box seen as a rows x cols MMA operand."""
        return gl.NVMMASharedLayout(desc_layout.swizzle_byte_width, desc_layout.element_bitwidth)

    @gluon.jit
    def _load_partition(q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, kv_empty,
                        b, off_m, n_blocks, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr):
        for i in gl.static_range(2):
            mbarrier.expect(q_bar.index(i), q_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(q_desc, [b, off_m + i * BLOCK_M, 0], q_bar.index(i), q_smem.index(i))
        for j in range(n_blocks):
            stage = j % STAGES
            # A fresh barrier passes a wait for the parity before its first phase: the first lap
            # of the ring does not wait.
            mbarrier.wait(kv_empty.index(stage), ((j // STAGES) & 1) ^ 1)
            mbarrier.expect(k_ready.index(stage), k_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(k_desc, [b, j * BLOCK_N, 0], k_ready.index(stage), k_smem.index(stage))
            mbarrier.expect(v_ready.index(stage), v_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(v_desc, [b, j * BLOCK_N, 0], v_ready.index(stage), v_smem.index(stage))

    @gluon.jit
    def _softmax(s, m_i, l_i, start, N, qk_scale, MASK: gl.constexpr):
        """Online softmax of one key block, in place of the fp32 scores: p, the rescale, m, l."""
        if MASK:
            # TMA fills keys past N with zeros; a zero score is not -inf.
            cols = start + gl.arange(0, s.shape[1], gl.SliceLayout(0, s.type.layout))
            s = gl.where(gl.expand_dims(cols < N, 0), s, float("-inf"))
        m_new = gl.maximum(m_i, gl.max(s, 1) * qk_scale)
        p = gl.exp2(s * qk_scale - gl.expand_dims(m_new, 1))
        alpha = gl.exp2(m_i - m_new)
        return p, alpha, m_new, l_i * alpha + gl.sum(p, 1)

    @gluon.jit
    def _operand(p, p_dtype: gl.constexpr, o_layout: gl.constexpr):
        """P as the A operand of P @ V, from registers. The accumulator layouts of S and O give each
        thread the same rows, so the conversion moves no data."""
        return gl.convert_layout(p.to(p_dtype), gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2))

    @gluon.jit
    def _step(acc, p, m_i, l_i, j, q_smem, k_smem, v_smem, k_ready, v_ready, kv_empty, N, qk_scale,
              s_layout: gl.constexpr, o_layout: gl.constexpr, STAGES: gl.constexpr, MASK: gl.constexpr):
        """Key block j: S_j = Q K_j^T and O += P_{j-1} V_{j-1} issued together, then the softmax of S_j
        (see the module docstring for where ptxas places the second wait)."""
        BLOCK_M: gl.constexpr = q_smem.shape[0]
        BLOCK_N: gl.constexpr = k_smem.shape[1]
        stage = j % STAGES
        prev = (j - 1) % STAGES
        mbarrier.wait(k_ready.index(stage), (j // STAGES) & 1)
        s = warpgroup_mma(q_smem, k_smem.index(stage).permute((1, 0)), gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout),
                          use_acc=False, is_async=True)
        mbarrier.wait(v_ready.index(prev), ((j - 1) // STAGES) & 1)
        acc = warpgroup_mma(p, v_smem.index(prev), acc, is_async=True)
        s = warpgroup_mma_wait(1, deps=(s, ))
        # The exponentials stay in the fp32 score registers before the second wait; P's registers are
        # the in-flight MMA's operand, so the new P is packed only after it.
        p_new, alpha, m_i, l_i = _softmax(s, m_i, l_i, j * BLOCK_N, N, qk_scale, MASK)
        acc, p = warpgroup_mma_wait(0, deps=(acc, p))
        mbarrier.arrive(kv_empty.index(prev))
        alpha = gl.convert_layout(alpha, gl.SliceLayout(1, o_layout))
        return acc * gl.expand_dims(alpha, 1), _operand(p_new, v_smem.dtype, o_layout), m_i, l_i

    @gluon.jit
    def _consumer(q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, kv_empty, O, LSE, b, off_m, N, DV, n_blocks,
                  qk_scale, STAGES: gl.constexpr):
        BLOCK_M: gl.constexpr = q_smem.shape[0]
        BLOCK_N: gl.constexpr = k_smem.shape[1]
        BLOCK_DV: gl.constexpr = v_smem.shape[2]
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BLOCK_N, 16])
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BLOCK_DV, 16])
        mbarrier.wait(q_bar, 0)
        # Key block 0 alone: its S, then its softmax (masked: it may be the ragged block too).
        mbarrier.wait(k_ready.index(0), 0)
        s = warpgroup_mma(q_smem, k_smem.index(0).permute((1, 0)), gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout),
                          use_acc=False, is_async=True)
        s = warpgroup_mma_wait(0, deps=(s, ))
        m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, gl.SliceLayout(1, s_layout))
        l_i = gl.zeros([BLOCK_M], gl.float32, gl.SliceLayout(1, s_layout))
        p, alpha, m_i, l_i = _softmax(s, m_i, l_i, 0, N, qk_scale, True)
        p = _operand(p, v_smem.dtype, o_layout)
        acc = gl.zeros([BLOCK_M, BLOCK_DV], gl.float32, o_layout)
        # Full key blocks need no mask; the ragged last one (if any, and not block 0) is masked.
        n_full = N // BLOCK_N
        for j in range(1, n_full):
            acc, p, m_i, l_i = _step(acc, p, m_i, l_i, j, q_smem, k_smem, v_smem, k_ready, v_ready, kv_empty, N,
                                     qk_scale, s_layout, o_layout, STAGES, False)
        if n_full < n_blocks and n_full > 0:
            acc, p, m_i, l_i = _step(acc, p, m_i, l_i, n_full, q_smem, k_smem, v_smem, k_ready, v_ready, kv_empty, N,
                                     qk_scale, s_layout, o_layout, STAGES, True)
        last = (n_blocks - 1) % STAGES
        mbarrier.wait(v_ready.index(last), ((n_blocks - 1) // STAGES) & 1)
        acc = warpgroup_mma(p, v_smem.index(last), acc, is_async=True)
        acc, p = warpgroup_mma_wait(0, deps=(acc, p))
        mbarrier.arrive(kv_empty.index(last))

        l_o = gl.convert_layout(l_i, gl.SliceLayout(1, o_layout))
        acc = acc / gl.expand_dims(l_o, 1)
        rows = off_m + gl.arange(0, BLOCK_M, gl.SliceLayout(1, o_layout))
        cols = gl.arange(0, BLOCK_DV, gl.SliceLayout(0, o_layout))
        # O is contiguous (B, N, DV).
        ptrs = O + (b.to(gl.int64) * N * DV + gl.expand_dims(rows.to(gl.int64) * DV, 1) + gl.expand_dims(cols, 0))
        gl.store(ptrs, acc.to(O.dtype.element_ty), mask=gl.expand_dims(rows < N, 1) & gl.expand_dims(cols < DV, 0))
        rows_s = off_m + gl.arange(0, BLOCK_M, gl.SliceLayout(1, s_layout))
        gl.store(LSE + b.to(gl.int64) * N + rows_s, m_i + gl.log2(l_i), mask=rows_s < N)

    @gluon.jit
    def _gluon_fwd_kernel(q_desc, k_desc, v_desc, O, LSE, N, DV, qk_scale,
                          BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr):
        BLOCK_D: gl.constexpr = q_desc.block_type.shape[2]
        BLOCK_DV: gl.constexpr = v_desc.block_type.shape[2]
        dtype: gl.constexpr = q_desc.dtype
        b = gl.program_id(1)
        off_m = gl.program_id(0) * (2 * BLOCK_M)
        n_blocks = gl.cdiv(N, BLOCK_N)
        q_smem = gl.allocate_shared_memory(dtype, [2, BLOCK_M, BLOCK_D], _tile_layout(q_desc.layout))
        k_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, BLOCK_D], _tile_layout(k_desc.layout))
        v_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, BLOCK_DV], _tile_layout(v_desc.layout))
        q_bar = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        kv_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(2):
            mbarrier.init(q_bar.index(i), count=1)
        for i in gl.static_range(STAGES):
            mbarrier.init(k_ready.index(i), count=1)
            mbarrier.init(v_ready.index(i), count=1)
            mbarrier.init(kv_empty.index(i), count=2)  # one arrival per consumer warpgroup
        gl.warp_specialize([
            (_consumer, (q_smem.index(0), k_smem, v_smem, q_bar.index(0), k_ready, v_ready, kv_empty, O, LSE, b, off_m,
                         N, DV, n_blocks, qk_scale, STAGES)),
            (_consumer, (q_smem.index(1), k_smem, v_smem, q_bar.index(1), k_ready, v_ready, kv_empty, O, LSE, b,
                         off_m + BLOCK_M, N, DV, n_blocks, qk_scale, STAGES)),
            (_load_partition, (q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, kv_empty, b, off_m,
                               n_blocks, BLOCK_M, BLOCK_N, STAGES)),
        ], WORKER_WARPS, WORKER_REGS)


def unsupported(q_pad: torch.Tensor, v: torch.Tensor) -> str | None:
    """None where `forward` takes this padded Q (or K) and V, else the reason."""
    if interpreting():
        return "Gluon kernels have no interpreter (TRITON_INTERPRET=1)"
    if not (q_pad.is_cuda and torch.cuda.get_device_capability(q_pad.device) == (9, 0)):
        return "the Gluon kernel needs CUDA tensors on a Hopper GPU (sm_90)"
    if q_pad.dtype not in (torch.float16, torch.bfloat16) or v.dtype != q_pad.dtype:
        return f"q {q_pad.dtype} and v {v.dtype} must share one dtype of float16, bfloat16"
    if v.shape[2] > MAX_V_DIM:
        return f"V dim {v.shape[2]} above {MAX_V_DIM} (the accumulator lives in one warpgroup's registers)"
    for name, t in (("q", q_pad), ("v", v)):
        if t.stride(2) != 1 or any(s * t.element_size() % 16 for s in t.stride()[:2]) or t.data_ptr() % 16:
            return f"{name} strides {t.stride()}: TMA needs unit stride along D, 16-byte aligned rows and base"
    return None



def forward(q_pad: torch.Tensor, k_pad: torch.Tensor, v: torch.Tensor, qk_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """spatial_attention_triton._forward on Hopper: q, k (B, N, BLOCK_D) padded (padded_qk; their
    zero columns add nothing to the scores), v (B, N, Dv); returns out (B, N, Dv) contiguous and the
    log2-domain log-sum-exp (B, N) fp32."""
    b, n, block_d = q_pad.shape
    dv = v.shape[2]
    block_dv = max(16, triton.next_power_of_2(dv))
    tile = _tile(block_dv)
    out = torch.empty((b, n, dv), device=v.device, dtype=v.dtype)
    lse = torch.empty((b, n), device=q_pad.device, dtype=torch.float32)
    dtype = gl.bfloat16 if v.dtype == torch.bfloat16 else gl.float16

    def desc(t: torch.Tensor, rows: int, cols: int) -> TensorDescriptor:
        block = [1, rows, cols]
        return TensorDescriptor(t, list(t.shape), list(t.stride()), block, gl.NVMMASharedLayout.get_default_for(block, dtype))

    grid = (triton.cdiv(n, 2 * tile["BLOCK_M"]), b)
    _gluon_fwd_kernel[grid](desc(q_pad, tile["BLOCK_M"], block_d), desc(k_pad, tile["BLOCK_N"], block_d),
                      desc(v, tile["BLOCK_N"], block_dv), out, lse, n, dv, qk_scale, **tile, num_warps=NUM_WARPS)
    return out, lse
