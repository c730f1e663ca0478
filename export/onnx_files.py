"""ONNX model files on disk: the external weights beside a model, and writing the pair atomically.

Kept free of torch so that the ONNX-only tools (drgan.export.onnx_plugin) import without it.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

from drgan.io import temp_path, write_error


def data_path(path: Path) -> Path:
    """The external weights file the exporter writes beside `path`."""
    return path.with_name(path.name + ".data")


def save_atomically(path: Path, save: Callable[[Path], None], external_data: bool,
                    check: Callable[[Path], None] | None = None) -> None:
    """`save(file)` writes the model (and its .data) into a private folder beside `path`, `check(file)`
    (when given) raises if it is unusable; each file is then renamed into place. The external data
    file is referenced by its base name, so the pair stays valid after the move. A failed write
    (disk full) is one error; a rerun removes the folder of a killed export (drgan.io.remove_temp_files)."""
    tmp = temp_path(path)
    tmp.mkdir(parents=True)
    try:
        save(tmp / path.name)
        if check is not None:
            check(tmp / path.name)
        if not external_data:
            data_path(path).unlink(missing_ok=True)  # a stale weights file from an earlier export
        for f in tmp.iterdir():
            os.replace(f, path.parent / f.name)
    except OSError as exc:
        raise write_error(path, exc) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
