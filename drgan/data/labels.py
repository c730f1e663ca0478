"""DATASET/labels.csv: its rows (id, grade, split), their problems, and the split of a row without one."""
from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path

from drgan.config import NUM_GRADES
from drgan.errors import DrganError
from drgan.io import check_regular_file

LABELS_FILE = "labels.csv"
SPLITS = ("train", "val", "test")
VAL_FRACTION = 0.1      # rows without a split: this share goes to "val" by a hash of the id


def hash_split(sid: str) -> str:
    """The split of a row without one: "val" for the ids whose sha256 falls in the first 10%,
    else "train". Depends on the id alone, so it is stable when rows are added or reordered."""
    fraction = int.from_bytes(hashlib.sha256(sid.encode()).digest()[:8], "big") / 2**64
    return "val" if fraction < VAL_FRACTION else "train"


def read_labels(root: Path) -> tuple[list[tuple[str, int, str | None]], list[tuple[str | None, str]]]:
    """Rows (id, grade, split) and problems (id or None, message) of DATASET/labels.csv."""
    path = root / LABELS_FILE
    if not path.exists():
        raise DrganError(f"{path}: labels file not found (need columns id,grade[,split])")
    check_regular_file(path)
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
