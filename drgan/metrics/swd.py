"""Sliced Wasserstein distance on Laplacian-pyramid patches (Karras et al. 2018, progressive GANs).

Follows the reference `metrics/sliced_wasserstein.py` of tkarras/progressive_growing_of_gans:
- a Laplacian pyramid per image (5x5 binomial filter, mirror borders, as cv2.pyrDown/pyrUp) from the
  full resolution down to 16 px;
- per level, 128 random 7x7 neighbourhoods per image -> 147-d descriptors;
- each level's descriptors normalised per colour channel (mean and std over all descriptors of the set);
- SWD = mean over 4 repeats of 128 random unit directions of the mean |sorted proj A - sorted proj B|;
- values multiplied by 1e3 (as the paper reports them), per level and averaged over levels.
As in the reference, each set draws its own patch positions, so two sets of the same images score
the sampling noise of the distance (20-23 for 64 images at 128 px), not 0. Both sets use the same number of
images, because the sliced distance pairs sorted projections one to one.

Everything random is drawn from `seed`, and a score depends on the images of each set, never on
their file names or order: each set is read in the order of its files' content hashes (sha256,
keyed with the seed); its first `count` images in that order are the subset when a set is larger
than the other or than `max_images`, and its patch positions are one stream drawn from (seed, role
of the set: real 0, fake 1). The directions are shared by both sets, as in the reference. Per grade
(`per_grade`), each grade of the real set is compared with the same grade of the fake set where
both hold 2 images (as a whole set must), and their mean is the paper's "AVG. SWD".
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from drgan.errors import DrganError, ParameterError
from drgan.io import sha256_file
from drgan.metrics.images import MIN_SET_IMAGES, ImageSet, check_set_size, grade_average_line, load_rgb, shared_grades

NHOOD_SIZE = 7           # neighbourhood side
NHOODS_PER_IMAGE = 128   # neighbourhoods drawn per image and level
DIR_REPEATS = 4          # independent sets of directions
DIRS_PER_REPEAT = 128    # directions per set
MIN_RESOLUTION = 16      # coarsest pyramid level

_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
_GAUSS = (_BINOMIAL[:, None] * _BINOMIAL[None, :] / 256.0)[None, None]


def _blur(x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    c = x.shape[1]
    kernel = (_GAUSS * gain).to(x).expand(c, 1, 5, 5)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), kernel, groups=c)


def laplacian_pyramid(images: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Band-pass levels of float (B, 3, H, W), finest first; the last level is the low-pass residual."""
    pyramid = [images]
    for _ in range(1, levels):
        down = _blur(pyramid[-1])[:, :, ::2, ::2]
        up = torch.zeros_like(pyramid[-1])
        up[:, :, ::2, ::2] = down
        pyramid[-1] = pyramid[-1] - _blur(up, gain=4.0)
        pyramid.append(down)
    return pyramid


def pyramid_levels(resolution: int) -> list[int]:
    """Resolutions of the pyramid levels: resolution, /2, ... down to MIN_RESOLUTION."""
    levels = []
    while resolution >= MIN_RESOLUTION:
        levels.append(resolution)
        resolution //= 2
    return levels


