"""Encoding and atomic writing of synthesized items, the resume journal and the manifest.

A file appears under its final name only complete (temp + rename); a journal row is appended
after the rename. On resume the image files are the truth: a file without a journal row (killed
between the two) gets its row rebuilt from the plan; so does one whose row was cut short (a full
disk mid-line): such a row is skipped when read, and cut off this shard's journal before it appends
again. The folder's fingerprint is written before the first image and checked on every rerun
(drgan.synthesis.fingerprint).
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import shutil
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from drgan import locks
from drgan.config import COND_CHANNELS
from drgan.data.format import MANIFEST_FILE, UNFINISHED
from drgan.data.labels import LABELS_FILE
from drgan.data.lesion_stats import LESION_TYPES
from drgan.errors import DrganError, ParameterError
from drgan.io import (TEMP_MARK, atomic_write_bytes, check_writable_dir, durable_write_bytes, remove_temp_files, sha256_file,
                      write_error)
from drgan.synthesis import fingerprint as fp
from drgan.synthesis.encode import encode_image
from drgan.synthesis.stages import StageTimes

# grade: the planned grade (lesion rules, labels.csv); predicted_grade: the encoder's, with --label predicted.
MANIFEST_FIELDS = ["id", "grade", "predicted_grade", "seed", "structure_id", *LESION_TYPES, "file", "sha256"]
FORMATS = {"png": "png", "jpeg": "jpg"}
_SHA256 = re.compile(r"[0-9a-f]{64}")


class OutputFolder:
    def __init__(
        self,
        root: Path,         # output folder (created)
        fmt: str,           # 'png' or 'jpeg'
        quality: int,       # JPEG quality
        png_level: int,     # PNG compression level (drgan.synthesis.encode.encode_image)
        save_masks: bool,   # also write masks/<id>/<name>.png
        journal_name: str,  # this process's journal (one per shard, no write contention)
        shard: str,         # "i/n": the shard this process writes (its lock: drgan.locks)
        threads: int,       # encoder/writer threads
        fingerprint: dict,  # what makes the set; an existing folder must hold the same
        times: StageTimes,  # encoding and writing time are added here
    ) -> None:
        if fmt not in FORMATS:
            raise ParameterError(f"{{format}} {fmt!r}: choose one of {', '.join(FORMATS)}")
        self.root, self.fmt, self.quality, self.png_level, self.save_masks = root, fmt, quality, png_level, save_masks
        self.images = root / "images"
        self.times = times
        fp.check(root, fingerprint)  # before the folder is created or locked
        check_writable_dir(root)
        self._created_root = not root.exists()
        try:
            root.mkdir(parents=True, exist_ok=True)
            probe = root / f".write-probe{TEMP_MARK}{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise DrganError(f"{root}: output folder is not writable ({exc.strerror})") from None
        for folder in (self.images, root / "masks"):  # a resumed set's: refused before any image is made
            check_writable_dir(folder)
        locks.hold(root, shard)
        try:
            with locks.section(root):  # again, as another shard may have started the set meanwhile
                resumed = fp.check(root, fingerprint)
                if not resumed:
                    fp.record(root, fingerprint, durable_write_bytes)
            self._wrote_fingerprint = not resumed
            self.images.mkdir(exist_ok=True)
            remove_temp_files(root)
            self.journal_path = root / journal_name
            _drop_cut_line(self.journal_path)
        except BaseException:
            locks.release(root)
            raise
        self._journal_lock = threading.Lock()
        self.threads = threads
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="drgan-write")
        self._pending: list[Future] = []

    def mark_unfinished(self) -> None:
        """Readers refuse the set until write_manifest has every item of the plan."""
        atomic_write_bytes(self.root / UNFINISHED, b"drgan synthesize\n")

    def image_path(self, item_id: str) -> Path:
        return self.images / f"{item_id}.{FORMATS[self.fmt]}"

    def done_ids(self) -> set[str]:
        suffix = "." + FORMATS[self.fmt]
        return {p.name[: -len(suffix)] for p in self.images.iterdir() if p.name.endswith(suffix) and not p.name.startswith(".")}

    def submit(self, row: dict, image: Callable[[], np.ndarray | bytes], masks: Callable[[], np.ndarray] | None) -> Future:
        """Queue one item. image() runs in the worker and returns pixels (uint8 H, W, 3) to encode
        or bytes already encoded, masks() the uint8 (channels, H, W) masks to write, or masks is
        None (each may first wait for the device copy that fills its buffer)."""
        future = self._pool.submit(self._write, row, image, masks)
        self._pending.append(future)
        # Surface a failed write (disk full) promptly instead of at the end, whichever write it was:
        # a slow one ahead of it must not hold it back while batches go on being made.
        done = {f for f in self._pending if f.done()}
        self._pending = [f for f in self._pending if f not in done]
        for finished in done:
            finished.result()
        return future

    def _write(self, row: dict, image: Callable[[], np.ndarray | bytes], masks: Callable[[], np.ndarray] | None) -> None:
        data = image()  # waits for the device's copy: not host work, so outside the stage times
        masks = masks() if masks is not None else None
        with self.times.cpu("encoding"):
            if not isinstance(data, bytes):
                data = encode_image(data, self.fmt, self.quality, self.png_level)
            encoded_masks = [encode_image(m, "png", 0, self.png_level) for m in masks] if masks is not None else []
        with self.times.cpu("writing"):
            if masks is not None:
                folder = self.root / "masks" / row["id"]
                folder.mkdir(parents=True, exist_ok=True)
                for name, mask in zip(COND_CHANNELS, encoded_masks):
                    atomic_write_bytes(folder / f"{name}.png", mask)
            path = self.image_path(row["id"])
            atomic_write_bytes(path, data)
            row = {**row, "file": f"images/{path.name}", "sha256": hashlib.sha256(data).hexdigest()}
            with self._journal_lock:
                try:
                    with open(self.journal_path, "a", newline="") as f:
                        csv.DictWriter(f, MANIFEST_FIELDS).writerow(row)
                except OSError as exc:
                    raise write_error(self.journal_path, exc) from None

    def flush(self) -> None:
        while self._pending:
            self._pending.pop(0).result()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._pool.shutdown(wait=True)

    def abort(self) -> None:
        """After a failure: stop the writers; leave the folder as it was found when not one image
        was written and no other shard is writing (else as a set that a rerun completes)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        if any(self.images.iterdir()) or not locks.alone(self.root):
            locks.release(self.root)
            return
        self.images.rmdir()
        self.journal_path.unlink(missing_ok=True)
        shutil.rmtree(self.root / "masks", ignore_errors=True)
        if self._wrote_fingerprint:
            (self.root / fp.FILE_NAME).unlink(missing_ok=True)
            (self.root / UNFINISHED).unlink(missing_ok=True)
        locks.release(self.root, remove=True)
        if self._created_root and not any(self.root.iterdir()):
            self.root.rmdir()

    def empty_items(self, ids: Iterable[str]) -> list[str]:
        """Those of `ids` whose image is empty or, with save_masks, whose masks are not all there and
        non-empty. Images are renamed into place whole, but without an fsync each (one per file costs
        throughput), so a power loss can leave an empty file under its final name. A stat per file
        finds those on every rerun (50,000 items with masks: ~6 s after a reboot, ~1 s cached; threads
        gained nothing); --verify (remove_damaged) reads every byte."""

        def empty(path: str) -> bool:
            try:
                return os.stat(path).st_size == 0
            except FileNotFoundError:
                return True

        def lost(item_id: str) -> bool:
            masks = os.path.join(self.root, "masks", item_id)
            return empty(self.image_path(item_id)) or (
                self.save_masks and any(empty(os.path.join(masks, f"{name}.png")) for name in COND_CHANNELS))

        return sorted(item_id for item_id in ids if lost(item_id))

    def remove_images(self, ids: Iterable[str]) -> None:
        """Remove these items' images, so that the run writes them (and their masks) again."""
        for item_id in ids:
            self.image_path(item_id).unlink(missing_ok=True)

    def remove_damaged(self, ids: Iterable[str], progress: bool) -> list[str]:
        """Check the items of `ids` already written and remove the images that fail, so that the run
        writes them (and their masks) again; returns their ids. An image must match its journal
        row's sha256, or, without a row, decode; with save_masks every mask must be there and decode
        (the journal holds no hash of them). Reads every file: an opt-in, for a set whose disk may
        have lost data."""
        from tqdm import tqdm

        from drgan.data.decode import decode_image

        rows = self.journal_rows()

        def decodes(path: Path) -> bool:
            try:
                decode_image(path).close()
            except DrganError:
                return False
            return True

        def damaged(item_id: str) -> bool:
            path = self.image_path(item_id)
            if not (sha256_file(path) == rows[item_id]["sha256"] if item_id in rows else decodes(path)):
                return True
            masks = self.root / "masks" / item_id
            return self.save_masks and not all(decodes(masks / f"{name}.png") for name in COND_CHANNELS)

        ids = sorted(ids)
        with ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="drgan-verify") as pool:
            verdicts = list(tqdm(pool.map(damaged, ids), total=len(ids), desc="verify", unit="img", disable=not progress))
        bad = [item_id for item_id, is_bad in zip(ids, verdicts) if is_bad]
        self.remove_images(bad)
        return bad

    def journal_rows(self) -> dict[str, dict]:
        rows = {}
        for journal in self.root.glob(".journal-*.csv"):
            with open(journal, newline="") as f:
                for row in csv.DictReader(f, MANIFEST_FIELDS):
                    if _whole(row) and (self.root / row["file"]).is_file():
                        rows[row["id"]] = row
        return rows

    def write_manifest(self, rows: list[dict], whole: bool) -> None:
        """manifest.csv (every column) and labels.csv (dataset format), atomically; `whole`: the rows
        are every item of the plan, so the set is no longer UNFINISHED."""
        rows = sorted(rows, key=lambda r: r["id"])
        buf = io.StringIO()
        w = csv.DictWriter(buf, MANIFEST_FIELDS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        durable_write_bytes(self.root / MANIFEST_FILE, buf.getvalue().encode())
        labels = "id,grade\n" + "".join(f"{r['id']},{r['grade']}\n" for r in rows)
        durable_write_bytes(self.root / LABELS_FILE, labels.encode())
        if whole:
            (self.root / UNFINISHED).unlink(missing_ok=True)



def _whole(row: dict) -> bool:
    """False for a journal line cut short (missing fields, a short sha256) or run into the next
    line (extra fields, under the key None)."""
    return None not in row and None not in row.values() and bool(_SHA256.fullmatch(row["sha256"]))


def _drop_cut_line(journal: Path) -> None:
    """Cut off a last line that a full disk left without its newline, so that the next row does
    not run into it."""
    if not journal.is_file():
        return
    with open(journal, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)
