"""The opt-in fp8 P@V mode of the spatial attention (pv_fp8): P and V rounded to e4m3 for their
product. The Triton kernel runs in the CPU interpreter (tests/conftest.py) with fp16 inputs; the
reference emulates the rounding in PyTorch. The error is fp8's (a few percent of the largest
output), so the checks bound it from both sides: well above fp16's (the product really is fp8)
and within the emulation's reach."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from drgan.errors import DrganError  # noqa: E402
from drgan.kernels import spatial_attention, spatial_attention_ref  # noqa: E402
from drgan.kernels.spatial_attention import E4M3_MAX, fp8_values, spatial_attention_fp8_pv_ref  # noqa: E402
from helpers import DEVICE, needs_kernel, rel_err  # noqa: E402


def _inputs(batch: int, n: int, dqk: int, dv: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(batch, n, dqk, generator=gen) * 0.5 for _ in range(2))
    v = torch.randn(batch, n, dv, generator=gen) * torch.linspace(0.1, 3.0, dv)  # channels of unequal range
    return q.to(DEVICE), k.to(DEVICE), v.to(DEVICE)


def test_fp8_values_scale_each_channel_to_the_format_range():
    _, _, v = _inputs(2, 50, 4, 24, seed=0)
    v8, scale = fp8_values(v)
    assert v8.dtype == torch.float8_e4m3fn and scale.shape == (2, 1, 24)
    assert torch.allclose(v8.float().abs().amax(dim=1), torch.full((2, 24), E4M3_MAX, device=v.device))
    # e4m3 keeps 3 mantissa bits: each value within 2^-4 of itself, relative.
    assert ((v8.float() * scale - v).abs() <= v.abs() * 2**-4 + 1e-6).all()


@needs_kernel
@pytest.mark.parametrize("batch, n, dqk, dv", [(2, 70, 4, 96), (1, 130, 16, 64)])
def test_triton_fp8_pv_matches_the_emulated_rounding(batch, n, dqk, dv):
    q, k, v = _inputs(batch, n, dqk, dv, seed=n)
    exact = spatial_attention_ref(q, k, v)
    q16, k16, v16 = q.half(), k.half(), v.half()
    with torch.no_grad():
        fp8 = spatial_attention(q16, k16, v16, impl="triton", pv_fp8=True)
        fp16 = spatial_attention(q16, k16, v16, impl="triton")
        emulated = spatial_attention_fp8_pv_ref(q16, k16, v16)
    assert fp8.dtype == torch.float16 and fp8.shape == v.shape
    err8, err16, err_emulated = rel_err(fp8, exact), rel_err(fp16, exact), rel_err(emulated, exact)
    assert err16 < 2e-3
    assert 4 * err16 < err8 < 0.08, (err8, err16)  # fp8 rounding present, and bounded
    assert err8 < 1.5 * err_emulated + 5e-3, (err8, err_emulated)
    assert rel_err(fp8, emulated) < 0.05


@needs_kernel
def test_interpreter_rounds_to_fp8_like_the_gpu():
    """Triton 3.6's interpreter rounded 0.498 to 0.25 in e4m3 (drgan.kernels.dispatch patches it)."""
    import triton
    import triton.language as tl

    @triton.jit
    def cast(X, Y, N: tl.constexpr):
        offs = tl.arange(0, N)
        tl.store(Y + offs, tl.load(X + offs).to(tl.float8e4nv).to(tl.float32))

    x = torch.cat([torch.rand(4096), torch.rand(4096) * 0.02]).to(DEVICE)  # normals and subnormals
    y = torch.empty_like(x)
    cast[(1,)](x, y, N=x.numel())
    assert torch.equal(y, x.to(torch.float8_e4m3fn).float())


def test_fp8_pv_refuses_autograd_and_sdpa():
    q, k, v = _inputs(1, 20, 4, 8, seed=1)
    with pytest.raises(DrganError, match="inference"):
        spatial_attention(q.requires_grad_(), k, v, impl="ref", pv_fp8=True)
    with torch.no_grad(), pytest.raises(DrganError, match="sdpa"):
        spatial_attention(q, k, v, impl="sdpa", pv_fp8=True)


def test_reference_fp8_pv_is_the_exact_attention_up_to_fp8_rounding():
    q, k, v = _inputs(2, 300, 16, 32, seed=2)
    with torch.no_grad():
        err = rel_err(spatial_attention(q, k, v, impl="ref", pv_fp8=True), spatial_attention_ref(q, k, v))
    assert 1e-3 < err < 0.08


def test_generator_switches_its_spatial_attention_to_fp8():
    from drgan.config import PRESETS
    from drgan.nn import DRGANGenerator, set_attention_fp8

    cfg = PRESETS["tiny-64"]
    torch.manual_seed(0)
    g = DRGANGenerator(cfg, "local").eval()
    for name, p in g.named_parameters():
        if name.endswith("gamma_s"):
            p.data.fill_(1.0)  # a new generator's attention is switched off (DANet)
    cond = (torch.rand(2, cfg.cond_channels, cfg.resolution, cfg.resolution) > 0.9).float()
    z = torch.randn(2, cfg.z_dim)
    with torch.no_grad():
        exact = g(cond, z, noise=0)[0]
        fp8 = set_attention_fp8(g, True)(cond, z, noise=0)[0]
        again = set_attention_fp8(g, False)(cond, z, noise=0)[0]
    assert torch.equal(exact, again)
    assert 0 < (fp8 - exact).abs().max() < 0.05
