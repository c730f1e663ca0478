"""Worker processes for the data commands (phantom rendering, release import)."""
from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import signal


def process_pool(workers: int, jobs: int) -> multiprocessing.pool.Pool:
    """A pool of `workers` spawned processes, no more than there are `jobs` (each one starts a Python
    with torch: seconds), that ignore SIGINT: Ctrl-C reaches the whole process group, and only the
    main process is to stop the job (it terminates the pool), not each worker with a traceback of
    its own."""
    return multiprocessing.get_context("spawn").Pool(max(1, min(workers, jobs)), initializer=signal.signal,
                                                     initargs=(signal.SIGINT, signal.SIG_IGN))
