"""DDR: lesion_segmentation/ (757 images with EX, HE, MA, SE masks) graded by DR_grading/*.txt.

    lesion_segmentation/{train,valid,test}/image/<name>.jpg
    lesion_segmentation/{train,test}/label/{EX,HE,MA,SE}/<name>.tif
    lesion_segmentation/valid/segmentation label/{EX,HE,MA,SE}/<name>.tif   (the release's own name there)
    DR_grading/{train,valid,test}.txt            "<name>.jpg <grade>" lines; grade 5 = ungradable

Ungradable images are left out and counted in the report.
"""
from __future__ import annotations

from pathlib import Path

from drgan.data.importers.core import (GradeRow, Plan, add_item, files_by_stem, find_root, graded, lower_keys,
                                        parse_grade, read_lines, tables, too_long)
from drgan.errors import DrganError

SEG = "lesion_segmentation"
GRADING = "DR_grading"
SPLITS = {"train": "train", "valid": "val", "test": "test"}     # release folder -> split
LESIONS = {"MA": "ma", "HE": "he", "EX": "ex", "SE": "se"}       # label folder -> channel
LABEL_DIRS = ("label", "segmentation label")                     # the masks' folder: train/test, valid
UNGRADABLE = 5
IMAGE_EXTS = (".jpg", ".jpeg", ".png")
MASK_EXTS = (".tif", ".tiff", ".png")


def grade_rows(folder: Path, plan: Plan) -> list[GradeRow]:
    """The graded image stems of every DR_grading/*.txt.

    A line without a grade reads as an empty grade, reported with its image; one with more than a
    name and a grade is reported and not read (`too_long`).
    """
    rows = []
    for table in tables(folder, "*.txt", "grading lists (train.txt, valid.txt, test.txt)"):
        for number, line in enumerate(read_lines(table), 1):
            parts = line.split()
            if parts and not too_long(plan, table, number, parts[2:], 2):
                grade = parse_grade(parts[1]) if len(parts) >= 2 else None
                rows.append(GradeRow(table, number, Path(parts[0]).stem, grade))
    return rows


def scan(src: Path) -> Plan:
    root = find_root(src, SEG, "DDR")
    plan = Plan(root)
    grades = lower_keys(graded(plan, grade_rows(root / GRADING, plan)))
    where = f"{GRADING}/*.txt"
    for folder, split in SPLITS.items():
        part = root / SEG / folder
        if not part.is_dir():
            continue
        labels = next((part / d for d in LABEL_DIRS if (part / d).is_dir()), part / LABEL_DIRS[0])
        masks = {ch: files_by_stem(labels / name, MASK_EXTS, plan) for name, ch in LESIONS.items()}
        for key, image in files_by_stem(part / "image", IMAGE_EXTS, plan).items():
            if grades.get(key) == UNGRADABLE:
                plan.skipped.append(f"{image}: ungradable (grade {UNGRADABLE} in {where})")
                continue
            add_item(plan, image, grades.get(key), split, {ch: m.get(key) for ch, m in masks.items()}, where)
    if not plan.items and not plan.skipped:
        raise DrganError(f"{root / SEG}: no images in {', '.join(f'{f}/image/' for f in SPLITS)}")
    return plan
