"""Edges of synthesis's device side, on the CPU: the torch backend (BatchNorm folding, precision,
graph replay), the null backend, backend names, host encoders, structure slots, stage timing."""
from __future__ import annotations

import struct
import time
import zlib

import numpy as np
import pytest
import torch

from drgan.config import preset
from drgan.nn import DRGANGenerator
from helpers import randomize_batchnorm


def _generator():
    torch.manual_seed(0)
    g = DRGANGenerator(preset("tiny-64"), "global").eval()
    randomize_batchnorm(g)
    return g


def _inputs(g, batch=2):
    cfg = preset("tiny-64")
    r = cfg.stage_resolution("global")
    torch.manual_seed(1)
    return torch.rand(batch, cfg.cond_channels, r, r), torch.randn(batch, cfg.z_dim), g.make_noise(batch, seed=0)


# --- fold_batchnorm -------------------------------------------------------------------------

def test_a_convolution_and_batchnorm_fold_to_the_hand_computed_affine_map():
    from drgan.nn.layers import fold_batchnorm

    conv = torch.nn.Conv2d(1, 1, 1, bias=True)
    bn = torch.nn.BatchNorm2d(1, eps=0.25)
    with torch.no_grad():
        conv.weight.fill_(2.0)
        conv.bias.fill_(1.0)
        bn.running_mean.fill_(3.0)
        bn.running_var.fill_(1.0)
        bn.weight.fill_(4.0)
        bn.bias.fill_(0.5)
    folded = fold_batchnorm(torch.nn.Sequential(conv, bn))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.tensor([[[[0.0, 1.0], [-2.0, 5.0]]]])
    # y = 4 * (2x + 1 - 3) / sqrt(1 + 0.25) + 0.5
    want = 4.0 * (2.0 * x + 1.0 - 3.0) / (1.25 ** 0.5) + 0.5
    with torch.no_grad():
        torch.testing.assert_close(folded(x), want, atol=1e-5, rtol=1e-5)


def test_folding_a_module_in_training_mode_gives_an_inference_copy_and_leaves_the_module_training():
    from drgan.nn.layers import fold_batchnorm

    seq = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.BatchNorm2d(3), torch.nn.ReLU())
    with torch.no_grad():
        seq[1].running_mean.uniform_(-0.5, 0.5)
        seq[1].running_var.uniform_(0.5, 2.0)
    seq.train()
    folded = fold_batchnorm(seq)
    assert not folded.training and seq.training and isinstance(seq[1], torch.nn.BatchNorm2d)
    x = torch.randn(2, 2, 5, 5)
    with torch.no_grad():
        want = seq.eval()(x)
        torch.testing.assert_close(folded(x), want, atol=1e-5, rtol=1e-5)


# --- TorchBackend ---------------------------------------------------------------------------

def test_the_torch_backend_leaves_the_callers_generator_unfolded_and_in_its_layout():
    from drgan.synthesis.backend import TorchBackend

    g = _generator()
    convs = [m for m in g.modules() if isinstance(m, torch.nn.Conv2d)]
    TorchBackend(g, torch.device("cpu"), "fp32")
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in g.modules())
    assert all(c.weight.is_contiguous() for c in convs)   # not converted to channels_last in place


def test_the_torch_backend_runs_in_the_precision_asked_for():
    from drgan.synthesis.backend import TorchBackend

    g = _generator()
    cond, z, noise = _inputs(g)
    fp32 = TorchBackend(g, torch.device("cpu"), "fp32")(cond, z, noise)
    bf16 = TorchBackend(g, torch.device("cpu"), "bf16")(cond, z, noise)
    with torch.inference_mode():
        want = g(cond, z, noise)[0]
    torch.testing.assert_close(fp32, want, atol=1e-5, rtol=0)
    assert not torch.equal(bf16, fp32)                     # bfloat16 autocast changes the image
    assert (bf16.float() - fp32).abs().max() < 0.25


def test_fp8_attention_is_accepted_on_the_cpu_and_set_on_the_backends_attention_only():
    from drgan.synthesis.backend import TorchBackend

    g = _generator()
    cond, z, noise = _inputs(g)
    backend = TorchBackend(g, torch.device("cpu"), "fp32", fp8_attention=True)   # emulated on the CPU
    flags = [m.pv_fp8 for m in backend.g.modules() if hasattr(m, "pv_fp8")]
    assert flags and all(flags)
    assert not any(m.pv_fp8 for m in g.modules() if hasattr(m, "pv_fp8"))
    assert backend(cond, z, noise).shape == (2, 3, *cond.shape[-2:])


