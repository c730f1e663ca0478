"""What every release importer shares: the plan a release scanner returns, the per-image
conversion (run in worker processes), resumable writing, and the end report.

A scanner turns an unpacked release into a Plan: one Item per image it can grade (file, grade,
the release's split, the mask file per condition channel) and the images it cannot, each with a
reason. `import_release` converts the items in parallel into the dataset format. An id counts as
finished once its image file exists: masks are written first, the image last, all through temp
files and renames, so a rerun skips finished ids and redoes the rest. SOURCES_FILE records the
release files each finished id came from, so that a rerun converts again an id whose image or
mask file the release replaced.
"""
from __future__ import annotations

import csv
import hashlib
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
from scipy import ndimage

from drgan.config import COND_CHANNELS, MAX_IMAGE_SIDE, NUM_GRADES
from drgan.data.decode import MIN_SIDE, read_mask, read_rgb
from drgan.data.format import UNFINISHED
from drgan.data.labels import LABELS_FILE, id_problem, patient_id, patients_apart, read_labels
from drgan.data.lesion_stats import LESION_TYPES
from drgan.data.preprocess import check_has_content, crop_and_resize
from drgan.errors import DrganError, ParameterError
from drgan.io import (atomic_write_bytes, atomic_write_csv, atomic_write_text, csv_rows, encode_png,
                      remove_temp_files)
from drgan.runs import claimed_folder, undone_on_failure

IMPORT_FILE = "import.json"      # the source and options a dataset was imported with; a rerun must match them
REPORT_FILE = "import_report.txt"
CARVED_FILE = "import_splits.csv"  # id,split of every training image the import carved, kept across reruns
SOURCES_FILE = "import_sources.csv"  # id,signature of the release files each converted id came from
SOURCES_EVERY_S = 10.0           # how often a running import saves SOURCES_FILE (and once at its end)
SHOW_SKIPPED = 50                # skipped lines printed; the report file lists all
VESSEL_MODES = ("extract", "none")
VAL_EVERY = 10                   # one image in ten of each grade of a training part becomes val


@dataclass(frozen=True)
class Item:
    id: str                      # the release's file name without extension
    image: Path
    grade: int
    split: str | None            # the release's split; None where the release has none
    masks: dict[str, Path]       # condition channel -> the release's mask file for it
    missing: tuple[str, ...] = ()  # channels the release has masks of, but none for this image (read as empty)


@dataclass
class Plan:
    root: Path | None = None                                # the release's folder (find_root) under the one given
    items: list[Item] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)        # "<file or id>: <reason>"
    notes: list[str] = field(default_factory=list)          # release content no channel holds
    conflicting: set[str] = field(default_factory=set)      # lower-case names graded differently (see `graded`)
    clashed: set[str] = field(default_factory=set)          # lower-case stems of two image files (see `files_by_stem`)

    def unlisted(self, grades: dict[str, int | None], images: dict[str, Path], folder: Path, where: str) -> None:
        """Skip the names a grading table lists that have no image file (`images` keyed by lower-case stem)."""
        self.skipped += [f"{name}: listed in {where} but no image in {folder}" for name in sorted(grades)
                         if name.lower() not in images and name.lower() not in self.clashed]


def find_root(src: Path, marker: str, what: str) -> Path:
    """The folder of `src` (itself or up to two levels down) that holds `marker` (a relative path).

    Releases unpack with or without their top folder (e.g. Seg-set/), so both are accepted.
    """
    if src.is_file():
        raise DrganError(f"{src}: is a file; unpack the {what} release and pass its folder")
    if not src.is_dir():
        raise DrganError(f"{src}: folder not found")
    for folder in [src, *sorted(src.glob("*/")), *sorted(src.glob("*/*/"))]:
        if (folder / marker).exists():
            return folder
    raise DrganError(f"{src}: not an unpacked {what} release (no {marker} in it or its subfolders)")


def files_by_stem(folder: Path, exts: tuple[str, ...], plan: Plan) -> dict[str, Path]:
    """The files of a folder with one of `exts` (any case), keyed by lower-case stem.

    Two files with one stem (a.jpg, a.png) would make one id: both are skipped with the reason.
    """
    out: dict[str, Path] = {}
    clash: set[str] = set()
    for p in sorted(folder.iterdir()) if folder.is_dir() else []:
        if p.name.startswith(".") or p.suffix.lower() not in exts:
            continue
        if not p.is_file():
            if not p.exists():  # a dangling link: named, as an unreadable file is
                plan.skipped.append(f"{p}: a symbolic link to nothing")
            continue
        key = p.stem.lower()
        if key in out:
            clash.add(key)
            plan.skipped.append(f"{p}: same name as {out[key].name}")
        else:
            out[key] = p
    for key in clash:
        plan.skipped.append(f"{out.pop(key)}: another file has the same name")
    plan.clashed |= clash
    return out


