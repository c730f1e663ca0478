"""The on-disk dataset format and its index.

    DATASET/images/<id>.png|jpg        RGB fundus photograph
    DATASET/masks/<id>/<name>.png      one 8-bit mask per COND_CHANNELS name; a missing file = zeros
    DATASET/labels.csv                 id,grade[,split]
    SET/manifest.csv                   a synthesized set only: each item's plan and image sha256

A reader either stops at the first problem (DrganError) or, with skip_bad, leaves the sample out
and counts it. Files are decoded by drgan.data.decode, labels.csv is read by drgan.data.labels;
the validation report and the writer are drgan.data.validation and drgan.data.dataset_writer.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from drgan.config import COND_CHANNELS
from drgan.data.decode import MIN_SIDE, open_image, read_mask, read_rgb
from drgan.data.labels import LABELS_FILE, SPLITS, hash_split, read_labels
from drgan.errors import DrganError

IMAGE_EXTS = (".png", ".jpg", ".jpeg")
UNFINISHED = ".drgan-unfinished"  # in a dataset or synthesized set still being written; removed when it is whole
MANIFEST_FILE = "manifest.csv"      # a synthesized set's item records (drgan.synthesis.writer), beside labels.csv

_announced: set[Path] = set()           # datasets whose hash split was already reported


@dataclass
class Sample:
    id: str
    image: Path
    grade: int
    split: str | None
    masks: dict[str, Path]             # only the mask files present


@dataclass
class DatasetIndex:
    root: Path
    samples: list[Sample]
    problems: list[str] = field(default_factory=list)   # one line each: file and reason
    notes: list[str] = field(default_factory=list)      # safe conversions applied
    skipped: int = 0                                     # samples left out for problems

    def read_image(self, sample: Sample) -> np.ndarray:
        return read_rgb(sample.image)[0]

    def read_mask(self, sample: Sample, name: str, shape: tuple[int, int]) -> np.ndarray:
        path = sample.masks.get(name)
        return read_mask(path, shape)[0] if path is not None else np.zeros(shape, np.uint8)

    def read_sample(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        """Image (H, W, 3) and masks (H, W, 8) in COND_CHANNELS order, both uint8."""
        image = self.read_image(sample)
        masks = np.stack([self.read_mask(sample, n, image.shape[:2]) for n in COND_CHANNELS], axis=2)
        return image, masks


def _check_sample(sample: Sample, notes: list[str]) -> None:
    """Decode the image and every mask of a sample (raises DrganError on the first problem)."""
    image, n = read_rgb(sample.image)
    notes.extend(n)
    for path in sample.masks.values():
        mask, n = read_mask(path, image.shape[:2])
        notes.extend(n)
        # A label map's 0/1, which every reader takes as 1/255 coverage: solid areas of 1 (a mask
        # shrunk a lot, as by `data import --size`, leaves small lesions as scattered faint pixels).
        if mask.max() == 1 and ndimage.binary_erosion(mask == 1, np.ones((3, 3), bool)).any():
            raise DrganError(f"{path}: a 0/1 mask (its largest value is 1), which reads as nearly empty: "
                             "store covered pixels as 255 (drgan data import does)")


def open_dataset(root: str | Path, skip_bad: bool = False, split: str | None = None, decode: bool | None = None) -> DatasetIndex:
    """Index a dataset folder, checking the index and file headers (pixels too with `decode`).

    Without skip_bad the first problem raises DrganError; with it, bad samples are left out and
    counted. `decode` (default: skip_bad) decodes every file, so truncated files are found now.
    """
    root = Path(root)
    decode = skip_bad if decode is None else decode
    return _index(root, *scan_dataset(root, skip_bad, split, decode), split, skip_bad)


def check_finished(root: Path) -> None:
    """Refuse a folder a writer marked UNFINISHED: read as it is, it would pass for the whole set."""
    if (root / UNFINISHED).is_file():
        raise DrganError(f"{root}: unfinished (the command writing it stopped, or shards of it are still to run); "
                         "rerun that command to finish it")


def scan_dataset(root: Path, skip_bad: bool, split: str | None, decode: bool
                 ) -> tuple[list[Sample], list[tuple[str | None, str]], list[str]]:
    """The samples, problems (id or None, message) and conversion notes of a dataset folder, as
    open_dataset finds them, without its refusal of a dataset that has no usable sample (a
    validation report lists every problem instead); only a bad layout raises."""
    if root.is_file():
        raise DrganError(f"{root}: is a file, expected a dataset folder")
    if not root.is_dir():
        raise DrganError(f"{root}: dataset folder not found")
    check_finished(root)
    if split is not None and split not in SPLITS:
        raise DrganError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    if not (root / "images").is_dir():
        hint = ""
        if any(p.suffix.lower() in IMAGE_EXTS for p in root.iterdir()):  # images, but where?
            hint = ("; it holds images itself: give the dataset folder above it" if (root.parent / LABELS_FILE).is_file()
                    else f"; it holds images itself: a dataset keeps them in images/ beside {LABELS_FILE} (id,grade[,split])")
        raise DrganError(f"{root}: not a dataset folder (images/ and {LABELS_FILE}, masks/ optional)" + hint)
    problems: list[tuple[str | None, str]] = []
    images = _index_images(root / "images", problems)
    rows, label_problems = read_labels(root)
    problems.extend(label_problems)
    labelled = {sid for sid, _, _ in rows}
    for sid, p in images.items():
        if sid not in labelled and not any(s == sid for s, _ in label_problems):
            problems.append((sid, f"{p}: no row in {LABELS_FILE}"))
    mask_files = _index_masks(root / "masks", images, problems)
    notes: list[str] = []
    samples = _check_samples(root, rows, images, mask_files, split, skip_bad, decode, problems, notes)
    return samples, problems, notes


def _index_images(images_dir: Path, problems: list[tuple[str | None, str]]) -> dict[str, Path]:
    """id -> image file of DATASET/images; stray and duplicate files are problems."""
    images: dict[str, Path] = {}
    for p in sorted(images_dir.iterdir()):
        if p.name.startswith("."):
            continue
        if p.suffix.lower() not in IMAGE_EXTS or not p.is_file():
            problems.append((None, f"{p}: not a .png/.jpg image file"))
            continue
        if p.stem in images:
            problems.append((p.stem, f"{p}: duplicate id {p.stem!r} (also {images[p.stem].name})"))
            continue
        images[p.stem] = p
    return images


def _index_masks(masks_dir: Path, images: dict[str, Path], problems: list[tuple[str | None, str]]) -> dict[str, dict[str, Path]]:
    """id -> {mask name -> file} of DATASET/masks; masks without an image and unknown names are problems."""
    mask_files: dict[str, dict[str, Path]] = {}
    if not masks_dir.is_dir():
        return mask_files
    for d in sorted(masks_dir.iterdir()):
        if d.name.startswith("."):
            continue
        if d.name not in images:
            problems.append((d.name, f"{d}: masks without an image"))
            continue
        if not d.is_dir():
            problems.append((d.name, f"{d}: expected a folder of mask PNGs"))
            continue
        found = {}
        for f in sorted(d.iterdir()):
            if f.name.startswith("."):
                continue
            if f.suffix.lower() != ".png" or f.stem not in COND_CHANNELS:
                problems.append((d.name, f"{f}: unknown mask (expected {', '.join(c + '.png' for c in COND_CHANNELS)})"))
                continue
            found[f.stem] = f
        mask_files[d.name] = found
    return mask_files


def _check_samples(
    root: Path,
    rows: list[tuple[str, int, str | None]],
    images: dict[str, Path],
    mask_files: dict[str, dict[str, Path]],
    split: str | None,
    skip_bad: bool,
    decode: bool,
    problems: list[tuple[str | None, str]],
    notes: list[str],
) -> list[Sample]:
    """The labelled samples of `split` without problems, checked from headers or by decoding."""
    bad_ids = {sid for sid, _ in problems if sid is not None}
    samples: list[Sample] = []
    for sid, grade, sp in rows:
        if sid not in images:
            problems.append((sid, f"{root / LABELS_FILE}: {sid!r} has no image in {root / 'images'}"))
            continue
        if split is not None and sp is None:
            sp = hash_split(sid)
            if split != "test":  # no such row is test: the hash decides nothing a test split reads
                _announce_hash_split(root)
        if sid in bad_ids or (split is not None and sp != split):
            continue
        sample = Sample(sid, images[sid], grade, sp, mask_files.get(sid, {}))
        try:
            if decode:
                _check_sample(sample, notes)
            else:
                _check_headers(sample)
        except DrganError as exc:
            problems.append((sid, str(exc)))
            if not skip_bad:
                break
            continue
        samples.append(sample)
    return samples


def _announce_hash_split(root: Path) -> None:
    """Say once per dataset that rows without a split are split by a hash of the id."""
    if root.resolve() not in _announced:
        _announced.add(root.resolve())
        print(f"note: {root / LABELS_FILE}: rows without a split are split 90/10 into train/val by a hash of the id "
              "(of its patient: <n>_left and <n>_right go together)",
              file=sys.stderr)


def _index(root: Path, samples: list[Sample], problems: list[tuple[str | None, str]], notes: list[str],
           split: str | None, skip_bad: bool) -> DatasetIndex:
    """The index, or without skip_bad the first problem as DrganError; no usable sample is an error either way."""
    lines = [m for _, m in problems]
    if lines and not skip_bad:
        # Files are not decoded here, so validate (which decodes every one) may find more.
        more = len(lines) - 1
        raise DrganError(lines[0] + (f" (and at least {more} more problem{'s' * (more > 1)}; `drgan data validate` lists them all)"
                                     if len(lines) > 1 else ""))
    skipped = len({sid for sid, _ in problems if sid is not None}) + sum(1 for sid, _ in problems if sid is None)
    if not samples:
        hashed = ", given or by the 90/10 train/val split by patient of rows without one" if split in ("train", "val") else ""
        why = (f" ({len(lines)} problems, first: {lines[0]})" if lines
               else f" (no row of {LABELS_FILE} has it: give it to some rows; rows without one are train or val)"
               if split == "test"
               else f" (no row of {LABELS_FILE} has it{hashed}: give it to some rows)" if split else "")
        raise DrganError(f"{root}: no usable samples" + (f" in split {split!r}" if split else "") + why)
    return DatasetIndex(root, samples, lines, notes, skipped)


def _check_headers(sample: Sample) -> None:
    """Cheap checks from the file headers only: openable, big enough, masks of the image's size."""
    def size(path: Path) -> tuple[int, int]:
        with open_image(path) as img:
            return img.size
    w, h = size(sample.image)
    if min(w, h) < MIN_SIDE:
        raise DrganError(f"{sample.image}: too small ({w}x{h} px, need at least {MIN_SIDE})")
    for path in sample.masks.values():
        mw, mh = size(path)
        if (mw, mh) != (w, h):
            raise DrganError(f"{path}: mask is {mw}x{mh} px but its image is {w}x{h}")
