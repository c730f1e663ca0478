"""The generator follows its conditions: a fresh network passes the vessel channel through to the
pixels it covers; the demo's recipe teaches it to draw vessels and lesions where the masks are
(slow: minutes of training, run with -m slow)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from drgan.config import COND_CHANNELS, preset
from drgan.data.phantom import render_phantom
from drgan.nn import DRGANGenerator

VESSEL = COND_CHANNELS.index("vessel")


def _conditions(size: int, count: int) -> torch.Tensor:
    masks = [np.stack([render_phantom(size, g % 5, g).masks[k] for k in COND_CHANNELS]) for g in range(count)]
    return torch.from_numpy(np.stack(masks)).float() / 255


@pytest.mark.parametrize("stage", ["global", "local"])
def test_output_changes_where_the_vessel_channel_changes(stage):
    """Removing the vessel mask moves the image more on the vessel's pixels than elsewhere: the
    channel reaches the output through the encoder, the synthesis blocks' mask inputs and Gl."""
    cfg = preset("tiny-64")
    g = DRGANGenerator(cfg, stage).eval()
    cond = _conditions(cfg.resolution, 4)
    if stage == "global":
        cond = F.avg_pool2d(cond, 2)
    z = torch.randn(4, cfg.z_dim)
    with torch.no_grad():
        with_vessels, _ = g(cond, z, 0)
        cut = cond.clone()
        cut[:, VESSEL] = 0
        without, _ = g(cut, z, 0)
    change = (with_vessels - without).abs().mean(dim=1)
    on = cond[:, VESSEL] > 0.5
    assert change[on].mean() > 1.5 * change[~on].mean() > 0


@pytest.mark.slow
def test_demo_recipe_draws_vessels_and_lesions_where_the_masks_are(tmp_path):
    """The demo's recipe at tiny-128's global stage (64 px): after 300 steps the held-out masks'
    vessels and lesions show in G's images at >= 60% of the real phantoms' fidelity above chance,
    and the grader trained beside it beats chance on real phantoms."""
    from drgan.data.dataset import FundusDataset
    from drgan.data.phantom import write_phantom_dataset
    from drgan.demo import DEMO_RECIPE
    from drgan.metrics.fidelity import fidelity_above_chance, tensor_fidelity
    from drgan.training.gan import GanTrainer
    from drgan.training.grader_pretraining import GraderOptions, train_grader
    from drgan.training.options import GanOptions

    torch.set_num_threads(2)
    data = write_phantom_dataset(tmp_path / "phantoms", count=200, size=128, seed=3)
    grader = train_grader(FundusDataset(data, 128, split="train", augment=True), FundusDataset(data, 128, split="val"),
                          tmp_path / "grader", GraderOptions(preset="tiny-128", epochs=12, batch=16))
    kappa = [e["val"]["kappa"] for e in grader["epochs"]]
    assert max(kappa[-3:]) >= 0.5, kappa  # chance: 0

    opts = GanOptions(out=str(tmp_path / "gan"), grading_space=str(tmp_path / "grader" / "grading_space.safetensors"),
                      preset="tiny-128", batch=8, max_steps=300, epochs=1000, log_every=50, sample_every=300,
                      checkpoint_every=300, **DEMO_RECIPE)
    trainer = GanTrainer(opts, FundusDataset(data, 128, split="train"))
    trainer.fit()
    held_out = FundusDataset(data, 128, split="test")
    items = [held_out[i] for i in range(len(held_out))]
    real, cond = trainer._prepare(torch.stack([it["image"] for it in items]), torch.stack([it["cond"] for it in items]))
    grades = torch.stack([it["grade"] for it in items])
    with torch.no_grad():
        fake, _ = trainer.G.eval()(cond, trainer.space.sample(grades, torch.Generator().manual_seed(1)), noise=1)
    reference = tensor_fidelity(real, cond, grades)["overall"]
    fractions = fidelity_above_chance(tensor_fidelity(fake, cond, grades)["overall"], reference)
    assert set(fractions) == {"vessel", "red_lesion", "bright_lesion"}
    assert min(fractions.values()) >= 0.6, fractions
