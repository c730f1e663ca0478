"""ONNX export: checker, one Attention node per SCA block, the N x N guard, ONNX Runtime == PyTorch."""
from __future__ import annotations

import errno
import json
import os
import re
import signal
from pathlib import Path

import onnx
import pytest
import torch

from drgan.checkpoint import save_module, weights_sha256
from drgan.runs import write_run_config
from drgan.cli.common import run_command
from drgan.cli.export import export
from drgan.config import preset
from drgan.errors import DrganError
from drgan.export import onnx_export, onnx_files
from drgan.export.onnx_check import check_graph
from drgan.export.ort_runner import OrtGenerator, verify_onnx
from drgan.export.wrapper import (
    attention_widths,
    example_inputs,
    input_names,
    pad_attention_qk,
    prepare,
)
from drgan.nn import DRGANGenerator
from helpers import dead_pid


def _generator(name: str) -> DRGANGenerator:
    g = DRGANGenerator(preset(name), "local").eval()
    # Switch the attention branches on (they start at 0) so the comparison sees them.
    for block in g.global_gen.synth:
        block.sca.gamma_s.data.fill_(0.5)
        block.sca.gamma_c.data.fill_(0.5)
    return g


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny-64 run exported through the CLI: (run folder, generator, export folder)."""
    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("run")
    g = _generator("tiny-64")
    write_run_config(run, preset("tiny-64"), "local")
    save_module(g, run / "G_ema.safetensors")
    assert run_command(export, args=["--checkpoint", str(run), "--onnx"]) == 0
    return run, g, run / "export"


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory):
    torch.manual_seed(0)
    g = _generator("small-256")
    path = onnx_export.export_onnx(g, tmp_path_factory.mktemp("small") / "generator.onnx")
    return g, path


def test_cli_writes_checked_onnx_and_manifest(tiny_run):
    run, g, out = tiny_run
    model = onnx.load(str(out / "generator.onnx"), load_external_data=False)
    assert [i.name for i in model.graph.input] == ["cond", "z", "noise0", "noise1", "noise2"]
    assert [o.name for o in model.graph.output] == ["image", "grade_logits"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch axis
    assert max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx")) >= 23
    manifest = json.loads((out / "export.json").read_text())
    entry = manifest["files"]["generator.onnx"]
    assert entry["op_counts"]["Attention"] == 3
    assert len(entry["weights_sha256"]) == 64
    assert manifest["inputs"]["cond"] == [-1, 8, 64, 64]


def _backend(name, run, batch=2, precision="fp32"):
    from drgan.synthesis.registry import make_backend

    return make_backend(name, run, 64, torch.device("cpu"), precision, batch)


def test_tiny_onnxruntime_matches_through_backend(tiny_run):
    from drgan.export.backends import open_onnxruntime

    run, g, out = tiny_run
    cond, z, *noise = example_inputs(g, 2, seed=5)
    with torch.no_grad():
        ref_image, ref_logits = g(cond, z, noise)
    image, logits = open_onnxruntime(out, run, weights_sha256(g), "cpu", "fp32", 2)(cond, z, noise)
    assert image.shape == (2, 3, 64, 64) and logits.shape == (2, 5)
    assert (logits - ref_logits).abs().max().item() <= 1e-3
    loaded = _backend("onnxruntime", run, precision="auto")  # the runner's backend: the image, fp32
    assert loaded.precision == "fp32" and loaded.noise_shapes(2) == [tuple(n.shape) for n in noise]
    for image in (image, loaded.call(cond, z, noise)):
        assert (image - ref_image).abs().max().item() <= 1e-3


def test_manifest_names_the_generator_as_the_set_fingerprint_does(tiny_run):
    """export.json and a synthesized set's fingerprint hash the same thing: the loaded generator."""
    run, g, out = tiny_run
    entry = json.loads((out / "export.json").read_text())["files"]["generator.onnx"]
    assert entry["weights_sha256"] == weights_sha256(g) == _backend("torch", run).weights
    assert _backend("onnxruntime", run).weights == weights_sha256(g)


