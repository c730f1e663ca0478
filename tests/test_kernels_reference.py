"""The PyTorch references of drgan.kernels against their textbook definitions."""
import importlib

import pytest
import torch
import torch.nn.functional as F

from drgan.kernels import adain, adain_ref, channel_attention, spatial_attention, spatial_attention_ref
from drgan.errors import DrganError

spatial_module = importlib.import_module("drgan.kernels.spatial_attention")


def naive_attention(q, k, v, scale=1.0):
    return torch.softmax(scale * q.double() @ k.double().transpose(1, 2), dim=-1) @ v.double()


@pytest.mark.parametrize("dqk", [4, 16, 64])
@pytest.mark.parametrize("dv", [24, 128, 512])
def test_spatial_reference_equals_naive_softmax(dqk, dv):
    q, k = torch.randn(2, 97, dqk), torch.randn(2, 97, dqk)
    v = torch.randn(2, 97, dv)
    out = spatial_attention(q, k, v, impl="ref")
    assert out.shape == (2, 97, dv)
    torch.testing.assert_close(out.double(), naive_attention(q, k, v), rtol=1e-4, atol=1e-5)


def test_spatial_reference_is_chunked(monkeypatch):
    # A budget of 10 query rows x N keys forces five chunks; the result must not change.
    q, k, v = torch.randn(1, 50, 4), torch.randn(1, 50, 4), torch.randn(1, 50, 8)
    full = spatial_attention_ref(q, k, v, 0.5)
    seen = []
    real = spatial_module._attend
    monkeypatch.setattr(spatial_module, "_REF_SCORE_BUDGET", 10 * 50)
    monkeypatch.setattr(spatial_module, "_attend", lambda qc, *a: seen.append(qc.shape[1]) or real(qc, *a))
    torch.testing.assert_close(spatial_attention_ref(q, k, v, 0.5), full)
    assert max(seen) == 10 and len(seen) == 5


def test_spatial_reference_gradients_match_naive():
    q, k, v = (torch.randn(2, 33, d, dtype=torch.float64, requires_grad=True) for d in (4, 4, 24))
    grads = torch.autograd.grad(spatial_attention_ref(q, k, v).sum(), (q, k, v))
    expected = torch.autograd.grad(naive_attention(q, k, v).sum(), (q, k, v))
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e.to(g.dtype), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("scale", [1.0, 0.7])
def test_closed_form_gradients_of_sampled_rows_and_columns_match_autograd(scale, monkeypatch):
    """The GPU check's backward reference at N = 102,400: every output row, dq at chosen query
    rows, dk and dv at chosen key columns (any order, across chunks of 7 rows)."""
    n = 61
    q, k, v = (torch.randn(2, n, d, dtype=torch.float64, requires_grad=True) for d in (4, 4, 24))
    grad = torch.randn(2, n, 24, dtype=torch.float64)
    expected = torch.autograd.grad(naive_attention(q, k, v, scale), (q, k, v), grad)
    rows, cols = torch.tensor([n - 1, 0, 13, 6, 7, 40]), torch.tensor([5, n - 1, 0, 29])
    monkeypatch.setattr(spatial_module, "_REF_SCORE_BUDGET", 7 * 2 * n)
    out, dq, dk, dv = spatial_module.spatial_attention_grads_ref(q, k, v, grad, rows, cols, scale)
    torch.testing.assert_close(out.double(), naive_attention(q, k, v, scale).detach(), rtol=1e-4, atol=1e-5)
    for got, want in ((dq, expected[0][:, rows]), (dk, expected[1][:, cols]), (dv, expected[2][:, cols])):
        assert got.shape == want.shape
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


def test_sdpa_path_matches_reference():
    q, k, v = torch.randn(2, 40, 4), torch.randn(2, 40, 4), torch.randn(2, 40, 24)
    torch.testing.assert_close(spatial_attention(q, k, v, impl="sdpa"), spatial_attention(q, k, v, impl="ref"))


def test_channel_attention_equals_danet():
    x = torch.randn(2, 16, 45, dtype=torch.float64)
    # DANet CAM: energy = X X^T; energy_new = max(energy) - energy; attention = softmax(energy_new); out = A X
    energy = torch.bmm(x, x.transpose(1, 2))
    energy_new = torch.max(energy, -1, keepdim=True)[0].expand_as(energy) - energy
    expected = torch.bmm(F.softmax(energy_new, dim=-1), x)
    # The reference works in fp32: fp32-level tolerances.
    torch.testing.assert_close(channel_attention(x, impl="ref"), expected, rtol=1e-4, atol=1e-5)


def test_channel_attention_accepts_channels_last_views():
    x = torch.randn(2, 8, 5, 7).contiguous(memory_format=torch.channels_last)
    assert not x.flatten(2).is_contiguous()
    torch.testing.assert_close(channel_attention(x.flatten(2)), channel_attention(x.contiguous().flatten(2)))


@pytest.mark.parametrize("channels_last", [False, True])
def test_adain_reference_equals_instance_norm_plus_affine(channels_last):
    x = torch.randn(3, 6, 9, 11) * 3 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    gamma, beta = torch.randn(3, 6), torch.randn(3, 6)
    expected = F.instance_norm(x, eps=1e-5) * gamma[:, :, None, None] + beta[:, :, None, None]
    torch.testing.assert_close(adain(x, gamma, beta, impl="ref"), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(adain_ref(x.bfloat16(), gamma, beta).float(), expected, rtol=2e-2, atol=5e-2)


def test_bad_impl_and_shapes_are_clear():
    q = torch.randn(1, 8, 4)
    with pytest.raises(DrganError, match="impl='fast' is not one of"):
        spatial_attention(q, q, q, impl="fast")
    with pytest.raises(DrganError, match=r"v \(1, 9, 4\) must be \(B, N, Dv\)"):
        spatial_attention(q, q, torch.randn(1, 9, 4), impl="ref")
    with pytest.raises(DrganError, match=r"gamma \(1, 3\)"):
        adain(torch.randn(1, 4, 2, 2), torch.randn(1, 3), torch.randn(1, 4), impl="ref")
