"""Run folders: their file names, metadata, which weights to load, and what kind a folder is.

A run folder (`--out RUN` of the train commands, `--run RUN` elsewhere) holds:

    RUN/run.json                  {"model": ModelConfig, "stage", "options": {"trainer": "gan"|"grader", ...},
                                   "resolution" and "data" (grader: input side in px, dataset path),
                                   "dataset" (sha256 of labels.csv and of the files' names and sizes)}
    RUN/environment.json          versions and device the GAN run trained with
    RUN/G.safetensors             generator weights (GAN run; what synthesis uses without --ema)
    RUN/G_ema.safetensors         exponential moving average of G (with --ema; then what synthesis uses)
    RUN/D.safetensors             discriminator weights
    RUN/grader.safetensors        grader weights (grader run)
    RUN/grading_space.safetensors grading spaces (written by the grader run, copied in by the GAN run)
    RUN/state.json + state.safetensors   training state (GAN: step, epoch, optimizer, scaler, RNG;
                                  grader: epochs done and their reports, weights, optimizer, RNG)
    RUN/checkpoint.next/          a committed checkpoint not yet moved into RUN (see drgan.training.state)
    RUN/logs/, RUN/samples/       TensorBoard events; per-grade image grids (GAN run)
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from drgan import locks
from drgan.config import ModelConfig, STAGES
from drgan.data.labels import LABELS_FILE, moved_by_patient
from drgan.errors import DrganError, ParameterError
from drgan.io import (atomic_write_json, check_outside, check_writable_dir, durable_write_bytes, json_bytes, remove_temp_files,
                      sha256_file)

RUN_FILE = "run.json"
STATE_JSON = "state.json"            # a checkpoint's metadata, written last (drgan.training.state)
STATE_TENSORS = "state.safetensors"  # a checkpoint's optimizer and RNG tensors
NEXT_CHECKPOINT = "checkpoint.next"  # a committed checkpoint not yet moved into the run
GRADER_FILE = "grader.safetensors"
WEIGHT_FILES = {"G": "G.safetensors", "G_ema": "G_ema.safetensors", "D": "D.safetensors"}
KINDS = ("gan", "grader")


@dataclass
class RunInfo:
    """What run.json records besides the weights."""

    cfg: ModelConfig
    stage: str
    options: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)  # "resolution", "dataset", ...

    @property
    def kind(self) -> str | None:
        return self.options.get("trainer")


def write_run_config(run: str | Path, cfg: ModelConfig, stage: str, options: dict[str, Any] | None = None,
                     **extra: Any) -> None:
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    data = {"model": cfg.to_dict(), "stage": stage, "options": options or {}, **extra}
    atomic_write_json(run / RUN_FILE, data, sort_keys=True)


def read_run(run: str | Path) -> RunInfo:
    path = Path(run) / RUN_FILE
    if not Path(run).exists():
        raise DrganError(f"{run}: run folder not found")
    if Path(run).is_file():
        raise DrganError(f"{run}: is a file, expected a run folder")
    if not path.is_file():
        raise DrganError(f"{run}: not a drgan run folder (no {RUN_FILE})")
    try:
        data = json.loads(path.read_text())
        info = RunInfo(ModelConfig.from_dict(data.pop("model")), data.pop("stage"), data.pop("options", {}), data)
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise DrganError(f"{path}: malformed run config ({exc})") from None
    except DrganError as exc:  # the model config's own checks
        raise DrganError(f"{path}: {exc}") from None
    if info.stage not in STAGES:
        raise DrganError(f"{path}: unknown stage {info.stage!r}")
    return info


def dataset_record(data: str | Path | None) -> dict[str, Any]:
    """What run.json records of the dataset a run trains on, for `check_same_dataset`: the sha256 of
    its labels.csv, and of its files' listing, and that rows without a split go by patient ({}
    without labels.csv)."""
    labels = Path(data) / LABELS_FILE if data else None
    if labels is None or not labels.is_file():
        return {}
    return {"dataset": {"labels_sha256": sha256_file(labels), "files_sha256": _files_sha256(Path(data)),
                        "split_by": "patient", "image_side": _image_side(Path(data))}}


def _image_side(data: Path, sample: int = 64) -> int | None:
    """The median larger side of up to `sample` of the dataset's images, evenly spread over their
    names, from their headers: how finely its masks were drawn before training resampled them (an
    imported dataset is cropped to the field of view; a photograph with wide black borders reads
    a little larger than the crop training resizes)."""
    from drgan.data.decode import open_image

    images = sorted(p for p in (data / "images").glob("*") if p.is_file() and not p.name.startswith("."))
    sides = []
    for path in images[::max(1, len(images) // sample)][:sample]:
        try:
            with open_image(path) as img:
                sides.append(max(img.size))
        except DrganError:  # the readers name a bad file when they reach it
            continue
    return int(np.median(sides)) if sides else None


def _files_sha256(data: Path) -> str:
    """The sha256 of each image and mask file's relative path and size. Two datasets of the same ids
    and grades share their labels.csv (phantoms of another seed, an import at another size); their
    compressed files differ in size. Sizes, not bytes: a resume would otherwise read the whole
    dataset first."""
    digest = hashlib.sha256()
    for folder in ("images", "masks"):
        for path in sorted((data / folder).rglob("*")):
            name = path.relative_to(data).as_posix()
            if path.is_file() and not any(part.startswith(".") for part in name.split("/")):  # as the reader skips them
                digest.update(f"{name}\0{path.stat().st_size}\n".encode())
    return digest.hexdigest()


def check_same_dataset(run: str | Path, data: str | Path) -> None:
    """A resume trains on the dataset the run started on: its labels.csv and its files' listing must
    be unchanged (runs of earlier versions recorded labels.csv alone)."""
    recorded = read_run(run).extra.get("dataset", {})
    labels = Path(data) / LABELS_FILE
    if not labels.is_file():
        return
    if recorded.get("labels_sha256") not in (None, sha256_file(labels)):
        raise DrganError(f"{labels}: changed since {run} started (sha256 differs); resume on the same dataset")
    if recorded.get("files_sha256") not in (None, _files_sha256(Path(data))):
        raise DrganError(f"{data}: its images or masks changed since {run} started (names or sizes differ); "
                         "resume on the same dataset")
    if "split_by" not in recorded and (moved := moved_by_patient(Path(data))):
        raise DrganError(f"{labels}: {run} started when rows without a split were split by image id; they now go "
                         f"by patient (<n>_left and <n>_right together), which moves {len(moved)} of them "
                         f"({moved[0]!r}{', ...' if len(moved) > 1 else ''}) between train and val: start a new run")


def run_kind(folder: str | Path) -> str | None:
    """'gan' or 'grader' for a run folder, None for anything else."""
    try:
        return read_run(folder).kind if (Path(folder) / RUN_FILE).is_file() else None
    except DrganError:
        return None


def require_kind(run: str | Path, kind: str, param: str) -> RunInfo:
    """The run's metadata; a run of the other kind is named as such."""
    info = read_run(run)
    if info.kind is not None and info.kind != kind:
        raise ParameterError(f"{{{param}}} {run}: a {info.kind} run, not a {kind} run")
    return info


