"""The backend registry: every name the CLI offers loads, and the exported ones are the export runtimes."""
from importlib import import_module

from drgan.export.backends import _RUNTIMES
from drgan.synthesis.registry import BACKENDS


def test_every_backend_name_has_a_loader():
    for name, path in BACKENDS.items():
        module, function = path.split(":")
        assert callable(getattr(import_module(module), function)), name


def test_exported_backends_are_the_export_runtimes():
    assert set(_RUNTIMES) == {name for name, path in BACKENDS.items() if path.endswith(":load_exported")}


def test_trt_plugin_is_refused_for_other_backends(tmp_path, capsys):
    from drgan.cli.common import run_command
    from drgan.cli.synthesize import synthesize

    args = ["--preset", "tiny-64", "--backend", "null", "--out", str(tmp_path / "s"), "--count", "5",
            "--trt-plugin", str(tmp_path / "lib.so"), "--device", "cpu"]
    assert run_command(synthesize, args=args) == 1
    assert capsys.readouterr().err.strip().splitlines() == ["error: --trt-plugin applies to --backend tensorrt, not null"]
