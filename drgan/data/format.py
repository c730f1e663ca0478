"""The on-disk dataset format, its readers and writer, and the validation report.

    DATASET/images/<id>.png|jpg        RGB fundus photograph
    DATASET/masks/<id>/<name>.png      one 8-bit mask per COND_CHANNELS name; a missing file = zeros
    DATASET/labels.csv                 id,grade[,split]

What can be converted safely is converted and noted (grayscale, RGBA, palette or 16-bit files);
what cannot is a problem: one line naming the file and the reason. A reader either stops at the
first problem (DrganError) or, with skip_bad, leaves the sample out and counts it.
"""
from __future__ import annotations

import csv
import hashlib
import io
import shutil
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from drgan.config import COND_CHANNELS, NUM_GRADES
from drgan.errors import DrganError
from drgan.io import atomic_write_bytes, encode_png, write_error

IMAGE_EXTS = (".png", ".jpg", ".jpeg")
LABELS_FILE = "labels.csv"
SPLITS = ("train", "val", "test")
MIN_SIDE = 64            # smaller images cannot hold a usable fundus
MAX_PIXELS = 20000 * 20000

VAL_FRACTION = 0.1      # rows without a split: this share goes to "val" by a hash of the id

Image.MAX_IMAGE_PIXELS = MAX_PIXELS   # a fundus photograph is large but not a decompression bomb
_announced: set[Path] = set()           # datasets whose hash split was already reported


def hash_split(sid: str) -> str:
    """The split of a row without one: "val" for the ids whose sha256 falls in the first 10%,
    else "train". Depends on the id alone, so it is stable when rows are added or reordered."""
    fraction = int.from_bytes(hashlib.sha256(sid.encode()).digest()[:8], "big") / 2**64
    return "val" if fraction < VAL_FRACTION else "train"


@dataclass
class Sample:
    id: str
    image: Path
    grade: int
    split: str | None
    masks: dict[str, Path]             # only the mask files present


def _png_bit_depth(path: Path) -> int | None:
    with open(path, "rb") as f:
        head = f.read(26)
    return head[24] if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) == 26 else None


def _open(path: Path) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            img.load()           # decode now: a truncated file fails here, not later
        return img
    except FileNotFoundError:
        raise DrganError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as exc:
        raise DrganError(f"{path}: unreadable image ({exc})") from None


def _to_uint8(arr: np.ndarray, path: Path, notes: list[str]) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return np.where(arr, 255, 0).astype(np.uint8)
    if arr.dtype in (np.uint16, np.int32) and arr.min() >= 0 and arr.max() <= 65535:
        notes.append(f"{path}: 16-bit converted to 8-bit")
        return (arr.astype(np.uint32) >> 8).astype(np.uint8)
    raise DrganError(f"{path}: unsupported pixel type {arr.dtype}")


