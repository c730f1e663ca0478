"""What an engine or package takes: its batch range and the JSON sidecar written beside it.

TensorRT engines and AOTInductor packages share both: the builder tunes for a `BatchProfile`,
and each runner reads the sidecar to learn what its artifact was built for (batch range, precision).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drgan.io import atomic_write_json
from drgan.errors import DrganError, ParameterError, UsageError
from drgan.export.wrapper import input_shapes
from drgan.nn import DRGANGenerator


@dataclass(frozen=True)
class BatchProfile:
    """Batch range of an engine or package: kernels are tuned for `opt`, valid from `min` to `max`."""

    min: int
    opt: int
    max: int

    @classmethod
    def from_options(
        cls,
        batch: int | None = None,
        min_batch: int | None = None,
        opt_batch: int | None = None,
        max_batch: int | None = None,
        default: tuple[int, int, int] = (1, 4, 16),
    ) -> "BatchProfile":
        """`--batch B` (fixed) or `--min-batch/--opt-batch/--max-batch` (unset ones from `default`,
        clamped so that a lone --max-batch 2 still gives a valid range)."""
        ranged = {"min_batch": min_batch, "opt_batch": opt_batch, "max_batch": max_batch}
        given = ["{" + k + "}" for k, v in ranged.items() if v is not None]
        if batch is not None:
            if given:
                raise UsageError(f"{{batch}} sets a fixed batch size; do not combine it with {', '.join(given)}")
            if batch < 1:
                raise ParameterError(f"{{batch}} {batch}: must be at least 1")
            return cls(batch, batch, batch)
        for k, v in ranged.items():
            if v is not None and v < 1:
                raise ParameterError(f"{{{k}}} {v}: must be at least 1")
        lo = min_batch if min_batch is not None else default[0]
        hi = max_batch if max_batch is not None else max(default[2], lo)
        if lo > hi:  # only where both are given: an unset max follows min
            raise ParameterError(f"{{min_batch}} {lo} exceeds {{max_batch}} {hi}")
        opt = opt_batch if opt_batch is not None else min(max(default[1], lo), hi)
        if not lo <= opt <= hi:  # only where opt is given: an unset one lies in the range
            raise ParameterError(f"{{opt_batch}} {opt}: outside the batch range {lo}..{hi} ({{min_batch}}..{{max_batch}})")
        return cls(lo, opt, hi)

    @property
    def fixed(self) -> bool:
        return self.min == self.max

    def shapes(self, generator: DRGANGenerator) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """(min, opt, max) shape of every input, for IOptimizationProfile.set_shape."""
        lo, opt, hi = (input_shapes(generator, b) for b in (self.min, self.opt, self.max))
        return {name: (lo[name], opt[name], hi[name]) for name in lo}


def sidecar_path(artifact: Path) -> Path:
    return artifact.with_name(artifact.name + ".json")


def write_sidecar(artifact: Path, data: dict[str, Any]) -> None:
    atomic_write_json(sidecar_path(artifact), data)


def read_sidecar(artifact: Path) -> dict[str, Any]:
    path = sidecar_path(artifact)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DrganError(f"{path}: sidecar not found (re-run drgan-export)") from None
    except json.JSONDecodeError as exc:
        raise DrganError(f"{path}: not valid JSON ({exc})") from None
