"""Package export and `drgan export` edges that run without compiling: what compile_aoti traces and
records, how a loaded package checks its device, memory, batch and inputs, the fresh-process check's
hand-over and failures, and the options the command passes on."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from drgan.config import preset
from drgan.errors import DrganError, ParameterError
from drgan.export import aoti, pipeline, wrapper
from drgan.export.sidecar import BatchProfile, read_sidecar
from drgan.io import sha256_file
from drgan.nn import DRGANGenerator
from helpers import one_error


@pytest.fixture(scope="module")
def tiny() -> DRGANGenerator:
    return DRGANGenerator(preset("tiny-64"), "local").eval()


@pytest.fixture
def traced(monkeypatch):
    """compile_aoti without the minutes of compilation: what torch.export and the packager were given."""
    calls = SimpleNamespace(exports=[], packages=[])

    def fake_export(model, args, dynamic_shapes=None):
        calls.exports.append((args, dynamic_shapes))
        return "program"

    def fake_package(program, package_path):
        calls.packages.append(str(package_path))
        Path(package_path).write_bytes(b"compiled")
        return package_path

    monkeypatch.setattr(torch.export, "export", fake_export)
    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", fake_package)
    return calls


def _package(folder: Path, device: str = "cpu", lo: int = 1, hi: int = 1, **extra) -> Path:
    """A package file and the sidecar its export writes (its sha256 recorded)."""
    path = folder / f"generator_{device}_fp32.pt2"
    path.write_bytes(b"compiled")
    aoti.write_sidecar(path, {"device": device, "batch": {"min": lo, "opt": lo, "max": hi},
                              "sha256": sha256_file(path), **extra})
    return path


@pytest.fixture
def loads(monkeypatch):
    """torch's package loader replaced: each load's keyword arguments, and each call's inputs."""
    record = SimpleNamespace(loads=[], calls=[])

    def load(path, **kwargs):
        record.loads.append(kwargs)

        def package(*inputs):
            record.calls.append(inputs)
            return torch.ones(inputs[0].shape[0], 3, 4, 4), torch.zeros(inputs[0].shape[0], 5)
        return package

    monkeypatch.setattr(torch._inductor, "aoti_load_package", load)
    return record


# --- compile_aoti -----------------------------------------------------------------------------------

@pytest.mark.parametrize("profile, traced_batch, dynamic", [(BatchProfile(1, 1, 4), 2, True), (BatchProfile(3, 3, 3), 3, False)])
def test_a_batch_range_is_traced_at_batch_2_on_an_axis_bounded_by_the_range(tiny, tmp_path, traced, profile, traced_batch, dynamic):
    """A range traces at batch >= 2 (a size-1 axis would be specialized to 1) with every input's
    batch axis dynamic between min and max; a fixed batch traces at that batch with static shapes."""
    aoti.compile_aoti(tiny, tmp_path / "g.pt2", profile, "cpu")
    [(args, shapes)] = traced.exports
    assert [a.shape[0] for a in args] == [traced_batch] * 5
    if not dynamic:
        assert shapes is None
        return
    dims = [shapes[0][0], shapes[1][0], *(s[0] for s in shapes[2])]
    assert len(dims) == len(args) and all((d.min, d.max) == (1, 4) for d in dims)


def test_the_sidecar_records_what_the_package_was_compiled_for(tmp_path, traced):
    """A global-stage generator (Gm at half resolution): its stage, model, shapes, batch range and precision."""
    g = DRGANGenerator(preset("tiny-64"), "global").eval()
    path = aoti.compile_aoti(g, tmp_path / "g.pt2", BatchProfile(1, 2, 4), "cpu", "bf16")
    side = read_sidecar(path)
    assert traced.packages[0].endswith(".pt2")  # torch's packager refuses any other suffix
    assert (side["format"], side["device"], side["precision"], side["gpu"]) == ("aotinductor-package", "cpu", "bf16", None)
    assert side["batch"] == {"min": 1, "opt": 2, "max": 4}
    assert side["stage"] == "global" and side["model"] == g.cfg.to_dict()
    assert side["inputs"]["cond"] == [-1, 8, 32, 32] and side["outputs"] == {"image": [-1, 3, 32, 32], "grade_logits": [-1, 5]}


