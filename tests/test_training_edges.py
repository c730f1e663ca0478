"""Loss terms on tiny hand-computed tensors, option bounds, and the GAN step's optimizers, loss
assembly and EMA update."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from drgan.config import MAX_BATCH
from drgan.errors import DrganError
from drgan.nn import DiscOutput
from drgan.training import gan, losses
from drgan.training.gan import GanTrainer
from drgan.training.options import GanOptions, GraderOptions
from training_fixtures import PhantomSet, options, write_space

pytestmark = pytest.mark.usefixtures("one_thread")


def _out(logit, features=(), grade_logits=None):
    logit = torch.tensor(logit, dtype=torch.float32)
    grades = torch.zeros(len(logit), 5) if grade_logits is None else grade_logits
    return DiscOutput(list(features), logit, grades)


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# ----------------------------------------------------------------------------- losses


def test_bce_adversarial_terms_average_over_the_batch_and_sum_over_scales():
    real = [_out([1.0, -2.0]), _out([0.5, 0.5])]
    fake = [_out([0.0, 3.0]), _out([-1.0, 1.0])]
    expected = sum((_softplus(-a) + _softplus(-b)) / 2 + (_softplus(c) + _softplus(d)) / 2
                   for (a, b), (c, d) in (((1.0, -2.0), (0.0, 3.0)), ((0.5, 0.5), (-1.0, 1.0))))
    assert losses.d_adversarial(real, fake, "bce").item() == pytest.approx(expected, rel=1e-5)
    g = (_softplus(-0.0) + _softplus(-3.0)) / 2 + (_softplus(1.0) + _softplus(-1.0)) / 2
    assert losses.g_adversarial(fake, "bce").item() == pytest.approx(g, rel=1e-5)


def test_lsgan_generator_term_is_half_the_squared_distance_to_one():
    fake = [_out([0.0, 3.0]), _out([1.0, -1.0])]
    expected = 0.5 * ((1 + 4) / 2) + 0.5 * ((0 + 4) / 2)
    assert losses.g_adversarial(fake, "lsgan").item() == pytest.approx(expected, rel=1e-6)
    assert losses.g_adversarial([_out([1.0, 1.0])], "lsgan").item() == 0


def test_feature_matching_averages_layers_sums_scales_and_honours_the_norm():
    a = lambda v, shape=(1, 2): torch.full(shape, float(v))
    real = [_out([0.0], [a(0), a(0, (1, 3))]), _out([0.0], [a(1), a(1), a(1)])]
    fake = [_out([0.0], [a(2), a(4, (1, 3))]), _out([0.0], [a(1), a(3), a(0)])]
    # scale 0: layers |2-0| = 2 and |4-0| = 4 -> 3; scale 1: 0, 2, 1 -> 1
    assert losses.feature_matching(real, fake, "l1").item() == pytest.approx(3 + 1)
    # squared: scale 0: 4, 16 -> 10; scale 1: 0, 4, 1 -> 5/3
    assert losses.feature_matching(real, fake, "l2").item() == pytest.approx(10 + 5 / 3)


def test_grade_focal_sums_over_scales():
    logits = torch.tensor([[2.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0, 0.0]])
    target = torch.tensor([0, 1])
    one = losses.focal_loss(logits, target, 2.0).item()
    outs = [_out([0.0, 0.0], grade_logits=logits), _out([0.0, 0.0], grade_logits=logits)]
    assert losses.grade_focal(outs, target, 2.0).item() == pytest.approx(2 * one, rel=1e-6)


class _Taps(nn.Module):
    """Two 'activations': the image itself and twice it."""

    def forward(self, x):
        return [x * 1, 2 * x]


def test_perceptual_weights_taps_and_differentiates_the_fake_only():
    fake = torch.zeros(1, 1, 2, 2, requires_grad=True)
    real = torch.ones(1, 1, 2, 2, requires_grad=True)
    # taps: |0 - 1| = 1 and |0 - 2| = 2
    assert losses.Perceptual(_Taps(), (3.0, 0.5))(fake, real).item() == pytest.approx(3 * 1 + 0.5 * 2)
    equal = losses.Perceptual(_Taps(), None)(fake, real)
    assert equal.item() == pytest.approx((1 + 2) / 2)  # no weights: the mean over taps
    equal.backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert real.grad is None  # the real image's activations are constant targets


# ----------------------------------------------------------------------------- options


@pytest.mark.parametrize("change", [
    dict(lr=0.0), dict(ema_decay=1.0), dict(lambda_cls=-0.1), dict(max_steps=0), dict(batch=MAX_BATCH + 1), dict(batch=0),
    dict(beta1=1.0), dict(beta1=-0.1), dict(beta2=1.0), dict(focal_gamma=-0.5),
])
def test_gan_option_bounds_are_refused(change):
    with pytest.raises(DrganError, match=f"^{next(iter(change))} "):
        GanOptions(**change)


def test_gan_option_bounds_are_inclusive_where_documented():
    assert GanOptions(batch=MAX_BATCH).batch == MAX_BATCH and GanOptions(batch=1).batch == 1
    assert GanOptions(ema_decay=0.0, max_steps=1).max_steps == 1


@pytest.mark.parametrize("change", [dict(lr=0.0), dict(beta1=1.0), dict(batch=1), dict(epochs=0)])
def test_grader_option_bounds_are_refused(change):
    with pytest.raises(DrganError, match=f"^{next(iter(change))} "):
        GraderOptions(**change)


# ----------------------------------------------------------------------------- the GAN step


def _trainer(tmp_path, **kw) -> GanTrainer:
    return GanTrainer(options(tmp_path, write_space(tmp_path / "space.safetensors"), **kw), PhantomSet(2))


def _batch():
    return next(iter(torch.utils.data.DataLoader(PhantomSet(2), batch_size=2)))


def test_optimizers_take_the_given_learning_rate_and_betas(tmp_path):
    trainer = _trainer(tmp_path, lr=3e-4, beta1=0.2, beta2=0.95)
    for opt in (trainer.opt_G, trainer.opt_D):
        group = opt.param_groups[0]
        assert group["lr"] == 3e-4 and group["betas"] == (0.2, 0.95)
    assert not trainer.scaler.is_enabled()


def test_only_fp16_enables_the_gradient_scaler(tmp_path):
    assert not _trainer(tmp_path, precision="bf16").scaler.is_enabled()


class _PixelPerceptual(nn.Module):
    """Stands in for the perceptual network: L1 in pixels; records its arguments."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, fake, real):
        self.calls.append((fake, real))
        return F.l1_loss(fake.float(), real.float())