class _FakeGraph:
    """Stands in for a captured CUDA graph: replay runs the forward pass on the static tensors."""

    def __init__(self, backend, static_in, static_out):
        self.backend, self.static_in, self.static_out = backend, static_in, static_out

    def replay(self):
        self.static_out.copy_(self.backend._forward(self.static_in[0], self.static_in[1], self.static_in[2:]))


def test_graph_replay_captures_once_per_shape_and_returns_an_image_of_its_own():
    from drgan.synthesis.backend import TorchBackend

    g = _generator()
    backend = TorchBackend(g, torch.device("cpu"), "fp32")
    eager = TorchBackend(g, torch.device("cpu"), "fp32")
    captured = []

    def capture(inputs):
        static_in = [t.clone() for t in inputs]
        static_out = backend._forward(static_in[0], static_in[1], static_in[2:]).clone()
        captured.append([tuple(t.shape) for t in inputs])
        return _FakeGraph(backend, static_in, static_out), static_in, static_out

    backend.use_graph, backend._capture = True, capture
    cond, z, noise = _inputs(g)
    first = backend(cond, z, noise)
    torch.testing.assert_close(first, eager(cond, z, noise))
    cond2, z2, noise2 = torch.rand_like(cond), torch.randn_like(z), g.make_noise(2, seed=5)
    second = backend(cond2, z2, noise2)
    assert len(captured) == 1                                   # same shapes: one graph replayed
    torch.testing.assert_close(first, eager(cond, z, noise))    # the first image is not overwritten
    torch.testing.assert_close(second, eager(cond2, z2, noise2))
    third = backend(*_inputs(g, batch=3))             # another batch: another graph
    assert len(captured) == 2 and third.shape[0] == 3


def test_the_null_backend_returns_the_same_image_whatever_the_condition():
    from drgan.synthesis.backend import NullBackend

    backend = NullBackend(64, torch.device("cpu"))
    zeros = backend(torch.zeros(2, 4, 64, 64), torch.zeros(2, 8), []).clone()
    ones = backend(torch.ones(2, 4, 64, 64) * 0.75, torch.zeros(2, 8), []).clone()
    assert zeros.shape == (2, 3, 64, 64) and torch.equal(zeros, ones)
    assert zeros.min() >= -1 and zeros.max() <= 1 and zeros.std() > 0


def test_the_torch_loader_reports_the_resolved_precision(monkeypatch):
    import drgan.checkpoint
    from drgan.synthesis.backend import load_torch

    monkeypatch.setattr(drgan.checkpoint, "load_generator", lambda run: _generator())
    loaded = load_torch("run", 64, torch.device("cpu"), "auto", 2)
    assert loaded.precision == "fp32"


def test_the_onnxruntime_backend_opens_its_fp32_file_in_fp32_under_auto_even_on_cuda(monkeypatch):
    import drgan.checkpoint
    import drgan.export.backends
    from drgan.synthesis.backend import load_onnxruntime

    opened = []
    monkeypatch.setattr(drgan.checkpoint, "load_generator", lambda run: _generator())
    monkeypatch.setattr(drgan.export.backends, "open_onnxruntime",
                        lambda *args: opened.append(args) or (lambda cond, z, noise: (cond, None)))
    loaded = load_onnxruntime("run", 64, torch.device("cuda"), "auto", 2)
    assert loaded.precision == "fp32" and opened[0][4] == "fp32"


# --- registry -------------------------------------------------------------------------------

def test_an_unknown_backend_name_is_one_parameter_error_listing_the_names():
    from drgan.errors import ParameterError
    from drgan.synthesis.registry import make_backend

    with pytest.raises(ParameterError, match=r"'tensorflow': choose one of torch, onnxruntime, tensorrt, aoti, null"):
        make_backend("tensorflow", None, 64, torch.device("cpu"), "fp32", 2)


def test_fp8_attention_reaches_the_torch_loader(monkeypatch):
    import drgan.synthesis.backend
    from drgan.synthesis.registry import make_backend

    calls = []
    monkeypatch.setattr(drgan.synthesis.backend, "load_torch", lambda *args, **kw: calls.append(kw) or "loaded")
    assert make_backend("torch", "run", 64, torch.device("cpu"), "fp32", 2, fp8_attention=True) == "loaded"
    assert make_backend("torch", "run", 64, torch.device("cpu"), "fp32", 2) == "loaded"
    assert calls == [{"fp8_attention": True}, {}]


