"""Folder locks: a second drgan process writing the same folder is refused in one line.

An OS lock (fcntl.flock) on a file inside the folder, held until the work is done (`release`) or
the process ends: the OS drops it however the process ends, so a killed run leaves no stale lock.
The file of an exclusive lock holds its owner's pid, for the message. (filelock is not a
dependency; on Linux it takes the same flock.) Shards of a synthesis set share its folder: each holds the folder's lock shared and its own
shard's lock exclusively, so distinct shards run together and the same shard twice is refused, and
the count's lock shared, so shards of another count (which would make the same items again) are
refused; the files they share are written inside `section`, one process at a time.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from drgan.errors import DrganError
from drgan.io import is_temp_name

LOCK_FILE = ".drgan.lock"
_held: dict[Path, int] = {}  # lock file -> its open descriptor, kept until released


def is_lock_file(path: Path) -> bool:
    return path.name.startswith(LOCK_FILE)


def only_locks(folder: Path) -> bool:
    """Whether the folder `folder` holds nothing but lock files: a job killed before its first write
    leaves just those, and its folder counts as new."""
    return all(is_lock_file(p) for p in folder.iterdir())


def only_locks_and_temps(folder: Path) -> bool:
    """Whether the folder `folder` holds nothing but lock and temp files: one another writer is
    starting, or one a killed writer left, holds no result of its own."""
    return all(is_lock_file(p) or is_temp_name(p.name) for p in folder.iterdir())


def hold(folder: str | Path, shard: str | None = None) -> None:
    """Lock `folder` (created if missing) for this process: exclusively, or with `shard` ("i/n")
    shared plus that shard's own lock exclusively. Another process holding it is one error, and so
    is one writing the folder's shards under another count ("0/2" beside "0/1")."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if shard is None:
        _lock(folder / LOCK_FILE, fcntl.LOCK_EX, f"{folder} is in use by another drgan process")
        return
    _lock(folder / LOCK_FILE, fcntl.LOCK_SH, f"{folder} is in use by another drgan process")
    count = shard.split("/")[1]
    mine = folder / f"{LOCK_FILE}-shards-{count}"
    with section(folder):  # one process at a time takes its count's lock and looks at the others'
        _lock(mine, fcntl.LOCK_SH, "")  # only this section's probes take it exclusively
        others = [p for p in folder.glob(f"{LOCK_FILE}-shards-*") if p.name != mine.name]
        if live := [p.name.rsplit("-", 1)[1] for p in others if held_elsewhere(p)]:
            # Its shards would make the same items again: a set's concurrent shards split it alike.
            _drop(mine)
            if not held_elsewhere(mine):  # no writer of this count: the folder keeps no trace of the refusal
                mine.unlink()
            raise DrganError(f"{folder} is in use by another drgan process writing its shards i/{live[0]}; "
                             f"shard {shard} is one of {count}: give the shards of one set the same count")
    name = shard.replace("/", "-of-")
    _lock(folder / f"{LOCK_FILE}-shard-{name}", fcntl.LOCK_EX, f"{folder} is in use by another drgan process writing shard {shard}")


def holds(folder: str | Path) -> bool:
    """Whether this process holds `folder`'s lock."""
    return _key(Path(folder) / LOCK_FILE) in _held


def alone(folder: str | Path) -> bool:
    """Whether no other process holds `folder`'s lock: so when this one holds it exclusively; held
    shared (a shard's), the lock is converted to exclusive and back to tell."""
    lock = _key(Path(folder) / LOCK_FILE)
    fd = _held.get(lock)
    if fd is None:
        return False
    if not any(p.parent == lock.parent and p.name.startswith(f"{LOCK_FILE}-shard-") for p in _held):
        return True  # exclusive: the conversion below would leave it shared
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:  # back to shared (a failed conversion drops the lock held before it)
        fcntl.flock(fd, fcntl.LOCK_SH)


def release(folder: str | Path, remove: bool = False) -> None:
    """Drop this process's locks of `folder`; `remove` (only when `alone`: a folder left as it was
    found) also deletes the lock files."""
    folder = _key(folder)
    for path in [p for p in _held if p.parent == folder]:
        if remove:
            path.unlink(missing_ok=True)
        os.close(_held.pop(path))
    if remove:
        (folder / f"{LOCK_FILE}-section").unlink(missing_ok=True)


@contextlib.contextmanager
def section(folder: str | Path) -> Iterator[None]:
    """One process at a time (the others wait) for files that the holders of `folder` share."""
    fd = os.open(Path(folder) / f"{LOCK_FILE}-section", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _key(path: str | Path) -> Path:
    """A lock's or folder's path as this process's locks are kept: resolved, so that a folder held
    under one spelling ('..', a symbolic link) is found under another."""
    return Path(path).resolve()


def _lock(path: Path, mode: int, refusal: str) -> None:
    path = _key(path)
    fd = _held.pop(path, None)
    if fd is not None:
        if _same_file(fd, path):
            _held[path] = fd
            return  # held by this process already
        os.close(fd)  # its file went with its folder (a run replaced by this process)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise DrganError(f"{refusal} (pid {pid})") from None
    if mode == fcntl.LOCK_EX:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[path] = fd


def held_elsewhere(path: Path) -> bool:
    """Whether another open file description holds a lock on `path` (a probe: taken and dropped)."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _drop(path: Path) -> None:
    """Close this process's lock of `path`, keeping the file."""
    os.close(_held.pop(_key(path)))


def _same_file(fd: int, path: Path) -> bool:
    """Whether the held descriptor is still the file at `path` (not one removed with its folder)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False