def test_a_cuda_package_without_a_gpu_is_refused_before_tracing(tiny, tmp_path, traced, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ParameterError, match="^device cuda: no CUDA GPU is visible$") as err:
        aoti.compile_aoti(tiny, tmp_path / "g.pt2", BatchProfile(1, 1, 1), "cuda")
    assert err.value.params == ["device"] and traced.exports == [] and not list(tmp_path.iterdir())


def test_a_cuda_package_pads_qk_and_is_built_on_the_gpu_asked_for(tiny, tmp_path, traced, monkeypatch):
    """CUDA's memory-efficient attention needs Q/K widths in multiples of 8: the model is padded,
    moved to the device asked for and traced with inputs there; the sidecar names the device type."""
    seen = SimpleNamespace(prepare=None, moved=[], inputs=[])

    class Moved:
        def to(self, device):
            seen.moved.append(device)
            return self

    def fake_prepare(generator, **kwargs):
        seen.prepare = kwargs
        return Moved()

    def fake_inputs(generator, batch, device="cpu"):
        seen.inputs.append(device)
        return wrapper.example_inputs(generator, batch)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Some GPU")
    monkeypatch.setattr(aoti, "prepare", fake_prepare)
    monkeypatch.setattr(aoti, "example_inputs", fake_inputs)
    path = aoti.compile_aoti(tiny, tmp_path / "g.pt2", BatchProfile(1, 1, 1), "cuda:1", "fp16")
    assert seen.prepare == {"impl": "sdpa", "precision": "fp16", "pad_qk": aoti.CUDA_QK_MULTIPLE}
    assert seen.moved == ["cuda:1"] and seen.inputs == ["cuda:1"]
    assert (read_sidecar(path)["device"], read_sidecar(path)["gpu"]) == ("cuda", "Some GPU")


# --- AotiGenerator ----------------------------------------------------------------------------------

def test_a_missing_package_says_to_export_it(tmp_path):
    with pytest.raises(DrganError, match=r"g\.pt2: AOTInductor package not found \(run drgan-export --aoti first\)"):
        aoti.AotiGenerator(tmp_path / "g.pt2")


def test_a_cuda_package_without_a_gpu_is_refused_before_loading(tmp_path, loads, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DrganError, match="compiled for CUDA, but no CUDA GPU is visible"):
        aoti.AotiGenerator(_package(tmp_path, "cuda"), "cuda:1")
    assert loads.loads == []


def test_a_cpu_package_stays_on_the_cpu_whatever_gpu_is_named(tmp_path, loads):
    """`device` picks the GPU of a CUDA package; a CPU package ignores it."""
    runner = aoti.AotiGenerator(_package(tmp_path, "cpu"), "cuda:1")
    assert runner.device == torch.device("cpu") and loads.loads == [{"device_index": -1}]


def test_a_cpu_package_is_loaded_when_its_smallest_batch_fits_in_memory(tiny, tmp_path, loads, monkeypatch):
    """The memory check at load asks for the package's smallest batch, not its largest."""
    n = max(tiny.cfg.attention_tokens)
    monkeypatch.setattr(wrapper, "physical_memory", lambda: n * n * 4)  # one image's scores, not two
    aoti.AotiGenerator(_package(tmp_path, "cpu", lo=1, hi=2, model=tiny.cfg.to_dict()))
    assert len(loads.loads) == 1


