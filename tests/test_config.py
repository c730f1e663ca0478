import json

import pytest
import torch

from drgan.config import PRESETS, ModelConfig, preset
from drgan.errors import DrganError
from drgan.runs import RUN_FILE, read_run, write_run_config


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_json_round_trip(tmp_path, name):
    cfg = preset(name)
    write_run_config(tmp_path, cfg, "local")
    assert read_run(tmp_path).cfg == cfg
    assert json.loads((tmp_path / RUN_FILE).read_text())["model"]["resolution"] == cfg.resolution


def test_unknown_preset_is_one_clear_error():
    with pytest.raises(DrganError, match="unknown preset 'paper-2048'; choose one of paper-1280"):
        preset("paper-2048")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"sca_qk_dims": (64, 16, 2)}, "never go below 4"),
        ({"norm": "group"}, "norm 'group'"),
        ({"resolution": 1000}, "multiple of 16"),
        ({"sca_qk_dims": (64, 16)}, "needs 3 entries"),
        ({"local_channels": (32, 48)}, "must equal enc_channels"),
    ],
)
def test_invalid_values_are_rejected(change, message):
    with pytest.raises(DrganError, match=message):
        ModelConfig(**change)


def test_unknown_field_and_bad_json(tmp_path):
    with pytest.raises(DrganError, match="unknown field"):
        ModelConfig.from_dict({"resolution": 64, "colour": 1})
    (tmp_path / RUN_FILE).write_text("{")
    with pytest.raises(DrganError, match=f"{RUN_FILE}: malformed run config"):
        read_run(tmp_path)


def test_paper_preset_matches_the_paper():
    cfg = preset("paper-1280")
    assert (cfg.resolution, cfg.global_resolution, cfg.z_dim) == (1280, 640, 2048)
    assert cfg.enc_channels == (64, 128, 256, 512) and cfg.n_res_blocks == 7
    # d = 8, 16, 32 at 80, 160, 320 px with 512, 256, 128 channels.
    assert cfg.sca_qk_dims == (512 // 8, 256 // 16, 128 // 32)


def test_attention_tokens_are_the_sca_blocks_sizes():
    import dataclasses

    from drgan.nn import DRGANGenerator

    cfg = preset("tiny-64")
    g = DRGANGenerator(cfg, "local")
    sides = []  # the feature side each SCA block attends over, read off the model's forward
    hooks = [block.sca.register_forward_hook(lambda m, args, out: sides.append(out.shape[-2] * out.shape[-1]))
             for block in g.global_gen.synth]
    g(torch.zeros(1, cfg.cond_channels, 64, 64), torch.zeros(1, cfg.z_dim), [torch.zeros(s) for s in g.noise_shapes(1)])
    for hook in hooks:
        hook.remove()
    assert cfg.attention_tokens == tuple(sides)
    assert preset("paper-1280").attention_tokens == (6400, 25600, 102400)  # 80, 160, 320 px: the paper's SCA sizes
    assert dataclasses.replace(cfg, sca=False).attention_tokens == ()


def test_the_wheel_lists_every_package():
    """setuptools packages only what pyproject.toml lists: a package left out works in the editable
    install and is missing from a wheel (drgan.data.importers was)."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    setup = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {folder: name for name, folder in setup["package-dir"].items()}
    found = set()
    for init in sorted(p for folder in folders for p in (root / folder).rglob("__init__.py")):
        rel = init.parent.relative_to(root).parts
        found.add(".".join([folders[rel[0]], *rel[1:]]))
    assert found == set(setup["packages"])
