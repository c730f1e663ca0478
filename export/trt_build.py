"""TensorRT engine from the exported ONNX file (TensorRT 10 Python API, as its documentation lays out).

Builder -> network (always explicit batch in TensorRT 10) -> ONNX parser -> builder config (FP16/BF16
flag, one optimization profile for the batch range, persistent timing cache, optimization level) ->
build_serialized_network. The engine is written with a JSON sidecar that says what it takes.

TensorRT's fused attention (IAttention) takes one head size for Q, K and V, while SCA's queries and keys
are narrower than its values (paper-1280: 64/16/4 vs 512/256/128). The ONNX file for this path therefore
has Q/K zero-padded to V's width (`wrapper.pad_attention_qk`): exact, but QK^T then costs as much as
attn @ V, so the attention FLOPs grow by (2 Dv) / (Dqk + Dv): x1.78, x1.88, x1.94 at the three
paper-1280 blocks, 3.2 -> 6.1 TFLOP per 1280 px image (`wrapper.attention_flops` counts them).
"""
from __future__ import annotations

import re
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from drgan.io import atomic_write_bytes
from drgan.errors import DrganError, ParameterError
from drgan.export.sidecar import BatchProfile, write_sidecar
from drgan.export.wrapper import output_shapes
from drgan.nn import DRGANGenerator

INSTALL_HINT = "TensorRT is not installed: pip install 'drgan[trt]' (TensorRT 10.14 or later 10.x, from NVIDIA's package index)"
# 10.14 is the first whose ONNX parser reads the Attention operator; 11 drops the FP16/BF16 builder
# flags (weak typing) that --precision sets.
SUPPORTED = ((10, 14), (11, 0))
OPTIMIZATION_LEVELS = range(0, 6)  # TensorRT's builder_optimization_level; 3 is its default


class TensorRTMissing(DrganError):
    """`import tensorrt` failed: one line saying what to install."""


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError:
        raise TensorRTMissing(INSTALL_HINT) from None
    found = re.match(r"(\d+)\.(\d+)", tensorrt.__version__)
    if found is None or not SUPPORTED[0] <= (int(found[1]), int(found[2])) < SUPPORTED[1]:
        raise DrganError(f"TensorRT {tensorrt.__version__}: drgan needs TensorRT 10.14 or a later 10.x "
                         "(the Attention operator's parser; the FP16/BF16 flags): pip install 'drgan[trt]'")
    return tensorrt


