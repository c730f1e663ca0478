"""The networks against their description (DESIGN.md section 2), computed independently: SCA and
AdaIN by their formulas, residual / bottleneck / local-enhancer / discriminator layers with
functional ops, parameter counts from the stated layer shapes, the masks and encoder skips each
synthesis block sees, and the argument refusals."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from drgan.config import preset
from drgan.errors import DrganError
from drgan.nn import (
    SCA,
    AdaIN,
    DRGANGenerator,
    MappingNetwork,
    PatchDiscriminator,
    build_discriminator,
    build_grader,
    set_attention_fp8,
)
from drgan.nn.generator import ResBlock
from drgan.nn.layers import assert_shape
from helpers import randomize_batchnorm

TINY = preset("tiny-64")


def _bn(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """Eval-mode batch norm written out."""
    shape = (1, -1, 1, 1)
    return (x - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps) * bn.weight.view(shape) \
        + bn.bias.view(shape)


def _conv(x: torch.Tensor, conv: nn.Conv2d, stride: int = 1, padding: int = 0) -> torch.Tensor:
    return F.conv2d(x, conv.weight, conv.bias, stride=stride, padding=padding)


# ---------------------------------------------------------------- shape checks and refusals


def test_assert_shape_checks_rank_and_every_fixed_axis():
    assert_shape(torch.zeros(2, 3, 4), (None, 3, None))
    assert_shape(torch.zeros(2, 3, 4), (2, 3, 4))
    with pytest.raises(AssertionError, match=r"x has shape \(2, 3, 4\), expected \(2, 5, 4\)"):
        assert_shape(torch.zeros(2, 3, 4), (2, 5, 4), "x")
    with pytest.raises(AssertionError, match="has shape"):  # a missing axis is not matched by zip's truncation
        assert_shape(torch.zeros(2, 3), (2, 3, None))
    with pytest.raises(AssertionError, match="has shape"):
        assert_shape(torch.zeros(2, 3, 1), (2, 3))


def test_unknown_stage_is_refused_at_construction():
    with pytest.raises(DrganError, match="unknown stage 'middle'"):
        DRGANGenerator(TINY, "middle")


@pytest.mark.parametrize("stage", ["global", "local"])
def test_generator_refuses_conditions_and_grading_vectors_of_the_wrong_shape(stage):
    g = DRGANGenerator(TINY, stage).eval()
    r = TINY.stage_resolution(stage)
    cond, z = torch.rand(2, 8, r, r), torch.randn(2, TINY.z_dim)
    with torch.no_grad():
        with pytest.raises(AssertionError, match="cond has shape"):
            g(torch.rand(2, 8, r // 2, r // 2), z, 0)  # the other stage's resolution
        with pytest.raises(AssertionError, match="cond has shape"):
            g(torch.rand(2, 7, r, r), z, 0)
        with pytest.raises(AssertionError, match="z has shape"):
            g(cond, torch.randn(3, TINY.z_dim), 0)  # one grading vector per condition map
    # Without AGM z is not used at all, and is still checked.
    no_agm = DRGANGenerator(dataclasses.replace(TINY, agm=False), stage).eval()
    with torch.no_grad(), pytest.raises(AssertionError, match="z has shape"):
        no_agm(cond, torch.randn(1, TINY.z_dim), 0)


def test_mapping_network_refuses_anything_but_a_batch_of_vectors():
    m = MappingNetwork(8, 4, 2)
    with pytest.raises(DrganError, match=r"z \(2, 8, 1\) must be \(B, 8\)"):
        m(torch.randn(2, 8, 1))
    with pytest.raises(DrganError, match=r"must be \(B, 8\)"):
        m(torch.randn(2, 7))


def test_discriminator_refuses_conditions_of_another_size():
    d = build_discriminator(TINY)
    with pytest.raises(DrganError, match=r"cond \(1, 8, 32, 32\) and image \(1, 3, 16, 16\) differ in size"):
        d(torch.rand(1, 8, 32, 32), torch.rand(1, 3, 16, 16))


def test_load_global_refuses_a_state_missing_a_weight():
    cfg = TINY
    state = DRGANGenerator(cfg, "global").state_dict()
    del state["global_gen.res.0.body.1.weight"]
    local = DRGANGenerator(cfg, "local")
    with pytest.raises(DrganError, match=r"missing global_gen\.res\.0\.body\.1\.weight, unexpected none"):
        local.load_global(state)


# ---------------------------------------------------------------- parameter counts from the layer shapes


def _conv_params(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k + cout


def _norm_params(norm: str, c: int) -> int:
    return 2 * c if norm in ("batch", "instance") else 0


def _expected_generator_params(cfg, stage: str) -> int:
    ch, n = cfg.enc_channels, cfg.norm
    total = _conv_params(cfg.cond_channels, ch[0], 7) + _norm_params(n, ch[0])             # stem conv7x7
    total += sum(_conv_params(a, b, 3) + _norm_params(n, b) for a, b in zip(ch, ch[1:]))  # stride-2 convs
    total += cfg.n_res_blocks * 2 * (_conv_params(ch[-1], ch[-1], 3) + _norm_params(n, ch[-1]))
    total += _conv_params(ch[-1], cfg.num_grades, 3)                                      # grade head
    for c, d in zip(reversed(ch[1:]), cfg.sca_qk_dims):
        total += _conv_params(c + c // 4, c, 1)                                            # fuse features ++ noise
        total += (cfg.w_dim * 2 * c + 2 * c) if cfg.agm else 2 * c                         # AdaIN affine / IN affine
        total += _conv_params(2 * c + cfg.cond_channels, c, 3) + _norm_params(n, c)        # merge conv3x3
        if cfg.sca:  # Q, K (C -> d), V (C -> C), two output 1x1 convs, gamma_s, gamma_c
            total += 2 * _conv_params(c, d, 1) + 3 * _conv_params(c, c, 1) + 2
        total += _conv_params(c, c // 2, 3) + _norm_params(n, c // 2)                      # transposed conv
    if cfg.agm:  # mapping MLP z -> w
        total += cfg.z_dim * cfg.w_dim + cfg.w_dim + (cfg.mapping_layers - 1) * (cfg.w_dim ** 2 + cfg.w_dim)
    if stage == "global":
        total += _conv_params(ch[0], cfg.img_channels, 7)                                 # RGB head
    else:
        full, half = cfg.local_channels
        total += _conv_params(cfg.cond_channels, full, 7) + _norm_params(n, full)
        total += _conv_params(full, half, 3) + _norm_params(n, half)
        total += _conv_params(half, full, 3) + _norm_params(n, full)
        total += _conv_params(full, cfg.img_channels, 7)
    return total


@pytest.mark.parametrize("stage", ["global", "local"])
@pytest.mark.parametrize("changes", [{}, {"norm": "instance"}, {"norm": "none"}, {"sca": False, "agm": False},
                                     {"n_res_blocks": 3, "mapping_layers": 2}])
def test_generator_parameter_count_follows_the_architecture(stage, changes):
    cfg = dataclasses.replace(TINY, **changes)
    g = DRGANGenerator(cfg, stage)
    assert sum(p.numel() for p in g.parameters()) == _expected_generator_params(cfg, stage)


def test_paper_generator_parameter_count():
    cfg = preset("paper-1280")
    with torch.device("meta"):
        g = DRGANGenerator(cfg, "local")
    assert sum(p.numel() for p in g.parameters()) == _expected_generator_params(cfg, "local")


def test_discriminator_parameter_count_follows_the_architecture():
    cfg = preset("paper-1280")
    with torch.device("meta"):
        d = build_discriminator(cfg)
    widths = (cfg.cond_channels + cfg.img_channels, *cfg.disc_channels)  # 11 -> 64, 128, 256, 512
    per_net = sum(_conv_params(a, b, 4) for a, b in zip(widths, widths[1:]))
    per_net += _conv_params(widths[-1], 1, 3) + _conv_params(widths[-1], cfg.num_grades, 3)
    assert sum(p.numel() for p in d.parameters()) == cfg.disc_scales * per_net


# ---------------------------------------------------------------- SCA, AdaIN, mapping by their formulas


def _sca_by_hand(sca: SCA, x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    q = _conv(x, sca.query).flatten(2).transpose(1, 2)  # (B, N, d), tokens in row-major order
    k = _conv(x, sca.key).flatten(2).transpose(1, 2)
    v = _conv(x, sca.value).flatten(2).transpose(1, 2)  # (B, N, C)
    attn = torch.softmax(q @ k.transpose(1, 2), dim=-1) @ v  # scale 1 (DANet)
    spatial = x + sca.gamma_s * attn.transpose(1, 2).reshape(b, c, h, w)
    X = x.reshape(b, c, h * w)
    energy = X @ X.transpose(1, 2)
    a = torch.softmax(energy.amax(dim=-1, keepdim=True) - energy, dim=-1)
    channel = x + sca.gamma_c * (a @ X).reshape(b, c, h, w)
    return _conv(spatial, sca.out_s) + _conv(channel, sca.out_c)


def test_sca_follows_the_danet_formulas_on_a_non_square_map():
    sca = SCA(channels=6, qk_dim=4, impl="ref")
    with torch.no_grad():  # distinct branch weights, so swapping the two branches shows
        sca.gamma_s.fill_(0.7)
        sca.gamma_c.fill_(-0.4)
    x = torch.randn(2, 6, 5, 3)
    with torch.no_grad():
        got = sca(x)
        want = _sca_by_hand(sca, x)
        cl = sca(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cl, want, atol=1e-5, rtol=1e-5)


def test_fresh_sca_has_both_attention_branches_switched_off():
    sca = SCA(channels=8, qk_dim=4, impl="ref")
    assert sca.gamma_s.item() == 0 and sca.gamma_c.item() == 0
    x = torch.randn(1, 8, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(sca(x), _conv(x, sca.out_s) + _conv(x, sca.out_c))


def test_set_attention_fp8_reaches_every_sca_block():
    g = DRGANGenerator(TINY, "local")
    blocks = [b.sca for b in g.global_gen.synth]
    assert set_attention_fp8(g, True) is g and all(s.pv_fp8 is True for s in blocks)
    set_attention_fp8(g, False)
    assert all(s.pv_fp8 is False for s in blocks)


def test_adain_scale_is_one_plus_gamma_and_bias_beta_from_the_style_code():
    torch.manual_seed(1)
    ada = AdaIN(channels=3, w_dim=4, impl="ref")
    x, w = torch.randn(2, 3, 4, 5) * 3 + 1, torch.randn(2, 4)
    affine = w @ ada.affine.weight.T + ada.affine.bias
    gamma, beta = affine[:, :3], affine[:, 3:]  # w -> (gamma, beta), in that order
    mean = x.mean(dim=(2, 3), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=(2, 3), keepdim=True)  # biased, over H*W per sample and channel
    want = (1 + gamma)[:, :, None, None] * (x - mean) / torch.sqrt(var + 1e-5) + beta[:, :, None, None]
    with torch.no_grad():
        torch.testing.assert_close(ada(x, w), want, atol=1e-5, rtol=1e-5)
        ada.affine.weight.zero_()
        ada.affine.bias.zero_()
        # A zero affine is plain instance normalization.
        torch.testing.assert_close(ada(x, w), (x - mean) / torch.sqrt(var + 1e-5), atol=1e-5, rtol=1e-5)


def test_mapping_network_is_an_mlp_of_leaky_relus_on_the_unit_rms_grading_vector():
    m = MappingNetwork(z_dim=6, w_dim=5, num_layers=3)
    linears = [l for l in m.net if isinstance(l, nn.Linear)]
    assert len(linears) == 3 and linears[0].in_features == 6
    z = torch.randn(4, 6) * torch.tensor([[0.1], [1.0], [10.0], [3.0]])
    h = z / z.square().mean(dim=1, keepdim=True).sqrt()
    for lin in linears:
        h = F.leaky_relu(h @ lin.weight.T + lin.bias, 0.2)
    with torch.no_grad():
        out = m(z)
        torch.testing.assert_close(out, h, atol=1e-5, rtol=1e-5)
        # Each vector is normalized on its own: its scale and the rest of the batch do not matter.
        torch.testing.assert_close(m(z * 7.5), out, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(m(z[2:3]), out[2:3], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- generator blocks


def test_residual_block_is_input_plus_conv_bn_relu_conv_bn():
    block = ResBlock(6, "batch")
    randomize_batchnorm(block)
    block.eval()
    x = torch.randn(2, 6, 5, 5)
    body = block.body
    h = F.relu(_bn(_conv(x, body[0][0], padding=1), body[0][1]))
    want = x + _bn(_conv(h, body[1], padding=1), body[2])  # no ReLU after the sum or the second norm
    with torch.no_grad():
        torch.testing.assert_close(block(x), want, atol=1e-5, rtol=1e-5)


def test_local_enhancer_follows_its_layers():
    """conv7x7 -> conv3x3 s2, plus Gm's features -> transposed conv3x3 s2 -> conv7x7 -> tanh."""
    le = DRGANGenerator(TINY, "local").local
    randomize_batchnorm(le)
    with torch.no_grad():
        le.to_rgb.weight.mul_(30)  # some pixels saturate near +-1
    le.eval()
    full, half = TINY.local_channels
    cond, feats = torch.rand(2, 8, 16, 16), torch.randn(2, half, 8, 8)
    x = F.relu(_bn(_conv(cond, le.stem[0], padding=3), le.stem[1]))
    x = F.relu(_bn(_conv(x, le.down[0], stride=2, padding=1), le.down[1])) + feats
    up = le.up[0]
    assert isinstance(up, nn.ConvTranspose2d)
    x = F.conv_transpose2d(x, up.weight, up.bias, stride=2, padding=1, output_padding=1)
    want = torch.tanh(_conv(F.relu(_bn(x, le.up[1])), le.to_rgb, padding=3))
    with torch.no_grad():
        got = le(cond, feats)
    assert got.shape == (2, 3, 16, 16) and want.abs().max() > 0.9999
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def _merge_inputs(g: DRGANGenerator):
    seen = []
    hooks = [b.merge.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
             for b in g.global_gen.synth]
    return seen, hooks


