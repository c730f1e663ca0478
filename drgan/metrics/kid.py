"""Kernel Inception Distance (Binkowski et al. 2018, "Demystifying MMD GANs").

KID is the squared maximum mean discrepancy between the Inception features (the 2048-d pool3
features FID uses, drgan.metrics.fid) of two sets under the cubic polynomial kernel
k(x, y) = (x . y / d + 1)^3, estimated without bias. FID's estimate is biased upwards by an amount
that grows as the sets shrink, so FIDs compare only over equal counts; KID's expectation does not
depend on the count, which suits fundus datasets, whose grades often hold a few hundred images.
Following the paper, it averages the estimate over `subsets` random subsets of `subset_size`
images per set (fewer where a set is smaller) and reports the spread across them.

Its scale is small: values are given x1e3, as SWD's are. The estimate treats the two sets as
independent samples: a set against itself scores slightly below 0 (each image's kernel with itself
counts across the sets but not within them), as do two samples of one distribution about half the
time. Features are computed anew for both sets: KID needs every feature vector, where FID caches
two moments.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from drgan.errors import DrganError
from drgan.metrics.fid import sets_features
from drgan.metrics.images import MIN_SET_IMAGES, ImageSet, check_set_size, grade_average_line, shared_grades

SUBSETS = 100        # the paper's and common practice's defaults
SUBSET_SIZE = 1000
SCALE = 1e3          # values are reported x1e3


def polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of (m, d) and (n, d) feature rows under k(a, b) = (a . b / d + 1)^3: the
    kernel's mean over pairs of distinct rows within x and within y, less twice its mean over
    pairs across them."""
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise DrganError(f"KID: features {x.shape} and {y.shape} must be (rows, d) of one d")
    if min(len(x), len(y)) < MIN_SET_IMAGES:
        raise DrganError(f"KID: {len(x)} and {len(y)} rows; the unbiased estimate needs {MIN_SET_IMAGES} per set")
    x, y = x.astype(np.float64), y.astype(np.float64)
    d = x.shape[1]

    def within(z: np.ndarray) -> float:
        k = (z @ z.T / d + 1.0) ** 3
        return (k.sum() - np.trace(k)) / (len(z) * (len(z) - 1))

    across = ((x @ y.T / d + 1.0) ** 3).mean()
    return float(within(x) + within(y) - 2.0 * across)


def kernel_inception_distance(real: np.ndarray, fake: np.ndarray, subsets: int = SUBSETS,
                              subset_size: int = SUBSET_SIZE, seed: int = 0) -> dict[str, Any]:
    """KID of two (rows, d) feature arrays: the mean and the standard deviation of polynomial_mmd2
    over `subsets` pairs of random subsets (without replacement) of min(subset_size, rows of
    either) rows each; values x1e3. Where both arrays are that small, every subset would hold
    every row: one estimate over all rows, without a spread (std None, subsets 1)."""
    if subsets < 1 or subset_size < MIN_SET_IMAGES:
        raise DrganError(f"KID: {subsets} subsets of {subset_size}: give at least 1 subset of {MIN_SET_IMAGES}")
    size = min(subset_size, len(real), len(fake))
    if size == len(real) == len(fake):
        return {"kid_x1e3": SCALE * polynomial_mmd2(real, fake), "kid_x1e3_std": None, "subsets": 1, "subset_size": size}
    rng = np.random.default_rng(seed)
    values = np.array([polynomial_mmd2(real[rng.choice(len(real), size, replace=False)],
                                       fake[rng.choice(len(fake), size, replace=False)]) for _ in range(subsets)])
    return {"kid_x1e3": SCALE * float(values.mean()), "kid_x1e3_std": SCALE * float(values.std()),
            "subsets": subsets, "subset_size": size}


def compute_kid(
    real: ImageSet,
    fake: ImageSet,
    per_grade: bool = False,
    device: str | torch.device = "cpu",
    batch: int = 32,
    subsets: int = SUBSETS,
    subset_size: int = SUBSET_SIZE,
    seed: int = 0,
    weights: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """KID of `fake` against `real`; with per_grade, also per grade (those with MIN_SET_IMAGES
    images in both sets, from the same features) and their mean."""
    for image_set in (real, fake):  # before minutes of feature extraction
        check_set_size(image_set, "KID")
    grades = list(shared_grades(real, fake)) if per_grade else []
    features = sets_features({"real": real, "fake": fake}, device, batch, weights, progress)
    result: dict[str, Any] = {
        **kernel_inception_distance(features["real"], features["fake"], subsets, subset_size, seed),
        "real": {"folder": str(real.root), "count": len(real)},
        "fake": {"folder": str(fake.root), "count": len(fake)},
    }
    if per_grade:
        rows = {name: np.asarray(s.grades) for name, s in (("real", real), ("fake", fake))}
        result["per_grade"] = {str(g): kernel_inception_distance(features["real"][rows["real"] == g],
                                                                 features["fake"][rows["fake"] == g],
                                                                 subsets, subset_size, seed) for g in grades}
        result["grades_used"] = grades
        result["kid_x1e3_grade_average"] = float(np.mean([v["kid_x1e3"] for v in result["per_grade"].values()]))
    return result


def format_kid(result: dict[str, Any]) -> str:
    """Readable lines, each ending in its value."""
    def spread(r: dict[str, Any]) -> str:
        if r["kid_x1e3_std"] is None:
            return f"(one estimate over all {r['subset_size']} images of each)"
        return f"(std {r['kid_x1e3_std']:.4f} over {r['subsets']} subsets of {r['subset_size']})"

    lines = [f"KID x1e3 {result['fake']['folder']} vs {result['real']['folder']} {spread(result)}: {result['kid_x1e3']:.4f}"]
    for g, value in result.get("per_grade", {}).items():
        lines.append(f"KID x1e3 grade {g} {spread(value)}: {value['kid_x1e3']:.4f}")
    if "per_grade" in result:
        lines.append(grade_average_line("KID x1e3", result["grades_used"], result["kid_x1e3_grade_average"]))
    return "\n".join(lines)
