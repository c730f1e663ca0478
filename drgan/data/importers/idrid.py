"""IDRiD: A. Segmentation (81 images with lesion and optic-disc masks) graded by B. Disease Grading.

    A. Segmentation/1. Original Images/<set>/IDRiD_NN.jpg
    A. Segmentation/2. All Segmentation Groundtruths/<set>/<n. Lesion>/IDRiD_NN_{MA,HE,EX,SE,OD}.tif
    B. Disease Grading/2. Groundtruths/*.csv     "Image name", "Retinopathy grade", ...

<set> is "a. Training Set" or "b. Testing Set" (the split). A lesion file may be missing (no such
lesion). Grades are matched by exact image name only: the grading table's names come from the
516 grading images, and a number never stands in for a name.
"""
from __future__ import annotations

import re
from pathlib import Path

from drgan.data.importers.core import (GradeRow, Plan, add_item, files_by_stem, find_root, graded, header_rows,
                                        lower_keys, parse_grade, tables)
from drgan.errors import DrganError

SEG = "A. Segmentation"
IMAGES = f"{SEG}/1. Original Images"
TRUTHS = f"{SEG}/2. All Segmentation Groundtruths"
GRADES = "B. Disease Grading/2. Groundtruths"
SUFFIXES = {"MA": "ma", "HE": "he", "EX": "ex", "SE": "se", "OD": "disc"}     # file suffix -> channel
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
GRADING_NAME = re.compile(r"IDRiD_\d{3}", re.IGNORECASE)  # the grading images' names; the segmentation's have 2 digits
MASK_EXTS = (".tif", ".tiff", ".png")


def grade_rows(folder: Path, plan: Plan) -> list[GradeRow]:
    """The graded image names of every grading table of the release (rows not read go to `plan`)."""
    rows = []
    for table in tables(folder, "*.csv", "grading table (*.csv with 'Image name', 'Retinopathy grade')"):
        for line, row in header_rows(table, plan):
            if "image name" not in row or "retinopathy grade" not in row:
                raise DrganError(f"{table}: needs columns 'Image name' and 'Retinopathy grade'")
            if row["image name"]:
                rows.append(GradeRow(table, line, Path(row["image name"]).stem, parse_grade(row["retinopathy grade"])))
    return rows


def _split(set_name: str) -> str | None:
    name = set_name.lower()
    return "train" if "train" in name else "test" if "test" in name else None


def scan(src: Path) -> Plan:
    root = find_root(src, IMAGES, "IDRiD")
    plan = Plan(root)
    where = f"{GRADES}/*.csv"
    sets = []  # (set folder, its images by lower-case stem, its masks)
    for set_dir in sorted(p for p in (root / IMAGES).iterdir() if p.is_dir()):
        truths = root / TRUTHS / set_dir.name
        masks: dict[str, Path] = {}
        for lesion_dir in sorted(p for p in truths.iterdir() if p.is_dir()) if truths.is_dir() else []:
            masks.update(files_by_stem(lesion_dir, MASK_EXTS, plan))
        sets.append((set_dir, files_by_stem(set_dir, IMAGE_EXTS, plan), masks))
    # The published tables grade the 516 grading images, whose training and testing tables both
    # number from IDRiD_001: those rows name no segmentation image and are not read (each would be
    # a "no image" line, and a name in both tables a false conflict). Added rows for the
    # segmentation images are (the README's recipe).
    names = {key for _, found, _ in sets for key in found}
    used, theirs = [], 0
    for row in grade_rows(root / GRADES, plan):
        if row.name.lower() in names:
            used.append(row)
        elif GRADING_NAME.fullmatch(row.name):
            theirs += 1
        else:  # another name (a typo in a table added for the segmentation images) is listed
            plan.skipped.append(f"{row.table}:{row.line}: {row.name} names no image in {root / IMAGES}")
    if theirs:
        rows = "1 grading row names" if theirs == 1 else f"{theirs} grading rows name"
        plan.notes.append(f"{where}: {rows} the grading images (IDRiD_NNN), none of the segmentation images; not read")
    lookup = lower_keys(graded(plan, used))
    for set_dir, found, masks in sets:
        for key, image in found.items():
            add_item(plan, image, lookup.get(key), _split(set_dir.name),
                     {ch: masks.get(f"{key}_{sfx.lower()}") for sfx, ch in SUFFIXES.items()}, where)
    if not plan.items and not plan.skipped:
        raise DrganError(f"{root / IMAGES}: no images in its set folders (a. Training Set, b. Testing Set)")
    return plan
