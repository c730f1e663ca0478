"""ONNX export of the inference generator: dynamo exporter, opset 23, dynamic batch, checked after writing.

Spatial attention is traced through F.scaled_dot_product_attention (kernel impl 'sdpa'), which the
exporter turns into the standard ONNX `Attention` op; the N x N score matrix then never appears as a
tensor of the graph (`onnx_check.check_graph` proves it).
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Callable

import torch

from drgan.errors import DrganError, ParameterError
from drgan.export.onnx_files import save_atomically
from drgan.export.wrapper import OUTPUT_NAMES, example_inputs, input_names, prepare
from drgan.nn import DRGANGenerator

# Weights above this go to an external data file (protobuf caps a single file at 2 GB).
EXTERNAL_DATA_BYTES = 1 << 30
MIN_OPSET = 23  # the first opset with the standard Attention op
MAX_OPSET = 25  # the newest the exporter reaches: torch writes opset 18 and onnxscript's (0.7) version converter lifts it


def check_opset(opset: int) -> None:
    """The spatial attention is exported as the Attention op, which opsets before MIN_OPSET lack;
    one above MAX_OPSET would fail only after the export's tracing (minutes at full size)."""
    if opset < MIN_OPSET:
        raise ParameterError(f"{{opset}} {opset}: the spatial attention needs the Attention op of opset {MIN_OPSET} or later")
    if opset > MAX_OPSET:
        raise ParameterError(f"{{opset}} {opset}: the ONNX exporter converts up to opset {MAX_OPSET}")


def export_onnx(
    generator: DRGANGenerator,
    path: str | Path,
    opset: int = MIN_OPSET,
    pad_qk: int | str | None = None,
    external_data: bool | None = None,
    check: Callable[[Path], None] | None = None,
) -> Path:
    """Write `generator` (fp32) as ONNX to `path`; returns the path. Weights go to `path`.data when
    external_data is True, or when None and they exceed EXTERNAL_DATA_BYTES. The written file must
    declare `opset`, and `check(file)` (when given) must pass on it, before it replaces `path`: a
    failed export leaves an earlier file as it was."""
    check_opset(opset)
    path = Path(path)
    model = prepare(generator, impl="sdpa", precision="fp32", pad_qk=pad_qk)
    if external_data is None:
        external_data = sum(p.numel() * p.element_size() for p in model.parameters()) > EXTERNAL_DATA_BYTES
    # Batch 2 when tracing: a size-1 axis would be specialized to 1.
    args = example_inputs(generator, batch=2)
    batch = torch.export.Dim("batch", min=1)
    dynamic_shapes = ({0: batch}, {0: batch}, tuple({0: batch} for _ in args[2:]))
    # The exporter's deprecation warnings and its note that torchvision ops are not registered are not
    # the user's concern.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    # A failed opset conversion is logged there with a traceback; the opset check below says it in one line.
    logging.getLogger("onnxscript.version_converter").setLevel(logging.CRITICAL)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            args,
            dynamo=True,
            opset_version=opset,
            input_names=input_names(generator),
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=dynamic_shapes,
            verbose=False,
        )
    if program is None:
        raise DrganError("torch.onnx.export returned no program (dynamo exporter unavailable?)")

    declared = program.model.opset_imports.get("")  # the default domain's opset, as it will be saved
    if declared != opset:
        raise ParameterError(f"{{opset}} {opset}: the ONNX exporter could not convert the model to it (it "
                             f"wrote opset {declared}); choose an earlier opset (from {MIN_OPSET})")
    save_atomically(path, lambda file: program.save(str(file), external_data=external_data), external_data, check)
    return path
