"""Export edges: the opset range, the graph guard's symbolic sizes, the ONNX Runtime and package checks'
tolerances on each output, what export.json records, and how the synthesis runtimes refuse a stale
or mismatched export; the TensorRT logic that runs without TensorRT."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from drgan.checkpoint import save_module
from drgan.cli.common import run_command
from drgan.cli.export import export
from drgan.config import preset
from drgan.errors import DrganError, ParameterError, UsageError
from drgan.export import aoti, backends, onnx_export, onnx_files, ort_runner, pipeline, trt_build
from drgan.export.onnx_check import check_graph
from drgan.export.sidecar import BatchProfile, read_sidecar
from drgan.export.wrapper import example_inputs
from drgan.nn import DRGANGenerator
from drgan.runs import write_run_config


def _tiny() -> DRGANGenerator:
    g = DRGANGenerator(preset("tiny-64"), "local").eval()
    for block in g.global_gen.synth:  # attention branches on, so every output depends on them
        block.sca.gamma_s.data.fill_(0.5)
        block.sca.gamma_c.data.fill_(0.5)
    return g


def _write_run(folder: Path, g: DRGANGenerator) -> Path:
    write_run_config(folder, preset("tiny-64"), "local")
    save_module(g, folder / "G_ema.safetensors")
    return folder


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny-64 run exported through the CLI with default options: (run, generator, export folder)."""
    torch.manual_seed(0)
    g = _tiny()
    run = _write_run(tmp_path_factory.mktemp("run") / "run", g)
    assert run_command(export, args=["--checkpoint", str(run)]) == 0
    return run, g, run / "export"


# --- opset range -------------------------------------------------------------------------------

@pytest.mark.parametrize("opset", [23, 24, 25])
def test_every_opset_from_23_to_25_is_accepted(opset):
    onnx_export.check_opset(opset)


@pytest.mark.parametrize("opset", [22, 26])
def test_opsets_outside_23_to_25_are_refused(opset):
    with pytest.raises(ParameterError, match=f"^opset {opset}: "):
        onnx_export.check_opset(opset)


# --- what export.json records ---------------------------------------------------------------------

def test_manifest_records_the_opset_and_checks_at_batch_1_and_a_larger_batch(exported):
    _, g, out = exported
    entry = json.loads((out / "export.json").read_text())["files"]["generator.onnx"]
    assert entry["opset"] == 23 and entry["qk_padded"] is False
    batches = [int(line.split(":")[0].split()[1]) for line in entry["onnxruntime_check"]]
    assert 1 in batches and any(b > 1 for b in batches)  # the dynamic batch axis is exercised, not only batch 1
    assert all("max abs diff image" in line for line in entry["onnxruntime_check"])


def test_small_weights_stay_inside_the_model_file(exported):
    _, g, out = exported
    assert sum(p.numel() * p.element_size() for p in g.parameters()) < 1 << 30
    assert not onnx_files.data_path(out / "generator.onnx").exists()
    model = onnx.load(str(out / "generator.onnx"), load_external_data=False)
    assert not any(t.external_data for t in model.graph.initializer)


def test_weights_above_the_threshold_go_to_a_data_file_without_the_flag(tmp_path, monkeypatch):
    """Without --external-data the choice is automatic: weights above the threshold go to a .data file."""
    run = _write_run(tmp_path / "run", _tiny())
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 0)
    assert run_command(export, args=["--checkpoint", str(run)]) == 0
    assert onnx_files.data_path(run / "export" / "generator.onnx").is_file()


# --- the ONNX Runtime runner and check -------------------------------------------------------------

def test_runner_called_with_too_few_noise_volumes_is_one_error(exported):
    _, g, out = exported
    cond, z, *noise = example_inputs(g, 1)
    runner = ort_runner.OrtGenerator(out / "generator.onnx")
    with pytest.raises(DrganError, match="^the ONNX model takes 5 inputs, got 4$"):
        runner(cond, z, noise[:-1])


def _offset_runtime(g, d_image, d_logits):
    """An ONNX Runtime stand-in: the eager generator's outputs plus fixed offsets."""
    class Offset:
        def __init__(self, path, device="cpu", threads=None):
            pass

        def __call__(self, cond, z, noise):
            with torch.no_grad():
                image, logits = g(cond, z, noise)
            return image + d_image, logits + d_logits

    return Offset