# --- encoders -------------------------------------------------------------------------------

def _png_row_filters(data: bytes, height: int, row_bytes: int) -> list[int]:
    pos, idat = 8, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    raw = zlib.decompress(idat)
    assert len(raw) == height * (row_bytes + 1)
    return [raw[r * (row_bytes + 1)] for r in range(height)]


def test_png_level_one_filters_every_row_with_sub():
    from drgan.synthesis.encode import encode_image

    rng = np.random.default_rng(0)
    image = np.cumsum(rng.integers(0, 3, (32, 32, 3)), axis=0).astype(np.uint8)   # rows that UP predicts well
    assert _png_row_filters(encode_image(image, "png", 95, 1), 32, 32 * 3) == [1] * 32   # 1: SUB


def test_jpeg_quality_is_the_quality_asked_for():
    import imagecodecs

    from drgan.synthesis.encode import encode_image

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    low, high = encode_image(image, "jpeg", 10, 1), encode_image(image, "jpeg", 100, 1)
    assert len(low) < len(high) / 2
    assert np.abs(imagecodecs.jpeg8_decode(high).astype(int) - image).mean() < 8


# --- structure slots ------------------------------------------------------------------------

def _pool(count, size=4):
    from drgan.synthesis.structures import StructurePool

    return StructurePool([str(j) for j in range(count)],
                         lambda j: {"vessel": np.full((size, size), j % 256, np.uint8),
                                    "disc": np.zeros((size, size), np.uint8),
                                    "fov": np.full((size, size), 255, np.uint8)}, {"kind": "test"})


def _two_slots(pool, size=4):
    from drgan.synthesis.structures import DeviceStructures

    structures = DeviceStructures(pool, size, torch.device("cpu"), batch=2)
    structures.planes = structures.planes[:2]      # two slots: force evictions
    return structures


def test_a_structure_of_the_batch_already_on_the_device_is_not_evicted_for_another():
    structures = _two_slots(_pool(5))
    assert structures.slots([0, 1]) == [0, 1]
    assert structures.slots([2, 0]) == [1, 0]      # 0 is in the batch: 1 goes, 0 keeps its slot
    assert [int(structures.planes[s, 0, 0, 0]) for s in structures.slots([2, 0])] == [2, 0]


def test_a_structure_used_again_is_the_last_to_be_evicted():
    structures = _two_slots(_pool(5))
    assert structures.slots([0, 1]) == [0, 1]
    assert structures.slots([0]) == [0]            # 0 used again: 1 is now the least recently used
    assert structures.slots([2]) == [1]
    assert structures.slots([0]) == [0] and int(structures.planes[0, 0, 0, 0]) == 0


def test_a_batch_larger_than_the_device_slots_gets_a_slot_per_structure():
    from drgan.synthesis.structures import DEVICE_SLOTS, DeviceStructures

    count = DEVICE_SLOTS + 6
    structures = DeviceStructures(_pool(count), 4, torch.device("cpu"), batch=count)
    slots = structures.slots(list(range(count)))
    assert len(set(slots)) == count
    assert [int(structures.planes[s, 0, 0, 0]) for s in slots] == [j % 256 for j in range(count)]


def test_a_pool_that_fits_the_device_slots_stays_on_the_device():
    from drgan.synthesis.structures import DeviceStructures

    structures = DeviceStructures(_pool(5), 4, torch.device("cpu"), batch=2)
    seen = [s for batch in ([0, 1], [2, 3], [4, 0]) for s in structures.slots(batch)]
    assert sorted(set(seen)) == [0, 1, 2, 3, 4] and seen[-1] == seen[0]   # 0 kept its slot


# --- stage times ----------------------------------------------------------------------------

def test_a_host_stage_counts_cpu_time_not_time_asleep():
    from drgan.synthesis.stages import StageTimes

    times = StageTimes({"placement": 1, "main": 1, "device": 1, "nvjpeg": 1, "output": 1})
    with times.cpu("encoding"):
        time.sleep(0.3)
    assert 0 <= times.seconds["encoding"] < 0.15


def test_the_bound_names_the_costliest_stage_of_the_bounding_group():
    from drgan.synthesis.stages import StageTimes

    times = StageTimes({"placement": 1, "main": 1, "device": 1, "nvjpeg": 1, "output": 4})
    times.add("rasterization", 1.0)
    times.add("generation", 5.0)
    times.add("transfer", 0.5)
    assert times.bound() == "generation"
    times.add("writing", 30.0)
    times.add("encoding", 2.0)
    assert times.bound() == "writing"
