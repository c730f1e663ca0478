"""The grades-only Kaggle releases: EyePACS (trainLabels.csv, train/*.jpeg) and APTOS 2019
(train.csv, train_images/*.png). Their labelled images are all the competitions' training part."""
from __future__ import annotations

from pathlib import Path

from drgan.data.importers.core import (GradeRow, Plan, add_item, files_by_stem, find_root, graded, header_rows,
                                        lower_keys, parse_grade)
from drgan.errors import DrganError

IMAGE_EXTS = (".jpeg", ".jpg", ".png")


def scan_table(src: Path, what: str, table: str, image_dir: str, id_col: str, grade_col: str) -> Plan:
    """Images of `image_dir` graded by the `id_col`, `grade_col` columns of `table`."""
    root = find_root(src, table, what)
    path = root / table
    plan = Plan(root)
    rows = header_rows(path, plan)
    if rows and not {id_col, grade_col} <= rows[0][1].keys():
        raise DrganError(f"{path}: needs columns {id_col},{grade_col}")
    grades = graded(plan, [GradeRow(path, line, Path(r[id_col]).stem, parse_grade(r[grade_col]))
                           for line, r in rows if r[id_col]])
    if not (root / image_dir).is_dir():
        raise DrganError(f"{root / image_dir}: image folder not found")
    images = files_by_stem(root / image_dir, IMAGE_EXTS, plan)
    lookup = lower_keys(grades)
    for key, image in images.items():
        add_item(plan, image, lookup.get(key), "train", {}, table)
    plan.unlisted(grades, images, root / image_dir, table)
    return plan


def scan_eyepacs(src: Path) -> Plan:
    return scan_table(src, "EyePACS (Kaggle Diabetic Retinopathy Detection)", "trainLabels.csv", "train", "image", "level")


def scan_aptos(src: Path) -> Plan:
    return scan_table(src, "APTOS 2019", "train.csv", "train_images", "id_code", "diagnosis")
