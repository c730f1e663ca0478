"""Lesion statistics measured on a dataset's own masks (`drgan data fit-lesions`)."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from drgan.data.format import open_dataset
from drgan.data.lesion_stats import (DEFAULT_STATS, DIST_BINS, DIST_MAX, LESION_TYPES, MAX_LESIONS, LesionStats,
                                     TypeStats)
from drgan.data.preprocess import detect_fov
from drgan.errors import DrganError

EIGHT = np.ones((3, 3), bool)   # 8-connectivity: one lesion is one connected component


def fit_lesion_stats(dataset_root: str | Path, skip_bad: bool = False, split: str | None = "train") -> LesionStats:
    """Per-grade lesion statistics measured on a dataset's own masks (one lesion = one component),
    of the rows of `split` (None: all; train by default, so that a set drawn with them holds nothing
    learnt from the images a grader is tested on); with skip_bad, bad samples are left out and
    their number is a warning on stderr."""
    ds = open_dataset(dataset_root, skip_bad=skip_bad, split=split)
    if ds.skipped:
        print(f"warning: {dataset_root}: {ds.skipped} bad sample(s) left out (`drgan data validate {dataset_root}` lists them)",
              file=sys.stderr)
    if not any(t in sample.masks for sample in ds.samples for t in LESION_TYPES):
        # A missing mask file reads as zeros: fitting on them would learn that no grade has lesions.
        raise DrganError(f"{dataset_root}: no sample has a lesion mask (masks/<id>/{{{','.join(LESION_TYPES)}}}.png); nothing to fit")
    counts = {g: {t: [] for t in LESION_TYPES} for g in range(5)}
    areas = {g: {t: [] for t in LESION_TYPES} for g in range(5)}
    dists = {g: {t: [] for t in LESION_TYPES} for g in range(5)}
    for sample in ds.samples:
        image = ds.read_image(sample)
        fov = detect_fov(image)
        R = math.sqrt(max(fov.sum(), 1) / math.pi)
        disc = ds.read_mask(sample, "disc", image.shape[:2])
        if disc.any():
            disc_center = np.array(np.nonzero(disc)).mean(1)
        else:
            rows, cols = np.nonzero(fov)
            disc_center = np.array([rows.mean(), cols.mean() + 0.4 * R])
        for t in LESION_TYPES:
            m = ds.read_mask(sample, t, image.shape[:2]) > 0
            labels, n = ndimage.label(m, structure=EIGHT)
            counts[sample.grade][t].append(n)
            if n:
                idx = np.arange(1, n + 1)
                area = ndimage.sum_labels(m, labels, idx)
                cen = np.array(ndimage.center_of_mass(m, labels, idx))
                areas[sample.grade][t].extend(np.log(area / (math.pi * R * R)).tolist())
                dists[sample.grade][t].extend((np.hypot(*(cen - disc_center).T) / R).tolist())
    grades = {}
    for g in range(5):
        types = {}
        for t in LESION_TYPES:
            default = DEFAULT_STATS.grades[g][t]
            c = np.minimum(np.asarray(counts[g][t], int), MAX_LESIONS)  # what LesionStats accepts
            hist = np.bincount(c) / len(c) if len(c) else np.asarray(default.count_hist)
            a = np.asarray(areas[g][t])
            d = np.asarray(dists[g][t])
            dh = np.histogram(d, bins=DIST_BINS, range=(0, DIST_MAX))[0].astype(float) if len(d) else None
            types[t] = TypeStats(
                count_hist=[float(v) for v in hist],
                log_area_mean=float(a.mean()) if len(a) else default.log_area_mean,
                log_area_std=float(a.std()) if len(a) > 1 else default.log_area_std,
                dist_hist=[float(v) for v in dh / dh.sum()] if dh is not None and dh.sum() > 0 else default.dist_hist,
            )
        grades[g] = types
    return LesionStats(grades)
