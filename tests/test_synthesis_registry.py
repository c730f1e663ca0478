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