def generator_weights(run: str | Path, ema: bool = True) -> Path:
    """The generator weights to load: the EMA copy when the run has one (and ema is asked for)."""
    run = Path(run)
    if ema and (run / WEIGHT_FILES["G_ema"]).is_file():
        return run / WEIGHT_FILES["G_ema"]
    if not (run / WEIGHT_FILES["G"]).is_file() and (run / NEXT_CHECKPOINT).is_dir():
        raise DrganError(f"{run}: stopped while moving its first checkpoint into place ({NEXT_CHECKPOINT}/); "
                         f"`drgan train gan --resume {run}` finishes the move (and then trains on, or says the "
                         "run is trained)")
    return run / WEIGHT_FILES["G"]


def grader_resolution(run: str | Path) -> int:
    """Input side the grader of a run was trained at (its preset's when run.json does not say)."""
    info = read_run(run)
    return int(info.extra.get("resolution", info.options.get("resolution", info.cfg.resolution)))


def check_out(out: str | Path, overwrite: bool, kind: str) -> bool:
    """Whether `out` can take a new run of `kind`: missing or empty, holding a run of that kind
    stopped before its first checkpoint, or (with overwrite) any previous run of that kind; returns
    True when that run is to be replaced. Anything else (a checkpointed run without overwrite, a run
    of the other kind, a dataset, a file) is refused, so no work is lost by accident."""
    assert kind in KINDS, kind
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ParameterError(f"{{out}} {out}: is a file, expected a run folder")
    check_writable_dir(out)
    if not out.is_dir() or locks.only_locks(out):
        return False
    found = run_kind(out)
    if found is None:
        raise ParameterError(f"{{out}} {out}: folder not empty and not a drgan run; choose a new or empty folder")
    if found != kind:  # {overwrite} replaces a run with a new one of its kind, never another kind's
        raise ParameterError(f"{{out}} {out}: holds a {found} run, not a {kind} run; choose a new or empty folder")
    if not has_checkpoint(out) and not overwrite:
        _refuse_damaged(out, "out")
        return True  # killed before its first checkpoint: nothing to resume or to lose
    if not overwrite:
        raise ParameterError(f"{{out}} {out}: already holds a {kind} run; continue it with {{resume}}, or start over with {{overwrite}}")
    return True


