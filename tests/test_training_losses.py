"""Loss terms, the VGG19 feature network and option round trips."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from drgan.checkpoint import save_tensors
from drgan.errors import DrganError
from drgan.nn import DiscOutput
from drgan.training import losses
from drgan.training.options import GanOptions, GraderOptions
from drgan.training.vgg import VGG19Features, load_vgg19


def test_focal_loss_reduces_to_cross_entropy_and_down_weights_easy_samples():
    logits, target = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])
    assert losses.focal_loss(logits, target, gamma=0.0) == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-5)
    easy = torch.full((1, 5), -5.0)
    easy[0, 2] = 5.0
    assert losses.focal_loss(easy, torch.tensor([2]), 2.0) < 1e-3 * F.cross_entropy(easy, torch.tensor([2]))


def test_adversarial_and_feature_matching_terms():
    out = lambda logit, feats: DiscOutput(feats, torch.tensor(logit), torch.zeros(len(logit), 5))
    feats = [torch.ones(2, 3, 4, 4)]
    real, fake = [out([10.0, 10.0], feats)], [out([-10.0, -10.0], [torch.zeros(2, 3, 4, 4)])]
    assert losses.d_adversarial(real, fake, "bce") < 1e-3           # a perfect discriminator
    assert losses.g_adversarial(fake, "bce") > 9                    # ... fools no one
    assert losses.d_adversarial(real, fake, "lsgan") == pytest.approx(0.5 * (81 + 100))
    assert losses.feature_matching(real, fake) == pytest.approx(1.0)
    assert losses.feature_matching(real, real) == 0


def test_vgg19_needs_a_local_weights_file_with_torchvision_names(tmp_path):
    with pytest.raises(DrganError, match="needs vgg19_weights FILE"):
        load_vgg19(None)
    with pytest.raises(DrganError, match="not found"):
        load_vgg19(tmp_path / "missing.safetensors")
    net = VGG19Features()
    assert "features.28.weight" in net.state_dict() and "features.0.weight" in net.state_dict()
    save_tensors({**net.state_dict(), "classifier.0.weight": torch.zeros(2, 2)}, tmp_path / "vgg19.safetensors")
    loaded = load_vgg19(tmp_path / "vgg19.safetensors")
    assert torch.equal(loaded.features[28].weight, net.features[28].weight)
    perceptual = losses.Perceptual(loaded, (1, 1, 1, 1, 1))
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert perceptual(x, x) == 0 and perceptual(x, -x) > 0
    save_tensors({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.safetensors")
    with pytest.raises(DrganError, match="not torchvision vgg19"):
        load_vgg19(tmp_path / "bad.safetensors")
    # torchvision's own .pth, read with weights_only: a state dict loads, a pickled module does not.
    torch.save(net.state_dict(), tmp_path / "vgg19-dcbb9e9d.pth")
    assert torch.equal(load_vgg19(tmp_path / "vgg19-dcbb9e9d.pth").features[0].weight, net.features[0].weight)
    torch.save(VGG19Features(), tmp_path / "module.pth")
    with pytest.raises(DrganError, match="^vgg19_weights .*module.pth: not a torch state dict"):
        load_vgg19(tmp_path / "module.pth")


def test_options_json_round_trip_and_checks(tmp_path):
    opts = GanOptions(out="r", preset="tiny-64", precision="bf16", max_steps=7)
    assert GanOptions.from_dict(json.loads(json.dumps(opts.to_dict()))) == opts
    assert GraderOptions.from_dict(GraderOptions(balanced=True).to_dict()) == GraderOptions(balanced=True)
    with pytest.raises(DrganError, match="unknown option"):
        GanOptions.from_dict({"learning_rate": 1})
    with pytest.raises(DrganError, match="^stage 'middle'"):
        GanOptions(stage="middle")
