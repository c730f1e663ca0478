"""The validation report of a dataset folder (`drgan data validate`): every file decoded and checked."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from drgan.config import COND_CHANNELS
from drgan.data.decode import open_image
from drgan.data.format import check_finished, scan_dataset
from drgan.data.labels import LABELS_FILE, hash_split, patients_apart, read_labels
from drgan.errors import DrganError


@dataclass
class ValidationReport:
    root: Path
    checked: int                  # rows of labels.csv (blank ones aside), good or bad
    ok: int                       # samples that can be used
    problems: list[str]           # one line each
    notes: list[str]              # safe conversions that readers apply
    grades: dict[int, int]        # usable samples per grade
    splits: dict[str, int]        # usable samples per split ("-" for none)
    masks: dict[str, int]         # usable samples with a file of each mask (COND_CHANNELS order)
    apart: list[str]              # patients (labels.patient_id) with usable samples in more than one split

    def to_dict(self) -> dict:
        return {"root": str(self.root), "checked": self.checked, "ok": self.ok, "problems": self.problems, "notes": self.notes,
                "grades": {str(g): n for g, n in sorted(self.grades.items())}, "splits": dict(sorted(self.splits.items())), "masks": self.masks,
                "patients_in_several_splits": self.apart}

    def render(self) -> str:
        lines = [f"dataset {self.root}: {self.ok} usable samples of {self.checked} rows in {LABELS_FILE}"]
        lines.append("grades: " + ", ".join(f"{g}: {n}" for g, n in sorted(self.grades.items())))
        named = [f"{s}: {n}" for s, n in sorted(self.splits.items()) if s != "-"]
        if "-" in self.splits:  # what the readers do with them (drgan.data.format)
            named.append(f"none given: {self.splits['-']} (split 90/10 into train/val by a hash of the id's patient)")
        lines.append("splits: " + ", ".join(named))
        if self.apart:  # a grader validated or tested on one eye has trained on the other
            lines.append(f"patients with images in more than one split ({len(self.apart)}): {', '.join(self.apart[:5])}"
                         + (", ..." if len(self.apart) > 5 else ""))
        if any(self.masks.values()):
            lines.append("mask files: " + ", ".join(f"{c}: {n}" for c, n in self.masks.items()))
        elif self.ok:  # a grader trains on photographs alone; the GAN draws from the masks
            lines.append("mask files: none (a grader trains without them; `drgan train gan` needs vessel masks)")
        if self.notes:
            lines.append(f"converted ({len(self.notes)}):")
            lines += [f"  {n}" for n in self.notes]
        if self.problems:
            lines.append(f"problems ({len(self.problems)}):")
            lines += [f"  {p}" for p in self.problems]
        else:
            lines.append("no problems")
        return "\n".join(lines)


def validate_dataset(root: str | Path) -> ValidationReport:
    """Decode and check every file of a dataset; never raises for bad samples, only for a bad layout."""
    root = Path(root)
    check_finished(root)  # not a dataset with problems: one that is still being written
    try:
        samples, found, notes = scan_dataset(root, skip_bad=True, split=None, decode=True)
        problems = [message for _, message in found]
    except DrganError as exc:  # an unreadable labels.csv, say: reported as the dataset's one problem
        if not (root / "images").is_dir() or not (root / LABELS_FILE).is_file():
            raise
        samples, problems, notes = [], [str(exc)], []
    if not samples and not problems:  # e.g. a labels.csv of its header alone
        problems.append(f"{root}: no usable samples")
    try:
        checked = sum(map(len, read_labels(root)))
    except DrganError:
        checked = 0
    for s in samples:   # non-square photographs are normal input: report the crop readers apply
        with open_image(s.image) as img:
            if img.size[0] != img.size[1]:
                notes.append(f"{s.image}: non-square {img.size[0]}x{img.size[1]}, cropped to the field of view and padded")
    grades: dict[int, int] = {}
    splits: dict[str, int] = {}
    for s in samples:
        grades[s.grade] = grades.get(s.grade, 0) + 1
        splits[s.split or "-"] = splits.get(s.split or "-", 0) + 1
    masks = {c: sum(c in s.masks for s in samples) for c in COND_CHANNELS}
    apart = patients_apart((s.id, s.split or hash_split(s.id)) for s in samples)  # as the readers split them
    return ValidationReport(root, checked, len(samples), problems, notes, grades, splits, masks, apart)