def mark_attention_decomposable(path: Path) -> int:
    """Let TensorRT split each `Attention` node of the ONNX file at `path` into several kernels where
    it has no fused one (onnx-tensorrt's `TRT_decomposable` attribute; without it such a build fails,
    e.g. head sizes of 512 at N = 102,400). Written after the file's checks: ONNX Runtime and the
    ONNX checker do not know the attribute. Weights kept in a .data file stay there. Returns the
    number of nodes marked."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    marked = 0
    for node in model.graph.node:
        if node.op_type == "Attention" and node.domain in ("", "ai.onnx"):
            kept = [a for a in node.attribute if a.name != "TRT_decomposable"]
            del node.attribute[:]
            node.attribute.extend([*kept, onnx.helper.make_attribute("TRT_decomposable", 1)])
            marked += 1
    onnx.save_model(model, str(path))
    return marked


def engine_sidecar(
    generator: DRGANGenerator,
    profile: BatchProfile,
    precision: str,
    tensorrt_version: str,
    gpu: str,
    onnx_file: str,
    optimization_level: int,
) -> dict[str, Any]:
    """What an engine takes and was built with; written beside it as JSON."""
    return {
        "format": "tensorrt-engine",
        "onnx": onnx_file,
        "precision": precision,
        "tensorrt_version": tensorrt_version,
        "gpu": gpu,
        "builder_optimization_level": optimization_level,
        "batch": asdict(profile),
        "inputs": {k: {"min": list(v[0]), "opt": list(v[1]), "max": list(v[2])} for k, v in profile.shapes(generator).items()},
        "outputs": {k: [-1, *v[1:]] for k, v in output_shapes(generator, 1).items()},
        "dtype": "float32",  # I/O; the precision flag applies inside the engine
        "stage": generator.stage,
        "model": generator.cfg.to_dict(),
    }


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    generator: DRGANGenerator,
    profile: BatchProfile,
    precision: str = "fp16",
    timing_cache: str | Path | None = None,
    optimization_level: int = 3,
    plugin_library: str | Path | None = None,
) -> dict[str, Any]:
    """Build and write the engine and its sidecar (`engine_path` + .json); returns the sidecar.

    `plugin_library` (libdrgan_trt_plugin.so) is loaded first, so the parser builds the
    DrganSpatialAttention nodes of an `onnx_plugin` file from it; the sidecar records that the engine
    needs it, not where it is: the runner loads only a library its caller names."""
    trt = import_tensorrt()
    import torch

    if optimization_level not in OPTIMIZATION_LEVELS:
        raise ParameterError(f"{{opt_level}} {optimization_level}: TensorRT takes 0..5")
    if not torch.cuda.is_available():
        raise DrganError("TensorRT needs a CUDA GPU: it builds its engine for the GPU it runs on")
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if plugin_library is not None:
        from drgan.export.onnx_plugin import load_trt_plugin

        load_trt_plugin(trt, plugin_library)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = _parse_onnx(trt, builder, logger, onnx_path)
    cache_path = Path(timing_cache) if timing_cache else None
    config = _builder_config(trt, builder, generator, profile, precision, optimization_level, cache_path)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise DrganError(f"{onnx_path}: TensorRT could not build an engine (see its log above)")
    atomic_write_bytes(engine_path, bytes(serialized))
    if cache_path and (cache := config.get_timing_cache()) is not None:
        atomic_write_bytes(cache_path, bytes(cache.serialize()))
    sidecar = engine_sidecar(
        generator, profile, precision, trt.__version__, torch.cuda.get_device_name(), onnx_path.name, optimization_level
    )
    if plugin_library is not None:
        sidecar["trt_plugin"] = True
    write_sidecar(engine_path, sidecar)
    return sidecar


def _parse_onnx(trt: Any, builder: Any, logger: Any, onnx_path: Path) -> Any:
    """The network of the ONNX file; the parser's first error when it cannot read it."""
    network = builder.create_network(0)  # TensorRT 10: always explicit batch (EXPLICIT_BATCH is deprecated)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # by path, so external weights resolve beside it
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise DrganError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors[0] if errors else 'unknown error'}")
    return network


def _builder_config(
    trt: Any,
    builder: Any,
    generator: DRGANGenerator,
    profile: BatchProfile,
    precision: str,
    optimization_level: int,
    cache_path: Path | None,
) -> Any:
    """Precision flag, optimization level, the batch profile of every input, and the timing cache
    (read from `cache_path` when it exists, so earlier builds' kernel timings are reused)."""
    config = builder.create_builder_config()
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    else:  # TensorRT runs fp32 convolutions in TF32 by default
        config.clear_flag(trt.BuilderFlag.TF32)
    config.builder_optimization_level = optimization_level
    trt_profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile.shapes(generator).items():
        trt_profile.set_shape(name, lo, opt, hi)
    if config.add_optimization_profile(trt_profile) < 0:
        raise DrganError(f"TensorRT refused the batch profile {profile.min}..{profile.max} (an input without a dynamic batch axis?)")
    earlier = cache_path.read_bytes() if cache_path and cache_path.is_file() else b""
    cache = config.create_timing_cache(earlier)
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        # Another GPU's or TensorRT version's cache: build without its timings (and replace it).
        print(f"warning: {cache_path}: timing cache of another GPU or TensorRT version; building without it",
              file=sys.stderr)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    return config
