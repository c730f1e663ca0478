"""Correctness of the synthesis paths that only CUDA takes, for bench/gpu/synthesis.py.

- CUDA-graph replay against eager for two different batches, both replayed before either output
  is read: an input not copied into the static buffers, or an output returned without a clone,
  gives the other batch's image.
- The images the runner writes with and without CUDA graphs (PNG, pixel for pixel), and the JPEG
  set of the same items (encoded on the GPU where torchvision is present) against them, decoded
  by libjpeg-turbo and by Pillow; beside it the PNG pixels encoded directly by the same encoder,
  outside the runner: a bad direct score blames the encoder (or the decoders' reading of its
  files), a good one with a bad runner score blames the runner's streams and buffers.

- Structure uploads through the pinned staging ring into a few device slots: every slot holds
  the planes of the structure it names after a run of uploads that reuses slots and buffers.

On the CPU (--dry-run) no graph is captured and the host encodes; the same comparisons then
check this code itself.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
from pathlib import Path
from typing import Callable
from unittest import mock

import io

import imagecodecs
import numpy as np
import PIL.Image
import torch

from drgan import config
from drgan.checkpoint import load_generator
from drgan.synthesis import backend as backend_module
from drgan.synthesis.backend import TorchBackend
from drgan.synthesis.encode import encode_image, gpu_jpeg_encoder
from drgan.synthesis.runner import SynthesisOptions, synthesize

# A replayed output must be this many times closer to its own eager output than the two batches'
# outputs are to each other: either bug above makes them equally far; bf16 graph and eager runs
# need not be bit-identical.
REPLAY_MARGIN = 4
MAX_LEVELS_GRAPH = 2      # 0..255: graph vs eager pixels after rounding
MIN_JPEG_PSNR_DB = 25.0   # quality 95 against the PNG of the same item; a wrong image is far below


def _inputs(g: torch.nn.Module, preset: str, batch: int, seed: int) -> tuple:
    cfg = config.preset(preset)
    gen = torch.Generator().manual_seed(seed)
    cond = (torch.rand(batch, len(config.COND_CHANNELS), cfg.resolution, cfg.resolution, generator=gen) > 0.9).float()
    z = torch.randn(batch, cfg.z_dim, generator=gen)
    return cond, z, [torch.randn(s, generator=gen) for s in g.noise_shapes(batch)]


def replay_matches_eager(run: Path, preset: str, device: str, batch: int) -> dict:
    g = load_generator(run)
    dev = torch.device(device)
    graphed, eager = TorchBackend(g, dev, "auto"), TorchBackend(g, dev, "auto", cuda_graph=False)
    batches = [_inputs(g, preset, batch, seed) for seed in (1, 2)]
    replayed = [graphed(*x) for x in batches]  # the second replay must not change the first output
    direct = [eager(*x) for x in batches]

    def mean_abs(a: torch.Tensor, b: torch.Tensor) -> float:
        return (a.float() - b.float()).abs().mean().item()

    apart = mean_abs(direct[0], direct[1])
    off = [mean_abs(r, d) for r, d in zip(replayed, direct)]
    return {"cuda_graph": graphed.use_graph, "batch": batch, "replay_vs_eager_mean_abs": off,
            "batches_apart_mean_abs": apart, "pass": apart > 0 and all(o * REPLAY_MARGIN <= apart for o in off)}  # False for NaN too


def _pixels(folder: Path, suffix: str, decode: Callable[[bytes], np.ndarray]) -> dict[str, np.ndarray]:
    return {p.stem: decode(p.read_bytes()).astype(np.int16) for p in sorted((folder / "images").glob(f"*.{suffix}"))}


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return float(10 * np.log10(255**2 / max(mse, 1e-10)))  # finite for identical images: plain JSON


def _pil_decode(data: bytes) -> np.ndarray:
    return np.asarray(PIL.Image.open(io.BytesIO(data)).convert("RGB"))


def _direct_jpeg_psnr(images: dict[str, np.ndarray], device: str, quality: int) -> dict:
    """The runner's JPEG encoder fed the PNG pixels directly, decoded both ways."""
    gpu = gpu_jpeg_encoder(quality) if device == "cuda" else None
    pixels = [v.astype(np.uint8) for v in images.values()]
    if gpu is not None:
        batch = torch.from_numpy(np.stack(pixels)).to(device).permute(0, 3, 1, 2).contiguous()
        files = [bytes(e.cpu().numpy()) for e in gpu(batch)]
    else:
        files = [encode_image(x, "jpeg", quality, 1) for x in pixels]
    return {f"direct_psnr_db_{name}": min(_psnr(decode(f).astype(np.int16), x) for f, x in zip(files, pixels))
            for name, decode in (("libjpeg", imagecodecs.jpeg8_decode), ("pillow", _pil_decode))}


