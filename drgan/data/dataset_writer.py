"""Writing a new dataset folder, sample by sample, in the layout drgan.data.format reads."""
from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from drgan import locks
from drgan.config import COND_CHANNELS, NUM_GRADES
from drgan.data.format import UNFINISHED
from drgan.data.labels import LABELS_FILE, SPLITS, id_problem
from drgan.errors import DrganError
from drgan.io import atomic_write_bytes, atomic_write_csv, encode_png, write_error


_MARK = b"dataset writer\n"  # UNFINISHED's content, so that a synthesized set's is never taken for ours


def _left_by_writer(root: Path) -> bool:
    try:
        return (root / UNFINISHED).read_bytes() == _MARK
    except OSError:
        return False


def _clear(root: Path, keep: Callable[[Path], bool] = lambda p: False) -> None:
    """Remove what `root` holds, except what `keep` names (a link is removed, never followed)."""
    for child in root.iterdir():
        if not keep(child):
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


class DatasetWriter:
    """Writes samples into a new dataset folder; labels.csv is written last, by `close`.

    The folder is locked (drgan.locks) while written. Used as a context manager, a failure removes
    the folder it created, so a retry starts clean; a folder left by a killed writer (it still holds
    UNFINISHED and no process holds its lock) is cleared and written again.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise DrganError(f"{self.root}: is a file, expected a new dataset folder")
        self.created = not self.root.exists()
        self._check_new()  # before the lock file is created in it
        try:
            locks.hold(self.root)  # a second writer of the folder is refused
            self._check_new()  # again: another process may have written meanwhile
            atomic_write_bytes(self.root / UNFINISHED, _MARK)
            _clear(self.root, keep=lambda p: locks.is_lock_file(p) or p.name == UNFINISHED)  # a killed writer's files
            (self.root / "images").mkdir()
            (self.root / "masks").mkdir()
        except OSError as exc:
            locks.release(self.root)
            raise write_error(self.root, exc) from None
        except BaseException:
            locks.release(self.root)
            raise
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
        if (problem := id_problem(sid)) is not None:  # what the reader would refuse
            raise DrganError(f"sample {sid[:40]!r}: {problem}")
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

    def _check_new(self) -> None:
        if self.root.is_dir() and not _left_by_writer(self.root) and not locks.only_locks(self.root):
            raise DrganError(f"{self.root}: output folder exists and is not empty")

    def close(self) -> Path:
        with_split = any(s is not None for _, _, s in self.rows)
        atomic_write_csv(self.root / LABELS_FILE, ["id", "grade", "split"] if with_split else ["id", "grade"],
                         ([sid, g, s or ""] if with_split else [sid, g] for sid, g, s in self.rows))
        (self.root / UNFINISHED).unlink()
        locks.release(self.root, remove=True)
        return self.root

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            if self.created:
                shutil.rmtree(self.root, ignore_errors=True)
            else:  # the folder was there and empty: leave it empty (the failure is what to report)
                with contextlib.suppress(OSError):
                    _clear(self.root)
            locks.release(self.root)