def has_checkpoint(run: str | Path) -> bool:
    """Whether a run folder holds a checkpoint to resume (or a committed one to finish)."""
    return (Path(run) / STATE_JSON).is_file() or (Path(run) / NEXT_CHECKPOINT).is_dir()


def _refuse_damaged(run: Path, param: str) -> None:
    """A checkpoint's files without its state.json (written last, so a checkpoint never lacks it):
    a damaged run, whose weights neither a resume nor a silent start-over may take."""
    found = [name for name in (*WEIGHT_FILES.values(), GRADER_FILE, STATE_TENSORS) if (run / name).is_file()]
    if found:
        raise ParameterError(f"{{{param}}} {run}: holds {', '.join(found)} but no {STATE_JSON} (a damaged checkpoint); "
                             f"restore {STATE_JSON}, or start over with {{overwrite}}")


def require_checkpoint(run: str | Path) -> None:
    """A resume needs a checkpoint; a run stopped before its first one is started over by rerunning
    the command that started it (check_out accepts its folder)."""
    if not has_checkpoint(run):
        _refuse_damaged(Path(run), "resume")
        raise ParameterError(f"{{resume}} {run}: no {STATE_JSON} (not a training run folder, or no checkpoint written "
                             "yet: then rerun the command that started it, which starts it over)")


def prepare_out(out: str | Path, overwrite: bool, kind: str, inputs: Iterable[str | Path | None] = ()) -> Path:
    """`check_out` (and that `out` and the files and folders the run reads, `inputs`, lie outside
    each other), the folder's lock for this process (drgan.locks), then `check_out` again (another
    process may have written meanwhile) and the removal of the previous run it allows replacing."""
    out = Path(out)
    inputs = [i for i in inputs if i is not None]
    check_outside(out, inputs)
    for path in inputs:  # --overwrite would delete it before it is read
        if Path(path).resolve().is_relative_to(out.resolve()):
            raise ParameterError(f"{path}: inside {out}, the folder this run writes" + (" and {overwrite} empties" if overwrite else "")
                                 + "; move it out first")
    check_out(out, overwrite, kind)  # before the folder is created for its lock
    locks.hold(out)
    if check_out(out, overwrite, kind):
        for path in out.iterdir():
            if locks.is_lock_file(path):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    return out