def test_loss_totals_follow_the_given_weights(tmp_path):
    trainer = _trainer(tmp_path, lambda_fm=3.0, lambda_perceptual=2.0, lambda_cls=0.25, g_cls_weight=0.5, lambda_l1=4.0)
    trainer.perceptual = _PixelPerceptual()
    produced = []
    generate = trainer.G_train

    def recording(*args):
        out = generate(*args)
        produced.append(out[0])
        return out

    trainer.G_train = recording
    batch = _batch()
    t = trainer.train_step(batch, 0)
    real, _ = trainer._prepare(batch["image"], batch["cond"])
    fake = produced[0].detach().float()
    assert t["G_l1"] == pytest.approx(F.l1_loss(fake, real).item(), rel=1e-5)
    assert t["G_perceptual"] == pytest.approx(t["G_l1"], rel=1e-5)
    (p_fake, p_real), = trainer.perceptual.calls
    assert p_fake.requires_grad and torch.equal(p_real, real)  # (fake, real): fake first
    assert t["G_total"] == pytest.approx(t["G_adv"] + 3 * t["G_fm"] + 2 * t["G_perceptual"] + 0.5 * t["G_cls"]
                                         + 4 * t["G_l1"] + t["G_encoder"], rel=1e-5)
    assert t["D_total"] == pytest.approx(t["D_adv"] + 0.25 * (t["D_cls_real"] + t["D_cls_fake"]), rel=1e-5)