def read_lines(path: Path) -> list[str]:
    """The lines of a release's grading table; an unreadable one is one error naming it."""
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DrganError(f"{path}: unreadable ({exc})") from None


def too_long(plan: Plan, path: Path, line: int, extra: list[str], columns: int) -> bool:
    """Whether a grading-table row has non-empty fields beyond the table's `columns`; such a row is
    reported and not read, as its columns may be shifted (an unquoted comma in a name). Empty ones
    are the trailing separators spreadsheets write."""
    if not any(f.strip() for f in extra):
        return False
    plan.skipped.append(f"{path}:{line}: {columns + len(extra)} fields, the table has {columns} columns; row not read")
    return True


def header_rows(path: Path, plan: Plan) -> list[tuple[int, dict[str, str]]]:
    """The rows of a grading table with a header row, each with its line number, keyed by lower-case
    column name, cells stripped.

    A short row's missing cells read as empty, so a missing grade is reported with its image like an
    empty one; a row longer than the header is reported by `too_long` and left out.
    """
    reader = csv.DictReader(read_lines(path))
    rows = []
    for row in csv_rows(reader, path):
        if not too_long(plan, path, reader.line_num, row.pop(None, []), len(reader.fieldnames)):
            rows.append((reader.line_num, {k.strip().lower(): (v or "").strip() for k, v in row.items()}))
    return rows


class GradeRow(NamedTuple):
    """One row of a grading table: the image name (stem) it grades and its grade."""
    table: Path
    line: int
    name: str
    grade: int | None


def _grade_text(grade: int | None) -> str:
    return "no grade" if grade is None else f"grade {grade}"


def graded(plan: Plan, rows: list[GradeRow]) -> dict[str, int | None]:
    """Name -> grade from all the grading rows of a release, keyed by the name as first spelt.

    Names compare case-blind, as image files are matched. A name whose rows disagree (an empty
    grade included) is left out and put in `plan.conflicting`: which row is right cannot be told,
    so each of its rows is reported and its image is not imported. Rows repeating a grade agree and
    are taken silently: a table added for a rerun (the README's IDRiD recipe) may repeat rows.
    """
    by_name: dict[str, list[GradeRow]] = {}
    for row in rows:
        by_name.setdefault(row.name.lower(), []).append(row)
    grades: dict[str, int | None] = {}
    for key, group in by_name.items():
        if len({r.grade for r in group}) == 1:
            grades[group[0].name] = group[0].grade
            continue
        plan.conflicting.add(key)
        for r in group:
            others = ", ".join(f"{_grade_text(o.grade)} at {o.table}:{o.line}" for o in group if o.grade != r.grade)
            plan.skipped.append(f"{r.table}:{r.line}: {r.name} has {_grade_text(r.grade)}, but {others}; not imported")
    return grades


def tables(folder: Path, pattern: str, expected: str) -> list[Path]:
    """The files of `folder` matching `pattern`; none is a layout error describing `expected`."""
    found = sorted(folder.glob(pattern)) if folder.is_dir() else []
    if not found:
        raise DrganError(f"{folder}: no {expected}")
    return found


def lower_keys(grades: dict[str, int | None]) -> dict[str, int | None]:
    """Grades keyed by lower-case name: file names match whatever the case of their extension."""
    return {k.lower(): g for k, g in grades.items()}


def parse_grade(text: str) -> int | None:
    """An integer grade from a table cell ("2" or "2.0"), or None."""
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return int(value) if value.is_integer() else None


def add_item(plan: Plan, image: Path, grade: int | None, split: str | None, masks: dict[str, Path | None],
             where: str) -> None:
    """Plan one image: graded 0..4 ones become items, the rest are skipped with the reason."""
    if (problem := id_problem(image.stem)) is not None:  # ids come from file names
        plan.skipped.append(f"{image}: {problem}")
        return
    if image.stem.lower() in plan.conflicting:  # its grading rows are reported
        return
    if grade is None:
        plan.skipped.append(f"{image}: no grade in {where} (an empty, missing or non-integer cell)")
        return
    if grade not in range(NUM_GRADES):
        plan.skipped.append(f"{image}: grade {grade} in {where} is not a DR grade 0..{NUM_GRADES - 1}")
        return
    plan.items.append(Item(image.stem, image, grade, split, {c: p for c, p in masks.items() if p is not None},
                           tuple(c for c, p in masks.items() if p is None)))


