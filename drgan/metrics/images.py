"""The image sets that metrics compare: a plain folder of images, or a dataset folder.

A dataset folder (drgan.data.format) holds `images/<id>.png|jpg` and `labels.csv` (id,grade[,split]);
its grades allow per-grade metrics. Any other folder is read as a plain set of images (found
recursively, sorted by relative path) without grades, unless it is a dataset's masks/ or holds
drgan folders of its own, whose masks or sample grids would be scored as images.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image

from drgan.config import NUM_GRADES
from drgan.data.decode import pixels_to_uint8, open_image
from drgan.data.format import UNFINISHED, check_finished, open_dataset
from drgan.data.labels import LABELS_FILE
from drgan.errors import DrganError
from drgan.runs import RUN_FILE

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# FID and SWD compare distributions over images: one image is a single sample (no covariance, no
# spread of patches across images), for a whole set as for one grade of it.
MIN_SET_IMAGES = 2


@dataclass(frozen=True)
class ImageSet:
    """Image files in a fixed order, with their grades when the folder is a dataset."""

    root: Path                 # the folder given by the user
    paths: list[Path]          # image files, sorted
    grades: list[int] | None   # one grade per path, or None for a plain folder

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: list[int] | np.ndarray) -> ImageSet:
        grades = None if self.grades is None else [self.grades[i] for i in indices]
        return ImageSet(self.root, [self.paths[i] for i in indices], grades)

    def by_grade(self) -> dict[int, ImageSet]:
        """One subset per grade present; a plain folder has no grades."""
        if self.grades is None:
            raise DrganError(f"{self.root}: per-grade metrics need a dataset folder (images/ + labels.csv)")
        grades = np.asarray(self.grades)
        return {int(g): self.subset(np.flatnonzero(grades == g)) for g in np.unique(grades)}

    def content_hash(self) -> str:
        """sha256 over each file's relative path and bytes, and its grade: names a set's statistics."""
        digest = hashlib.sha256()
        for i, path in enumerate(self.paths):
            digest.update(str(path.relative_to(self.root)).encode())
            digest.update(b"\0" if self.grades is None else str(self.grades[i]).encode())
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        return digest.hexdigest()


def check_set_size(image_set: ImageSet, metric: str) -> None:
    """Refuse a set too small for `metric`, naming its folder, before any image is read."""
    if len(image_set) < MIN_SET_IMAGES:
        raise DrganError(f"{image_set.root}: {len(image_set)} image; {metric} needs at least "
                         f"{MIN_SET_IMAGES} images per set")


def shared_grades(real: ImageSet, fake: ImageSet) -> dict[int, tuple[ImageSet, ImageSet]]:
    """The grades a per-grade metric compares, those with MIN_SET_IMAGES images in both sets:
    grade -> (its real images, its fake images), in grade order."""
    real_grades, fake_grades = real.by_grade(), fake.by_grade()  # raises for a plain folder
    grades = {g: (real_grades[g], fake_grades[g]) for g in sorted(set(real_grades) & set(fake_grades))
              if min(len(real_grades[g]), len(fake_grades[g])) >= MIN_SET_IMAGES}
    if not grades:
        raise DrganError(f"{real.root}, {fake.root}: no grade has at least {MIN_SET_IMAGES} images in both sets")
    return grades


def grade_average_line(metric: str, used: list[int], value: float, minimum: int = MIN_SET_IMAGES) -> str:
    """The readable line of a per-grade average, naming the grades it covers when some are missing
    (those with `minimum` images in both sets)."""
    note = "" if len(used) == NUM_GRADES else \
        f" (only grades {','.join(map(str, used))} have >= {minimum} images in both sets)"
    return f"{metric} average over grades{note}: {value:.4f}"


def open_image_set(folder: str | os.PathLike, split: str | None = None) -> ImageSet:
    """A dataset folder (images/ + labels.csv) with grades, only `split`'s rows when given, or a
    plain folder of images without grades."""
    root = Path(folder)
    if not root.is_dir():
        raise DrganError(f"{root}: not a folder")
    check_finished(root)  # a killed or partly sharded set has no labels.csv, or one of its finished part
    if (root / RUN_FILE).is_file():  # its sample grids would be scored as a set of two or three images
        raise DrganError(f"{root}: a drgan run folder, not an image set (synthesize a set from it first)")
    if (root / LABELS_FILE).is_file() and (root / "images").is_dir():
        samples = sorted(open_dataset(root, split=split).samples, key=lambda s: s.id)  # validates the dataset
        image_set = ImageSet(root, [s.image for s in samples], [s.grade for s in samples])
    elif split is not None:
        raise DrganError(f"{root}: split {split!r} needs a dataset folder (images/ + labels.csv)")
    else:
        found = list(root.rglob("*"))  # one walk of a tree that may hold 50,000 images
        _check_plain_folder(root, found)
        paths = sorted(p for p in found if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        image_set = ImageSet(root, paths, None)
    if len(image_set) == 0:
        raise DrganError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return image_set


def _check_plain_folder(root: Path, found: list[Path]) -> None:
    """Refuse a plain folder whose files are not all a set's images: a dataset's or set's masks/,
    the images/ of one still being written (read alone, it would pass for the whole set), or a
    folder holding datasets, sets or runs (their masks and sample grids are PNGs too); `found`:
    every path under root."""
    owner = root.resolve().parent
    if (owner / LABELS_FILE).is_file() or (owner / UNFINISHED).is_file():
        if root.resolve().name == "masks":
            raise DrganError(f"{root}: the masks of {owner}, not images (give {owner} for its images)")
        check_finished(owner)
    for marker, what in ((LABELS_FILE, "a dataset or set"), (RUN_FILE, "a run"), (UNFINISHED, "an unfinished set")):
        inner = sorted(p.parent for p in found if p.name == marker and p.parent != root)
        if inner:
            more = f" and {len(inner) - 1} more" if len(inner) > 1 else ""
            raise DrganError(f"{root}: holds {what}, {inner[0]}{more}, whose masks or sample grids would be scored as "
                             "images: give the dataset or set itself")


def load_rgb(path: Path, size: int | None = None) -> np.ndarray:
    """An image file as uint8 (H, W, 3); with `size`, resized to size x size by area averaging.
    Any mode and size within drgan.data.decode.MAX_PIXELS is taken (a dataset's own checks are
    drgan.data.decode.read_rgb's); 16-bit pixels are converted as read_rgb converts them."""
    try:
        with open_image(path) as image:
            if image.mode.startswith(("I", "F")):
                # convert("RGB") clips wider pixels at 255 (16-bit reads as nearly all white): scale
                # them as read_rgb does, so a 16-bit copy scores as its 8-bit original.
                image = PIL.Image.fromarray(pixels_to_uint8(np.asarray(image), path, []))
            image = image.convert("RGB")
            if size is not None and image.size != (size, size):
                image = image.resize((size, size), PIL.Image.BOX)
            return np.array(image, dtype=np.uint8)  # writable: torch.from_numpy shares it
    except (OSError, PIL.UnidentifiedImageError, ValueError) as exc:
        raise DrganError(f"{path}: cannot read image ({exc})") from None
