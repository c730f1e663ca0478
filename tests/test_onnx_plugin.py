"""The --trt-plugin ONNX variant: Attention nodes become `drgan::DrganSpatialAttention`, the result passes the
ONNX checker and strict shape inference, and computes what the original graph computes (the plugin node
evaluated by onnx's reference evaluator with the project's reference attention). Building and running a
TensorRT engine with the plugin needs TensorRT, the built plugin library and a GPU: that test skips here."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from drgan.errors import DrganError
from drgan.export import onnx_plugin
from drgan.kernels import spatial_attention_ref


class DrganSpatialAttention(OpRun):
    """The plugin node for onnx's reference evaluator: the project's reference attention."""

    op_domain = onnx_plugin.DOMAIN

    def _run(self, q, k, v, scale=None):
        lead = q.shape[:-2]
        flat = [torch.from_numpy(np.ascontiguousarray(t)).reshape(-1, *t.shape[-2:]) for t in (q, k, v)]
        out = spatial_attention_ref(*flat, scale=self.scale if scale is None else scale)
        return (out.reshape(*lead, *out.shape[-2:]).numpy(),)


def _attention_model(n: int = 64, dqk: int = 4, dv: int = 16, inputs: int = 3, **attrs) -> onnx.ModelProto:
    """(batch, 1, n, d) Q/K/V -> Attention (opset 23) -> Relu, the shape the exporter writes."""
    names = ["q", "k", "v", "mask"][:inputs]
    widths = {"q": dqk, "k": dqk, "v": dv, "mask": n}
    graph = helper.make_graph(
        [helper.make_node("Attention", names, ["att"], name="sca0", **attrs), helper.make_node("Relu", ["att"], ["y"])],
        "attention",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", 1, n, widths[x]]) for x in names],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1, n, dv])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])


def _feeds(model: onnx.ModelProto, batch: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    shapes = {i.name: [d.dim_value or batch for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    return {name: (rng.standard_normal(shape) * 0.5).astype(np.float32) for name, shape in shapes.items()}


def test_attention_becomes_the_plugin_node_and_passes_checker_and_shape_inference():
    model = _attention_model(scale=1.0)
    assert onnx_plugin.replace_attention(model) == 1
    (node,) = [n for n in model.graph.node if n.op_type == onnx_plugin.OP_TYPE]
    assert node.domain == onnx_plugin.DOMAIN and list(node.input) == ["q", "k", "v"] and node.name == "sca0"
    assert helper.get_attribute_value(node.attribute[0]) == pytest.approx(1.0)
    assert "Attention" not in {n.op_type for n in model.graph.node}
    assert (onnx_plugin.DOMAIN, 1) in {(o.domain, o.version) for o in model.opset_import}
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    (att,) = [v for v in inferred.graph.value_info if v.name == "att"]
    dims = [d.dim_param or d.dim_value for d in att.type.tensor_type.shape.dim]
    assert dims == ["batch", 1, 64, 16] and att.type.tensor_type.elem_type == TensorProto.FLOAT


def test_plugin_graph_computes_what_the_attention_graph_computes():
    original = _attention_model(scale=1.0)
    feeds = _feeds(original)
    (want,) = ReferenceEvaluator(original).run(None, feeds)
    converted = _attention_model(scale=1.0)
    onnx_plugin.replace_attention(converted)
    (got,) = ReferenceEvaluator(converted, new_ops=[DrganSpatialAttention]).run(None, feeds)
    assert got.shape == want.shape == (2, 1, 64, 16)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_missing_scale_takes_onnx_default():
    model = _attention_model(dqk=16)
    onnx_plugin.replace_attention(model)
    (node,) = [n for n in model.graph.node if n.op_type == onnx_plugin.OP_TYPE]
    assert helper.get_attribute_value(node.attribute[0]) == pytest.approx(0.25)  # 1 / sqrt(16)


@pytest.mark.parametrize("model, culprit", [
    (lambda: _attention_model(inputs=4), "mask"),
    (lambda: _attention_model(is_causal=1), "is_causal"),
    (lambda: _attention_model(scale=-1.0), "scale"),
])
def test_attention_the_plugin_cannot_run_is_refused(model, culprit):
    with pytest.raises(DrganError, match=culprit) as info:
        onnx_plugin.replace_attention(model())
    assert "sca0" in str(info.value)


def test_exported_sca_block_converts_and_matches_pytorch(tmp_path):
    """A real dynamo export (one SCA block, weights in a .data file) converted on disk."""
    from drgan.nn import SCA, set_kernel_impl

    torch.manual_seed(0)
    block = SCA(16, 4, impl="sdpa").eval()
    block.gamma_s.data.fill_(0.7)
    x = torch.randn(2, 16, 8, 8)
    src = tmp_path / "sca.onnx"
    with torch.no_grad():
        program = torch.onnx.export(block, (x,), dynamo=True, opset_version=23, input_names=["x"],
                                    output_names=["y"], verbose=False)
    program.save(str(src), external_data=True)
    assert {n.op_type for n in onnx.load(str(src), load_external_data=False).graph.node} >= {"Attention"}
    dst = tmp_path / "sca_trt_plugin.onnx"
    assert onnx_plugin.convert_file(src, dst) == 1
    assert dst.with_name(dst.name + ".data").is_file(), "the plugin file keeps its own weights"
    counts = onnx_plugin.check_plugin_graph(dst, expected=1)
    assert counts[onnx_plugin.OP_TYPE] == 1 and "Attention" not in counts
    with pytest.raises(DrganError, match="expected 3"):
        onnx_plugin.check_plugin_graph(dst, expected=3)
    (got,) = ReferenceEvaluator(str(dst), new_ops=[DrganSpatialAttention]).run(None, {"x": x.numpy()})
    set_kernel_impl(block, "ref")
    with torch.no_grad():
        want = block(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


class _Registry:
    def __init__(self, handle):
        self.handle, self.loaded = handle, []

    def load_library(self, path):
        self.loaded.append(path)
        return self.handle


class _FakeTrt:
    def __init__(self, handle):
        self.registry = _Registry(handle)

    def get_plugin_registry(self):
        return self.registry


def test_load_trt_plugin_registers_the_library_or_says_why_not(tmp_path):
    library = tmp_path / onnx_plugin.PLUGIN_FILE
    with pytest.raises(DrganError, match="not found"):
        onnx_plugin.load_trt_plugin(_FakeTrt("handle"), library)
    library.write_bytes(b"")
    with pytest.raises(DrganError, match="could not load"):
        onnx_plugin.load_trt_plugin(_FakeTrt(None), library)
    trt = _FakeTrt("handle")
    assert onnx_plugin.load_trt_plugin(trt, library) == "handle" and trt.registry.loaded == [str(library)]
    # Once per process: the registry refuses creators it holds (export builds, then loads, the engine).
    assert onnx_plugin.load_trt_plugin(trt, tmp_path / "." / library.name) == "handle"
    assert trt.registry.loaded == [str(library)]


@pytest.mark.gpu
def test_tensorrt_engine_with_the_plugin_matches_the_reference(tmp_path):
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (NVIDIA's index only)")
    library = os.environ.get("DRGAN_TRT_PLUGIN")
    if not library or not Path(library).is_file():
        pytest.skip("set DRGAN_TRT_PLUGIN to a libdrgan_trt_plugin.so built with -DDRGAN_TENSORRT_ROOT")
    onnx_plugin.load_trt_plugin(trt, library)
    model = _attention_model(n=256, dqk=4, dv=32, scale=1.0)
    onnx_plugin.replace_attention(model, "fp16")  # the plugin's kernels take half types only
    path = tmp_path / "plugin.onnx"
    onnx.save(model, str(path))
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse_from_file(str(path)), [str(parser.get_error(i)) for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for name, width in (("q", 4), ("k", 4), ("v", 32)):
        profile.set_shape(name, (1, 1, 256, width), (2, 1, 256, width), (4, 1, 256, width))
    config.add_optimization_profile(profile)
    engine = trt.Runtime(logger).deserialize_cuda_engine(builder.build_serialized_network(network, config))
    context = engine.create_execution_context()
    feeds = {k: torch.from_numpy(v).cuda() for k, v in _feeds(model).items()}
    out = torch.empty(2, 1, 256, 32, device="cuda")
    for name, tensor in feeds.items():
        context.set_input_shape(name, tuple(tensor.shape))
        context.set_tensor_address(name, tensor.data_ptr())
    context.set_tensor_address("y", out.data_ptr())
    assert context.execute_async_v3(torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    flat = [feeds[k].reshape(2, 256, -1) for k in ("q", "k", "v")]
    want = torch.relu(spatial_attention_ref(*flat)).reshape(2, 1, 256, 32)
    assert (out - want).abs().max().item() < 2e-2


@pytest.mark.slow
def test_tiny_generator_plugin_graph_matches_pytorch(tmp_path):
    """The whole tiny-64 generator: one plugin node per SCA block, the graph equal to the eager model."""
    from drgan.config import preset
    from drgan.export.onnx_export import export_onnx
    from drgan.export.wrapper import example_inputs, input_names
    from drgan.nn import DRGANGenerator

    torch.manual_seed(0)
    g = DRGANGenerator(preset("tiny-64"), "local").eval()
    for block in g.global_gen.synth:
        block.sca.gamma_s.data.fill_(0.5)
    path = tmp_path / onnx_plugin.ONNX_FILE
    export_onnx(g, path)
    assert onnx_plugin.convert_file(path, path) == len(g.global_gen.synth)
    onnx_plugin.check_plugin_graph(path, expected=len(g.global_gen.synth))
    inputs = example_inputs(g, 1, seed=1)
    session = ReferenceEvaluator(str(path), new_ops=[DrganSpatialAttention])
    image, logits = session.run(None, dict(zip(input_names(g), (t.numpy() for t in inputs))))
    with torch.no_grad():
        want_image, want_logits = g(inputs[0], inputs[1], list(inputs[2:]))
    np.testing.assert_allclose(image, want_image.numpy(), atol=1e-5)
    np.testing.assert_allclose(logits, want_logits.numpy(), atol=1e-5)


@pytest.mark.parametrize("precision, half", [("fp16", TensorProto.FLOAT16), ("bf16", TensorProto.BFLOAT16)])
def test_the_plugin_node_runs_in_the_half_type_between_casts(precision, half):
    """The plugin takes fp16/bf16 only: in the fp32 graph it was asked for an fp32 output, a type it
    supports no format for. Casts put it in the engine's half type; the graph's types stay fp32."""
    model = _attention_model(scale=1.0)
    assert onnx_plugin.replace_attention(model, precision) == 1
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["Cast", "Cast", "Cast", onnx_plugin.OP_TYPE, "Cast", "Relu"]
    casts = {n.output[0]: n for n in model.graph.node if n.op_type == "Cast"}
    (plugin,) = [n for n in model.graph.node if n.op_type == onnx_plugin.OP_TYPE]
    assert [casts[x].input[0] for x in plugin.input] == ["q", "k", "v"]
    assert all(helper.get_attribute_value(casts[x].attribute[0]) == half for x in plugin.input)
    (out,) = [n for n in model.graph.node if n.op_type == "Cast" and n.input[0] == plugin.output[0]]
    assert list(out.output) == ["att"] and helper.get_attribute_value(out.attribute[0]) == TensorProto.FLOAT
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    assert types[plugin.output[0]] == half and types["att"] == TensorProto.FLOAT
    if precision == "fp16":  # onnx's reference evaluator has no bfloat16 arrays
        feeds = _feeds(model)
        (want,) = ReferenceEvaluator(_attention_model(scale=1.0)).run(None, feeds)
        (got,) = ReferenceEvaluator(model, new_ops=[DrganSpatialAttention]).run(None, feeds)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-2)