@pytest.mark.parametrize("batch, ok", [(1, False), (2, True), (3, True), (4, False)])
def test_a_package_runs_the_batches_of_its_range_inclusive(tmp_path, loads, batch, ok):
    runner = aoti.AotiGenerator(_package(tmp_path, "cpu", lo=2, hi=3))
    args = (torch.zeros(batch, 8, 4, 4), torch.zeros(batch, 16), [torch.zeros(batch, 1, 4, 4)])
    if ok:
        image, _ = runner(*args)
        assert image.shape[0] == batch
    else:
        with pytest.raises(DrganError, match=rf"^batch {batch} is outside the package's range 2\.\.3 "):
            runner(*args)
        assert loads.calls == []


def test_a_package_gets_fp32_inputs_in_call_order_and_its_outputs_are_returned_as_given(tmp_path, loads):
    runner = aoti.AotiGenerator(_package(tmp_path, "cpu"))
    cond, z = torch.full((1, 8, 4, 4), 1.0, dtype=torch.float16), torch.full((1, 16), 2.0, dtype=torch.float64)
    noise = [torch.full((1, 4, 4, 4), 3.0), torch.full((1, 2, 8, 8), 4.0, dtype=torch.bfloat16)]
    image, logits = runner(cond, z, noise)
    [given] = loads.calls
    assert [t.dtype for t in given] == [torch.float32] * 4
    assert [t[0].flatten()[0].item() for t in given] == [1.0, 2.0, 3.0, 4.0]
    assert image.shape == (1, 3, 4, 4) and logits.shape == (1, 5)


# --- run_in_fresh_process ---------------------------------------------------------------------------

# Prepended to the child's script: torch's loader replaced by a package whose image is the first
# value of each input (one column per input, in the order received) and whose logits negate two.
FAKE_LOADER = """
import torch, torch._inductor
def _load(path, device_index):
    def package(*inputs):
        first = torch.stack([t.flatten(1)[:, 0] for t in inputs], 1)
        return first, -first[:, :2]
    return package
torch._inductor.aoti_load_package = _load
"""


def test_the_fresh_process_runs_the_inputs_in_order_and_returns_image_and_logits(tmp_path, monkeypatch):
    """Eleven inputs: the child takes them by index (saved under "0".."10", which sort as text
    "0", "1", "10", ...), and the image and logits come back as such."""
    monkeypatch.setattr(aoti, "_FRESH_RUN", FAKE_LOADER + aoti._FRESH_RUN)
    inputs = [torch.full((2, 3), float(i)) + torch.tensor([[0.0], [0.5]]) for i in range(11)]
    image, logits = aoti.run_in_fresh_process(_package(tmp_path, "cpu", lo=1, hi=4), inputs)
    expected = torch.stack([t[:, 0] for t in inputs], 1)
    assert torch.equal(image, expected) and torch.equal(logits, -expected[:, :2])


@pytest.mark.parametrize("script, reason", [
    ("import sys; print('loading', file=sys.stderr); print('RuntimeError: bad', file=sys.stderr); sys.exit(3)",
     "exit status 3: RuntimeError: bad"),
    ("raise SystemExit(2)", "exit status 2: no message"),
])
def test_a_failed_fresh_process_names_its_exit_status_and_last_line(tmp_path, monkeypatch, script, reason):
    monkeypatch.setattr(aoti, "fresh_process_command", lambda *args: [sys.executable, "-c", script])
    with pytest.raises(DrganError, match=rf"g\.pt2: loading and running the package in a fresh process failed \({reason}\)$"):
        aoti.run_in_fresh_process(tmp_path / "g.pt2", [torch.zeros(1)])


# --- drgan export -----------------------------------------------------------------------------------

@pytest.fixture
def exports(monkeypatch):
    """export_run replaced (TensorRT importable): each call's (run, out, options, profile, stage); it
    logs one progress line and returns an empty manifest."""
    calls = []

    def fake_export_run(run, out, options, profile, stage, log):
        calls.append(SimpleNamespace(run=run, out=out, options=options, profile=profile, stage=stage))
        log("progress")
        return {"files": {}}

    monkeypatch.setattr(pipeline, "import_tensorrt", lambda: None)
    monkeypatch.setattr(pipeline, "export_run", fake_export_run)
    return calls


