"""FGADR Seg-set: Original_Images/, one folder of masks per lesion type, a grading CSV.

Masks share their image's file name. They are L or RGB with anti-aliased edges (binarized in
core). IRMA has no condition channel and is left out; neovascularisation goes to `membrane`
(README, "Training on your data", says why).
"""
from __future__ import annotations

import csv
from pathlib import Path

from drgan.data.importers.core import (GradeRow, Plan, add_item, files_by_stem, find_root, graded, lower_keys,
                                        parse_grade, read_lines, tables, too_long)
from drgan.io import csv_rows

IMAGE_DIR = "Original_Images"
MASK_DIRS = {                       # release folder -> condition channel
    "Microaneurysms_Masks": "ma",
    "Hemohedge_Masks": "he",        # sic: the release's spelling
    "HardExudate_Masks": "ex",
    "SoftExudate_Masks": "se",
    "Neovascularization_Masks": "membrane",
}
UNMAPPED_DIRS = ("IRMA_Masks",)
EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def grade_rows(path: Path, plan: Plan) -> list[GradeRow]:
    """The graded image stems of the release's CSV (no header; a header row is tolerated).

    A row without a grade cell reads as an empty grade, reported with its image; one with more
    fields than a name and a grade is reported and not read (`too_long`).
    """
    reader = csv.reader(read_lines(path))
    rows = [(reader.line_num, r) for r in csv_rows(reader, path)]
    if rows and len(rows[0][1]) >= 2 and parse_grade(rows[0][1][1]) is None:
        rows = rows[1:]
    return [GradeRow(path, line, Path(r[0].strip()).stem, parse_grade(r[1]) if len(r) >= 2 else None)
            for line, r in rows if r and r[0].strip() and not too_long(plan, path, line, r[2:], 2)]


def scan(src: Path) -> Plan:
    root = find_root(src, IMAGE_DIR, "FGADR Seg-set")
    grading = tables(root, "*.csv", f"grading CSV (image name, grade) beside {IMAGE_DIR}/")
    plan = Plan(root)
    grades = graded(plan, [row for table in grading for row in grade_rows(table, plan)])
    images = files_by_stem(root / IMAGE_DIR, EXTS, plan)
    masks = {ch: files_by_stem(root / d, EXTS, plan) for d, ch in MASK_DIRS.items()}
    for d in UNMAPPED_DIRS:
        n = len(files_by_stem(root / d, EXTS, Plan()))
        if n:
            plan.notes.append(f"{d}: {n} mask files not imported (no condition channel for IRMA)")
    where = ", ".join(t.name for t in grading)
    lookup = lower_keys(grades)
    for key, image in images.items():
        add_item(plan, image, lookup.get(key), None, {ch: m.get(key) for ch, m in masks.items()}, where)
    plan.unlisted(grades, images, root / IMAGE_DIR, where)
    return plan
