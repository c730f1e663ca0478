"""Generator forward latency on CPU: presets x precision x memory format x BatchNorm folded into
the convolutions or not (reference kernels)."""
import pytest
import torch

from drgan.config import preset
from drgan.nn import DRGANGenerator
from drgan.nn.layers import fold_batchnorm


@pytest.mark.parametrize("name, batch", [("tiny-64", 8), ("small-256", 1)])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("fold_bn", [False, True], ids=["bn", "bn_folded"])
def test_generator_forward(benchmark, name, batch, precision, channels_last, fold_bn):
    cfg = preset(name)
    g = DRGANGenerator(cfg, "local").eval()
    if fold_bn:
        g = fold_batchnorm(g)
    r = cfg.resolution
    cond, z = torch.rand(batch, cfg.cond_channels, r, r), torch.randn(batch, cfg.z_dim)
    noise = g.make_noise(batch, seed=0)
    if channels_last:
        g = g.to(memory_format=torch.channels_last)
        cond = cond.contiguous(memory_format=torch.channels_last)

    def forward():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            return g(cond, z, noise)

    benchmark.extra_info.update(preset=name, batch=batch, precision=precision, channels_last=channels_last, fold_bn=fold_bn)
    image, _ = benchmark.pedantic(forward, rounds=3, warmup_rounds=1)
    assert image.shape == (batch, 3, r, r)