def test_cpu_backend_whose_attention_cannot_fit_is_refused(tiny_run, monkeypatch):
    from drgan.export import ort_runner, wrapper

    run, g, _ = tiny_run
    n = max(g.cfg.attention_tokens)
    monkeypatch.setattr(wrapper, "physical_memory", lambda: 4 * n * n * 4 - 1)  # room for 3 images' scores, not 4
    monkeypatch.setattr(ort_runner, "has_cuda_provider", lambda: False)
    assert _backend("onnxruntime", run, batch=3).precision == "fp32"
    with pytest.raises(DrganError, match=rf"ONNX Runtime on the CPU .* N = {n:,} at batch 4 needs .* use backend torch") as err:
        _backend("onnxruntime", run, batch=4)
    assert err.value.params == ["backend"]  # the CLI names its flag


def test_backend_refuses_export_of_other_weights(tiny_run, tmp_path):
    import shutil

    run, _, out = tiny_run
    other = tmp_path / "other"
    write_run_config(other, preset("tiny-64"), "local")
    save_module(DRGANGenerator(preset("tiny-64"), "local"), other / "G_ema.safetensors")
    shutil.copytree(out, other / "export")
    with pytest.raises(DrganError, match="other weights"):
        _backend("onnxruntime", other)


def test_out_that_is_not_an_export_is_refused_untouched(tiny_run, tmp_path, capsys):
    run, _, _ = tiny_run
    out = tmp_path / "mine"
    out.mkdir()
    (out / "generator.onnx").write_bytes(b"another model")
    (out / "generator.onnx.data").write_bytes(b"its weights")
    assert run_command(export, args=["--run", str(run), "--out", str(out), "--onnx"]) == 1
    assert capsys.readouterr().err == (f"error: --out {out}: folder not empty and not a drgan export (no export.json); "
                                       "choose a new or empty folder\n")
    assert (out / "generator.onnx").read_bytes() == b"another model" and (out / "generator.onnx.data").is_file()


def test_a_failed_first_export_can_be_rerun(tiny_run, tmp_path, monkeypatch):
    from drgan.export import pipeline

    run, _, _ = tiny_run
    out = tmp_path / "new"

    def fail(*args, **kwargs):
        (out / "generator.onnx").write_bytes(b"half")
        raise DrganError("disk full")

    with monkeypatch.context() as m:
        m.setattr(pipeline, "export_onnx", fail)
        assert run_command(export, args=["--run", str(run), "--out", str(out), "--onnx"]) == 1
    assert not out.exists()   # nothing was exported: the folder it created is gone, half file and all
    assert run_command(export, args=["--run", str(run), "--out", str(out), "--onnx"]) == 0
    assert "generator.onnx" in json.loads((out / "export.json").read_text())["files"]


def test_external_data_outside_the_export_folder_is_one_line(tmp_path):
    g = DRGANGenerator(preset("tiny-64"), "local").eval()
    path = onnx_export.export_onnx(g, tmp_path / "export" / "generator.onnx", external_data=True)
    model = onnx.load(str(path), load_external_data=False)
    (tmp_path / "elsewhere.data").write_bytes(onnx_files.data_path(path).read_bytes())
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../elsewhere.data"
    onnx.save(model, str(path))
    with pytest.raises(DrganError) as exc:
        OrtGenerator(path)
    message = str(exc.value)
    assert message.startswith(f"{path}: ONNX Runtime cannot load it (") and "escapes" in message and "\n" not in message


def test_small_graph_has_attention_per_sca_and_no_square_tensor(small_onnx):
    g, path = small_onnx
    widths = attention_widths(g)
    assert [n for n, _, _ in widths] == [256, 1024, 4096]  # finest SCA block: 64 x 64 tokens
    report = check_graph(path, expected_attention=3)
    assert report.op_counts["Attention"] == 3
    assert report.op_counts["Conv"] > 0
    # The widest activations are 256 x 256 image planes and 4096 x Dv token maps, never 4096 x 4096 or
    # 1024 x 1024 scores: even a threshold at the image side passes.
    check_graph(path, expected_attention=3, max_side=256)
    assert report.widest is not None and sorted(d for d in report.widest[1] if d)[-2] == 256


