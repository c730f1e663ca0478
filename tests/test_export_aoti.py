"""AOTInductor: a tiny-64 package compiled on the CPU through the CLI loads in a fresh process (no drgan
model code) and matches PyTorch (minutes on two shared cores, hence slow); a CPU package whose
attention cannot fit in memory is refused before compiling."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from drgan.checkpoint import save_module
from drgan.runs import write_run_config
from drgan.cli.common import run_command
from drgan.cli.export import export
from drgan.config import preset
from drgan.errors import DrganError, ParameterError
from drgan.export import aoti, pipeline, wrapper
from drgan.export.sidecar import BatchProfile, read_sidecar
from drgan.export.wrapper import example_inputs, input_names
from drgan.nn import DRGANGenerator

# Runs in a fresh interpreter: torch and safetensors only, never drgan, so the package stands alone.
LOAD_AND_RUN = """
import sys, torch
from safetensors.torch import load_file, save_file
package = torch._inductor.aoti_load_package(sys.argv[1])
inputs = load_file(sys.argv[2])
with torch.no_grad():
    image, logits = package(*(inputs[k] for k in sys.argv[4].split(",")))
save_file({"image": image.contiguous(), "grade_logits": logits.contiguous()}, sys.argv[3])
assert not any(m.startswith("drgan") for m in sys.modules), "drgan was imported"
"""


@pytest.mark.slow
def test_aoti_package_loads_in_fresh_process_and_matches(tmp_path):
    torch.manual_seed(0)
    g = DRGANGenerator(preset("tiny-64"), "local").eval()
    for block in g.global_gen.synth:  # switch the attention branches on (they start at 0)
        block.sca.gamma_s.data.fill_(0.5)
        block.sca.gamma_c.data.fill_(0.5)
    run = tmp_path / "run"
    write_run_config(run, preset("tiny-64"), "local")
    save_module(g, run / "G_ema.safetensors")
    args = ["--checkpoint", str(run), "--aoti", "--device", "cpu", "--min-batch", "1", "--opt-batch", "2", "--max-batch", "4"]
    assert run_command(export, args=args) == 0
    package = run / "export" / "generator_cpu_fp32.pt2"
    assert read_sidecar(package)["batch"] == {"min": 1, "opt": 2, "max": 4}

    names = input_names(g)
    inputs = example_inputs(g, 3)  # batch 3 through the dynamic axis
    save_file(dict(zip(names, inputs)), str(tmp_path / "inputs.safetensors"))
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_AND_RUN, str(package), str(tmp_path / "inputs.safetensors"),
         str(tmp_path / "out.safetensors"), ",".join(names)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = load_file(str(tmp_path / "out.safetensors"))
    with torch.no_grad():
        ref_image, ref_logits = g(inputs[0], inputs[1], list(inputs[2:]))
    assert out["image"].shape == (3, 3, 64, 64)
    assert (out["image"] - ref_image).abs().max().item() <= 1e-3
    assert (out["grade_logits"] - ref_logits).abs().max().item() <= 1e-3

    from drgan.synthesis.registry import make_backend

    cpu = torch.device("cpu")
    backend = make_backend("aoti", run, 64, cpu, "fp32", 3)  # the same package behind the runner's interface
    image = backend.call(inputs[0], inputs[1], list(inputs[2:]))
    assert (image - ref_image).abs().max().item() <= 1e-3
    with pytest.raises(DrganError, match="takes batches 1..4"):
        make_backend("aoti", run, 64, cpu, "fp32", 8)


def test_cpu_package_whose_attention_cannot_fit_is_refused_before_compiling(tmp_path, monkeypatch):
    g = DRGANGenerator(preset("tiny-64"), "local").eval()
    n = max(g.cfg.attention_tokens)
    monkeypatch.setattr(wrapper, "physical_memory", lambda: 2 * n * n * 4 - 1)  # room for one image, not two
    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", lambda *a, **k: pytest.fail("compiled"))
    with pytest.raises(ParameterError, match=rf"N = {n:,} at batch 2 needs .*; compile it for CUDA \(device cuda\)") as err:
        aoti.compile_aoti(g, tmp_path / "g.pt2", BatchProfile(1, 2, 2), "cpu")
    assert err.value.params == ["device"]  # the CLI names its flag
    assert not list(tmp_path.iterdir())


def test_cpu_package_whose_attention_cannot_fit_is_refused_at_load(tmp_path, monkeypatch):
    g = DRGANGenerator(preset("tiny-64"), "local").eval()
    n = max(g.cfg.attention_tokens)
    package = tmp_path / "g.pt2"
    package.write_bytes(b"not loaded")
    aoti.write_sidecar(package, {"device": "cpu", "batch": {"min": 1, "opt": 1, "max": 1}, "model": g.cfg.to_dict()})
    monkeypatch.setattr(wrapper, "physical_memory", lambda: n * n * 4 - 1)
    monkeypatch.setattr(torch._inductor, "aoti_load_package", lambda *a, **k: pytest.fail("loaded"))
    with pytest.raises(ParameterError, match=rf"N = {n:,} at batch 1 needs .*; use backend torch") as err:
        aoti.AotiGenerator(package)
    assert err.value.params == ["backend"]


@pytest.fixture
def uncompiled_run(tmp_path, monkeypatch):
    """A tiny-64 run whose export writes a package without the minutes of compilation: (generator, run)."""
    g = DRGANGenerator(preset("tiny-64"), "local").eval()
    run = tmp_path / "run"
    write_run_config(run, preset("tiny-64"), "local")
    save_module(g, run / "G_ema.safetensors")

    def fake_compile(generator, path, profile, device, precision):
        path.write_bytes(b"package")
        aoti.write_sidecar(path, {"device": device})
        return path

    monkeypatch.setattr(pipeline, "compile_aoti", fake_compile)
    return g, run


def test_package_that_crashes_its_loader_is_one_error_and_removed(uncompiled_run, monkeypatch, capsys):
    """torch 2.11 died with SIGSEGV loading a CUDA package in the compiling process: the export checks
    the package in a fresh process, so such a crash is one error line and the package is not left."""
    _, run = uncompiled_run
    crash = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
    monkeypatch.setattr(aoti, "fresh_process_command", lambda *paths: [sys.executable, "-c", crash])
    args = ["--checkpoint", str(run), "--aoti", "--device", "cpu", "--batch", "1"]
    assert run_command(export, args=args) == 1
    err = capsys.readouterr().err
    assert "generator_cpu_fp32.pt2: loading and running the package in a fresh process failed (killed by SIGSEGV)" in err
    assert "Traceback" not in err
    assert not list((run / "export").glob("generator_cpu_fp32.pt2*"))


def test_export_records_the_package_sha256(tmp_path, monkeypatch):
    from drgan.io import sha256_file

    g = DRGANGenerator(preset("tiny-64"), "local").eval()
    monkeypatch.setattr(torch.export, "export", lambda *a, **k: None)  # the minutes of compilation skipped
    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package",
                        lambda program, package_path: open(package_path, "wb").write(b"compiled"))
    path = aoti.compile_aoti(g, tmp_path / "g.pt2", BatchProfile(1, 1, 1), "cpu")
    assert read_sidecar(path)["sha256"] == sha256_file(path)


@pytest.mark.parametrize("recorded", ["0" * 64, None])
def test_package_that_is_not_the_exported_one_is_refused_before_loading(tmp_path, monkeypatch, recorded):
    package = tmp_path / "g.pt2"
    package.write_bytes(b"a swapped library")
    aoti.write_sidecar(package, {"device": "cpu", "batch": {"min": 1, "opt": 1, "max": 1}, "sha256": recorded})
    monkeypatch.setattr(torch._inductor, "aoti_load_package", lambda *a, **k: pytest.fail("loaded"))
    message = "sha256 differs from g.pt2.json" if recorded else "g.pt2.json records no sha256"
    with pytest.raises(DrganError, match=message):
        aoti.AotiGenerator(package)


@pytest.mark.parametrize("device, index", [("cuda:1", 1), (None, -1)])
def test_a_cuda_package_loads_on_the_gpu_asked_for(tmp_path, monkeypatch, device, index):
    """Loaded without an index, its weights went to the current GPU (0) while --device cuda:1 sent
    the inputs to GPU 1."""
    from drgan.io import sha256_file

    package = tmp_path / "g.pt2"
    package.write_bytes(b"compiled")
    aoti.write_sidecar(package, {"device": "cuda", "batch": {"min": 1, "opt": 1, "max": 1}, "sha256": sha256_file(package)})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    loads = []
    monkeypatch.setattr(torch._inductor, "aoti_load_package", lambda path, **k: loads.append(k))
    runner = aoti.AotiGenerator(package, device)
    assert loads == [{"device_index": index}] and runner.device == torch.device(device or "cuda")


def test_a_package_with_nan_outputs_is_refused_and_removed(uncompiled_run, monkeypatch, capsys):
    """Python's max(0.1, nan) is 0.1: a NaN image passed the check (and `nan > 1e-3` is False)."""
    g, run = uncompiled_run
    def nan_run(path, inputs):
        with torch.no_grad():
            image, logits = g(inputs[0], inputs[1], list(inputs[2:]))
        image[0, 0, 0, 0] = float("nan")
        return image, logits

    monkeypatch.setattr(pipeline, "run_in_fresh_process", nan_run)
    assert run_command(export, args=["--checkpoint", str(run), "--aoti", "--device", "cpu", "--batch", "1"]) == 1
    assert capsys.readouterr().err.strip().endswith(
        "generator_cpu_fp32.pt2: the AOTInductor package gives non-finite outputs (NaN or inf) where PyTorch's are finite")
    assert not list((run / "export").glob("generator_cpu_fp32.pt2*"))