@pytest.mark.parametrize("d_image, d_logits", [(0.01, 0.0), (0.0, 0.01), (float("nan"), 0.0)])
def test_onnx_check_refuses_a_difference_in_either_output(monkeypatch, d_image, d_logits):
    g = _tiny()
    monkeypatch.setattr(ort_runner, "OrtGenerator", _offset_runtime(g, d_image, d_logits))
    with pytest.raises(DrganError, match="differs from PyTorch beyond 0.001"):
        ort_runner.verify_onnx("generator.onnx", g, batches=(1,))


def test_onnx_check_passes_an_identical_model(monkeypatch):
    g = _tiny()
    monkeypatch.setattr(ort_runner, "OrtGenerator", _offset_runtime(g, 1e-5, 0.0))
    (result,) = ort_runner.verify_onnx("generator.onnx", g, batches=(2,))
    assert not result.skipped and result.batch == 2
    assert 0.5e-5 < result.image_max_abs < 2e-5 and result.logits_max_abs == 0


# --- the graph guard's symbolic sizes --------------------------------------------------------------

def _symbolic_model(path: Path) -> Path:
    """x (batch, 8) and s (batch, 16384//batch, 5000): s has two axes above 4096 only at a small batch."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])
    s = helper.make_tensor_value_info("s", TensorProto.FLOAT, ["batch", "16384//batch", 5000])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])
    t = helper.make_tensor_value_info("t", TensorProto.FLOAT, ["batch", "16384//batch", 5000])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"]), helper.make_node("Identity", ["s"], ["t"])],
                              "g", [x, s], [y, t])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)]), str(path))
    return path


def test_guard_evaluates_symbolic_sizes_at_the_given_batch(tmp_path):
    path = _symbolic_model(tmp_path / "m.onnx")
    with pytest.raises(DrganError, match=r"tensor 's' has shape \(1, 16384, 5000\) at batch 1"):
        check_graph(path, expected_attention=0, batch=1)
    report = check_graph(path, expected_attention=0, batch=8)  # 2048 x 5000: one axis above 4096
    assert report.widest == ("s", (8, 2048, 5000)) and report.unresolved == []


# --- export_run's checks of the package (no compilation) --------------------------------------------

@pytest.fixture
def package_run(tmp_path, monkeypatch):
    """A tiny-64 run whose package export skips compilation; the package's outputs are the eager
    generator's plus `offsets` (image, logits), and the profile it was compiled for is recorded."""
    g = _tiny()
    run = _write_run(tmp_path / "run", g)
    state = SimpleNamespace(offsets=(0.0, 0.0), profiles=[])

    def fake_compile(generator, path, profile, device, precision):
        state.profiles.append(profile)
        path.write_bytes(b"package")
        aoti.write_sidecar(path, {"device": device})
        return path

    def fake_run(path, inputs):
        with torch.no_grad():
            image, logits = g(inputs[0], inputs[1], list(inputs[2:]))
        return image + state.offsets[0], logits + state.offsets[1]

    monkeypatch.setattr(pipeline, "compile_aoti", fake_compile)
    monkeypatch.setattr(pipeline, "run_in_fresh_process", fake_run)
    return run, state


@pytest.mark.parametrize("offsets", [(0.01, 0.0), (0.0, 0.01)])
def test_fp32_package_differing_in_either_output_is_refused_and_removed(package_run, capsys, offsets):
    run, state = package_run
    state.offsets = offsets
    assert run_command(export, args=["--checkpoint", str(run), "--aoti", "--device", "cpu", "--batch", "1"]) == 1
    assert "generator_cpu_fp32.pt2: the AOTInductor package differs from PyTorch by 1.00e-02" in capsys.readouterr().err
    assert not list((run / "export").glob("generator_cpu_fp32.pt2*"))


def test_fp32_package_matching_pytorch_is_recorded(package_run):
    run, state = package_run
    state.offsets = (1e-5, 0.0)
    assert run_command(export, args=["--checkpoint", str(run), "--aoti", "--device", "cpu", "--batch", "1"]) == 0
    entry = json.loads((run / "export" / "export.json").read_text())["files"]["generator_cpu_fp32.pt2"]
    assert 0.5e-5 < entry["max_abs_diff_vs_torch"] < 2e-5 and entry["precision"] == "fp32"


