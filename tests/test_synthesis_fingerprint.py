"""A set folder records what made it: a rerun resumes only the same setup, anything else stops
with one line naming what differs; failures leave no debris; the null backend needs no run."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import drgan.synthesis.runner as runner
from drgan.errors import DrganError
from drgan.synthesis.fingerprint import FILE_NAME
from drgan.synthesis.runner import SynthesisOptions, synthesize
from drgan.synthesis.stages import STAGES
from synthesis_fixtures import make_run
from test_synthesis import image_bytes, manifest, opts


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run") / "tiny")


@pytest.fixture(scope="module")
def made(run, tmp_path_factory):
    """A finished set of 5 images (seed 0, png)."""
    out = tmp_path_factory.mktemp("sets") / "set"
    synthesize(opts(run, out, count=5))
    return out


def listed_equals_present(out: Path) -> bool:
    return sorted(r["file"] for r in manifest(out)) == sorted(f"images/{p.name}" for p in (out / "images").iterdir())


@pytest.mark.parametrize("change, key", [
    ({"seed": 1}, "seed"), ({"count": 10}, "count"), ({"format": "jpeg"}, "format"),
    ({"grades": (0, 1)}, "grades"), ({"batch": 2}, "batch"), ({"png_level": 3}, "png_level"),
    ({"save_masks": True}, "save_masks"), ({"backend": "null"}, "backend"), ({"label": "predicted"}, "label"),
    ({"fp8_attention": True}, "fp8_attention"),
])
def test_rerun_with_another_setup_stops_and_says_what_differs(run, made, change, key):
    before = image_bytes(made)
    with pytest.raises(DrganError, match=rf"holds a set made with another setup \({key} ") as err:
        synthesize(opts(run, made, **{"count": 5, **change}))
    assert "\n" not in str(err.value)
    assert image_bytes(made) == before and listed_equals_present(made)


def test_rerun_with_other_weights_stops(run, made, tmp_path):
    import torch

    from drgan.checkpoint import load_module, save_module
    from drgan.nn import DRGANGenerator
    from drgan.runs import read_run

    other = make_run(tmp_path / "other")
    info = read_run(other)
    cfg, stage = info.cfg, info.stage
    g = load_module(DRGANGenerator(cfg, stage), other / "G_ema.safetensors")
    with torch.no_grad():
        next(g.parameters()).add_(1.0)
    save_module(g, other / "G_ema.safetensors")
    with pytest.raises(DrganError, match=r"\(generator "):
        synthesize(opts(other, made, count=5))


def test_same_setup_resumes(run, made):
    again = synthesize(opts(run, made, count=5))
    assert (again.generated, again.skipped, again.total) == (0, 5, 5)
    assert json.loads((made / FILE_NAME).read_text())["count"] == 5


def test_folder_of_unknown_origin_is_refused(run, made, tmp_path):
    legacy = tmp_path / "legacy"
    (legacy / "images").mkdir(parents=True)
    (legacy / "images" / "x.png").write_bytes(b"")
    with pytest.raises(DrganError, match="not a synthesized set"):
        synthesize(opts(run, legacy, count=5))
    assert [p.name for p in (legacy / "images").iterdir()] == ["x.png"]


def test_failed_run_leaves_no_debris(run, tmp_path, monkeypatch):
    real = runner.make_backend

    def failing(*args, **kwargs):
        loaded = real(*args, **kwargs)

        def call(cond, z, noise):
            raise DrganError("the generator failed")
        loaded.call = call
        return loaded

    monkeypatch.setattr(runner, "make_backend", failing)
    with pytest.raises(DrganError, match="the generator failed"):
        synthesize(opts(run, tmp_path / "new", count=5))
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DrganError, match="the generator failed"):
        synthesize(opts(run, tmp_path / "empty", count=5))
    assert list((tmp_path / "empty").iterdir()) == []


def test_cli_mismatch_is_one_line(run, made):
    cmd = [sys.executable, "-m", "drgan.cli", "synthesize", "--run", str(run), "--out", str(made), "--count", "5",
           "--seed", "3", "--batch", "4", "--device", "cpu"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        f"error: {made}: holds a set made with another setup (seed 0 there, 3 now, structures.seed 0 there, 3 now); write to a new folder or delete it"]


def test_null_backend_with_a_preset_needs_no_run(tmp_path):
    out = tmp_path / "null"
    cmd = [sys.executable, "-m", "drgan.cli", "synthesize", "--backend", "null", "--preset", "tiny-64", "--out", str(out),
           "--count", "6", "--batch", "4", "--format", "jpeg", "--device", "cpu", "--json"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["generated"] == 6 and set(summary["stage_seconds"]) == set(STAGES)
    assert summary["bound"] in STAGES and all(v >= 0 for v in summary["stage_ms_per_image"].values())
    assert len(image_bytes(out)) == 6 and listed_equals_present(out)
    recorded = json.loads((out / FILE_NAME).read_text())
    assert (recorded["backend"], recorded["generator"], recorded["preset"]) == ("null", "none", "tiny-64")


def test_preset_needs_the_null_backend(tmp_path):
    with pytest.raises(DrganError, match="^preset needs backend null"):
        synthesize(SynthesisOptions(run=None, preset="tiny-64", out=str(tmp_path / "o"), count=5, device="cpu", progress=False))
    with pytest.raises(DrganError, match="exactly one of run and preset"):
        synthesize(SynthesisOptions(run=None, out=str(tmp_path / "o"), count=5, backend="null", device="cpu", progress=False))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("level", [0, 1, 6])
def test_png_levels_are_lossless(level):
    import io

    import numpy as np
    from PIL import Image

    from drgan.synthesis.encode import encode_image

    image = np.random.default_rng(level).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    image[:20] //= 16   # a smooth part as well as noise
    data = encode_image(image, "png", 95, level)
    assert (np.asarray(Image.open(io.BytesIO(data))) == image).all()
    assert encode_image(image, "png", 95, level) == data


def test_cli_unknown_device_is_one_line(tmp_path):
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "drgan.cli", "synthesize", "--backend", "null", "--preset", "tiny-64", "--out", str(out),
           "--count", "5", "--device", "tpu"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == ["error: --device 'tpu': expected auto, cpu, cuda or cuda:N"]
    assert not out.exists()


def test_a_long_value_in_a_mismatch_keeps_its_quotes():
    from drgan.synthesis.fingerprint import _show

    assert _show("ab" * 32) == '"abababababab..."'
    assert _show("short") == '"short"' and _show(3) == "3"
    assert _show(list(range(20))).endswith("...")


def test_another_structure_hash_says_where_it_comes_from(tmp_path):
    from drgan.io import atomic_write_bytes
    from drgan.synthesis import fingerprint

    structures = {"kind": "dataset", "size": 64, "count": 3, "sha256": "a" * 64}
    fingerprint.record(tmp_path, {"seed": 0, "structures": structures}, atomic_write_bytes)
    with pytest.raises(DrganError) as err:
        fingerprint.check(tmp_path, {"seed": 0, "structures": {**structures, "sha256": "b" * 64}})
    assert str(err.value) == (
        f'{tmp_path}: holds a set made with another setup (structures.sha256 "aaaaaaaaaaaa..." there, "bbbbbbbbbbbb..." now: '
        "the masks as loaded differ (another dataset or --structures-split, the other --loader resizing them, or a set "
        "begun before its field of view was read from the photographs)); write to a new folder or delete it")
