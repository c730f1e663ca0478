"""Files: atomic writes (temp + rename, the temp removed on failure), PNG/JPEG encoding, sha256.

A write that fails for lack of space or permission becomes one DrganError naming the path. A temp
name carries its owner (pid and host): cleanup removes only temps whose owner process is gone, so
one process never deletes the file another (a concurrent shard) is writing.
"""
from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import os
import re
import shutil
import socket
import stat
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
from PIL import Image

from drgan.errors import DrganError

NAME_MAX = 255  # bytes in a file name (ext4, xfs, btrfs)
TEMP_MARK = ".tmp-"
HOST = re.sub(r"[^A-Za-z0-9_-]", "", socket.gethostname()) or "host"
_OWNER = re.compile(re.escape(TEMP_MARK) + r"(\d+)(?:-\d+)?(?:@([A-Za-z0-9_-]+))?")
_UMASK = os.umask(0o022)  # read once at import: os.umask can only be read by setting it
os.umask(_UMASK)


def temp_path(path: Path, keep_suffix: bool = False) -> Path:
    """A hidden sibling unique to this process and thread (`keep_suffix`: ending in path's suffix,
    for writers that insist on it). The name is cut to fit NAME_MAX, so that a file whose own name
    is near the limit can still be written."""
    owner = f"{TEMP_MARK}{os.getpid()}-{threading.get_ident()}@{HOST}"
    stem, suffix = (path.stem, path.suffix) if keep_suffix else (path.name, "")
    room = NAME_MAX - len(f".{owner}{suffix}".encode())
    stem = stem.encode()[:room].decode(errors="ignore")  # not inside a multi-byte character
    return path.with_name(f".{stem}{owner}{suffix}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:  # a zombie answers signal 0 though it has ended: only its exit status waits to be collected
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc: signal 0 is all there is to go on
    return state not in ("Z", "X")


def _owner_gone(name: str) -> bool:
    """Whether the process that named this temp is gone; one on another host is never judged."""
    found = _OWNER.search(name)
    if found is None:
        return False
    pid, host = int(found.group(1)), found.group(2)
    return host in (None, HOST) and pid != os.getpid() and not pid_alive(pid)


def write_error(path: Path, exc: OSError) -> DrganError:
    """One line for a failed write: disk full and read-only file systems are named as such."""
    if exc.errno == errno.ENOSPC:
        return DrganError(f"{path.parent}: disk full while writing {path.name}")
    if exc.errno == errno.EROFS:
        return DrganError(f"{path}: cannot write (read-only file system)")
    if exc.errno == errno.EISDIR:
        return DrganError(f"{path}: is a folder, expected a file path")
    if (link := dangling_link(path)) is not None:
        return DrganError(f"{path}: cannot write ({link} is a symbolic link to the missing {os.readlink(link)})")
    blocker = _file_in_the_way(path.parent)
    if blocker is not None:
        return DrganError(f"{path}: cannot write ({blocker} is a file, not a folder)")
    if exc.errno == errno.ENOENT and not path.parent.is_dir():
        return DrganError(f"{path}: folder {path.parent} does not exist")
    return DrganError(f"{path}: cannot write ({exc.strerror or exc})")


def atomic_save(path: str | Path, write: Callable[[Path], None], keep_suffix: bool = False) -> None:
    """Let `write` create a temp file, then rename it to `path`: a killed process never leaves a
    truncated file under the final name, and a failed one leaves no temp file behind
    (`keep_suffix`: see temp_path)."""
    path = Path(path)
    if path.is_dir():
        raise DrganError(f"{path}: is a folder, expected a file path")
    tmp = temp_path(path, keep_suffix)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # the mode of a plain open(): temp-file writers use 0600
        os.replace(tmp, path)
    except OSError as exc:
        _remove(tmp)
        raise write_error(path, exc) from None
    except BaseException:
        _remove(tmp)
        raise


def _remove(tmp: Path) -> None:
    with contextlib.suppress(OSError):  # e.g. ENOTDIR: the temp file could never be created
        tmp.unlink(missing_ok=True)


def dangling_link(path: Path) -> Path | None:
    """`path` or the nearest of its ancestors that is a symbolic link to nothing, if any: exists()
    is False for it, but nothing can be created in its place."""
    for p in (path, *path.parents):
        if p.is_symlink() and not p.exists():
            return p
        if p.exists():
            return None
    return None


def _nearest_existing(folder: Path) -> Path:
    """`folder` or its nearest ancestor that exists."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _file_in_the_way(folder: Path) -> Path | None:
    """The nearest existing ancestor of `folder` (itself included) when it is not a folder."""
    existing = _nearest_existing(folder)
    return None if existing.is_dir() else existing


# fsync errors that say the file system cannot flush this file or folder (some network and FUSE
# file systems, for folders especially), not that data was lost: the write is as durable as it allows.
_NO_FSYNC = {errno.EINVAL, errno.ENOTSUP, errno.ENOSYS}


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _NO_FSYNC:
            raise
    finally:
        os.close(fd)


def fsync_folder(folder: Path) -> None:
    """Flush a folder's files and the folder itself to disk, so that a rename after it is durable."""
    for path in [*(p for p in folder.iterdir() if p.is_file()), folder]:
        _fsync(path)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_save(path, lambda tmp: tmp.write_bytes(data))


def durable_write_bytes(path: str | Path, data: bytes) -> None:
    """atomic_write_bytes, and on disk when it returns: the temp file is flushed before its rename
    and the folder after it. A rename alone survives a kill, but after a power loss it may leave
    an empty file under the final name; for the few files a whole folder's use hangs on."""
    path = Path(path)

    def write(tmp: Path) -> None:
        tmp.write_bytes(data)
        _fsync(tmp)  # fsync flushes the file, whichever descriptor names it

    atomic_save(path, write)
    try:
        _fsync(path.parent)
    except OSError as exc:
        raise write_error(path, exc) from None


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_csv(path: str | Path, header: list[str], rows: Iterable[Iterable[Any]]) -> None:
    """A CSV table (header, then rows; "\n" line ends), written as atomic_write_bytes does."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def json_bytes(obj: Any, indent: int = 2, sort_keys: bool = False) -> bytes:
    """`obj` as indented JSON ending in a newline."""
    return (json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n").encode()


def atomic_write_json(path: str | Path, obj: Any, indent: int = 2, sort_keys: bool = False) -> None:
    """`obj` as json_bytes, written as atomic_write_bytes does."""
    atomic_write_bytes(path, json_bytes(obj, indent, sort_keys))


def is_temp_name(name: str) -> bool:
    """Whether `name` is a temp file or folder of temp_path (what remove_temp_files looks for)."""
    return name.startswith(".") and TEMP_MARK in name


def remove_temp_files(root: str | Path, recursive: bool = True) -> int:
    """Delete the temp files and folders that killed writers left under root (only its top level
    unless `recursive`), never one whose owner still runs; returns how many."""
    found = Path(root).rglob(f".*{TEMP_MARK}*") if recursive else Path(root).glob(f".*{TEMP_MARK}*")
    removed = 0
    for p in [p for p in found if _owner_gone(p.name)]:
        if not p.exists():  # inside a temp folder removed before it
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed += 1
    return removed


def check_writable_dir(folder: str | Path) -> None:
    """Fail before any work when `folder` (or the folder that would hold it) cannot be written."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DrganError(f"{folder}: is a file, expected a folder")
    if (link := dangling_link(folder)) is not None:
        raise DrganError(f"{folder}: cannot write ({link} is a symbolic link to the missing {os.readlink(link)})")
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise DrganError(f"{folder}: cannot write ({existing} is a file, not a folder)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DrganError(f"{folder}: cannot write ({existing} is not writable)")


def check_writable_file(path: str | Path, make_parent: bool = False) -> None:
    """Fail before any work when the file `path` cannot be written: a folder in its place, a file
    in the way of its folder, or (unless the writer creates it) a missing folder."""
    path = Path(path)
    if path.is_dir():
        raise DrganError(f"{path}: is a folder, expected a file path")
    blocker = _file_in_the_way(path.parent)
    if blocker is not None:
        raise DrganError(f"{path}: cannot write ({blocker} is a file, not a folder)")
    if not make_parent and not path.parent.exists():
        raise DrganError(f"{path}: folder {path.parent} does not exist")
    check_writable_dir(path.parent)


def check_outside(path: str | Path, folders: Iterable[str | Path | None]) -> None:
    """An output `path` lies outside each of `folders` (None: none given), those its command reads:
    a run or set written into a dataset would become part of what it reads."""
    for folder in folders:
        if folder is not None and Path(path).resolve().is_relative_to(Path(folder).resolve()):
            raise DrganError(f"{path}: inside {folder}, a folder this command uses; write it elsewhere")


def check_output_file(path: str | Path, suffix: str, what: str, same_kind: Callable[[Path], bool],
                      folders: Iterable[str | Path] = (), make_parent: bool = False) -> None:
    """check_writable_file for a command's single-file result, `what` (a contact sheet, say): its name
    ends in `suffix`, it lies outside the folders the command reads or writes (`folders`), and a file already
    there is replaced only when `same_kind` says it is an earlier result of that kind (a rerun), so
    a dataset's own files or anything else are never written over."""
    path = Path(path)
    check_writable_file(path, make_parent)
    if path.suffix.lower() != suffix:
        raise DrganError(f"{path}: {what} is written as {suffix}; give a file name ending in {suffix}")
    check_outside(path, folders)
    if path.exists() and not same_kind(path):
        raise DrganError(f"{path}: exists and is not {what}; choose another file name")


def check_regular_file(path: str | Path) -> None:
    """Refuse anything but a regular file (a symlink to one is fine): reading a named pipe or a
    device blocks forever or never ends."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise DrganError(f"{path}: file not found") from None
    except OSError as exc:
        raise DrganError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a named pipe" if stat.S_ISFIFO(mode) else "a device or socket"
        raise DrganError(f"{path}: is {kind}, not a regular file")


def csv_rows(reader: Iterator, path: str | Path) -> Iterator:
    """The rows of a csv reader (or DictReader); a row it cannot parse (a field over the csv
    module's 131,072 characters, a stray NUL) is one error naming the file and line."""
    try:
        yield from reader
    except csv.Error as exc:
        raise DrganError(f"{path}:{reader.line_num}: unreadable CSV row ({exc})") from None


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def encode_png(arr: np.ndarray, compress_level: int = 1) -> bytes:
    """PNG bytes of a uint8 (H, W) or (H, W, 3) array; level 1: fast, masks still compress ~50x."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def encode_jpeg(arr: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of a uint8 (H, W, 3) array, without chroma subsampling."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()