def test_half_precision_package_is_only_required_to_be_finite(package_run):
    run, state = package_run
    state.offsets = (0.05, 0.05)
    args = ["--checkpoint", str(run), "--aoti", "--device", "cpu", "--precision", "bf16", "--batch", "1"]
    assert run_command(export, args=args) == 0
    assert "generator_cpu_bf16.pt2" in json.loads((run / "export" / "export.json").read_text())["files"]


def test_cli_batch_range_reaches_the_package_build(package_run):
    run, state = package_run
    args = ["--checkpoint", str(run), "--aoti", "--device", "cpu", "--min-batch", "1", "--opt-batch", "2", "--max-batch", "4"]
    assert run_command(export, args=args) == 0
    assert state.profiles == [BatchProfile(1, 2, 4)]


# --- ExportOptions / export_run refusals that need a TensorRT ----------------------------------------

def test_trt_plugin_needs_a_half_precision(monkeypatch):
    monkeypatch.setattr(pipeline, "import_tensorrt", lambda: None)
    with pytest.raises(UsageError, match="^trt_plugin runs the fp16/bf16 kernels"):
        pipeline.ExportOptions(trt=True, trt_plugin="lib.so")
    pipeline.ExportOptions(trt=True, trt_plugin="lib.so", precision="fp16")


