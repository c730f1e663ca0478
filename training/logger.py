"""Run logging on rank 0: TensorBoard scalars (RUN/logs) and image grids (RUN/samples)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.tensorboard import SummaryWriter

from drgan.data.contact_sheet import save_contact_sheet
from drgan.io import check_writable_dir
from drgan.synthesis.pixels import to_uint8

LOG_DIR = "logs"
SAMPLE_DIR = "samples"


class RunLogger:
    def __init__(
        self,
        run: Path,              # run folder
        enabled: bool,          # False on ranks other than 0: every call is a no-op
        purge_step: int | None, # on resume: drop events logged after the checkpoint
    ) -> None:
        self.run = run
        self.enabled = enabled
        if enabled:  # a resumed run's folders: refused before a step is trained, not after
            for folder in (run, run / LOG_DIR, run / SAMPLE_DIR):
                check_writable_dir(folder)
        self.writer = SummaryWriter(str(run / LOG_DIR), purge_step=purge_step) if enabled else None

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(name, value, step)

    def grid(self, name: str, rows: list[torch.Tensor], labels: list[str], step: int) -> Path | None:
        """Write RUN/samples/NAME-STEP.png (one labelled row per tensor) and log it to TensorBoard."""
        if self.writer is None:
            return None
        path = save_contact_sheet([list(to_uint8(r)) for r in rows], self.run / SAMPLE_DIR / f"{name}-{step:07d}.png", labels)
        with Image.open(path) as sheet:
            self.writer.add_image(name, np.asarray(sheet.convert("RGB")), step, dataformats="HWC")
        return path

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