def undone_on_failure(out: Path, finished_file: str, new: bool = True,
                      failure: type[BaseException] = BaseException) -> contextlib.AbstractContextManager[None]:
    """For a new run's folder (`new`, and `out` absent or holding only lock files when this is
    called, before the run claims it): after a `failure` inside, when `out` holds no
    `finished_file`, undo what this process wrote there, so that rerunning the same command is
    accepted. The folder is removed, or emptied when it was given empty (a user's folder stays).
    Only the holder of its lock does this (leave it while the lock is held: inside the code that
    releases it): a run refused by another one's lock leaves that run alone."""
    given_empty = out.is_dir() and locks.only_locks(out)  # a lock file: left by an earlier failure
    fresh = new and (given_empty or not out.exists())

    @contextlib.contextmanager
    def undo() -> Iterator[None]:
        try:
            yield
        except failure:
            if fresh and locks.holds(out) and out.is_dir() and not (out / finished_file).exists():
                _remove_written(out, given_empty)
            raise
    return undo()


def _remove_written(out: Path, given_empty: bool) -> None:
    if not given_empty:
        shutil.rmtree(out, ignore_errors=True)
        return
    for path in out.iterdir():
        if locks.is_lock_file(path):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    locks.release(out, remove=True)  # held alone: the folder is left as it was given


@contextlib.contextmanager
def claimed_folder(out: str | Path, marker: str, settings: dict[str, Any], what: str,
                   upgrade: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> Iterator[None]:
    """Hold `out` (drgan.locks) while inside, for a job whose folder `marker` names with its
    `settings`: a new or empty folder gets the marker; a folder whose marker holds the same settings
    is resumed; any other folder is refused, so that no dataset or other result is written into.
    `upgrade` turns the settings an older version recorded into this version's, so that a folder
    it wrote is resumed too (its marker is then rewritten)."""
    out = Path(out)
    _earlier_settings(out, marker, settings, what, upgrade)  # before the lock file is created in it
    locks.hold(out)  # a second job in the same folder is refused
    try:
        remove_temp_files(out, recursive=False)  # a killed job's (its marker or results cut short)
        # again: another process may have written meanwhile
        if _earlier_settings(out, marker, settings, what, upgrade) != settings:
            # On disk before any work: the folder's resumption hangs on it, after a power loss too.
            durable_write_bytes(out / marker, json_bytes(settings))
        yield
    finally:
        locks.release(out)


def _shown(value: Any) -> str:
    """A setting as a refusal names it; a sha256 digest by its first 12 digits, as git abbreviates."""
    if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value):
        return repr(value[:12] + "...")
    return repr(value)


def _earlier_settings(out: Path, marker: str, settings: dict[str, Any], what: str,
                      upgrade: Callable[[dict[str, Any]], dict[str, Any]] | None) -> dict[str, Any] | None:
    """The settings `out`'s marker holds as written (None for a new folder), once they are found
    to be `settings`; any other folder is refused."""
    if out.exists() and not out.is_dir():
        raise ParameterError(f"{{out}} {out}: is a file, expected a folder")
    if (out / marker).is_file():
        try:
            earlier = json.loads((out / marker).read_text())
        except (OSError, ValueError) as exc:
            raise ParameterError(f"{{out}} {out}: unreadable {marker} ({exc}); choose a new folder") from None
        if not isinstance(earlier, dict):
            raise ParameterError(f"{{out}} {out}: unreadable {marker} (not a JSON object); choose a new folder")
        found = upgrade(earlier) if upgrade else earlier
        if found != settings:
            changed = ", ".join(f"{k}: {_shown(found[k]) if k in found else 'not set'} there, "
                                f"{_shown(settings[k]) if k in settings else 'not set'} now"
                                for k in sorted({**found, **settings}) if found.get(k) != settings.get(k))
            raise ParameterError(f"{{out}} {out}: holds {what} with other settings ({changed}); "
                                 "rerun it with its own or choose a new folder")
        return earlier
    if out.is_dir() and not locks.only_locks_and_temps(out):
        raise ParameterError(f"{{out}} {out}: folder not empty and not {what} (no {marker}); "
                             "choose a new or empty folder")
    check_writable_dir(out)
    return None