def test_trt_export_without_a_gpu_is_refused_before_any_work(tmp_path, monkeypatch):
    run = _write_run(tmp_path / "run", _tiny())
    monkeypatch.setattr(pipeline, "import_tensorrt", lambda: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(pipeline, "export_onnx", lambda *a, **k: pytest.fail("exported"))
    with pytest.raises(ParameterError, match="^trt needs a CUDA GPU"):
        pipeline.export_run(run, options=pipeline.ExportOptions(trt=True), log=lambda line: None)
    assert not (run / "export").exists()


# --- BatchProfile and sidecars ------------------------------------------------------------------------

def test_a_profile_is_fixed_only_when_min_equals_max():
    assert BatchProfile(3, 3, 3).fixed
    assert not BatchProfile(2, 2, 8).fixed and not BatchProfile(1, 8, 8).fixed


def test_a_corrupt_sidecar_is_one_error(tmp_path):
    engine = tmp_path / "g.engine"
    (tmp_path / "g.engine.json").write_text('{"batch": ')
    with pytest.raises(DrganError, match=r"g\.engine\.json: not valid JSON"):
        read_sidecar(engine)


# --- the synthesis runtimes' refusals -----------------------------------------------------------------

def _manifest(folder: Path, files: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "export.json").write_text(json.dumps({"files": files}))


def test_a_listed_file_that_is_gone_is_not_exported_yet(tmp_path):
    run = _write_run(tmp_path / "run", _tiny())
    folder = tmp_path / "export"
    _manifest(folder, {"generator.onnx": {"weights_sha256": "w"}})
    with pytest.raises(DrganError, match=r"generator\.onnx: not exported yet: run drgan-export"):
        backends.open_onnxruntime(folder, run, "w", "cpu", "fp32", 1)


def test_a_manifest_without_a_files_table_is_malformed(tmp_path):
    _manifest(tmp_path, [])
    with pytest.raises(DrganError, match="malformed export manifest"):
        backends.read_manifest(tmp_path)


def test_onnxruntime_backend_refuses_half_precision(tmp_path):
    with pytest.raises(ParameterError, match="runs the fp32 ONNX file"):
        backends.open_onnxruntime(tmp_path, tmp_path, "w", "cpu", "fp16", 1)


def test_onnxruntime_backend_without_a_cuda_provider_runs_on_the_cpu(tmp_path, monkeypatch):
    run = _write_run(tmp_path / "run", _tiny())
    folder = tmp_path / "export"
    _manifest(folder, {"generator.onnx": {"weights_sha256": "w"}})
    (folder / "generator.onnx").write_bytes(b"model")
    opened = []
    monkeypatch.setattr(ort_runner, "has_cuda_provider", lambda: False)
    monkeypatch.setattr(ort_runner, "OrtGenerator", lambda path, device: opened.append((path, device)) or "runtime")
    assert backends.open_onnxruntime(folder, run, "w", "cuda", "fp32", 1) == "runtime"
    assert opened == [(folder / "generator.onnx", "cpu")]


@pytest.mark.parametrize("batch, ok", [(None, True), (1, False), (2, True), (3, True), (4, True), (5, False)])
def test_package_backend_takes_the_batches_of_its_range_inclusive(tmp_path, monkeypatch, batch, ok):
    folder = tmp_path / "export"
    _manifest(folder, {"generator_cpu_fp32.pt2": {"weights_sha256": "w"}})
    (folder / "generator_cpu_fp32.pt2").write_bytes(b"package")
    runtime = SimpleNamespace(name="aoti", sidecar={"batch": {"min": 2, "opt": 3, "max": 4}})
    monkeypatch.setattr(aoti, "AotiGenerator", lambda path, device: runtime)
    if ok:
        assert backends.open_aoti(folder, tmp_path, "w", "cpu", "fp32", batch) is runtime
    else:
        with pytest.raises(ParameterError, match=rf"^batch {batch}: the aoti export takes batches 2\.\.4"):
            backends.open_aoti(folder, tmp_path, "w", "cpu", "fp32", batch)


# --- the atomic write of the model file --------------------------------------------------------------

def test_an_export_without_external_data_removes_an_earlier_data_file(tmp_path):
    path = tmp_path / "generator.onnx"

    def with_data(file):
        file.write_bytes(b"model v1")
        onnx_files.data_path(file).write_bytes(b"weights v1")

    onnx_files.save_atomically(path, with_data, external_data=True)
    assert onnx_files.data_path(path).read_bytes() == b"weights v1"
    onnx_files.save_atomically(path, lambda file: file.write_bytes(b"model v2"), external_data=False)
    assert path.read_bytes() == b"model v2" and not onnx_files.data_path(path).exists()
    assert [p.name for p in tmp_path.iterdir()] == ["generator.onnx"]


# --- TensorRT build logic without TensorRT ------------------------------------------------------------

@pytest.fixture
def fake_tensorrt(monkeypatch):
    fake = SimpleNamespace(__version__="10.14.0")
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return fake


@pytest.mark.parametrize("level", [0, 5])
def test_builder_takes_optimization_levels_0_to_5(fake_tensorrt, tmp_path, level):
    with pytest.raises(DrganError, match="^TensorRT needs a CUDA GPU"):  # past the level check
        trt_build.build_engine(tmp_path / "g.onnx", tmp_path / "g.engine", _tiny(), BatchProfile(1, 1, 1),
                               optimization_level=level)


@pytest.mark.parametrize("level", [-1, 6])
def test_builder_refuses_optimization_levels_outside_0_to_5(fake_tensorrt, tmp_path, level):
    with pytest.raises(ParameterError, match=rf"^opt_level {level}: TensorRT takes 0\.\.5$"):
        trt_build.build_engine(tmp_path / "g.onnx", tmp_path / "g.engine", _tiny(), BatchProfile(1, 1, 1),
                               optimization_level=level)


class _Config:
    def __init__(self):
        self.set, self.cleared, self.profiles = [], [], []

    def set_flag(self, flag):
        self.set.append(flag)

    def clear_flag(self, flag):
        self.cleared.append(flag)

    def add_optimization_profile(self, profile):
        self.profiles.append(profile)
        return 0

    def create_timing_cache(self, data):
        return object()

    def set_timing_cache(self, cache, ignore_mismatch):
        return True


@pytest.mark.parametrize("precision, flags, cleared", [("fp16", ["FP16"], []), ("bf16", ["BF16"], []),
                                                       ("fp32", [], ["TF32"])])
def test_builder_config_sets_the_precision_flag_and_the_batch_profile(precision, flags, cleared):
    shapes = {}
    profile = SimpleNamespace(set_shape=lambda name, lo, opt, hi: shapes.__setitem__(name, (lo, opt, hi)))
    builder = SimpleNamespace(create_builder_config=_Config, create_optimization_profile=lambda: profile)
    trt = SimpleNamespace(BuilderFlag=SimpleNamespace(FP16="FP16", BF16="BF16", TF32="TF32"))
    config = trt_build._builder_config(trt, builder, _tiny(), BatchProfile(1, 2, 4), precision, 3, None)
    assert config.set == flags and config.cleared == cleared and config.builder_optimization_level == 3
    assert config.profiles == [profile]
    assert shapes["cond"] == ((1, 8, 64, 64), (2, 8, 64, 64), (4, 8, 64, 64))
    assert shapes["z"] == ((1, 256), (2, 256), (4, 256))
