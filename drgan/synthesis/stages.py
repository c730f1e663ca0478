"""Where a synthesis run spends its time, per stage, and which stage bounds it.

Host stages (placement, encoding, writing) add the CPU time of the threads that run them; device
stages (rasterization, generation, transfer) add device time measured with CUDA events, or the
main thread's wall time on CPU. On CUDA, queueing adds the main thread's wall time spent queueing
each batch's device work, less the time it is blocked on the device inside the batch (the
encoder's predicted grades): where it exceeds the device's time, the GPU waits on the host's
launches (the operations queued, and the interpreter's lock shared with the placement threads);
nvjpeg adds the wall time of JPEG encoding on the GPU, on a thread of its own beside generation. A lane
group runs its stages in `lanes` parallel workers: the group with the most time per lane bounds
the run.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator

STAGES = ("placement", "queueing", "rasterization", "generation", "transfer", "nvjpeg", "encoding", "writing")
GROUPS = {"placement": ("placement",), "main": ("queueing",), "device": ("rasterization", "generation", "transfer"),
          "nvjpeg": ("nvjpeg",), "output": ("encoding", "writing")}


class StageTimes:
    def __init__(self, lanes: dict[str, int]) -> None:
        self.lanes = lanes                       # group -> parallel workers
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] += seconds

    @contextmanager
    def cpu(self, stage: str) -> Iterator[None]:
        """CPU time of the calling thread inside the block."""
        start = time.thread_time()
        try:
            yield
        finally:
            self.add(stage, time.thread_time() - start)

    def bound(self) -> str:
        """The lane group with the most time per lane, and within it the costliest stage."""
        per_lane = {g: sum(self.seconds[s] for s in stages) / self.lanes[g] for g, stages in GROUPS.items()}
        group = max(per_lane, key=per_lane.get)
        return max(GROUPS[group], key=self.seconds.get)

    def device_seconds(self) -> float:
        return sum(self.seconds[s] for s in GROUPS["device"])