def written_images_match(options: Callable[..., SynthesisOptions], count: int) -> dict:
    """options(out, count, format) -> SynthesisOptions of the torch backend."""
    graph = dataclasses.replace(options("graph-png", count, "png"), save_masks=True)
    synthesize(graph)
    no_graph = options("eager-png", count, "png")
    with mock.patch.object(backend_module, "TorchBackend", functools.partial(TorchBackend, cuda_graph=False)):
        synthesize(no_graph)
    jpeg = options("graph-jpeg", count, "jpeg")
    synthesize(jpeg)
    a, b = _pixels(Path(graph.out), "png", imagecodecs.png_decode), _pixels(Path(no_graph.out), "png", imagecodecs.png_decode)
    j = _pixels(Path(jpeg.out), "jpg", imagecodecs.jpeg8_decode)
    j_pil = _pixels(Path(jpeg.out), "jpg", _pil_decode)
    same_items = len(a) == count and a.keys() == b.keys() == j.keys()
    levels = max((int(np.abs(a[k] - b[k]).max()) for k in a), default=-1) if same_items else None
    psnr = [round(_psnr(j[k], a[k]), 2) for k in a] if same_items else []
    psnr_pil = [round(_psnr(j_pil[k], a[k]), 2) for k in a] if same_items else []
    wrong_masks = _masks_wrong(Path(graph.out))
    return {"images": len(a), "same_items": same_items, "graph_vs_eager_max_levels": levels,
            "jpeg_vs_png_min_psnr_db": min(psnr, default=0.0), "jpeg_vs_png_psnr_db": psnr,
            "jpeg_vs_png_psnr_db_pillow": psnr_pil, **_direct_jpeg_psnr(a, jpeg.device, jpeg.quality),
            "saved_masks_wrong": wrong_masks,
            "pass": bool(same_items and 0 <= levels <= MAX_LEVELS_GRAPH and min(psnr) >= MIN_JPEG_PSNR_DB
                         and wrong_masks == 0)}


def _masks_wrong(folder: Path) -> int:
    """Items of a set written with --save-masks (the masks' pinned copies) whose vessel mask is not
    their own structure's, or whose microaneurysm mask disagrees with the manifest's count."""
    from drgan.synthesis.structures import StructurePool

    with open(folder / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    wrong = 0
    for row in rows:
        vessel = imagecodecs.png_decode((folder / "masks" / row["id"] / "vessel.png").read_bytes())
        pool = StructurePool.phantom(vessel.shape[0], int(row["structure_id"].split("_")[1]))
        ma = imagecodecs.png_decode((folder / "masks" / row["id"] / "ma.png").read_bytes())
        wrong += (not np.array_equal(vessel, pool.get(pool.ids.index(row["structure_id"]))["vessel"])
                  or bool(ma.any()) != (int(row["ma"]) > 0))
    return wrong


def uploads_match(preset: str, device: str, batch: int) -> dict:
    """Upload 6 batches of structures (a phantom pool of 64) into `batch` slots, queued on a side
    stream without waiting, then compare each batch's slots with the pool's planes."""
    from drgan.synthesis.structures import DeviceStructures, StructurePool

    size = config.preset(preset).resolution
    pool = StructurePool.phantom(size, 0)
    structures = DeviceStructures(pool, size, torch.device(device), batch)
    structures.planes = structures.planes[:batch]      # as few slots as a batch: every batch uploads
    stream = torch.cuda.Stream(device) if device == "cuda" else None
    held, wrong = [], 0
    with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
        for k in range(6):
            wanted = [(k * batch + b) % len(pool) for b in range(batch)]
            slots = structures.slots(wanted)
            held.append((wanted, structures.planes[slots].clone()))   # queued behind the uploads
    if stream is not None:
        stream.synchronize()
    for wanted, planes in held:
        for j, got in zip(wanted, planes.cpu().numpy()):
            vessel, disc, fov = (pool.get(j)[k] for k in ("vessel", "disc", "fov"))
            want = np.stack([vessel, disc > 0, (fov > 0) & (disc == 0)]).astype(np.uint8)
            wrong += not np.array_equal(got, want)
    return {"uploads": 6 * batch, "slots": batch, "wrong": wrong, "pass": wrong == 0}
