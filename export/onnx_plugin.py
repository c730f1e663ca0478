"""The `--trt-plugin` ONNX variant: each spatial attention as one `drgan::DrganSpatialAttention` node.

TensorRT's ONNX parser builds a node it has no importer for from the registered plugin whose name is
the node's op_type (version from a `plugin_version` attribute, default "1"; namespace from
`plugin_namespace`, default ""), passing the other attributes as plugin fields. The plugin
(native/trt_plugin, libdrgan_trt_plugin.so) runs the project's fused kernel: Q/K keep their narrow
width instead of being padded to V's (`wrapper.pad_attention_qk`), so the attention costs what the
Triton kernel costs in PyTorch.

ONNX tools learn the op from the schema registered on import (with its shape inference), so the
ONNX checker and `onnx.shape_inference` accept the graph; the output shapes are also written into
the file's value_info for tools that lack the schema. ONNX Runtime cannot run the node.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import onnx
from onnx import defs, helper

from drgan.errors import DrganError, ParameterError
from drgan.export.onnx_files import data_path, save_atomically

DOMAIN = "drgan"
OP_TYPE = "DrganSpatialAttention"  # the TensorRT plugin's name (native/trt_plugin)
OPSET_VERSION = 1
ONNX_FILE = "generator_trt_plugin.onnx"  # the export folder's file for `drgan-export --trt --trt-plugin`
PLUGIN_FILE = "libdrgan_trt_plugin.so"
# Attention attributes the plugin honors only at these values (ONNX Attention-23 defaults).
_ATTENTION_DEFAULTS = {"is_causal": 0, "softcap": 0.0, "qk_matmul_output_mode": 0}


def _infer(ctx: onnx.shape_inference.InferenceContext) -> None:
    """Y: Q's shape with the last axis from V, in V's element type."""
    q, v = ctx.get_input_type(0), ctx.get_input_type(2)
    out = onnx.TypeProto()
    out.tensor_type.elem_type = v.tensor_type.elem_type
    if q.tensor_type.HasField("shape") and v.tensor_type.HasField("shape") and v.tensor_type.shape.dim:
        for dim in list(q.tensor_type.shape.dim)[:-1] + [v.tensor_type.shape.dim[-1]]:
            out.tensor_type.shape.dim.add().CopyFrom(dim)
    ctx.set_output_type(0, out)


def register_schema() -> None:
    """Make the op known to onnx's checker and shape inference in this process (idempotent)."""
    if defs.has(OP_TYPE, DOMAIN):
        return
    param = defs.OpSchema.FormalParameter
    schema = defs.OpSchema(
        OP_TYPE, DOMAIN, OPSET_VERSION,
        "DANet spatial attention, fused: Y = softmax(scale * Q K^T) V over the last two axes; "
        "Q, K (..., N, Dqk), V (..., N, Dv) -> Y (..., N, Dv). Runs as the drgan TensorRT plugin.",
        inputs=[param("Q", "T"), param("K", "T"), param("V", "T")],
        outputs=[param("Y", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "float tensors")],
        attributes=[defs.OpSchema.Attribute("scale", helper.make_attribute("scale", 1.0), "scale of Q K^T, > 0")],
    )
    schema.set_type_and_shape_inference_function(_infer)
    defs.register_schema(schema)


register_schema()


def _attr(node: onnx.NodeProto, name: str) -> Any:
    found = [a for a in node.attribute if a.name == name]
    return helper.get_attribute_value(found[0]) if found else None


def _last_dim(model: onnx.ModelProto, name: str) -> int | None:
    for value in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        if value.name == name and value.type.tensor_type.shape.dim:
            dim = value.type.tensor_type.shape.dim[-1]
            return dim.dim_value if dim.HasField("dim_value") else None
    return None


# The plugin's kernels take half types only (`supportsFormatCombination`); an fp32 graph would ask it
# for an fp32 output (`getOutputDataTypes` returns V's type), a type it has no format for.
HALF_TYPES = {"fp16": onnx.TensorProto.FLOAT16, "bf16": onnx.TensorProto.BFLOAT16}