def test_export_passes_every_option_on(drgan, tmp_path, exports):
    rc, _, err = drgan("export", "--run", tmp_path / "run", "--out", tmp_path / "out", "--trt", "--aoti",
                       "--precision", "fp16", "--min-batch", "2", "--opt-batch", "3", "--max-batch", "5",
                       "--stage", "local", "--opset", "24", "--device", "cpu", "--external-data", "--no-pad-qk",
                       "--trt-plugin", tmp_path / "lib.so", "--opt-level", "1", "--timing-cache", tmp_path / "t.cache")
    assert rc == 0, err
    [call] = exports
    assert (call.run, call.out, call.profile, call.stage) == (str(tmp_path / "run"), str(tmp_path / "out"), BatchProfile(2, 3, 5), "local")
    assert call.options == pipeline.ExportOptions(
        onnx=False, trt=True, aoti=True, precision="fp16", opset=24, device="cpu", external_data=True, pad_qk=False,
        trt_plugin=str(tmp_path / "lib.so"), opt_level=1, timing_cache=str(tmp_path / "t.cache"))


def test_export_defaults_to_the_onnx_file_with_automatic_external_data(drgan, tmp_path, exports):
    assert drgan("export", "--run", tmp_path / "run")[0] == 0
    [call] = exports
    assert call.options == pipeline.ExportOptions() and call.options.external_data is None  # None: above 1 GB only
    assert (call.out, call.profile, call.stage) == (None, BatchProfile(1, 4, 16), None)


@pytest.mark.parametrize("formats, onnx", [(["--aoti"], False), (["--trt"], False), (["--onnx", "--aoti"], True)])
def test_naming_a_format_drops_the_default_onnx_file(drgan, tmp_path, exports, formats, onnx):
    assert drgan("export", "--run", tmp_path / "run", *formats)[0] == 0
    assert exports[0].options.onnx is onnx


def test_a_fixed_batch_is_the_tensorrt_engines_profile(drgan, tmp_path, exports):
    """--batch and the range apply to an engine as to a package."""
    assert drgan("export", "--run", tmp_path / "run", "--trt", "--batch", "4")[0] == 0
    assert exports[0].profile == BatchProfile(4, 4, 4)


@pytest.mark.parametrize("as_json", [False, True])
def test_progress_goes_to_stdout_unless_json_takes_it(drgan, tmp_path, exports, as_json):
    rc, out, err = drgan("export", "--run", tmp_path / "run", *(["--json"] if as_json else []))
    assert rc == 0
    if as_json:
        assert json.loads(out) == {"files": {}} and err == "progress\n"
    else:
        assert (out, err) == ("progress\n", "")


@pytest.mark.parametrize("args", [["--timing-cache", "t.cache"], ["--trt-plugin", "lib.so"]])
def test_tensorrt_build_options_without_trt_are_a_usage_error(drgan, tmp_path, exports, args):
    line = one_error(*drgan("export", "--run", tmp_path / "run", *args), code=2)
    assert "configure the TensorRT build: add --trt" in line and exports == []


@pytest.mark.parametrize("option, value, bounds", [("--batch", "4097", "1<=x<=4096"), ("--min-batch", "0", "1<=x<=4096"),
                                                   ("--opt-batch", "4097", "1<=x<=4096"), ("--max-batch", "4097", "1<=x<=4096"),
                                                   ("--opt-level", "6", "0<=x<=5")])
def test_batch_sizes_and_optimization_levels_outside_their_range_are_one_line(drgan, tmp_path, exports, option, value, bounds):
    line = one_error(*drgan("export", "--run", tmp_path / "run", "--trt", option, value))
    assert line == f"error: {option} {value}: outside the range {bounds}" and exports == []