def test_small_onnxruntime_matches_pytorch_batch_1_and_3(small_onnx):
    g, path = small_onnx
    results = verify_onnx(path, g, batches=(1, 3))
    assert [r.batch for r in results] == [1, 3]
    for r in results:
        assert not r.skipped
        assert r.image_max_abs <= 1e-3 and r.logits_max_abs <= 1e-3


def test_verify_raises_when_onnx_differs(small_onnx):
    g, path = small_onnx
    changed = _generator("small-256")
    with torch.no_grad():
        for p in changed.parameters():
            p.add_(0.05 * torch.randn_like(p))
    with pytest.raises(DrganError, match="differs from PyTorch"):
        verify_onnx(path, changed, batches=(1,))


def test_guard_fires_on_reference_attention_graph(tmp_path, monkeypatch):
    g = _generator("tiny-64")
    # The reference kernel traces to explicit MatMul/Softmax with N x N scores (N = 256 at tiny-64).
    monkeypatch.setattr(onnx_export, "prepare", lambda gen, impl, precision, pad_qk: prepare(gen, "ref", precision, pad_qk))
    path = onnx_export.export_onnx(g, tmp_path / "ref.onnx")
    with pytest.raises(DrganError, match="two axes longer than 64"):
        check_graph(path, expected_attention=0, max_side=64)
    with pytest.raises(DrganError, match="0 Attention nodes, expected 3"):
        check_graph(path, expected_attention=3, max_side=4096)


def test_guard_passes_fused_tiny_graph_at_same_threshold(tiny_run):
    _, _, out = tiny_run
    check_graph(out / "generator.onnx", expected_attention=3, max_side=64)


def test_padded_qk_is_exact_and_exports_with_external_data(tmp_path):
    g = _generator("tiny-64")
    args = example_inputs(g, 2)
    padded = prepare(g, impl="ref", pad_qk="v")
    plain = prepare(g, impl="ref")
    for sca in padded.generator.global_gen.synth:
        assert sca.sca.query.out_channels == sca.sca.value.out_channels
    with torch.no_grad():
        for a, b in zip(plain(*args), padded(*args)):
            assert (a - b).abs().max().item() < 1e-5
    eight = pad_attention_qk(prepare(g).generator, 8)
    assert [s.sca.query.out_channels for s in eight.global_gen.synth] == [8, 8, 8]  # tiny-64: 8, 4, 4
    path = onnx_export.export_onnx(g, tmp_path / "padded.onnx", pad_qk="v", external_data=True)
    assert onnx_files.data_path(path).is_file()
    assert not list(tmp_path.glob(".*tmp*"))  # nothing left from the atomic write
    report = check_graph(path, expected_attention=3)
    assert report.op_counts.get("Pad", 0) == 0  # padded in the weights, not by extra nodes
    assert verify_onnx(path, g, batches=(2,))[0].image_max_abs <= 1e-3
    runner = OrtGenerator(path)
    assert runner.input_names == input_names(g)
    # TensorRT's copy: each Attention may be split where no fused kernel fits; the weights stay beside it.
    from drgan.export.trt_build import mark_attention_decomposable

    weights = onnx_files.data_path(path).read_bytes()
    assert mark_attention_decomposable(path) == 3
    model = onnx.load(str(path), load_external_data=False)
    attention = [n for n in model.graph.node if n.op_type == "Attention"]
    assert all(onnx.helper.get_attribute_value(a) == 1 for n in attention for a in n.attribute if a.name == "TRT_decomposable")
    assert all(any(a.name == "TRT_decomposable" for a in n.attribute) for n in attention)
    assert onnx_files.data_path(path).read_bytes() == weights and onnx.load(str(path)).graph.initializer


