"""Triton kernels against their PyTorch references: values and gradients.

Without a GPU the kernels run in Triton's CPU interpreter (conftest sets TRITON_INTERPRET=1 before
anything imports them), with one small tile configuration (32 x 32 attention tiles, 64-wide V
tiles), so every N below leaves a ragged last tile and Dv = 128 spans two V tiles.

Tolerances: fp32 inputs agree to 1e-4 (values) and 1e-4 of the largest gradient entry; fp16
inputs to 2e-3 (values, about two fp16 ulps at |x| ~ 1) and 2e-2 of the largest gradient entry
(the kernels round probabilities and ds to fp16 before the tensor-core products, as flash
attention does; the reference keeps them in fp32). bf16 is not run here: the interpreter's
bf16 `tl.dot` returns garbage (numpy has no bf16); bench/gpu/kernels.py checks bf16 on a GPU and
tests/test_kernels_compile.py compiles it.
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from drgan.config import preset  # noqa: E402
from drgan.errors import DrganError  # noqa: E402
from drgan.kernels import (  # noqa: E402
    adain,
    adain_ref,
    channel_attention,
    channel_attention_ref,
    spatial_attention,
    spatial_attention_ref,
)
from drgan.nn import DRGANGenerator, set_kernel_impl  # noqa: E402
from drgan.nn.sca import SCA  # noqa: E402
from drgan.runtime import deterministic_algorithms  # noqa: E402
from helpers import DEVICE, needs_kernel  # noqa: E402

pytestmark = needs_kernel
TOL = {torch.float32: (1e-4, 1e-4), torch.float16: (2e-3, 2e-2)}  # (values atol, gradient atol / max |grad|)


def _close_grads(got, want, rel: float) -> None:
    """Max error within rel of the largest entry (and 1e-5 absolute: some gradients are zero in exact math)."""
    assert len(got) == len(want)
    for index, (g, w) in enumerate(zip(got, want)):
        scale = w.float().abs().max().item()
        err = (g.float() - w.float()).abs().max().item()
        assert err <= rel * scale + 1e-5, f"gradient {index}: max error {err:.3g} vs max |grad| {scale:.3g}"


def _leaf(shape, dtype, offset: float = 0.0, spread: float = 1.0) -> torch.Tensor:
    return (torch.randn(shape, device=DEVICE) * spread + offset).to(dtype).requires_grad_(True)


@pytest.mark.parametrize(
    "batch, n, dqk, dv, dtype",
    [
        (2, 75, 4, 24, torch.float32),
        (2, 75, 16, 128, torch.float32),
        (1, 50, 64, 24, torch.float32),
        (2, 40, 4, 128, torch.float16),
        (2, 45, 64, 24, torch.float16),
    ],
)
def test_spatial_attention_matches_reference(batch, n, dqk, dv, dtype):
    q, k, v = _leaf((batch, n, dqk), dtype), _leaf((batch, n, dqk), dtype), _leaf((batch, n, dv), dtype)
    out = spatial_attention(q, k, v, impl="triton")
    want = spatial_attention_ref(q, k, v)
    assert out.dtype == dtype and out.shape == (batch, n, dv)
    atol, rel = TOL[dtype]
    torch.testing.assert_close(out.float(), want.float(), atol=atol, rtol=0)
    grad = torch.randn_like(out)
    _close_grads(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(want, (q, k, v), grad), rel)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_spatial_attention_deterministic_backward(dtype):
    """Under torch.use_deterministic_algorithms the backward takes dQ from its own kernel instead
    of atomic adds: the same gradients (the reference's, and the atomic path's to rounding), and
    bit-identical from run to run."""
    q, k, v = _leaf((2, 75, 4), dtype), _leaf((2, 75, 4), dtype), _leaf((2, 75, 128), dtype)
    out = spatial_attention(q, k, v, impl="triton")
    grad = torch.randn_like(out)
    atomic = torch.autograd.grad(out, (q, k, v), grad, retain_graph=True)
    with deterministic_algorithms():
        runs = [torch.autograd.grad(out, (q, k, v), grad, retain_graph=True) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    want = torch.autograd.grad(spatial_attention_ref(q, k, v), (q, k, v), grad)
    rel = TOL[dtype][1]
    _close_grads(runs[0], want, rel)
    _close_grads(atomic, want, rel)
    _close_grads(atomic, runs[0], rel / 4)


def test_spatial_attention_strided_views_and_scale():
    """q, k, v as column slices of one fused projection (non-unit row strides); scale < 0 and 0."""
    qkv = _leaf((2, 37, 4 + 4 + 24), torch.float32)
    q, k, v = qkv[..., :4], qkv[..., 4:8], qkv[..., 8:]
    for scale in (0.7, -0.5, 0.0):
        out = spatial_attention(q, k, v, scale=scale, impl="triton")
        want = spatial_attention_ref(q, k, v, scale=scale)
        torch.testing.assert_close(out, want, atol=1e-4, rtol=0)
        grad = torch.randn_like(out)
        _close_grads(torch.autograd.grad(out, qkv, grad), torch.autograd.grad(want, qkv, grad), 1e-4)


@pytest.mark.parametrize(
    "batch, channels, height, width, dtype, channels_last",
    [
        (2, 24, 7, 9, torch.float32, False),
        (2, 70, 6, 11, torch.float32, True),
        (1, 16, 40, 30, torch.float16, True),  # N = 1200: the Gram product is split over N
    ],
)
def test_channel_attention_matches_reference(batch, channels, height, width, dtype, channels_last):
    x = torch.randn(batch, channels, height, width, device=DEVICE) * 0.3
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x = x.to(dtype).requires_grad_(True)
    tokens = x.flatten(2)
    out = channel_attention(tokens, impl="triton")
    want = channel_attention_ref(tokens)
    assert out.stride() == tokens.stride(), "output must keep the input's layout"
    atol, rel = TOL[dtype]
    torch.testing.assert_close(out.float(), want.float(), atol=atol, rtol=0)
    grad = torch.randn_like(out)
    _close_grads(torch.autograd.grad(out, x, grad), torch.autograd.grad(want, x, grad), rel)


@pytest.mark.parametrize(
    "batch, channels, height, width, dtype, channels_last",
    [
        (2, 6, 9, 11, torch.float32, False),
        (2, 70, 6, 11, torch.float32, True),
        (2, 5, 40, 40, torch.float16, False),  # H*W = 1600: statistics combined from two chunks
        (2, 16, 13, 5, torch.float16, True),
    ],
)
def test_adain_matches_reference(batch, channels, height, width, dtype, channels_last):
    # Mean 3, std 2: the variance must not cancel away.
    x = torch.randn(batch, channels, height, width, device=DEVICE) * 2 + 3
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x = x.to(dtype).requires_grad_(True)
    gamma, beta = _leaf((batch, channels), dtype, offset=1.0), _leaf((batch, channels), dtype)
    out = adain(x, gamma, beta, impl="triton")
    want = adain_ref(x, gamma, beta)
    assert out.stride() == x.stride() and out.dtype == dtype
    atol, rel = TOL[dtype]
    torch.testing.assert_close(out.float(), want.float(), atol=atol * 4, rtol=0)  # |y| reaches ~4
    grad = torch.randn_like(out)
    _close_grads(
        torch.autograd.grad(out, (x, gamma, beta), grad), torch.autograd.grad(want, (x, gamma, beta), grad), rel
    )


def test_unsupported_requests_name_the_reason():
    with pytest.raises(DrganError, match="float64"):
        adain(torch.randn(1, 2, 3, 3, dtype=torch.float64, device=DEVICE), torch.ones(1, 2), torch.zeros(1, 2), impl="triton")
    with pytest.raises(DrganError, match="QK dim"):
        spatial_attention(torch.randn(1, 8, 200, device=DEVICE), torch.randn(1, 8, 200, device=DEVICE),
                          torch.randn(1, 8, 4, device=DEVICE), impl="triton")
    strided = torch.randn(1, 2, 6, 6, device=DEVICE).transpose(2, 3)
    with pytest.raises(DrganError, match="merge H and W"):
        adain(strided, torch.ones(1, 2), torch.zeros(1, 2), impl="triton")
    # An empty batch: refused by the kernels (the Gluon path asserted in its TMA descriptor), run by the reference.
    empty = [torch.randn(0, 8, d, device=DEVICE) for d in (4, 4, 16)]
    with pytest.raises(DrganError, match="needs a batch"):
        spatial_attention(*empty, impl="triton")
    assert spatial_attention(*empty).shape == (0, 8, 16)


def _switch_on_attention(module: torch.nn.Module) -> None:
    # gamma_s / gamma_c start at 0 (DANet), which would hide the attention outputs.
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("gamma_s") or name.endswith("gamma_c"):
                p.fill_(0.5)


def test_sca_triton_matches_reference():
    sca = SCA(channels=24, qk_dim=4).to(DEVICE)
    _switch_on_attention(sca)
    x = torch.randn(2, 24, 7, 6, device=DEVICE).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    outs, grads = [], []
    for impl in ("ref", "triton"):
        set_kernel_impl(sca, impl)
        out = sca(x)
        outs.append(out)
        grads.append(torch.autograd.grad(out.square().sum(), [x, *sca.parameters()]))
    torch.testing.assert_close(outs[1], outs[0], atol=1e-4, rtol=1e-4)
    _close_grads(grads[1], grads[0], 1e-4)


def test_tiny_generator_triton_matches_reference():
    cfg = preset("tiny-64")
    gen = DRGANGenerator(cfg, "global").to(DEVICE).eval()
    _switch_on_attention(gen)
    cond = torch.rand(1, cfg.cond_channels, 32, 32, device=DEVICE).contiguous(memory_format=torch.channels_last)
    z = torch.randn(1, cfg.z_dim, device=DEVICE)
    images = []
    with torch.no_grad():
        for impl in ("ref", "triton"):
            set_kernel_impl(gen, impl)
            images.append(gen(cond, z, noise=0)[0])
    assert images[0].shape == (1, 3, 32, 32)
    torch.testing.assert_close(images[1], images[0], atol=1e-4, rtol=1e-4)