def carve_splits(items: list[Item], earlier: dict[str, str] | None = None) -> list[Item]:
    """Give training images a validation part (the grader needs one) and unsplit releases a test part.

    The release's own test (and val) images keep their split. Training images are carved by patient
    (`patient_id`: EyePACS's <n>_left and <n>_right go together): of each run of VAL_EVERY patients
    of a grade (their worst eye's), in id order, the second becomes val (so a small grade gets one
    too); without any release split, the fourth becomes test. An id an earlier run of the import
    carved (`earlier`: id -> split) keeps its part, and a new eye joins its patient's, so that an
    added image or a corrected grade moves no other image between train, val and test (a grader
    trained on one split would be validated on its training images).
    """
    earlier = earlier or {}
    unsplit = all(it.split is None for it in items)
    patients: dict[str, list[Item]] = {}
    for it in sorted(items, key=lambda it: it.id):
        patients.setdefault(patient_id(it.id), []).append(it)
    seen: Counter = Counter()
    out = []
    for eyes in patients.values():
        carved = [it for it in eyes if it.split in (None, "train")]
        out += [it for it in eyes if it not in carved]
        if not carved:
            continue
        grade = max(it.grade for it in carved)
        k = seen[grade] % VAL_EVERY  # kept patients count too, so that additions keep the shares
        seen[grade] += 1
        kept = [earlier[it.id] for it in carved if it.id in earlier]
        split = kept[0] if kept else "val" if k == 1 else "test" if unsplit and k == 3 else "train"
        out += [replace(it, split=earlier.get(it.id, split)) for it in carved]
    return sorted(out, key=lambda it: it.id)


def binarize(mask: np.ndarray) -> np.ndarray:
    """0/255 from an annotation mask: positive at >= 128 (anti-aliased edges), or 1 in a 0/1 mask."""
    positive = mask == 1 if mask.max() == 1 else mask >= 128
    return np.where(positive, 255, 0).astype(np.uint8)


def mask_stats(masks: dict[str, np.ndarray]) -> dict[str, tuple[int, int]]:
    """(pixels, connected components) per lesion channel."""
    out = {}
    for name in LESION_TYPES:
        m = masks.get(name)
        if m is None or not m.any():
            out[name] = (0, 0)
            continue
        positive = m > 0
        out[name] = (int(positive.sum()), int(ndimage.label(positive, structure=np.ones((3, 3), bool))[1]))
    return out


def _written_stats(out: Path, sid: str) -> dict[str, tuple[int, int]]:
    folder = out / "masks" / sid
    return mask_stats({n: read_mask(folder / f"{n}.png")[0] for n in LESION_TYPES if (folder / f"{n}.png").is_file()})


