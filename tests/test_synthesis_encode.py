"""The GPU JPEG encoder's ordering against the caller's stream, without a GPU.

nvJPEG (torchvision) encodes on a stream of its own that does not wait for the caller's: on an
H200 the runner's first batch came out black until the encoder waited for the stream that wrote
the pixels. A stand-in torchvision and stream record the order of the calls.
"""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from drgan.synthesis.encode import encode_image, gpu_jpeg_encoder


@pytest.fixture
def calls(monkeypatch) -> list[str]:
    order: list[str] = []
    io = types.ModuleType("torchvision.io")
    io.encode_jpeg = lambda images, quality: order.append(f"encode {len(images)} q{quality}") or [
        torch.zeros(4, dtype=torch.uint8) for _ in images]
    vision = types.ModuleType("torchvision")
    vision.io = io
    monkeypatch.setitem(sys.modules, "torchvision", vision)
    monkeypatch.setitem(sys.modules, "torchvision.io", io)

    class Stream:
        def synchronize(self) -> None:
            order.append("wait for the caller's stream")

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
    return order


def test_gpu_jpeg_waits_for_the_callers_stream_before_encoding(calls):
    encode = gpu_jpeg_encoder(90)
    assert encode is not None
    out = encode(torch.zeros(3, 3, 8, 8, dtype=torch.uint8))
    assert len(out) == 3
    assert calls == ["wait for the caller's stream", "encode 3 q90"]


def test_no_torchvision_means_no_gpu_encoder(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import fails, as beside this torch build
    assert gpu_jpeg_encoder(90) is None


def test_host_encoders_round_trip():
    import imagecodecs

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    assert np.array_equal(imagecodecs.png_decode(encode_image(image, "png", 95, 1)), image)
    decoded = imagecodecs.jpeg8_decode(encode_image(image, "jpeg", 100, 1)).astype(int)
    assert np.abs(decoded - image).mean() < 8
