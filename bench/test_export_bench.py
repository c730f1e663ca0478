"""Latency per image of the exported generator at small-256 on CPU: PyTorch eager vs AOTInductor vs
ONNX Runtime, side by side in one run (the AOTInductor compile takes minutes on two cores).

    python -m pytest bench/test_export_bench.py --benchmark-json=bench/results/export.json
"""
from __future__ import annotations

import pytest
import torch

from drgan.config import preset
from drgan.export.aoti import AotiGenerator, compile_aoti
from drgan.export.onnx_export import export_onnx
from drgan.export.ort_runner import TOLERANCE, OrtGenerator
from drgan.export.sidecar import BatchProfile
from drgan.export.wrapper import example_inputs, prepare
from drgan.nn import DRGANGenerator

BATCH = 1


@pytest.fixture(scope="module")
def backends(tmp_path_factory):
    torch.manual_seed(0)
    g = DRGANGenerator(preset("small-256"), "local").eval()
    for block in g.global_gen.synth:  # attention branches on, as in a trained model
        block.sca.gamma_s.data.fill_(0.5)
        block.sca.gamma_c.data.fill_(0.5)
    folder = tmp_path_factory.mktemp("export")
    eager = prepare(g, impl="auto")  # what the torch backend runs: the reference kernels on CPU

    def run_eager(cond, z, noise):
        with torch.inference_mode():
            return eager(cond, z, *noise)

    return g, {
        "torch-eager": run_eager,
        "aoti": AotiGenerator(compile_aoti(g, folder / "g.pt2", BatchProfile(BATCH, BATCH, BATCH), device="cpu")),
        "onnxruntime": OrtGenerator(export_onnx(g, folder / "g.onnx"), threads=torch.get_num_threads()),
    }


@pytest.mark.parametrize("backend", ["torch-eager", "aoti", "onnxruntime"])
def test_generator_latency_small256(benchmark, backends, backend):
    g, runners = backends
    cond, z, *noise = example_inputs(g, BATCH)
    run = runners[backend]
    image, _ = run(cond, z, noise)  # warm-up
    with torch.no_grad():
        reference, _ = g(cond, z, noise)
    diff = (image.cpu() - reference).abs().max().item()
    benchmark.extra_info.update(preset="small-256", batch=BATCH, device="cpu", threads=torch.get_num_threads(),
                                max_abs_diff_vs_eager=diff)
    benchmark.pedantic(lambda: run(cond, z, noise), rounds=5, iterations=1)
    assert diff <= TOLERANCE, f"{backend} differs from the eager generator by {diff:.2e}"