@pytest.mark.parametrize("stage", ["global", "local"])
def test_synthesis_blocks_see_the_encoder_skip_and_the_average_pooled_masks(stage):
    """Each merge conv's input is features ++ the encoder output at that scale ++ the masks
    averaged down to that scale (in the local stage Gm's input is the masks averaged to half size)."""
    g = DRGANGenerator(TINY, stage).eval()
    r = TINY.stage_resolution(stage)
    cond = (torch.rand(2, 8, r, r) > 0.7).float()  # binary masks: max and average pooling differ
    encoder = []
    enc_hooks = [d.register_forward_hook(lambda m, a, out: encoder.append(out.detach())) for d in g.global_gen.down]
    seen, hooks = _merge_inputs(g)
    with torch.no_grad():
        g(cond, torch.randn(2, TINY.z_dim), 0)
    for h in hooks + enc_hooks:
        h.remove()
    assert len(seen) == len(g.global_gen.synth) == len(encoder)
    for x, skip, c in zip(seen, reversed(encoder), reversed(TINY.enc_channels[1:])):
        side = x.shape[-1]
        assert x.shape[1] == 2 * c + 8 and skip.shape[-1] == side
        torch.testing.assert_close(x[:, c:2 * c], skip)
        torch.testing.assert_close(x[:, 2 * c:], F.avg_pool2d(cond, r // side), atol=1e-6, rtol=1e-6)


def test_without_agm_the_fused_features_are_instance_normalized():
    """agm=False: a fresh block's learned-affine instance norm leaves every channel of the fused
    features at mean 0 and variance 1 over H x W."""
    g = DRGANGenerator(dataclasses.replace(TINY, agm=False), "global").eval()
    seen, hooks = _merge_inputs(g)
    with torch.no_grad():
        g(torch.rand(2, 8, 32, 32), torch.zeros(2, TINY.z_dim), 0)
    for h in hooks:
        h.remove()
    for x, c in zip(seen, reversed(TINY.enc_channels[1:])):
        fused = x[:, :c]
        torch.testing.assert_close(fused.mean(dim=(2, 3)), torch.zeros(2, c), atol=1e-4, rtol=0)
        torch.testing.assert_close(fused.var(dim=(2, 3), correction=0), torch.ones(2, c), atol=1e-2, rtol=0)


@pytest.mark.parametrize("stage", ["global", "local"])
def test_grading_vector_changes_the_image(stage):
    g = DRGANGenerator(TINY, stage).eval()
    with torch.no_grad():  # a fresh AdaIN's style affine is small: enlarge it so z's effect is clear
        for block in g.global_gen.synth:
            block.adain.affine.weight.mul_(20)
    r = TINY.stage_resolution(stage)
    cond = torch.rand(1, 8, r, r).expand(2, -1, -1, -1)
    z = torch.randn(2, TINY.z_dim)
    with torch.no_grad():
        image, _ = g(cond, z, [n.expand(2, -1, -1, -1) for n in g.make_noise(1, seed=3)])
    assert (image[0] - image[1]).abs().mean() > 1e-3  # same masks and noise, two grading vectors


@pytest.mark.parametrize("lesion_masks", [True, False])
def test_lesion_channels_reach_the_image_unless_switched_off(lesion_masks):
    g = DRGANGenerator(dataclasses.replace(TINY, lesion_masks=lesion_masks), "global").eval()
    cond, z = torch.rand(2, 8, 32, 32), torch.randn(2, TINY.z_dim)
    other = torch.cat([cond[:, :2], torch.rand(2, 6, 32, 32)], dim=1)  # same vessels and disc, other lesions
    with torch.no_grad():
        image, logits = g(cond, z, 0)
        changed, changed_logits = g(other, z, 0)
    if lesion_masks:
        assert (image - changed).abs().mean() > 1e-3 and not torch.equal(logits, changed_logits)
    else:
        assert torch.equal(image, changed) and torch.equal(logits, changed_logits)


def test_grade_logits_depend_on_the_masks_alone_and_train_the_encoder():
    g = DRGANGenerator(TINY, "local").eval()
    cond = torch.rand(2, 8, 64, 64)
    _, logits = g(cond, torch.randn(2, TINY.z_dim), 0)
    with torch.no_grad():
        _, again = g(cond, torch.randn(2, TINY.z_dim), 1)  # another grading vector and noise
    torch.testing.assert_close(again, logits)
    logits.square().sum().backward()
    enc = g.global_gen
    for p in [enc.stem[0].weight, *(d[0].weight for d in enc.down), enc.grade_head.weight]:
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert enc.synth[0].fuse.weight.grad is None and enc.res[0].body[1].weight.grad is None


def test_global_stage_image_is_the_tanh_of_its_rgb_head():
    g = DRGANGenerator(TINY, "global").eval()
    with torch.no_grad():
        g.global_gen.to_rgb.weight.mul_(30)  # pre-activations well outside [-1, 1]
    pre = []
    hook = g.global_gen.to_rgb.register_forward_hook(lambda m, a, out: pre.append(out))
    with torch.no_grad():
        image, _ = g(torch.rand(2, 8, 32, 32), torch.randn(2, TINY.z_dim), 0)
    hook.remove()
    assert pre[0].abs().max() > 3
    torch.testing.assert_close(image, torch.tanh(pre[0]))


def _grade_head_outputs(g: DRGANGenerator, run):
    out = []
    hook = g.global_gen.grade_head.register_forward_hook(lambda m, a, o: out.append(o.detach()))
    with torch.no_grad():
        result = run()
    hook.remove()
    return out, result


def _check_grade_consistency(cfg, stage):
    g = DRGANGenerator(cfg, stage).eval()
    randomize_batchnorm(g)
    r = cfg.stage_resolution(stage)
    cond = (torch.rand(3, 8, r, r) > 0.6).float()
    fwd, (_, logits) = _grade_head_outputs(g, lambda: g(cond, torch.randn(3, cfg.z_dim), 0))
    pred, grades = _grade_head_outputs(g, lambda: g.predict_grade(cond))
    # The logits are the head's map globally averaged.
    torch.testing.assert_close(logits, fwd[0].mean(dim=(2, 3)))
    # predict_grade sees the same masks at the same size as the forward pass's grade head.
    torch.testing.assert_close(pred[0], fwd[0], atol=1e-5, rtol=1e-5)
    assert torch.equal(grades, logits.argmax(dim=1))


@pytest.mark.parametrize("stage", ["global", "local"])
def test_predicted_grade_is_the_forward_pass_grade_head(stage):
    """The grade head reads the last encoder block (before the residual blocks), and predict_grade
    computes exactly the forward pass's grade logits."""
    _check_grade_consistency(TINY, stage)


@pytest.mark.parametrize("stage", ["global", "local"])
def test_predicted_grade_without_lesion_masks_ignores_the_lesion_channels(stage):
    """Without lesion masks (ablation) the grade head is trained on vessel and disc alone: the grade
    synthesis predicts must not read the lesion channels it never saw."""
    _check_grade_consistency(dataclasses.replace(TINY, lesion_masks=False), stage)


@pytest.mark.parametrize("count", [2, 4])
def test_noise_with_the_wrong_number_of_volumes_is_refused(count):
    """Extra volumes were ignored, and too few failed deep inside with an unrelated shape error."""
    g = DRGANGenerator(TINY, "global").eval()
    noise = g.make_noise(1, seed=0)
    noise = noise[:count] + [torch.randn(1, 1, 1, 1)] * (count - len(noise))
    with torch.no_grad(), pytest.raises((AssertionError, DrganError), match="noise"):
        g(torch.rand(1, 8, 32, 32), torch.randn(1, TINY.z_dim), noise)


# ---------------------------------------------------------------- discriminator


def test_patch_discriminator_layers_are_conv4x4_stride2_leaky_relu_with_pooled_heads():
    d = PatchDiscriminator(5, (4, 6), 3)
    x = torch.randn(2, 5, 16, 16, requires_grad=True)
    out = d(x)
    h, feats = x, []
    for layer in d.layers:
        h = F.leaky_relu(_conv(h, layer[0], stride=2, padding=1), 0.2)
        feats.append(h)
    assert [f.shape for f in out.features] == [(2, 4, 8, 8), (2, 6, 4, 4)]
    for got, want in zip(out.features, feats):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.logit, _conv(h, d.real_fake, padding=1).mean(dim=(1, 2, 3)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.grade_logits, _conv(h, d.grade, padding=1).mean(dim=(2, 3)), atol=1e-5, rtol=1e-5)
    # Feature matching and the grade head train through the whole stack, back to the image.
    for term in (out.features[0].square().sum(), out.grade_logits.square().sum()):
        (grad,) = torch.autograd.grad(term, x, retain_graph=True)
        assert grad.abs().sum() > 0


def test_every_discriminator_reads_the_masks():
    d = build_discriminator(TINY)
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    cond = torch.rand(1, 8, 32, 32)
    with torch.no_grad():
        a = d(cond, image)
        b = d(torch.rand(1, 8, 32, 32), image)
    for x, y in zip(a, b):
        assert (x.logit - y.logit).abs().item() > 1e-6
        assert not torch.equal(x.features[0], y.features[0])


def test_fresh_discriminator_uses_he_initialisation_for_leaky_relu():
    torch.manual_seed(0)
    d = PatchDiscriminator(11, (64, 128), 5)
    for layer in d.layers:
        conv = layer[0]
        fan_in = conv.weight[0].numel()
        want = (2 / (1 + 0.2 ** 2)) ** 0.5 / fan_in ** 0.5
        assert abs(conv.weight.std().item() / want - 1) < 0.1
        assert torch.equal(conv.bias, torch.zeros_like(conv.bias))


def test_coarser_discriminators_see_average_pooled_inputs_without_darkened_borders():
    d = build_discriminator(TINY)
    seen = []
    hooks = [net.register_forward_pre_hook(lambda m, args: seen.append(args[0])) for net in d.nets]
    with torch.no_grad():
        d(torch.full((1, 8, 32, 32), 0.5), torch.full((1, 3, 32, 32), -0.25))
    for h in hooks:
        h.remove()
    assert [x.shape[-1] for x in seen] == [32, 16, 8]
    for x in seen:  # a constant image stays constant, up to its edges
        torch.testing.assert_close(x[:, :8], torch.full_like(x[:, :8], 0.5))
        torch.testing.assert_close(x[:, 8:], torch.full_like(x[:, 8:], -0.25))


# ---------------------------------------------------------------- grader


def test_grader_bottleneck_is_torchvision_v1_5():
    """Stride on the 3x3 conv, 1x1 projection shortcut, ReLU after the residual sum."""
    net = build_grader(TINY)
    block = net.layer2[0]
    randomize_batchnorm(block)
    block.eval()
    x = torch.randn(2, block.conv1.in_channels, 8, 8)
    y = F.relu(_bn(F.conv2d(x, block.conv1.weight), block.bn1))
    y = F.relu(_bn(F.conv2d(y, block.conv2.weight, stride=2, padding=1), block.bn2))
    y = _bn(F.conv2d(y, block.conv3.weight), block.bn3)
    shortcut = _bn(F.conv2d(x, block.downsample[0].weight, stride=2), block.downsample[1])
    with torch.no_grad():
        torch.testing.assert_close(block(x), F.relu(y + shortcut), atol=1e-5, rtol=1e-5)


def test_grader_feature_is_the_average_of_a_32x_downsampled_map():
    net = build_grader(TINY).eval()
    randomize_batchnorm(net)
    maps = []
    hook = net.layer4.register_forward_hook(lambda m, a, out: maps.append(out))
    with torch.no_grad():
        _, feat = net(torch.randn(2, 3, 96, 64))
    hook.remove()
    assert maps[0].shape == (2, TINY.z_dim, 3, 2)  # stem /4 (conv s2, max-pool), then /2 in layers 2-4
    torch.testing.assert_close(feat, maps[0].mean(dim=(2, 3)))
    assert feat.min() >= 0  # pooled ReLU outputs