def source_signature(item: Item, root: Path) -> str:
    """The release files an id is converted from, by path under the release's folder `root` (one
    release however that was named), size and modification time: a file the release replaced (a
    corrected mask, say) changes it, as does a mask file added for the id. Contents are not
    hashed: a rerun would read the whole release for it, where a replaced or unpacked file gets a
    new time anyway (rsync's quick check judges files the same way)."""
    digest = hashlib.sha256()
    for name, path in sorted({"image": item.image, **item.masks}.items()):
        where = os.path.relpath(path, root)  # no file-system calls: one stat per file
        try:
            stat = path.stat()
            digest.update(f"{name}\0{where}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:  # gone since the scan: the conversion names it
            digest.update(f"{name}\0{where}\0missing\n".encode())
    return digest.hexdigest()[:16]


def convert(item: Item, out: Path, size: int, vessels: str,
            again: bool = False) -> tuple[str, dict[str, tuple[int, int]] | str]:
    """Import one image: ("done"|"new"|"again", per-channel stats) or ("skipped", reason). `again`:
    the release replaced a file of this converted id; its image goes first, so that a run killed
    before the new one is written leaves the id unfinished."""
    image_file = out / "images" / f"{item.id}.png"
    if again:
        image_file.unlink(missing_ok=True)
    elif image_file.is_file():
        return "done", _written_stats(out, item.id)
    try:
        image = read_rgb(item.image)[0]
        stack = np.zeros(image.shape[:2] + (len(COND_CHANNELS),), np.uint8)
        for channel, path in item.masks.items():
            stack[..., COND_CHANNELS.index(channel)] = binarize(read_mask(path, image.shape[:2])[0])
        check_has_content(image, item.image)
    except DrganError as exc:
        return "skipped", str(exc)
    image, stack = crop_and_resize(image, stack, size)
    masks = {name: stack[..., k] for k, name in enumerate(COND_CHANNELS)}
    if vessels == "extract" or "disc" not in item.masks:
        from drgan.data.masks import extract_structure

        structure = extract_structure(image)
        if vessels == "extract":
            masks["vessel"] = structure["vessel"]
        if "disc" not in item.masks:
            masks["disc"] = structure["disc"]
    folder = out / "masks" / item.id
    shutil.rmtree(folder, ignore_errors=True)     # left by a run killed before this image finished
    folder.mkdir(parents=True)
    for name, m in masks.items():
        if m.any():
            atomic_write_bytes(folder / f"{name}.png", encode_png(m))
    atomic_write_bytes(image_file, encode_png(image))   # last: marks the id finished
    return "again" if again else "new", mask_stats(masks)


def _remove_unlisted(out: Path, listed: set[str]) -> int:
    """Remove the converted files of ids an earlier run imported and this one does not: labels.csv
    is rewritten from this run, and an image it does not list makes the dataset invalid."""
    removed = 0
    for path in (out / "images").iterdir():
        if path.stem not in listed:
            path.unlink()
            removed += 1
    for folder in (out / "masks").iterdir():
        if folder.name in listed:
            continue
        if folder.is_dir():
            shutil.rmtree(folder)
        else:
            folder.unlink()
    return removed


def _record_rows(path: Path) -> list[dict[str, str]]:
    """The rows of one of the import's own CSV records (written whole, through a rename: damage
    comes from elsewhere); DrganError where the file is not UTF-8 CSV."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DrganError(f"{path}: damaged, not a CSV text file ({exc})") from None


def _write_sources(out: Path, sources: dict[str, str]) -> None:
    atomic_write_csv(out / SOURCES_FILE, ["id", "source"], sorted(sources.items()))


def _recorded_sources(out: Path, items: list[Item], signatures: dict[str, str],
                      report: ImportReport) -> tuple[dict[str, str], set[str]]:
    """id -> source signature of the ids an earlier run converted, and the converted ids whose
    release files changed since (or are not recorded). A folder imported before sources were
    recorded has its converted ids recorded as they are now (a file replaced before this run is
    not seen); a damaged record knows no source, so every converted id is converted again."""
    converted = {it.id for it in items if (out / "images" / f"{it.id}.png").is_file()}
    path = out / SOURCES_FILE
    if not path.is_file():
        recorded = {sid: signatures[sid] for sid in converted}
        _write_sources(out, recorded)
        return recorded, set()
    try:
        recorded = {row["id"]: row["source"] for row in _record_rows(path) if row.get("id") and row.get("source")}
    except DrganError as exc:
        recorded = {}
        report.notes.append(f"{exc}: every image converted again")
    again = {sid for sid in converted if recorded.get(sid) != signatures[sid]}
    # Only entries true of an image on disk stay: an id converted again and killed before its new
    # entry is saved must not meet its old one, should the release's file come back as it was.
    recorded = {sid: recorded[sid] for sid in converted - again}
    _write_sources(out, recorded)
    return recorded, again


def _convert_task(args: tuple[Item, Path, int, str, bool]) -> tuple[Item, str, dict | str]:
    item = args[0]
    return (item, *convert(*args))


@dataclass
class ImportReport:
    kind: str
    out: Path
    new: int = 0
    resumed: int = 0
    again: int = 0               # converted again: the release replaced one of their files
    grades: Counter = field(default_factory=Counter)
    splits: Counter = field(default_factory=Counter)
    lesions: dict[str, list[int]] = field(default_factory=lambda: {n: [0, 0, 0] for n in LESION_TYPES})
    missing: Counter = field(default_factory=Counter)   # channel -> imported images without its mask file
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def images(self) -> int:
        return self.new + self.resumed + self.again

    def render(self, limit: int | None = None) -> str:
        lines = [f"imported {self.images} {self.kind} image{'s' * (self.images != 1)} into {self.out}"
                 + (f" ({self.resumed} already there from an earlier run)" if self.resumed else "")]
        if self.again:
            lines.append(f"converted again: {self.again} (their release files changed since they were converted, "
                         "or were not recorded)")
        lines.append("grades: " + ", ".join(f"{g}: {self.grades[g]}" for g in range(NUM_GRADES)))
        lines.append("splits: " + ", ".join(f"{s}: {n}" for s, n in sorted(self.splits.items())))
        lines.append("lesions (pixels at the output size, components, images with any):")
        lines += [f"  {n:<9}{px:>12,} px {comp:>8,} components {imgs:>7,} images" for n, (px, comp, imgs) in self.lesions.items()]
        if self.missing:
            lines.append("mask files missing (read as empty): "
                         + ", ".join(f"{c}: {n}" for c, n in sorted(self.missing.items())))
        lines += [f"note: {n}" for n in self.notes]
        lines.append(f"skipped ({len(self.skipped)}):" if self.skipped else "skipped: none")
        lines += _skipped_lines(self.skipped, limit, f" (all in {self.out / REPORT_FILE})")
        return "\n".join(lines)


def _recorded_source(source: str, typed: str) -> Callable[[dict], dict]:
    """import.json as this version writes it: the source is the release's own folder, so `fg` and
    `fg/Seg-set` are one source; older records hold the folder given (`typed`), or none."""
    def upgrade(before: dict) -> dict:
        recorded = before.get("source", source)
        return {**before, "source": source if recorded == typed else recorded}
    return upgrade


def import_plan(kind: str, plan: Plan, source: Path, out: str | Path, size: int, vessels: str, workers: int,
                progress: bool = True) -> ImportReport:
    """Convert the release at `source`, scanned into `plan`, into the dataset at `out` and report
    what came in and what did not."""
    out = Path(out)
    if not MIN_SIDE <= size <= MAX_IMAGE_SIDE:
        raise ParameterError(f"{{size}} {size}: outside {MIN_SIDE}..{MAX_IMAGE_SIDE} px")
    if vessels not in VESSEL_MODES:
        raise ParameterError(f"{{vessels}} {vessels!r}: one of {', '.join(VESSEL_MODES)}")
    if not plan.items:
        _list_skipped(plan.skipped, plan.notes)
        raise DrganError(f"no importable images in the {kind} release ({len(plan.skipped)} skipped)")
    typed = str(source.resolve())
    options = {"kind": kind, "size": size, "vessels": vessels, "source": str((plan.root or source).resolve())}
    # The source is compared because finished ids are kept: another release's images would stay
    # under this one's grades. Grading tables are not: labels.csv is rewritten from them every run,
    # and the README's IDRiD recipe adds a table and reruns.
    # Nothing imported: a rerun, fixed release or other options, must not meet this one's half-made folder.
    undo = undone_on_failure(out, LABELS_FILE, failure=NothingImported)  # the folder as given
    with claimed_folder(out, IMPORT_FILE, options, "an import", upgrade=_recorded_source(options["source"], typed)), undo:
        (out / "images").mkdir(exist_ok=True)
        (out / "masks").mkdir(exist_ok=True)
        atomic_write_text(out / UNFINISHED, "data import\n")  # until labels.csv lists what was converted
        return _convert_all(kind, plan, plan.root or source, out, size, vessels, workers, progress)


def _carved_splits(out: Path, plan: Plan) -> dict[str, str]:
    """id -> split of the training images an earlier run of this import carved into train, val or
    test (those the release itself splits are not listed: they keep the release's split). An id
    labels.csv lost (a file unreadable in one run) keeps its part from CARVED_FILE, so that it
    comes back to it."""
    own = {it.id: it.split for it in plan.items}
    carved: dict[str, str] = {}
    if (out / CARVED_FILE).is_file():
        try:
            rows = _record_rows(out / CARVED_FILE)
        except DrganError as exc:  # carving afresh could move an id a grader already used to another part
            raise DrganError(f"{exc}; delete it to keep the parts labels.csv lists and carve the other ids "
                             "afresh, or restore it") from None
        carved = {row["id"]: row["split"] for row in rows if row.get("split") in ("train", "val", "test")}
    if (out / LABELS_FILE).is_file():
        rows, _ = read_labels(out)  # written by the earlier run: no problems to report
        carved |= {sid: split for sid, _, split in rows if split is not None}
    return {sid: split for sid, split in carved.items() if own.get(sid) in (None, "train")}


def _write_carved(out: Path, earlier: dict[str, str], items: list[Item], plan: Plan) -> None:
    """CARVED_FILE: the parts carved now, beside earlier ones of ids this run does not list."""
    own = {it.id: it.split for it in plan.items}
    carved = {**earlier, **{it.id: it.split for it in items if own[it.id] in (None, "train")}}
    atomic_write_csv(out / CARVED_FILE, ["id", "split"], sorted(carved.items()))


class NothingImported(DrganError):
    """No image of the release could be converted."""


def _skipped_lines(skipped: list[str], limit: int | None, all_in: str = "") -> list[str]:
    """The skipped items as indented lines, at most `limit`, then how many more (`all_in`: where all are)."""
    shown = skipped if limit is None else skipped[:limit]
    more = [f"  ... and {len(skipped) - len(shown)} more{all_in}"] if len(shown) < len(skipped) else []
    return [f"  {s}" for s in shown] + more


def _list_skipped(skipped: list[str], notes: list[str]) -> None:
    """Before the error of an import that brings in nothing: each skipped item, and the notes on the
    release (one may say why nothing came in: IDRiD's grading rows naming other images), which the
    report would give, written only with a dataset."""
    lines = (["skipped:", *_skipped_lines(skipped, SHOW_SKIPPED)] if skipped else []) + [f"note: {n}" for n in notes]
    if lines:
        print("\n".join(lines), file=sys.stderr)


def _convert_all(kind: str, plan: Plan, root: Path, out: Path, size: int, vessels: str, workers: int,
                 progress: bool) -> ImportReport:
    remove_temp_files(out)  # left by a killed run, images and masks alike
    counts = Counter(it.id for it in plan.items)
    report_skipped = [f"{it.image}: another image has the id {it.id!r}" for it in plan.items if counts[it.id] > 1]
    earlier = _carved_splits(out, plan)
    items = carve_splits([it for it in plan.items if counts[it.id] == 1], earlier)
    _write_carved(out, earlier, items, plan)
    report = ImportReport(kind, out, skipped=plan.skipped + report_skipped, notes=list(plan.notes))
    if apart := patients_apart((it.id, it.split) for it in items):  # a release's own split, or an earlier version's carve
        report.notes.append(f"{len(apart)} patient{'s' * (len(apart) > 1)} ({', '.join(apart[:3])}"
                            f"{', ...' if len(apart) > 3 else ''}) {'have' if len(apart) > 1 else 'has'} images in more than one split: the "
                            "release's split, or an import by an earlier version, which carved image by image "
                            "(an import into a new folder keeps carved eyes together)")
    signatures = {it.id: source_signature(it, root) for it in items}
    sources, again = _recorded_sources(out, items, signatures, report)
    tasks = [(it, out, size, vessels, it.id in again) for it in items]
    pool = None
    if workers > 1:
        from drgan.workers import process_pool
        pool = process_pool(workers, len(tasks))
        results = pool.imap_unordered(_convert_task, tasks)
    else:
        results = map(_convert_task, tasks)
    if progress:
        from tqdm import tqdm
        results = tqdm(results, total=len(tasks), desc=f"import {kind}", unit="img")
    finished: set[str] = set()
    lost = 0
    saved = time.monotonic()
    try:
        for item, status, result in results:
            if status == "skipped":
                report.skipped.append(str(result))
                lost += item.id in again   # its earlier image is gone with it
                continue
            finished.add(item.id)
            sources[item.id] = signatures[item.id]
            if time.monotonic() - saved > SOURCES_EVERY_S:  # a killed run converts again only what it had not saved
                _write_sources(out, sources)
                saved = time.monotonic()
            report.new += status == "new"
            report.resumed += status == "done"
            report.again += status == "again"
            report.grades[item.grade] += 1
            report.splits[item.split] += 1
            report.missing.update(item.missing)
            for name, (px, comp) in result.items():
                totals = report.lesions[name]
                totals[0] += px
                totals[1] += comp
                totals[2] += px > 0
    finally:
        if pool is not None:
            pool.terminate()
        _write_sources(out, sources)
    if not finished:
        _list_skipped(report.skipped, report.notes)
        raise NothingImported(f"no {kind} image could be imported ({len(report.skipped)} skipped)")
    if removed := _remove_unlisted(out, finished) + lost:
        report.notes.append(f"removed {removed} image(s) an earlier run imported that this one does not list "
                            "(a grade now missing or contradicted, a replaced file now unreadable, say)")
    atomic_write_csv(out / LABELS_FILE, ["id", "grade", "split"], ([it.id, it.grade, it.split] for it in items if it.id in finished))
    _write_sources(out, {sid: sources[sid] for sid in finished})
    atomic_write_text(out / REPORT_FILE, report.render() + "\n")
    (out / UNFINISHED).unlink()
    return report