def test_opset_below_23_is_refused(tmp_path):
    with pytest.raises(DrganError, match="opset 22"):
        onnx_export.export_onnx(_generator("tiny-64"), tmp_path / "g.onnx", opset=22)


def test_opset_above_the_exporters_newest_is_refused_before_any_work(tiny_run, tmp_path, monkeypatch, capsys):
    """Opset 26 failed only after the tracing (minutes at full size), as the exporter could not convert to it."""
    run, _, _ = tiny_run
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: pytest.fail("traced"))
    out = tmp_path / "export"
    assert run_command(export, args=["--checkpoint", str(run), "--out", str(out), "--opset", str(onnx_export.MAX_OPSET + 1)]) == 1
    assert capsys.readouterr().err == \
        f"error: --opset {onnx_export.MAX_OPSET + 1}: the ONNX exporter converts up to opset {onnx_export.MAX_OPSET}\n"
    assert not out.exists()


def test_failed_reexport_keeps_the_earlier_file(tiny_run, tmp_path, monkeypatch, capsys):
    """An opset the exporter cannot convert to is one error line, and the working export stays."""
    run, _, _ = tiny_run
    out = tmp_path / "export"
    assert run_command(export, args=["--checkpoint", str(run), "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    monkeypatch.setattr(onnx_export, "MAX_OPSET", 99)  # an exporter whose converter falls short of its bound
    assert run_command(export, args=["--checkpoint", str(run), "--out", str(out), "--opset", "99"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.fullmatch(
        r"error: --opset 99: the ONNX exporter could not convert the model to it \(it wrote opset \d+\); "
        r"choose an earlier opset \(from 23\)", err.strip())
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_failed_first_export_leaves_no_folder(tiny_run, tmp_path, monkeypatch, capsys):
    run, _, _ = tiny_run
    monkeypatch.setattr(onnx_export, "MAX_OPSET", 99)  # 99 reaches the exporter
    for opset in ("22", "99"):  # refused before any work; refused by the exporter
        out = tmp_path / f"export{opset}"
        assert run_command(export, args=["--checkpoint", str(run), "--out", str(out), "--opset", opset]) == 1
        assert capsys.readouterr().err.startswith(f"error: --opset {opset}: ") and not out.exists()


def test_an_export_refused_by_anothers_lock_leaves_their_folder(tiny_run, tmp_path, monkeypatch, capsys):
    """Two exports into one new folder: the one refused must not remove the folder the other works in."""
    from drgan import locks

    run, _, _ = tiny_run
    out = tmp_path / "export"

    def held_elsewhere(folder, shard=None):  # the other export took the folder first
        Path(folder).mkdir()
        (Path(folder) / "export.json").write_text('{"files": {}}')
        raise DrganError(f"{folder} is in use by another drgan process (pid 1)")

    monkeypatch.setattr(locks, "hold", held_elsewhere)
    assert run_command(export, args=["--checkpoint", str(run), "--out", str(out)]) == 1
    assert (out / "export.json").is_file()


def test_an_interrupted_package_check_leaves_nothing_unchecked_listed_or_in_place(tiny_run, tmp_path, monkeypatch):
    """A re-export's package replaces the earlier one before its fresh-process check: interrupted
    there, synthesis loaded the unchecked package under the earlier one's export.json entry. And
    a checked generator.onnx stays listed when a later artifact fails."""
    from drgan.export import pipeline

    run, _, _ = tiny_run
    out, package = tmp_path / "export", tmp_path / "export" / "generator_cpu_fp32.pt2"

    def fake_compile(generator, path, profile, device, precision):
        Path(path).write_bytes(b"package")
        Path(str(path) + ".json").write_text("{}")

    monkeypatch.setattr(pipeline, "compile_aoti", fake_compile)
    monkeypatch.setattr(pipeline._Exporter, "compare", lambda self, run, device, batch: 0.0)
    assert run_command(export, args=["--checkpoint", str(run), "--out", str(out), "--onnx", "--aoti", "--device", "cpu"]) == 0
    assert set(json.loads((out / "export.json").read_text())["files"]) == {"generator.onnx", package.name}

    def interrupted(self, run, device, batch):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline._Exporter, "compare", interrupted)
    assert run_command(export, args=["--checkpoint", str(run), "--out", str(out), "--aoti", "--device", "cpu"]) == 130
    assert not package.exists() and not Path(str(package) + ".json").exists()
    assert set(json.loads((out / "export.json").read_text())["files"]) == {"generator.onnx"}
    fresh = tmp_path / "fresh"  # the ONNX file checked before the interrupt is listed, not lost
    assert run_command(export, args=["--checkpoint", str(run), "--out", str(fresh), "--onnx", "--aoti", "--device", "cpu"]) == 130
    assert set(json.loads((fresh / "export.json").read_text())["files"]) == {"generator.onnx"}


def test_full_disk_while_saving_onnx_is_one_line(tiny_run, tmp_path, monkeypatch, capsys):
    run, _, _ = tiny_run

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch.onnx.ONNXProgram, "save", full)
    out = tmp_path / "export"
    assert run_command(export, args=["--checkpoint", str(run), "--out", str(out)]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {out}: disk full while writing generator.onnx"]
    assert not out.exists()  # nothing exported: no folder (and no temp folder) left


def test_rerun_removes_temp_folders_of_killed_exports_only(tiny_run, tmp_path):
    run, _, _ = tiny_run
    out = tmp_path / "export"
    stale, live = out / f".generator.onnx.tmp-{dead_pid()}", out / f".generator.onnx.tmp-{os.getppid()}-1"
    for folder in (stale, live):
        folder.mkdir(parents=True)
        (folder / "generator.onnx").write_bytes(b"partial")
    assert run_command(export, args=["--checkpoint", str(run), "--out", str(out)]) == 0
    assert not stale.exists() and live.is_dir()


def test_sigterm_while_saving_removes_the_temp_folder(tmp_path):
    from drgan.cli.common import terminate_as_exit

    def killed(file):
        file.write_bytes(b"partial")
        os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(SystemExit) as exc, terminate_as_exit():
        onnx_files.save_atomically(tmp_path / "generator.onnx", killed, external_data=False)
    assert exc.value.code == 143 and list(tmp_path.iterdir()) == []


def test_export_folder_in_use_is_refused(tiny_run, tmp_path, lock_holder, capsys):
    run, _, _ = tiny_run
    out = tmp_path / "export"
    pid = lock_holder(out)
    assert run_command(export, args=["--checkpoint", str(run), "--out", str(out)]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {out} is in use by another drgan process (pid {pid})"]
    assert [p.name for p in out.iterdir()] == [".drgan.lock"]


def test_onnxruntime_missing_and_broken_are_told_apart(monkeypatch):
    """Any ImportError read 'not installed', also an import cut short by SIGTERM."""
    import builtins
    import sys

    from drgan.export import ort_runner

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(DrganError, match=r"^ONNX Runtime is not installed: pip install 'drgan\[onnx\]'$"):
        ort_runner._ort()
    monkeypatch.delitem(sys.modules, "onnxruntime")
    real_import = builtins.__import__

    def broken(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("DLL load failed")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", broken)
    with pytest.raises(DrganError, match="^ONNX Runtime cannot be imported: DLL load failed$"):
        ort_runner._ort()


def test_the_cuda_provider_runs_on_the_device_asked_for(monkeypatch):
    """Without device_id, ONNX Runtime's CUDA provider ran on GPU 0 whatever --device cuda:N said,
    while the I/O binding bound buffers of GPU N."""
    from drgan.export import ort_runner

    monkeypatch.setattr(ort_runner, "has_cuda_provider", lambda: True)
    assert ort_runner.providers("cuda:1") == [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    assert ort_runner.providers("cpu") == ["CPUExecutionProvider"]
