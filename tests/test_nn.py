import pytest
import torch

from drgan.config import PRESETS, preset
from drgan.errors import DrganError
from drgan.nn import DRGANGenerator, build_discriminator, build_grader, set_kernel_impl
from helpers import randomize_batchnorm


def inputs(cfg, stage, batch=2, device="cpu"):
    r = cfg.stage_resolution(stage)
    return torch.rand(batch, cfg.cond_channels, r, r, device=device), torch.randn(batch, cfg.z_dim, device=device)


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("stage", ["global", "local"])
def test_output_shapes_every_preset(name, stage):
    cfg = preset(name)
    # paper-1280 is checked on meta tensors: shapes without running at full size.
    device = "meta" if name == "paper-1280" else "cpu"
    with torch.device(device):
        g, d = DRGANGenerator(cfg, stage), build_discriminator(cfg)
    cond, z = inputs(cfg, stage, device=device)
    noise = [torch.randn(s, device=device) for s in g.noise_shapes(2)]
    with torch.no_grad():
        image, logits = g(cond, z, noise)
        outs = d(cond, image)
    r = cfg.stage_resolution(stage)
    assert image.shape == (2, 3, r, r) and logits.shape == (2, 5)
    assert len(outs) == cfg.disc_scales
    for scale, out in enumerate(outs):
        assert out.logit.shape == (2,) and out.grade_logits.shape == (2, 5)
        assert [f.shape[1] for f in out.features] == list(cfg.disc_channels)
        assert out.features[0].shape[-1] == r // 2 ** (scale + 1)


def test_paper_noise_and_attention_sizes():
    g = DRGANGenerator(preset("paper-1280"), "local")
    assert g.noise_shapes(1) == [(1, 128, 80, 80), (1, 64, 160, 160), (1, 32, 320, 320)]
    assert [b.sca.query.out_channels for b in g.global_gen.synth] == [64, 16, 4]


def test_image_range_and_seeded_noise():
    cfg = preset("tiny-64")
    g = DRGANGenerator(cfg).eval()
    cond, z = inputs(cfg, "local")
    a, _ = g(cond, z, noise=7)
    b, _ = g(cond, z, noise=7)
    c, _ = g(cond, z, noise=8)
    assert a.min() >= -1 and a.max() <= 1
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)


def test_gradients_reach_every_parameter():
    cfg = preset("tiny-64")
    g, d = DRGANGenerator(cfg, "local"), build_discriminator(cfg)
    with torch.no_grad():  # DANet starts the attention branches at 0, which blocks their Q/K/V grads
        for block in g.global_gen.synth:
            block.sca.gamma_s.fill_(0.1)
            block.sca.gamma_c.fill_(0.1)
    cond, z = inputs(cfg, "local")
    image, logits = g(cond, z)
    outs = d(cond, image)
    loss = logits.square().mean() + sum(o.logit.mean() + o.grade_logits.square().mean() for o in outs)
    loss.backward()
    for net in (g, d):
        for name, p in net.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"


@pytest.mark.parametrize("stage", ["global", "local"])
def test_channels_last_and_bf16_autocast_match_fp32(stage):
    cfg = preset("tiny-64")
    g = DRGANGenerator(cfg, stage).eval()
    cond, z = inputs(cfg, stage)
    noise = g.make_noise(2, seed=1)
    with torch.no_grad():
        ref, ref_logits = g(cond, z, noise)
        g_cl = g.to(memory_format=torch.channels_last)
        cl, cl_logits = g_cl(cond.contiguous(memory_format=torch.channels_last), z, noise)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half, _ = g_cl(cond.contiguous(memory_format=torch.channels_last), z, noise)
    # channels_last changes only the summation order: fp32 rounding.
    torch.testing.assert_close(cl, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(cl_logits, ref_logits, rtol=1e-4, atol=1e-4)
    # bf16 keeps 8 mantissa bits; through ~20 layers the image (in [-1, 1]) stays within 0.1.
    assert half.dtype == torch.bfloat16
    assert (half.float() - ref).abs().max() < 0.1
    assert (half.float() - ref).abs().mean() < 0.02


def test_local_stage_starts_from_global_weights():
    cfg = preset("tiny-64")
    trained, local = DRGANGenerator(cfg, "global"), DRGANGenerator(cfg, "local")
    g_keys, l_keys = set(trained.state_dict()), set(local.state_dict())
    assert g_keys - l_keys == {"global_gen.to_rgb.weight", "global_gen.to_rgb.bias"}
    assert all(k.startswith("local.") for k in l_keys - g_keys)
    with torch.no_grad():
        trained.global_gen.res[0].body[1].weight.add_(1.0)
    local.load_global(trained.state_dict())
    torch.testing.assert_close(local.global_gen.res[0].body[1].weight, trained.global_gen.res[0].body[1].weight)
    with pytest.raises(DrganError, match="not the global stage"):
        local.load_global(DRGANGenerator(preset("small-256"), "global").state_dict() | {"extra": torch.zeros(1)})


def test_predict_grade():
    cfg = preset("tiny-64")
    g = DRGANGenerator(cfg).eval()
    cond, _ = inputs(cfg, "local", batch=3)
    pred = g.predict_grade(cond)
    assert pred.shape == (3,) and pred.dtype == torch.int64 and pred.max() < 5


def test_grader_is_resnet50_with_torchvision_names():
    net = build_grader(preset("paper-1280"))
    state = net.state_dict()
    for key in ("conv1.weight", "bn1.running_mean", "layer1.0.downsample.0.weight", "layer4.2.conv3.weight", "fc.weight"):
        assert key in state
    assert state["layer4.2.conv3.weight"].shape == (2048, 512, 1, 1)
    # torchvision's resnet50 has 25,557,032 parameters with a 1000-way fc; ours has a 5-way fc.
    assert sum(p.numel() for p in net.parameters()) == 25_557_032 - 2048 * 1000 - 1000 + 2048 * 5 + 5


def test_grader_feature_is_the_grading_vector():
    cfg = preset("tiny-64")
    net = build_grader(cfg).eval()
    logits, feat = net(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 5) and feat.shape == (2, cfg.z_dim)


def test_unknown_kernel_impl_is_refused_when_set():
    g = DRGANGenerator(preset("tiny-64"), "global")
    with pytest.raises(DrganError, match="kernel impl 'cuda' is not one of auto, ref, triton, sdpa"):
        set_kernel_impl(g, "cuda")
    with pytest.raises(DrganError, match=r"kernel impl 'gluon' is not one of .*exists only for drgan.kernels.spatial_attention"):
        set_kernel_impl(g, "gluon")
    assert set_kernel_impl(g, "sdpa").global_gen.synth[0].sca.impl == "sdpa"


def test_batchnorm_folded_into_convolutions_gives_the_same_image():
    from drgan.checkpoint import weights_sha256
    from drgan.nn.layers import fold_batchnorm

    cfg = preset("tiny-64")
    torch.manual_seed(0)
    g = DRGANGenerator(cfg, "local").eval()
    randomize_batchnorm(g)  # so folding has something to do
    before = weights_sha256(g)
    folded = fold_batchnorm(g)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in g.modules()) and weights_sha256(g) == before
    cond, z = torch.rand(2, cfg.cond_channels, 64, 64), torch.randn(2, cfg.z_dim)
    noise = g.make_noise(2, seed=0)
    with torch.inference_mode():
        want, want_logits = g(cond, z, noise)
        got, got_logits = folded(cond, z, noise)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(got_logits, want_logits, atol=1e-4, rtol=1e-4)