def test_the_step_passes_loss_kind_norm_and_gamma_to_every_term(tmp_path, monkeypatch):
    seen = []
    for name in ("d_adversarial", "g_adversarial", "feature_matching", "grade_focal"):
        original = getattr(losses, name)
        monkeypatch.setattr(gan.losses, name,
                            lambda *a, _n=name, _f=original: (seen.append((_n, a[-1])), _f(*a))[1])
    trainer = _trainer(tmp_path, gan_loss="lsgan", fm_norm="l2", focal_gamma=0.5)
    trainer.train_step(_batch(), 0)
    assert sorted(seen) == sorted([("d_adversarial", "lsgan"), ("g_adversarial", "lsgan"), ("feature_matching", "l2"),
                                   ("grade_focal", 0.5), ("grade_focal", 0.5), ("grade_focal", 0.5)])


@pytest.mark.parametrize("step", [0, 5, 100000])
def test_ema_moves_towards_g_by_the_ramped_decay_and_copies_buffers(tmp_path, step):
    trainer = _trainer(tmp_path, ema=True, ema_decay=0.9)
    with torch.no_grad():
        for p_ema, p in zip(trainer.G_ema.parameters(), trainer.G.parameters()):
            p_ema.fill_(1.0)
            p.fill_(3.0)
        for b in trainer.G.buffers():
            if b.is_floating_point():
                b.fill_(7.0)
    trainer._update_ema(step)
    beta = min(0.9, (1 + step) / (10 + step))  # 0.1, 0.4, 0.9
    expected = beta * 1.0 + (1 - beta) * 3.0
    for p_ema in trainer.G_ema.parameters():
        assert torch.allclose(p_ema, torch.full_like(p_ema, expected))
    floats = [b for b in trainer.G_ema.buffers() if b.is_floating_point()]
    assert floats and all(torch.equal(b, torch.full_like(b, 7.0)) for b in floats)


def test_a_step_starts_from_fresh_gradients(tmp_path):
    """Gradients left on the parameters (e.g. by an earlier step) take no part in the next update."""
    trainer = _trainer(tmp_path)
    for p in [*trainer.G.parameters(), *trainer.D.parameters()]:
        p.grad = torch.full_like(p, float("nan"))
    trainer.train_step(_batch(), 0)
    assert all(torch.isfinite(p).all() for m in (trainer.G, trainer.D) for p in m.parameters())


def test_a_train_step_updates_the_ema_with_its_own_step(tmp_path):
    trainer = _trainer(tmp_path, ema=True, ema_decay=0.5)
    before = [p.detach().clone() for p in trainer.G_ema.parameters()]
    trainer.train_step(_batch(), 1000)
    beta = 0.5  # min(0.5, 1001 / 1010)
    for p_ema, old, p in zip(trainer.G_ema.parameters(), before, trainer.G.parameters()):
        assert torch.allclose(p_ema, beta * old + (1 - beta) * p.detach(), atol=1e-6)


# ----------------------------------------------------------------------------- seeds


class _EpochKeys(PhantomSet):
    """PhantomSet that records the keys its epochs are set to (FundusDataset's augmentation key)."""

    def __init__(self, count: int) -> None:
        super().__init__(count)
        self.keys: list[int] = []

    def set_epoch(self, key: int) -> None:
        self.keys.append(key)


def test_gan_at_the_largest_seed_runs_past_its_first_epoch_with_augmentations_keyed_by_the_seed(tmp_path):
    """The sampler seeds torch with seed + epoch: at SEED_MAX that overflowed 64 bits in epoch 2."""
    from drgan.config import SEED_MAX
    from drgan.training.gan import train_gan

    data = _EpochKeys(4)
    train_gan(options(tmp_path, write_space(tmp_path / "space.safetensors"), seed=SEED_MAX, epochs=2), dataset=data)
    assert len(data.keys) == 2 and len(set(data.keys)) == 2
    assert all(0 <= k < 2**64 for k in data.keys)
    assert data.keys != [0, 1]  # seed 0's keys: another seed augments differently
