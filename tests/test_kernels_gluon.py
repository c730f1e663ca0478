"""The Gluon Hopper forward of the spatial attention (drgan.kernels.spatial_attention_gluon).

On an sm_90 GPU its out and log-sum-exp are compared with the Triton kernel's and the reference's,
at ragged shapes (N not a multiple of any key block, Dv not a power of two, a second consumer
warpgroup with no rows) and the paper's, in bf16 and fp16, on fresh inputs with the outputs
poisoned first. Everywhere: impl='gluon' refuses CPU tensors and other ops with one clear error.
tests/test_kernels_compile.py compiles it for sm_90a and checks its SASS without a GPU.
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from drgan.errors import DrganError  # noqa: E402
from drgan.kernels import adain, spatial_attention, spatial_attention_ref  # noqa: E402
from helpers import rel_err  # noqa: E402

HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)
hopper_only = pytest.mark.skipif(not HOPPER, reason="the Gluon kernel needs a Hopper GPU (sm_90); none here")
DTYPES = [torch.bfloat16, torch.float16]
# (B, N, Dqk, Dv): ragged N and Dv, one query row, the paper's blocks (batch 1; 102,400 on sampled rows).
RAGGED = [(2, 1, 4, 128), (2, 70, 4, 96), (3, 200, 16, 256), (1, 1000, 64, 128), (2, 4097, 4, 16)]
PAPER = [(1, 25600, 16, 256), (1, 102400, 4, 128)]
SAMPLED_ROWS = 2048


def _inputs(b: int, n: int, dqk: int, dv: int, dtype: torch.dtype, seed: int):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q = (torch.randn(b, n, dqk, device="cuda", generator=gen) * 0.5).to(dtype)
    k = (torch.randn(b, n, dqk, device="cuda", generator=gen) * 0.5).to(dtype)
    v = torch.randn(b, n, dv, device="cuda", generator=gen).to(dtype)
    return q, k, v


def _poison(monkeypatch) -> None:
    """The Gluon module's torch.empty returns NaN-filled tensors: an out row or lse entry the kernel
    fails to write shows up as NaN."""
    import types

    from drgan.kernels import spatial_attention_gluon

    def empty(shape, *, device, dtype):
        return torch.full(shape, float("nan"), device=device, dtype=dtype)

    proxy = types.SimpleNamespace(**{name: getattr(torch, name) for name in dir(torch) if not name.startswith("__")})
    proxy.empty = empty
    monkeypatch.setattr(spatial_attention_gluon, "torch", proxy)


def _forwards(q, k, v):
    """(out, lse) of the Gluon and the Triton forward on the same padded inputs."""
    from drgan.kernels import spatial_attention_gluon as sag
    from drgan.kernels import spatial_attention_triton as sat

    q_pad, k_pad = sat.padded_qk(q), sat.padded_qk(k)
    return (sag.forward(q_pad, k_pad, v, sat.LOG2E), sat._forward(q_pad, k_pad, v, sat.LOG2E, q.shape[2]))


@hopper_only
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", RAGGED)
def test_gluon_forward_matches_triton_and_reference(shape, dtype, monkeypatch):
    q, k, v = _inputs(*shape, dtype, seed=sum(shape))
    with torch.no_grad():
        want = spatial_attention_ref(q, k, v)
        _poison(monkeypatch)
        (out, lse), (tl_out, tl_lse) = _forwards(q, k, v)
    assert out.shape == want.shape and out.is_contiguous()
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    assert rel_err(out, want) < 2e-2
    assert rel_err(out, tl_out) < 1e-2
    torch.testing.assert_close(lse, tl_lse, rtol=0, atol=1e-3)


@hopper_only
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", PAPER)
def test_gluon_forward_at_the_paper_shapes(shape, dtype, monkeypatch):
    q, k, v = _inputs(*shape, dtype, seed=shape[1])
    n = shape[1]
    rows = torch.cat([torch.arange(SAMPLED_ROWS // 2), torch.arange(n - SAMPLED_ROWS // 2, n)]).cuda()
    with torch.no_grad():
        want = spatial_attention_ref(q[:, rows], k, v)
        _poison(monkeypatch)
        (out, lse), (tl_out, tl_lse) = _forwards(q, k, v)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    assert rel_err(out[:, rows], want) < 2e-2
    assert rel_err(out, tl_out) < 1e-2
    torch.testing.assert_close(lse, tl_lse, rtol=0, atol=1e-3)


@hopper_only
def test_gluon_impl_keeps_the_triton_backward():
    """impl='gluon': the Gluon forward's lse feeds the Triton backward; gradients match the reference."""
    q, k, v = (t.requires_grad_(True) for t in _inputs(2, 300, 16, 128, torch.float16, seed=1))
    out = spatial_attention(q, k, v, impl="gluon")
    want = spatial_attention_ref(q, k, v)
    grad = torch.randn_like(out)
    for got, ref in zip(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(want, (q, k, v), grad)):
        assert rel_err(got, ref) < 2e-2


@hopper_only
def test_gluon_impl_refuses_v_wider_than_its_accumulator():
    q, k, v = _inputs(1, 64, 64, 512, torch.bfloat16, seed=2)
    with pytest.raises(DrganError, match="impl='gluon' does not support this call: V dim 512"):
        spatial_attention(q, k, v, impl="gluon")


def test_gluon_impl_on_cpu_tensors_raises_one_clear_error():
    q = torch.randn(1, 16, 4)
    v = torch.randn(1, 16, 8)
    with pytest.raises(DrganError, match=r"spatial_attention: impl='gluon' needs CUDA tensors on a Hopper GPU"):
        spatial_attention(q, q, v, impl="gluon")


def test_gluon_impl_names_the_ops_without_a_gluon_kernel():
    x = torch.randn(1, 2, 4, 4)
    with pytest.raises(DrganError, match=r"^adain: impl='gluon' exists only for spatial_attention"):
        adain(x, torch.ones(1, 2), torch.zeros(1, 2), impl="gluon")
