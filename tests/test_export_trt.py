"""TensorRT path: what runs without TensorRT (profiles, sidecar, argument checks, the missing-TensorRT
exit), and an engine test where TensorRT and a GPU exist."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from drgan.checkpoint import save_module
from drgan.runs import write_run_config
from drgan.cli.common import run_command
from drgan.cli.export import export
from drgan.config import preset
from drgan.errors import DrganError
from drgan.export.sidecar import BatchProfile, read_sidecar, write_sidecar
from drgan.export.trt_build import INSTALL_HINT, engine_sidecar
from drgan.export.wrapper import attention_flops, pad_attention_qk, prepare
from drgan.nn import DRGANGenerator

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def tiny():
    return DRGANGenerator(preset("tiny-64"), "local").eval()


@pytest.fixture
def run(tmp_path, tiny):
    write_run_config(tmp_path / "run", preset("tiny-64"), "local")
    save_module(tiny, tmp_path / "run" / "G_ema.safetensors")
    return tmp_path / "run"


def test_profile_from_batch_range_and_fixed_batch():
    assert BatchProfile.from_options() == BatchProfile(1, 4, 16)
    assert BatchProfile.from_options(batch=8) == BatchProfile(8, 8, 8)
    assert BatchProfile.from_options(batch=8).fixed
    assert BatchProfile.from_options(min_batch=2, opt_batch=8, max_batch=32) == BatchProfile(2, 8, 32)
    assert BatchProfile.from_options(max_batch=2) == BatchProfile(1, 2, 2)     # opt clamped into range
    assert BatchProfile.from_options(min_batch=32) == BatchProfile(32, 32, 32)  # max and opt follow min


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch": 4, "min_batch": 1}, "do not combine it with min_batch"),  # the parameters; the CLI maps them to flags
        ({"batch": 0}, "^batch 0: must be at least 1"),
        ({"max_batch": 0}, "^max_batch 0: must be at least 1"),
        ({"min_batch": 4, "opt_batch": 2, "max_batch": 8}, r"^opt_batch 2: outside the batch range 4\.\.8 \(min_batch\.\.max_batch\)$"),
        ({"opt_batch": 32, "max_batch": 16}, r"^opt_batch 32: outside the batch range 1\.\.16"),
        ({"min_batch": 3, "max_batch": 2}, "^min_batch 3 exceeds max_batch 2$"),   # opt not given: not named
    ],
)
def test_profile_rejects_bad_combinations(kwargs, message):
    with pytest.raises(DrganError, match=message):
        BatchProfile.from_options(**kwargs)


def test_profile_shapes_per_input(tiny):
    shapes = BatchProfile(1, 4, 16).shapes(tiny)
    assert list(shapes) == ["cond", "z", "noise0", "noise1", "noise2"]
    assert shapes["cond"] == ((1, 8, 64, 64), (4, 8, 64, 64), (16, 8, 64, 64))
    assert shapes["z"] == ((1, 256), (4, 256), (16, 256))
    # tiny-64: Gm at 32 px, synthesis blocks at 4, 8, 16 px with 64, 32, 16 channels -> C/4 noise channels
    assert shapes["noise2"] == ((1, 4, 16, 16), (4, 4, 16, 16), (16, 4, 16, 16))


def test_sidecar_content_and_round_trip(tiny, tmp_path):
    data = engine_sidecar(tiny, BatchProfile(1, 4, 16), "fp16", "10.9.0", "NVIDIA H100", "generator_trt.onnx", 3)
    assert data["precision"] == "fp16" and data["tensorrt_version"] == "10.9.0" and data["gpu"] == "NVIDIA H100"
    assert data["batch"] == {"min": 1, "opt": 4, "max": 16}
    assert data["inputs"]["noise0"] == {"min": [1, 16, 4, 4], "opt": [4, 16, 4, 4], "max": [16, 16, 4, 4]}
    assert data["outputs"] == {"image": [-1, 3, 64, 64], "grade_logits": [-1, 5]}
    assert data["model"]["resolution"] == 64 and data["stage"] == "local"
    engine = tmp_path / "g.engine"
    write_sidecar(engine, data)
    assert json.loads((tmp_path / "g.engine.json").read_text()) == read_sidecar(engine) == data


def test_qk_padding_cost_paper_1280():
    g = DRGANGenerator(preset("paper-1280"), "local")
    plain = attention_flops(g)
    padded = attention_flops(pad_attention_qk(prepare(g).generator))
    assert 1.85 < padded / plain < 1.95  # documented: ~1.9x attention FLOPs
    assert 3.1e12 < plain < 3.2e12 and 6.1e12 < padded < 6.2e12  # per 1280 px image


def test_cli_trt_without_tensorrt_exits_1_with_one_line(run):
    if HAS_TRT:
        pytest.skip("tensorrt is installed here")
    proc = subprocess.run(
        [sys.executable, "-c", "from drgan.cli import export_main; export_main()", "--checkpoint", str(run), "--trt"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"error: {INSTALL_HINT}"]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (run / "export").exists()  # stopped before any work


@pytest.mark.parametrize(
    "args, message, code",  # options that exclude each other or need another: usage errors (2)
    [
        (["--batch", "4", "--max-batch", "8"], "do not combine it with --max-batch", 2),
        (["--precision", "fp16"], "applies to --trt and --aoti", 2),
        (["--batch", "4"], "--batch sets the batch range of an engine or package: add --trt or --aoti", 2),
        (["--onnx", "--min-batch", "1", "--opt-batch", "2"], "--min-batch, --opt-batch set the batch range", 2),
        (["--no-pad-qk"], "--no-pad-qk configures the TensorRT build: add --trt", 2),
        (["--opt-level", "5"], "add --trt", 2),
        (["--device", "cpu"], "--device cpu is the device of the AOTInductor package: add --aoti", 2),
        (["--aoti", "--external-data"], "--external-data applies to ONNX files; --aoti alone writes none: add --onnx", 2),
        (["--aoti", "--device", "cuda"], "--device cuda: no CUDA device is available", 1),
        (["--stage", "local"], None, 1),
    ],
)
def test_cli_argument_checks(run, args, message, code, capsys, tmp_path):
    if message is None:  # --stage must name the run's stage
        write_run_config(run, preset("tiny-64"), "global")
        save_module(DRGANGenerator(preset("tiny-64"), "global"), run / "G_ema.safetensors")
        message = "is a global-stage run"
    elif "CUDA" in message and torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert run_command(export, args=["--checkpoint", str(run), *args]) == code
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (run / "export").exists()


def test_cli_missing_run_is_one_line(tmp_path, capsys):
    assert run_command(export, args=["--checkpoint", str(tmp_path / "nope")]) == 1
    assert "run folder not found" in capsys.readouterr().err


def test_a_folder_that_is_no_run_is_one_line_and_nothing_else(tmp_path, capsys):
    assert run_command(export, args=["--run", str(tmp_path), "--out", str(tmp_path / "x")]) == 1
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", f"error: {tmp_path}: not a drgan run folder (no run.json)\n")
    assert not (tmp_path / "x").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TRT, reason="TensorRT is not installed (pip install 'drgan[trt]')")
def test_engine_builds_and_matches_pytorch(run, tiny):
    from drgan.export.wrapper import example_inputs
    from drgan.synthesis.registry import make_backend

    assert run_command(export, args=["--checkpoint", str(run), "--trt", "--min-batch", "1", "--opt-batch", "2", "--max-batch", "4"]) == 0
    backend = make_backend("tensorrt", run, 64, torch.device("cuda"), "fp32", 3)
    cond, z, *noise = example_inputs(tiny, 3)
    with torch.no_grad():
        ref_image, _ = tiny(cond, z, noise)
    for _ in range(2):  # capture, then replay
        image = backend.call(cond, z, noise)
    assert (image.cpu() - ref_image).abs().max().item() < 1e-2
    assert read_sidecar(run / "export" / "generator_fp32.engine")["batch"] == {"min": 1, "opt": 2, "max": 4}


def test_engine_runner_never_loads_a_library_its_sidecar_names(tmp_path, monkeypatch):
    """A sidecar is data: its plugin library is loaded only when the caller names one."""
    from types import SimpleNamespace

    from drgan.export import trt_runner

    loaded = []
    registry = SimpleNamespace(load_library=lambda path: loaded.append(path) or object())
    monkeypatch.setattr(trt_runner, "import_tensorrt", lambda: SimpleNamespace(get_plugin_registry=lambda: registry))
    library = tmp_path / "evil.so"
    library.write_bytes(b"\x7fELF")
    engine = tmp_path / "generator_fp16.engine"
    engine.write_bytes(b"engine")
    write_sidecar(engine, {"batch": {"min": 1, "opt": 1, "max": 1}, "plugin_library": str(library)})
    with pytest.raises(DrganError, match="built with the drgan attention plugin; name the library with trt_plugin"):
        trt_runner.TrtGenerator(engine, device="cuda")
    assert loaded == []


def test_trt_plugin_applies_to_the_tensorrt_backend_only(run):
    from drgan.synthesis.registry import make_backend

    with pytest.raises(DrganError, match="trt_plugin applies to backend tensorrt, not onnxruntime"):
        make_backend("onnxruntime", run, 64, torch.device("cpu"), "fp32", 1, trt_plugin="lib.so")


@pytest.mark.parametrize("version, usable", [("10.9.0", False), ("10.14.1.48", True), ("10.16rc1", True), ("11.0.0", False),
                                             ("unknown", False)])
def test_a_tensorrt_outside_10_14_to_10_x_is_one_line(monkeypatch, version, usable):
    """Before 10.14 the ONNX parser cannot read the Attention operator; 11 drops the FP16/BF16 flags."""
    import sys
    from types import SimpleNamespace

    from drgan.export.trt_build import import_tensorrt

    fake = SimpleNamespace(__version__=version)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    if usable:
        assert import_tensorrt() is fake
        return
    with pytest.raises(DrganError, match=rf"^TensorRT {version}: drgan needs TensorRT 10.14 or a later 10.x"):
        import_tensorrt()


def test_engine_inputs_are_bound_in_the_calls_order_by_name():
    """The engine's own tensor order is not documented: they were zipped by position with (cond, z, noise...)."""
    from drgan.export.trt_runner import _input_order

    names = ["noise1", "z", "noise10", "noise0", "cond", "noise2"]
    assert sorted(names, key=_input_order) == ["cond", "z", "noise0", "noise1", "noise2", "noise10"]
