"""Interrupts between training steps: SIGINT (Ctrl-C) and SIGTERM (kill, a job scheduler) that arrive
during a step are delivered when the step ends, so that a trainer stopped by one can checkpoint the
last whole step and a resume loses nothing (SIGKILL still loses what the last checkpoint misses)."""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

HELD = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _handled_by(handler) -> Iterator[None]:
    """SIGINT and SIGTERM go to `handler` while inside, then to the handlers that were in place. Only
    the main thread can handle signals: elsewhere, and where a handler was not set from Python,
    nothing changes."""
    previous = {s: signal.getsignal(s) for s in HELD}
    if threading.current_thread() is not threading.main_thread() or None in previous.values():
        yield
        return
    for s in HELD:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


@contextlib.contextmanager
def whole_step() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while inside, then deliver them (once each) to the handlers that were
    in place: a KeyboardInterrupt, or the command's SIGTERM exit, raised at the step's end."""
    pending: list[int] = []
    try:
        with _handled_by(lambda signum, frame: pending.append(signum)):
            yield
    finally:
        for s in dict.fromkeys(pending):
            signal.raise_signal(s)


@contextlib.contextmanager
def ignored_signals() -> Iterator[None]:
    """Ignore SIGINT and SIGTERM while inside: for the checkpoint an interrupt asked for, so that a
    second Ctrl-C cannot cut it (and, in a run without an earlier checkpoint, have the run's
    folder removed as unfinished). SIGKILL still stops the process."""
    with _handled_by(signal.SIG_IGN):
        yield


_WAY_ON: list[str | None] = ["continue with --resume"]  # what an interrupted trainer tells its user


@contextlib.contextmanager
def resumed_by_rerun() -> Iterator[None]:
    """Inside a job that goes on when its own command is rerun (the demo, the augmentation
    experiment): an interrupted trainer names its checkpoint only, and the job says how to go on."""
    _WAY_ON.append(None)
    try:
        yield
    finally:
        _WAY_ON.pop()


_TOLD: list[bool] = [False]   # whether an interrupted trainer has said how its run goes on


def interrupted_line(step: int, run: object, complete: bool, at: int | None = None) -> str:
    """The line a trainer prints after checkpointing the step an interrupt stopped it at, or, when
    it stopped `at` a later step it could not checkpoint, naming its last checkpoint. Outside a job
    resumed by its own rerun, `way_on_told` is then True: the command's own `aborted` would repeat it."""
    way_on = "the run is complete" if complete else _WAY_ON[-1]
    where = f"step {step} checkpointed in {run}" if at in (None, step) else f"at step {at}; its last checkpoint, step {step}, is in {run}"
    _TOLD[0] = _WAY_ON[-1] is not None   # inside a job resumed by its own rerun the job says how it goes on
    return f"interrupted: {where}" + (f"; {way_on}" if way_on else "")


def told_by_the_main_rank() -> None:
    """On a rank of a multi-process run other than the main one: the main rank says how the run
    goes on (or its command's `aborted` does), once for all ranks, so this rank's command is silent."""
    _TOLD[0] = True


def way_on_told(reset: bool = False) -> bool:
    """Whether an interrupted trainer of this command has said how its run goes on (`reset`: a new
    command begins, nothing said yet)."""
    if reset:
        _TOLD[0] = False
    return _TOLD[0]
