"""A set folder's fingerprint: everything that decides its bytes, recorded before the first image.

A rerun into the same folder resumes only when its fingerprint is the same; otherwise it stops
and says what differs, so images of two different setups never mix in one set.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

from drgan.errors import DrganError
from drgan.locks import only_locks_and_temps

FILE_NAME = "fingerprint.json"


def lesion_stats_id(path: str | None) -> str:
    """'default' or the sha256 of the statistics as loaded (formatting does not matter)."""
    if path is None:
        return "default"
    from drgan.data.lesion_stats import LesionStats

    canonical = json.dumps(LesionStats.load(path).to_dict(), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _show(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    if len(text) <= 24:
        return text
    # hashes: the start tells them apart; a string keeps its closing quote
    return json.dumps(value[:12] + "...") if isinstance(value, str) else text[:12] + "..."


def _shown_in(values: dict, key: str) -> str:
    """A key's value as a difference names it; a key recorded on one side only is "not set" on the
    other (an opt-in such as fp8_attention is recorded only when on), not JSON's null."""
    return _show(values[key]) if key in values else "not set"


def _flat(d: dict, prefix: str = "") -> dict:
    """{"structures": {"seed": 0}} -> {"structures.seed": 0}: a difference names the inner key."""
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


# What a difference comes from, where its key alone does not say.
_WHY = {"structures.sha256": ": the masks as loaded differ (another dataset or --structures-split, the other --loader "
                             "resizing them, or a set begun before its field of view was read from the photographs)",
        "lesions_drawn_at": ": lesions are drawn at the side of the run's training images and resampled, as it saw them "
                            "(a set begun by an earlier version drew them at the run's resolution, hard)"}


def check(root: Path, fingerprint: dict) -> bool:
    """Whether root already holds a set with this fingerprint (False: root is new or empty).

    Raises when root holds anything else: a set made otherwise, or files of no set.
    """
    path = root / FILE_NAME
    if path.is_file():
        try:
            recorded = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise DrganError(f"{path}: damaged set fingerprint; write the set to a new folder") from None
        recorded, now = _flat(recorded), _flat(fingerprint)
        differ = [k for k in sorted(set(recorded) | set(now)) if recorded.get(k) != now.get(k)]
        if differ:
            what = ", ".join(f"{k} {_shown_in(recorded, k)} there, {_shown_in(now, k)} now{_WHY.get(k, '')}" for k in differ)
            raise DrganError(f"{root}: holds a set made with another setup ({what}); write to a new folder or delete it")
        return True
    # Locks and temp files (another shard starting this set, or a killed writer's) make no set.
    if root.is_dir() and not only_locks_and_temps(root):
        raise DrganError(f"{root}: not empty and not a synthesized set (no {FILE_NAME}); write to a new or empty folder")
    if root.exists() and not root.is_dir():
        raise DrganError(f"{root}: exists and is not a folder")
    return False


def record(root: Path, fingerprint: dict, write: Callable[[Path, bytes], None]) -> None:
    write(root / FILE_NAME, (json.dumps(fingerprint, indent=1, sort_keys=True) + "\n").encode())
