"""Importers of the public diabetic-retinopathy releases into the dataset format (`drgan data import`)."""
from __future__ import annotations

from pathlib import Path

from drgan.data.importers import ddr, fgadr, idrid, kaggle
from drgan.data.importers.core import ImportReport, import_plan
from drgan.errors import DrganError

SCANNERS = {
    "fgadr": fgadr.scan,
    "idrid": idrid.scan,
    "ddr": ddr.scan,
    "eyepacs": kaggle.scan_eyepacs,
    "aptos": kaggle.scan_aptos,
}


def import_release(kind: str, src: str | Path, out: str | Path, size: int = 1280, vessels: str = "extract",
                   workers: int = 0, progress: bool = True) -> ImportReport:
    """Import the release `kind` unpacked at `src` into the dataset folder `out` (resumable)."""
    if kind not in SCANNERS:
        raise DrganError(f"unknown release {kind!r}; one of {', '.join(SCANNERS)}")
    return import_plan(kind, SCANNERS[kind](Path(src)), Path(src), out, size, vessels, workers, progress)
