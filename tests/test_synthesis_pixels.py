"""The chunked pixel conversion of synthesis equals its readable reference."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from drgan.synthesis.pixels import CHUNK, to_pixels, to_uint8


@pytest.mark.parametrize("channels_last", [False, True])
def test_chunked_conversion_equals_the_reference(channels_last):
    # Over CHUNK floats, so the conversion crosses chunk borders; values outside [-1, 1] and on
    # the rounding midpoints included.
    side = int((CHUNK // 3) ** 0.5) + 8
    image = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(0)) * 1.2
    image[0, 0, 0, :5] = torch.tensor([-1.5, -1.0, 1.0, 1.5, 1 / 255])
    if channels_last:
        image = image.to(memory_format=torch.channels_last)
    out = torch.empty(2, side, side, 3, dtype=torch.uint8)
    assert to_pixels(image, out) is out
    expected = to_uint8(image)
    assert expected.dtype == np.uint8 and expected.shape == (2, side, side, 3)
    assert np.array_equal(out.numpy(), expected)
    assert expected[0, 0, :4, 0].tolist() == [0, 0, 255, 255]
