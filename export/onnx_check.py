"""Structural checks of an exported ONNX graph: checker, shape inference, op types, the N x N guard.

The guard reads every tensor's inferred shape (value_info), resolving the exporter's symbolic sizes
(e.g. `Min(4096, 16384//batch)`) at a given batch with sympy, and rejects any tensor with two axes
longer than `max_side`: an attention score matrix that was materialized instead of fused.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import sympy

from drgan.errors import DrganError

# Never an explicit N x N tensor for N above this (docs/design.md, limits).
MAX_SIDE = 4096


@dataclass
class GraphReport:
    path: str
    op_counts: dict[str, int]                                  # op type -> number of nodes
    attention_nodes: int                                       # standard `Attention` nodes
    widest: tuple[str, tuple[int | None, ...]] | None = None   # the activation whose two longest axes are longest
    unresolved: list[str] = field(default_factory=list)        # tensors with a size shape inference left open

    def summary(self) -> str:
        ops = ", ".join(f"{k} {v}" for k, v in sorted(self.op_counts.items()))
        widest = f"; widest tensor {self.widest[0]} {self.widest[1]}" if self.widest else ""
        return f"{self.attention_nodes} Attention nodes{widest}; ops: {ops}"


def check_graph(
    path: str | Path,
    expected_attention: int,
    max_side: int = MAX_SIDE,
    batch: int = 1,
) -> GraphReport:
    """Run the ONNX checker and shape inference on `path`; require `expected_attention` Attention
    nodes and no tensor with two axes longer than `max_side` (symbolic sizes evaluated at `batch`)."""
    path = Path(path)
    try:
        onnx.checker.check_model(str(path))  # by path: works with external data and past 2 GB
        model = onnx.load(str(path), load_external_data=False)  # shapes need no weights
        model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise DrganError(f"{path}: invalid ONNX model ({str(exc).splitlines()[0]})") from None
    ops = Counter(node.op_type for node in model.graph.node)
    report = GraphReport(str(path), dict(ops), ops.get("Attention", 0))
    if report.attention_nodes != expected_attention:
        raise DrganError(
            f"{path}: {report.attention_nodes} Attention nodes, expected {expected_attention} (one per SCA block): "
            "the spatial attention was decomposed"
        )
    batch_symbols = {d.dim_param for i in model.graph.input for d in i.type.tensor_type.shape.dim[:1] if d.dim_param}
    weights = {t.name for t in model.graph.initializer}
    widest_key = (-1, -1)
    for value in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        if value.name in weights:
            continue
        dims = tuple(_resolve(d, batch_symbols, batch) for d in value.type.tensor_type.shape.dim)
        if any(d is None for d in dims):
            report.unresolved.append(value.name)
        known = sorted((d for d in dims if d is not None), reverse=True)
        if len(known) < 2:
            continue
        if (known[1], known[0]) > widest_key:
            widest_key, report.widest = (known[1], known[0]), (value.name, dims)
        if known[1] > max_side:
            raise DrganError(
                f"{path}: tensor {value.name!r} has shape {dims} at batch {batch}: two axes longer than "
                f"{max_side} (a materialized N x N attention matrix)"
            )
    return report


def _resolve(dim: onnx.TensorShapeProto.Dimension, batch_symbols: set[str], batch: int) -> int | None:
    """A dimension's size: its value, or its symbolic expression evaluated at `batch` (None if open)."""
    if dim.HasField("dim_value"):
        return dim.dim_value
    if not dim.dim_param:
        return None
    try:
        expr = sympy.sympify(dim.dim_param)
    except (sympy.SympifyError, SyntaxError, TypeError):
        return None
    value = expr.subs({sympy.Symbol(s): batch for s in batch_symbols})
    return int(value) if value.is_Integer else None
