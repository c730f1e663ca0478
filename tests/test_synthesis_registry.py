"""The backend registry: every name the CLI offers loads, and each exported one opens its export runtime."""
from importlib import import_module

from drgan.export import backends as export_backends
from drgan.synthesis.registry import BACKENDS


def test_every_backend_name_has_a_loader():
    for name, path in BACKENDS.items():
        module, function = path.split(":")
        assert callable(getattr(import_module(module), function)), name


def test_exported_backends_are_the_export_runtimes():
    openers = {n[len("open_"):] for n in vars(export_backends) if n.startswith("open_")}
    assert openers == set(BACKENDS) - {"torch", "null"}
    assert all(BACKENDS[name].endswith(f":load_{name}") for name in openers)


def test_trt_plugin_is_refused_for_other_backends(tmp_path, capsys):
    from drgan.cli.common import run_command
    from drgan.cli.synthesize import synthesize

    args = ["--preset", "tiny-64", "--backend", "null", "--out", str(tmp_path / "s"), "--count", "5",
            "--trt-plugin", str(tmp_path / "lib.so"), "--device", "cpu"]
    assert run_command(synthesize, args=args) == 2  # an option that needs another: usage
    assert capsys.readouterr().err.strip().splitlines() == ["error: --trt-plugin applies to --backend tensorrt, not null"]


def test_fp8_attention_is_refused_for_other_backends(tmp_path, capsys):
    from drgan.cli.common import run_command
    from drgan.cli.synthesize import synthesize

    args = ["--preset", "tiny-64", "--backend", "null", "--out", str(tmp_path / "s"), "--count", "5",
            "--fp8-attention", "--device", "cpu"]
    assert run_command(synthesize, args=args) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: --fp8-attention applies to --backend torch, not null"]