def replace_attention(model: onnx.ModelProto, precision: str | None = None) -> int:
    """Replace every `Attention` node of `model` (in place) by the plugin node; returns how many.
    With `precision` ('fp16' or 'bf16'), the node's fp32 inputs are cast to that type and its output
    back to fp32, so that it runs in a type the plugin supports.

    Raises DrganError for an Attention node the plugin cannot run (mask or KV-cache inputs, extra
    outputs, causal, softcap, heads packed in a 3-D input)."""
    register_schema()
    model = _with_shapes(model)
    replaced = 0
    nodes = []
    for index, node in enumerate(model.graph.node):
        nodes.append(onnx.NodeProto())
        nodes[-1].CopyFrom(node)  # a copy: the graph's own nodes are cleared below
        if node.op_type != "Attention" or node.domain not in ("", "ai.onnx"):
            continue
        where = f"Attention node {node.name or index!r}"
        if len(node.input) != 3 or len(node.output) != 1 or "" in node.input:
            raise DrganError(f"{where}: has mask, KV-cache or extra outputs; the {OP_TYPE} plugin takes Q, K, V only")
        for name, default in _ATTENTION_DEFAULTS.items():
            if _attr(node, name) not in (None, default):
                raise DrganError(f"{where}: {name}={_attr(node, name)} is not supported by the {OP_TYPE} plugin")
        if (_attr(node, "q_num_heads") or 1) != 1 or (_attr(node, "kv_num_heads") or 1) != 1:
            raise DrganError(f"{where}: heads packed in a 3-D input are not supported by the {OP_TYPE} plugin")
        scale = _attr(node, "scale")
        if scale is None:  # ONNX's default: 1 / sqrt(head size)
            width = _last_dim(model, node.input[0])
            if not width:
                raise DrganError(f"{where}: no scale attribute and Q's head size is not static")
            scale = 1.0 / math.sqrt(width)
        if not scale > 0:
            raise DrganError(f"{where}: scale {scale} must be > 0 for the {OP_TYPE} plugin")
        name = node.name or f"{OP_TYPE}_{index}"
        inputs, outputs, casts = list(node.input), list(node.output), []
        if precision is not None:
            half = HALF_TYPES[precision]
            casts = [helper.make_node("Cast", [x], [f"{name}/{x}_half"], name=f"{name}/cast_{x}", to=half) for x in inputs]
            inputs = [c.output[0] for c in casts]
            outputs = [f"{name}/{outputs[0]}_half"]
            casts.append(helper.make_node("Cast", outputs, list(node.output), name=f"{name}/cast_out",
                                          to=onnx.TensorProto.FLOAT))
        plugin = helper.make_node(OP_TYPE, inputs, outputs, name=name, domain=DOMAIN, scale=float(scale))
        nodes[-1:] = [*casts[:-1], plugin, *casts[-1:]]  # in topological order
        replaced += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    if replaced and not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, OPSET_VERSION))
    if replaced and precision is not None:
        _with_shapes(model)  # the half tensors between the casts get their shapes too
    return replaced


def _with_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape-infer `model` in place: value_info then holds every tensor's shape (the plugin outputs' too)."""
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    return model


def convert_file(src: str | Path, dst: str | Path, external_data: bool | None = None, precision: str | None = None) -> int:
    """Write `src` with its Attention nodes replaced to `dst` (weights beside it as `dst`.data when
    `src` keeps them outside, or when external_data is True); returns the number of plugin nodes.
    `precision`: the half type the plugin nodes run in (replace_attention)."""
    src, dst = Path(src), Path(dst)
    # Shapes first, without the weights: shape inference serializes the model (2 GB protobuf cap).
    model = onnx.load(str(src), load_external_data=False)
    external = external_data if external_data is not None else data_path(src).is_file()
    count = replace_attention(model, precision)
    onnx.load_external_data_for_model(model, str(src.parent))  # `dst` gets its own copy of the weights
    save_atomically(dst, lambda file: onnx.save_model(model, str(file), save_as_external_data=external,
                                                      all_tensors_to_one_file=True, location=data_path(dst).name),
                    external)
    return count


def check_plugin_graph(path: str | Path, expected: int) -> dict[str, int]:
    """ONNX checker and strict shape inference on `path` (with this op's schema), exactly `expected`
    plugin nodes, no `Attention` node left and no materialized N x N tensor; returns the op counts."""
    from drgan.export.onnx_check import check_graph

    report = check_graph(path, expected_attention=0)
    found = report.op_counts.get(OP_TYPE, 0)
    if found != expected:
        raise DrganError(f"{path}: {found} {OP_TYPE} nodes, expected {expected} (one per SCA block)")
    return report.op_counts


_loaded: dict[Path, Any] = {}  # library -> its handle: registered once per process


def load_trt_plugin(trt: Any, library: str | Path) -> Any:
    """Register the plugin library's creators with TensorRT's global plugin registry (IPluginRegistry.
    load_library, which calls the library's getCreators); returns the library handle. A library
    already loaded is not loaded again: the registry refuses creators it holds (an export builds the
    engine, then loads it to compare)."""
    library = Path(library)
    if not library.is_file():
        raise ParameterError(f"{{trt_plugin}} {library}: not found (build it: cmake -DDRGAN_TENSORRT_ROOT=... ; see README)")
    key = library.resolve()
    if key not in _loaded:
        handle = trt.get_plugin_registry().load_library(str(library))
        if handle is None:
            raise ParameterError(f"{{trt_plugin}} {library}: TensorRT could not load it (see its log above)")
        _loaded[key] = handle
    return _loaded[key]