def read_rgb(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """An image file as uint8 (H, W, 3), with notes about the safe conversions applied."""
    path = Path(path)
    img = _open(path)
    notes: list[str] = []
    if _png_bit_depth(path) == 16 and img.mode == "RGB":
        notes.append(f"{path}: 16-bit converted to 8-bit")   # Pillow keeps the high byte
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        notes.append(f"{path}: alpha channel dropped")
        img = img.convert("RGBA").convert("RGB")
    elif img.mode == "P":
        img = img.convert("RGB")
    elif img.mode == "CMYK" or img.mode == "YCbCr":
        notes.append(f"{path}: {img.mode} converted to RGB")
        img = img.convert("RGB")
    arr = np.asarray(img)
    arr = _to_uint8(arr, path, notes)
    if arr.ndim == 2:
        notes.append(f"{path}: grayscale converted to RGB")
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise DrganError(f"{path}: expected an RGB image, got mode {img.mode}")
    h, w = arr.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise DrganError(f"{path}: too small ({w}x{h} px, need at least {MIN_SIDE})")
    return np.ascontiguousarray(arr), notes


def read_mask(path: str | Path, shape: tuple[int, int] | None = None) -> tuple[np.ndarray, list[str]]:
    """A mask file as uint8 (H, W); `shape` (H, W) is the image's size it must match."""
    path = Path(path)
    img = _open(path)
    notes: list[str] = []
    if img.mode == "1":
        img = img.convert("L")
    elif img.mode in ("P", "RGB", "RGBA", "LA", "CMYK"):
        notes.append(f"{path}: {img.mode} mask reduced to one channel (maximum)")
        img = img.convert("RGB")
    arr = _to_uint8(np.asarray(img), path, notes)
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    if shape is not None and arr.shape != tuple(shape):
        raise DrganError(f"{path}: mask is {arr.shape[1]}x{arr.shape[0]} px but its image is {shape[1]}x{shape[0]}")
    return np.ascontiguousarray(arr), notes


def read_labels(root: Path) -> tuple[list[tuple[str, int, str | None]], list[tuple[str | None, str]]]:
    """Rows (id, grade, split) and problems (id or None, message) of DATASET/labels.csv."""
    path = root / LABELS_FILE
    if not path.is_file():
        raise DrganError(f"{path}: labels file not found (need columns id,grade[,split])")
    rows, problems = [], []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DrganError(f"{path}: unreadable labels file ({exc})") from None
    reader = csv.reader(io.StringIO(text))
    header = [h.strip().lower() for h in next(reader, [])]
    if header[:2] != ["id", "grade"] or len(header) > 3 or (len(header) == 3 and header[2] != "split"):
        raise DrganError(f"{path}: header must be id,grade[,split], got {','.join(header) or 'nothing'}")
    seen: set[str] = set()
    for line, row in enumerate(reader, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        where = f"{path}:{line}"
        if len(row) != len(header):
            problems.append((row[0].strip() or None, f"{where}: expected {len(header)} columns, got {len(row)}"))
            continue
        sid, grade_s = row[0].strip(), row[1].strip()
        split = row[2].strip() or None if len(row) == 3 else None
        if not sid or "/" in sid or "\\" in sid or sid.startswith("."):
            problems.append((None, f"{where}: invalid id {sid!r}"))
            continue
        if sid in seen:
            problems.append((sid, f"{where}: duplicate id {sid!r}"))
            continue
        seen.add(sid)
        try:
            grade = int(grade_s)
        except ValueError:
            problems.append((sid, f"{where}: grade {grade_s!r} of {sid!r} is not an integer"))
            continue
        if grade not in range(NUM_GRADES):
            problems.append((sid, f"{where}: grade {grade} of {sid!r} is outside 0..{NUM_GRADES - 1}"))
            continue
        if split is not None and split not in SPLITS:
            problems.append((sid, f"{where}: split {split!r} of {sid!r} is not one of {', '.join(SPLITS)}"))
            continue
        rows.append((sid, grade, split))
    return rows, problems


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
        notes.extend(read_mask(path, image.shape[:2])[1])


def open_dataset(root: str | Path, skip_bad: bool = False, split: str | None = None, decode: bool | None = None) -> DatasetIndex:
    """Index a dataset folder, checking the index and file headers (pixels too with `decode`).

    Without skip_bad the first problem raises DrganError; with it, bad samples are left out and
    counted. `decode` (default: skip_bad) decodes every file, so truncated files are found now.
    """
    root = Path(root)
    if not root.is_dir():
        raise DrganError(f"{root}: dataset folder not found")
    if split is not None and split not in SPLITS:
        raise DrganError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    decode = skip_bad if decode is None else decode
    problems: list[tuple[str | None, str]] = []

    images_dir, masks_dir = root / "images", root / "masks"
    if not images_dir.is_dir():
        raise DrganError(f"{images_dir}: images folder not found")
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
    rows, label_problems = read_labels(root)
    problems.extend(label_problems)
    labelled = {sid for sid, _, _ in rows}
    for sid, p in images.items():
        if sid not in labelled and not any(s == sid for s, _ in label_problems):
            problems.append((sid, f"{p}: no row in {LABELS_FILE}"))
    mask_files: dict[str, dict[str, Path]] = {}
    if masks_dir.is_dir():
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

    bad_ids = {sid for sid, _ in problems if sid is not None}
    samples: list[Sample] = []
    notes: list[str] = []
    for sid, grade, sp in rows:
        if sid not in images:
            problems.append((sid, f"{root / LABELS_FILE}: {sid!r} has no image in {images_dir}"))
            continue
        if split is not None and sp is None:
            sp = hash_split(sid)
            if root.resolve() not in _announced:
                _announced.add(root.resolve())
                print(f"{root / LABELS_FILE}: rows without a split are split 90/10 into train/val by a hash of the id",
                      file=sys.stderr)
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

    lines = [m for _, m in problems]
    if lines and not skip_bad:
        raise DrganError(lines[0] + (f" (and {len(lines) - 1} more problems; run `drgan data validate`)" if len(lines) > 1 else ""))
    skipped = len({sid for sid, _ in problems if sid is not None}) + sum(1 for sid, _ in problems if sid is None)
    if not samples:
        raise DrganError(f"{root}: no usable samples" + (f" in split {split!r}" if split else "")
                         + (f" ({len(lines)} problems, first: {lines[0]})" if lines else ""))
    return DatasetIndex(root, samples, lines, notes, skipped)


def _check_headers(sample: Sample) -> None:
    """Cheap checks from the file headers only: openable, big enough, masks of the image's size."""
    def size(path: Path) -> tuple[int, int]:
        try:
            with Image.open(path) as img:
                return img.size
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise DrganError(f"{path}: unreadable image ({exc})") from None
    w, h = size(sample.image)
    if min(w, h) < MIN_SIDE:
        raise DrganError(f"{sample.image}: too small ({w}x{h} px, need at least {MIN_SIDE})")
    for path in sample.masks.values():
        mw, mh = size(path)
        if (mw, mh) != (w, h):
            raise DrganError(f"{path}: mask is {mw}x{mh} px but its image is {w}x{h}")


@dataclass
class ValidationReport:
    root: Path
    checked: int                  # samples with a label and an image
    ok: int                       # samples that can be used
    problems: list[str]           # one line each
    notes: list[str]              # safe conversions that readers apply
    grades: dict[int, int]        # usable samples per grade
    splits: dict[str, int]        # usable samples per split ("-" for none)

    def render(self) -> str:
        lines = [f"dataset {self.root}: {self.ok} usable samples of {self.checked}"]
        lines.append("grades: " + ", ".join(f"{g}: {n}" for g, n in sorted(self.grades.items())))
        lines.append("splits: " + ", ".join(f"{s}: {n}" for s, n in sorted(self.splits.items())))
        if self.notes:
            lines.append(f"converted ({len(self.notes)}):")
            lines += [f"  {n}" for n in self.notes]
        if self.problems:
            lines.append(f"problems ({len(self.problems)}):")
            lines += [f"  {p}" for p in self.problems]
        else:
            lines.append("no problems")
        return "\n".join(lines)


def validate_dataset(root: str | Path) -> ValidationReport:
    """Decode and check every file of a dataset; never raises for bad samples, only for a bad layout."""
    root = Path(root)
    try:
        index = open_dataset(root, skip_bad=True, decode=True)
        samples, problems, notes = index.samples, index.problems, index.notes
    except DrganError as exc:
        if not (root / "images").is_dir() or not (root / LABELS_FILE).is_file():
            raise
        samples, problems, notes = [], [str(exc)], []
    try:
        checked = len(read_labels(root)[0])
    except DrganError:
        checked = 0
    for s in samples:   # non-square photographs are normal input: report the crop readers apply
        with Image.open(s.image) as img:
            if img.size[0] != img.size[1]:
                notes.append(f"{s.image}: non-square {img.size[0]}x{img.size[1]}, cropped to the field of view and padded")
    grades: dict[int, int] = {}
    splits: dict[str, int] = {}
    for s in samples:
        grades[s.grade] = grades.get(s.grade, 0) + 1
        splits[s.split or "-"] = splits.get(s.split or "-", 0) + 1
    return ValidationReport(root, checked, len(samples), problems, notes, grades, splits)


class DatasetWriter:
    """Writes samples into a new dataset folder; labels.csv is written last, by `close`.

    Used as a context manager, a failure removes the folder it created, so a retry starts clean.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise DrganError(f"{self.root}: is a file, expected a new dataset folder")
        if self.root.is_dir() and any(self.root.iterdir()):
            raise DrganError(f"{self.root}: output folder exists and is not empty")
        self.created = not self.root.exists()
        try:
            (self.root / "images").mkdir(parents=True, exist_ok=True)
            (self.root / "masks").mkdir(exist_ok=True)
        except OSError as exc:
            raise write_error(self.root, exc) from None
        self.rows: list[tuple[str, int, str | None]] = []
        self.ids: set[str] = set()

    def add(self, sid: str, image: np.ndarray, masks: dict[str, np.ndarray], grade: int, split: str | None = None,
            extra: dict[str, np.ndarray] | None = None) -> None:
        """One sample; `extra` holds additional PNGs written under the dataset folder (e.g. overlays)."""
        for name, m in masks.items():
            if m.shape != image.shape[:2]:
                raise DrganError(f"mask {name!r} of {sid!r} is {m.shape} but the image is {image.shape[:2]}")
        self.add_encoded(sid, encode_png(image), {k: encode_png(m) for k, m in masks.items()}, grade, split)
        for name, arr in (extra or {}).items():
            atomic_write_bytes(self.root / name, encode_png(arr))

    def add_encoded(self, sid: str, image_png: bytes, mask_pngs: dict[str, bytes], grade: int,
                    split: str | None = None) -> None:
        """One sample from PNG bytes (encoded elsewhere, e.g. in worker processes)."""
        if sid in self.ids:
            raise DrganError(f"duplicate id {sid!r}")
        unknown = sorted(set(mask_pngs) - set(COND_CHANNELS))
        if unknown:
            raise DrganError(f"unknown mask names {unknown}; expected {', '.join(COND_CHANNELS)}")
        if grade not in range(NUM_GRADES) or (split is not None and split not in SPLITS):
            raise DrganError(f"sample {sid!r}: grade {grade} / split {split!r} invalid")
        self.ids.add(sid)
        atomic_write_bytes(self.root / "images" / f"{sid}.png", image_png)
        mdir = self.root / "masks" / sid
        mdir.mkdir(exist_ok=True)
        for name, data in mask_pngs.items():
            atomic_write_bytes(mdir / f"{name}.png", data)
        self.rows.append((sid, int(grade), split))

    def close(self) -> Path:
        with_split = any(s is not None for _, _, s in self.rows)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["id", "grade", "split"] if with_split else ["id", "grade"])
        for sid, g, s in self.rows:
            w.writerow([sid, g, s or ""] if with_split else [sid, g])
        atomic_write_bytes(self.root / LABELS_FILE, buf.getvalue().encode())
        return self.root

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            if self.created:
                shutil.rmtree(self.root, ignore_errors=True)
            else:  # the folder was there and empty: leave it empty
                for child in self.root.iterdir():
                    shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
