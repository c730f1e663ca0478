"""The inference generator every export format holds: mapping network + generator, flat tensors in and out.

Inputs (float32; axis 0 is the batch, dynamic in ONNX):
    cond          (B, 8, R, R)          condition masks in [0, 1], channels in drgan.config.COND_CHANNELS order
    z             (B, z_dim)            grading vector (2048 at paper-1280)
    noise0..noiseK (B, C_i/4, S_i, S_i) per-synthesis-block noise volumes, coarse to fine (K = 2 for all presets)
Outputs (float32):
    image         (B, 3, R, R)          in [-1, 1]
    grade_logits  (B, 5)                the encoder's grade prediction from the masks

R is the stage's resolution. The noise is an input, not drawn inside the graph, so a caller that feeds the
same (cond, z, noise) gets the same image from every backend.
"""
from __future__ import annotations

import copy
import os

import torch
from torch import nn

from drgan.config import PRECISIONS, ModelConfig
from drgan.errors import ParameterError
from drgan.nn import SCA, DRGANGenerator, set_kernel_impl
from drgan.runtime import precision_dtype

OUTPUT_NAMES = ("image", "grade_logits")


def input_names(generator: DRGANGenerator) -> list[str]:
    return ["cond", "z"] + [f"noise{i}" for i in range(len(generator.global_gen.synth))]


def input_shapes(generator: DRGANGenerator, batch: int) -> dict[str, tuple[int, ...]]:
    """Shape of every input at a given batch size, keyed by input name."""
    cfg, r = generator.cfg, generator.resolution
    shapes = [(batch, cfg.cond_channels, r, r), (batch, cfg.z_dim)] + generator.noise_shapes(batch)
    return dict(zip(input_names(generator), (tuple(s) for s in shapes)))


def output_shapes(generator: DRGANGenerator, batch: int) -> dict[str, tuple[int, ...]]:
    r = generator.resolution
    return {"image": (batch, generator.cfg.img_channels, r, r), "grade_logits": (batch, generator.cfg.num_grades)}


def example_inputs(
    generator: DRGANGenerator, batch: int, seed: int = 0, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, ...]:
    """Plausible inputs in input_names order: masks in [0, 1], a Gaussian z, Gaussian noise."""
    gen = torch.Generator().manual_seed(seed)
    shapes = list(input_shapes(generator, batch).values())
    cond = torch.rand(shapes[0], generator=gen)
    rest = [torch.randn(s, generator=gen) for s in shapes[1:]]
    return tuple(t.to(device) for t in [cond, *rest])


class InferenceGenerator(nn.Module):
    """DRGANGenerator with positional tensor inputs and fp32 I/O whatever the weights' precision."""

    def __init__(
        self,
        generator: DRGANGenerator,          # eval-mode generator (weights are cast to dtype in place)
        dtype: torch.dtype = torch.float32, # compute precision
    ) -> None:
        super().__init__()
        self.generator = generator.to(dtype).eval()
        self.dtype = dtype

    def forward(self, cond: torch.Tensor, z: torch.Tensor, *noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dt = self.dtype
        image, logits = self.generator(cond.to(dt), z.to(dt), [n.to(dt) for n in noise])
        return image.float(), logits.float()


def attention_widths(generator: DRGANGenerator) -> list[tuple[int, int, int]]:
    """(N, Dqk, Dv) of the spatial attention in each SCA block, coarse to fine; none without SCA."""
    tokens = generator.cfg.attention_tokens
    return [(n, sca.query.out_channels, sca.value.out_channels) for n, sca in zip(tokens, _scas(generator))]


def pad_attention_qk(generator: DRGANGenerator, to: int | str = "v") -> DRGANGenerator:
    """Zero-pad every SCA's query/key projection in place; q . k and so the output are unchanged.

    to="v" pads Q/K to V's width (TensorRT's fused attention takes one head size for Q, K and V);
    an int rounds Dqk up to that multiple (memory-efficient SDPA kernels want 8 in fp16/bf16).
    """
    for sca in _scas(generator):
        dqk, dv = sca.query.out_channels, sca.value.out_channels
        width = dv if to == "v" else -(-dqk // int(to)) * int(to)
        if width > dqk:
            sca.query = _padded_conv(sca.query, width)
            sca.key = _padded_conv(sca.key, width)
    return generator


def attention_flops(generator: DRGANGenerator) -> float:
    """Multiply-adds x 2 of the spatial attention for one image (QK^T plus attn @ V)."""
    return sum(2.0 * n * n * (dqk + dv) for n, dqk, dv in attention_widths(generator))


def prepare(
    generator: DRGANGenerator,
    impl: str = "sdpa",
    precision: str = "fp32",
    pad_qk: int | str | None = None,
) -> InferenceGenerator:
    """A copy of `generator` ready to trace: kernel impl set, Q/K padded (`pad_attention_qk(to=pad_qk)`)
    unless pad_qk is None, cast to precision."""
    if precision not in PRECISIONS:
        raise ParameterError(f"{{precision}} {precision!r} is not one of {', '.join(PRECISIONS)}")
    g = copy.deepcopy(generator).eval()
    set_kernel_impl(g, impl)
    if pad_qk is not None:
        pad_attention_qk(g, pad_qk)
    return InferenceGenerator(g, precision_dtype(precision))


def _scas(generator: DRGANGenerator) -> list[SCA]:
    return [block.sca for block in generator.global_gen.synth]


def _padded_conv(conv: nn.Conv2d, width: int) -> nn.Conv2d:
    padded = nn.Conv2d(conv.in_channels, width, 1).to(conv.weight.device, conv.weight.dtype)
    with torch.no_grad():
        padded.weight.zero_()
        padded.bias.zero_()
        padded.weight[: conv.out_channels].copy_(conv.weight)
        padded.bias[: conv.out_channels].copy_(conv.bias)
    return padded


def physical_memory() -> int:
    """Bytes of RAM on this machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_cpu_attention_memory(cfg: ModelConfig, batch: int, runtime: str, remedy: str) -> None:
    """Refuse a CPU runtime whose attention cannot run here, before its minutes of compilation or a
    failed allocation: compiled SDPA (AOTInductor) and ONNX Runtime's Attention hold each image's
    N x N fp32 scores at once on the CPU (paper-1280: N = 102,400, 42 GB per image, measured).
    `remedy` names the caller's parameters as {fields} (a ParameterError template)."""
    if not cfg.attention_tokens:
        return
    n = max(cfg.attention_tokens)
    need, have = batch * n * n * 4, physical_memory()
    if need > have:
        raise ParameterError(f"{runtime} on the CPU holds the attention's N x N scores: N = {n:,} at batch {batch} needs "
                         f"{need / 2**30:.1f} GiB, this machine has {have / 2**30:.1f} GiB; {remedy}")
