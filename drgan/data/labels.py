"""DATASET/labels.csv: its rows (id, grade, split), their problems, and the split of a row without one."""
from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path
from typing import Iterable

from drgan.config import NUM_GRADES
from drgan.errors import DrganError
from drgan.io import check_regular_file, csv_rows

LABELS_FILE = "labels.csv"
SPLITS = ("train", "val", "test")
VAL_FRACTION = 0.1      # rows without a split: this share goes to "val" by a hash of the id
# An id names files (images/<id>.png, masks/<id>/) and their temp siblings, which add about 40
# bytes (drgan.io.temp_path): 200 bytes keeps every name under the file systems' 255.
MAX_ID_BYTES = 200
EYE_SUFFIXES = ("_left", "_right")  # EyePACS names a patient's two photographs <patient>_left, <patient>_right


def patient_id(sid: str) -> str:
    """The patient of an image id: the id less a trailing `_left` or `_right` (any case), else the
    id itself. Splits keep a patient's eyes together: the two eyes of one person look alike and
    usually share a grade, so one in train and the other in val or test would score a grader on
    what it has seen."""
    low = sid.lower()
    for suffix in EYE_SUFFIXES:
        if low.endswith(suffix) and len(sid) > len(suffix):
            return sid[:-len(suffix)]
    return sid


def patients_apart(splits: Iterable[tuple[str, str | None]]) -> list[str]:
    """The patients (patient_id) whose ids, given with their splits, lie in more than one split."""
    found: dict[str, set[str | None]] = {}
    for sid, split in splits:
        found.setdefault(patient_id(sid), set()).add(split)
    return sorted(p for p, parts in found.items() if len(parts) > 1)


def hash_split(sid: str) -> str:
    """The split of a row without one: "val" for the ids whose patient's sha256 falls in the first
    10%, else "train". Depends on the id alone, so it is stable when rows are added or reordered,
    and a patient's eyes share it."""
    return _split_of_key(patient_id(sid))


def _split_of_key(key: str) -> str:
    fraction = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    return "val" if fraction < VAL_FRACTION else "train"


def moved_by_patient(root: Path) -> list[str]:
    """The ids of DATASET/labels.csv's rows without a split that `hash_split` puts in another split
    than earlier versions did (they hashed the id, not its patient): a run or experiment begun by
    one of those must not resume with them moved."""
    if not (root / LABELS_FILE).is_file():
        return []
    rows, _ = read_labels(root)
    return [sid for sid, _, split in rows if split is None and hash_split(sid) != _split_of_key(sid)]


def id_problem(sid: str) -> str | None:
    """Why `sid` cannot be a sample id (it names files), or None."""
    if not sid or "/" in sid or "\\" in sid or sid.startswith("."):
        return f"invalid id {sid[:40]!r}"
    if any(ord(c) < 32 or ord(c) == 127 for c in sid):
        return f"id {sid[:40]!r} holds a control character"
    if sid != sid.strip():  # labels.csv cells are read stripped: the id would not find its files
        return f"id {sid[:40]!r} begins or ends with a space"
    if len(sid.encode()) > MAX_ID_BYTES:
        return f"id {sid[:20]!r}... is {len(sid.encode())} bytes long (at most {MAX_ID_BYTES}: ids are file names)"
    return None


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
    reader = csv_rows(csv.reader(io.StringIO(text)), path)
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
        problem = id_problem(sid)
        if problem is not None:
            problems.append((None, f"{where}: {problem}"))
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