def patch_descriptors(level: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """(B * NHOODS_PER_IMAGE, 3, 7, 7) neighbourhoods at uniformly random centres of each image."""
    b, c, h, w = level.shape
    half = NHOOD_SIZE // 2
    n = b * NHOODS_PER_IMAGE
    ys = torch.from_numpy(rng.integers(half, h - half, size=n)).to(level.device)
    xs = torch.from_numpy(rng.integers(half, w - half, size=n)).to(level.device)
    offsets = torch.arange(-half, half + 1, device=level.device)
    img = torch.arange(b, device=level.device).repeat_interleave(NHOODS_PER_IMAGE)
    rows = (ys[:, None] + offsets)[:, None, :, None]  # (n, 1, 7, 1)
    cols = (xs[:, None] + offsets)[:, None, None, :]  # (n, 1, 1, 7)
    chans = torch.arange(c, device=level.device)[None, :, None, None]
    return level[img[:, None, None, None], chans, rows, cols]


def normalize_descriptors(desc: torch.Tensor) -> torch.Tensor:
    """Per-channel standardisation over all descriptors, flattened to (N, 147)."""
    desc = desc - desc.mean(dim=(0, 2, 3), keepdim=True)
    desc = desc / desc.std(dim=(0, 2, 3), keepdim=True, correction=0)
    return desc.reshape(desc.shape[0], -1)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, rng: np.random.Generator) -> float:
    """Mean over random unit directions of the 1-D Wasserstein-1 distance between projections."""
    if a.shape != b.shape:
        raise ValueError(f"descriptor sets differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    results = []
    for _ in range(DIR_REPEATS):
        dirs = torch.from_numpy(rng.standard_normal((a.shape[1], DIRS_PER_REPEAT))).to(a)
        dirs = dirs / dirs.norm(dim=0, keepdim=True)
        # (directions, descriptors): sorting along the contiguous last dim is several times faster.
        proj_a = torch.sort(dirs.T @ a.T, dim=1).values
        proj_b = torch.sort(dirs.T @ b.T, dim=1).values
        results.append((proj_a - proj_b).abs().mean().item())
    return float(np.mean(results))


def content_order(image_set: ImageSet, seed: int) -> ImageSet:
    """The set's images ordered by a seed-keyed hash of their file's sha256 (then path, which only
    orders identical files): the same images give the same order whatever their names."""
    key = seed.to_bytes(8, "little")
    try:
        keys = [hashlib.blake2b(bytes.fromhex(sha256_file(p)), key=key).digest() for p in image_set.paths]
    except OSError as exc:
        raise DrganError(f"{exc.filename}: cannot read image ({exc.strerror})") from None
    return image_set.subset(sorted(range(len(keys)), key=lambda i: (keys[i], image_set.paths[i])))


def _set_descriptors(
    image_set: ImageSet,
    resolution: int,
    rng: np.random.Generator,
    device: torch.device,
    batch: int,
    progress: bool,
) -> list[torch.Tensor]:
    levels = pyramid_levels(resolution)
    per_level: list[list[torch.Tensor]] = [[] for _ in levels]
    paths = image_set.paths
    with tqdm(total=len(paths), desc=f"SWD patches {image_set.root.name}", unit="img", disable=not progress, leave=False) as bar:
        for start in range(0, len(paths), batch):
            chunk = [load_rgb(p, resolution) for p in paths[start:start + batch]]
            images = torch.from_numpy(np.stack(chunk)).to(device).permute(0, 3, 1, 2).float()
            for i, level in enumerate(laplacian_pyramid(images, len(levels))):
                per_level[i].append(patch_descriptors(level, rng))
            bar.update(len(chunk))
    return [normalize_descriptors(torch.cat(d)) for d in per_level]


def _swd_levels(real: ImageSet, fake: ImageSet, resolution: int, max_images: int, seed: int, device: torch.device,
                batch: int, progress: bool) -> tuple[list[float], int]:
    """(SWD x 1e3 per pyramid level, images per set): the first `count` images of each set in content
    order, patch positions drawn per set."""
    count = min(len(real), len(fake), max_images)
    desc_real, desc_fake = (
        _set_descriptors(content_order(s, seed).subset(list(range(count))), resolution,
                         np.random.default_rng([seed, 1, role]), device, batch, progress)
        for role, s in enumerate((real, fake))
    )
    dirs_rng = np.random.default_rng([seed, 2])
    return [sliced_wasserstein(a, b, dirs_rng) * 1e3 for a, b in zip(desc_real, desc_fake)], count


@torch.inference_mode()
def compute_swd(
    real: ImageSet,
    fake: ImageSet,
    resolution: int | None = None,
    max_images: int = 8192,
    seed: int = 0,
    device: str | torch.device = "cpu",
    batch: int = 64,
    progress: bool = True,
    per_grade: bool = False,
) -> dict[str, Any]:
    """SWD x 1e3 per pyramid level and its average, on `count` images of each set at `resolution`;
    with per_grade (dataset folders), also the average SWD of each grade with MIN_SET_IMAGES images
    in both sets and the mean over those grades (the paper's AVG. SWD).

    `resolution` defaults to the width of the first fake image; every image is resized (area) to it.
    Descriptors take 147 * 128 * 4 bytes per image and level, hence the `max_images` cap (per grade
    too). Every file of both sets is read once to hash it (content order), also beyond the cap.
    """
    for image_set in (real, fake):
        check_set_size(image_set, "SWD")
    if max_images < MIN_SET_IMAGES:  # the subset of each set, whole or per grade
        raise ParameterError(f"{{max_images}} {max_images}: SWD needs at least {MIN_SET_IMAGES} images per set")
    grades = shared_grades(real, fake) if per_grade else {}
    if resolution is None:
        resolution = load_rgb(fake.paths[0]).shape[1]
    if resolution < MIN_RESOLUTION:
        raise DrganError(f"SWD resolution {resolution} is below the coarsest level {MIN_RESOLUTION}")
    device = torch.device(device)
    per_level, count = _swd_levels(real, fake, resolution, max_images, seed, device, batch, progress)
    result: dict[str, Any] = {
        "swd_x1e3": dict(zip(map(str, pyramid_levels(resolution)), per_level)),
        "swd_x1e3_average": float(np.mean(per_level)),
        "count": count,
        "resolution": resolution,
        "seed": seed,
        "real": str(real.root),
        "fake": str(fake.root),
    }
    if per_grade:
        per = {}
        for g, (real_grade, fake_grade) in grades.items():
            levels, n = _swd_levels(real_grade, fake_grade, resolution, max_images, seed, device, batch, progress)
            per[str(g)] = {"swd_x1e3_average": float(np.mean(levels)), "count": n}
        result["per_grade"] = per
        result["grades_used"] = list(grades)
        result["swd_x1e3_grade_average"] = float(np.mean([v["swd_x1e3_average"] for v in per.values()]))
    return result


def format_swd(result: dict[str, Any]) -> str:
    """Readable lines, each ending in its value."""
    lines = [f"SWD x1e3 at {res} px: {value:.4f}" for res, value in result["swd_x1e3"].items()]
    lines.append(
        f"SWD x1e3 {result['fake']} vs {result['real']} ({result['count']} images each, average over levels): "
        f"{result['swd_x1e3_average']:.4f}"
    )
    if "per_grade" in result:
        for g, value in result["per_grade"].items():
            lines.append(f"SWD x1e3 grade {g} ({value['count']} images each): {value['swd_x1e3_average']:.4f}")
        lines.append(grade_average_line("SWD x1e3", result["grades_used"], result["swd_x1e3_grade_average"]))
    return "\n".join(lines)
