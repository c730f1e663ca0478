"""Training state for exact resume: `state.json` (counters, hyper-parameters, scaler, Python RNG)
beside `state.safetensors` (optimizer moments, torch/numpy RNG states). No pickle anywhere.

A checkpoint is all or nothing: its files are written into a temp folder, flushed to disk, and the
folder is renamed to RUN/checkpoint.next in one step; only then do its files replace RUN's, one by
one, and a resume first finishes that move (`recover_checkpoint`). A crash or a full disk at any point
leaves RUN's previous checkpoint or a complete new one. Every weights file also carries its step in
the safetensors metadata, so a folder mixed by other means is refused on resume.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from drgan.checkpoint import load_metadata, load_tensors, save_tensors
from drgan.io import atomic_write_json, fsync_folder, remove_temp_files, temp_path, write_error
from drgan.errors import DrganError
from drgan.runs import NEXT_CHECKPOINT, STATE_JSON, STATE_TENSORS, has_checkpoint, require_checkpoint


def optimizer_to_state(opt: torch.optim.Optimizer, prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Moments go into `tensors` as PREFIX.PARAM.NAME; everything else is returned as JSON."""
    sd = opt.state_dict()
    plain: dict[str, dict[str, Any]] = {}
    for idx, entry in sd["state"].items():
        plain[str(idx)] = {}
        for name, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.{idx}.{name}"] = value
            else:
                plain[str(idx)][name] = value
    return {"param_groups": sd["param_groups"], "state": plain}


def optimizer_from_state(opt: torch.optim.Optimizer, prefix: str, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in meta["state"].items()}
    for key, value in tensors.items():
        if key.startswith(prefix + "."):  # the file holds other tensors too (weights, RNG states)
            idx, name = key.removeprefix(prefix + ".").split(".", 1)
            state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def rng_state(device: torch.device) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """This process's Python, numpy, torch (and CUDA) generator states."""
    np_state = np.random.get_state()
    plain = {"python": _to_json(random.getstate()), "numpy": [np_state[0], *map(_to_json, np_state[2:])]}
    tensors = {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(np_state[1].astype(np.int64))}
    if device.type == "cuda":
        tensors["cuda"] = torch.cuda.get_rng_state(device)
    return plain, tensors


def set_rng_state(plain: dict[str, Any], tensors: dict[str, torch.Tensor], device: torch.device) -> None:
    random.setstate(_to_tuple(plain["python"]))
    name, *rest = plain["numpy"]
    np.random.set_state((name, tensors["numpy"].numpy().astype(np.uint32), *rest))
    torch.set_rng_state(tensors["torch"])
    if device.type == "cuda" and "cuda" in tensors:
        torch.cuda.set_rng_state(tensors["cuda"], device)


def save_state(run: Path, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Write the tensors first and the JSON last: state.json is the commit mark of a checkpoint."""
    save_tensors(tensors, run / STATE_TENSORS, metadata={"step": str(meta["step"])})
    atomic_write_json(run / STATE_JSON, meta, sort_keys=True)


def write_checkpoint(run: Path, write: Callable[[Path], None]) -> None:
    """`write(folder)` writes a whole checkpoint into a temp folder, which then becomes RUN's."""
    finish_checkpoint(run)
    next_folder = run / NEXT_CHECKPOINT
    tmp = temp_path(next_folder)
    try:
        tmp.mkdir()
        write(tmp)
        fsync_folder(tmp)
        os.replace(tmp, next_folder)  # the commit: from here on the new checkpoint is the one
        fsync_folder(run)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_error(next_folder, exc) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finish_checkpoint(run)


def finish_checkpoint(run: Path) -> None:
    """Move a committed RUN/checkpoint.next into RUN (state.json last); nothing to do without one."""
    next_folder = run / NEXT_CHECKPOINT
    if not next_folder.is_dir():
        return
    for path in sorted(next_folder.iterdir(), key=lambda p: p.name == STATE_JSON):
        os.replace(path, run / path.name)
    fsync_folder(run)
    next_folder.rmdir()


def kept_checkpoint(run: Path) -> str:
    """What a failed run leaves to resume from, for its error message."""
    return f"the last checkpoint in {run} is kept" if has_checkpoint(run) else "nothing saved"


def recover_checkpoint(run: Path) -> None:
    """Before a resume: finish moving a committed checkpoint into RUN, and remove the temp folder of
    one that a killed run had not committed."""
    finish_checkpoint(run)
    remove_temp_files(run, recursive=False)


_DAMAGED_WAY_ON = "restore the file, or start the run over with --overwrite"


def load_state(run: Path, fields: dict[str, type]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """state.json, which must hold `fields` (name: type; ints >= 0), and state.safetensors."""
    require_checkpoint(run)
    path = run / STATE_JSON
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DrganError(f"{path}: malformed training state ({exc})") from None
    bad = [k for k, kind in fields.items() if not isinstance(meta, dict) or not _is(meta.get(k), kind)]
    if bad:
        raise DrganError(f"{path}: damaged training state (missing or invalid: {', '.join(bad)}); {_DAMAGED_WAY_ON}")
    check_step(run / STATE_TENSORS, meta["step"])
    return meta, load_tensors(run / STATE_TENSORS)


def _is(value: Any, kind: type) -> bool:
    if kind is int:  # a count: bool is an int to Python, not to a checkpoint
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return isinstance(value, kind)


@contextlib.contextmanager
def restoring(run: Path) -> Iterator[None]:
    """Restoring optimizer and RNG states from a checkpoint whose fields have the right types but
    inner values that do not fit (a hand-edited state.json): one error naming the file."""
    try:
        yield
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
        raise DrganError(f"{run / STATE_JSON}: damaged training state ({type(exc).__name__}: {exc}); "
                         f"{_DAMAGED_WAY_ON}") from None


def check_step(path: Path, step: int) -> None:
    """A checkpoint file must belong to the step recorded in state.json."""
    if not path.is_file():
        raise DrganError(f"{path}: missing from the checkpoint")
    written = load_metadata(path).get("step")
    if written != str(step):
        raise DrganError(f"{path}: written at step {written}, but state.json is at step {step} (checkpoint cut short)")


def _to_json(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_to_json(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _to_tuple(value: Any) -> Any:
    return tuple(_to_tuple(v) for v in value) if isinstance(value, list) else value
