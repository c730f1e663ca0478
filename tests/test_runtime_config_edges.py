"""Edges of the model configuration, device/precision/seed resolution, the torchrun plumbing, the
run logger, the VGG19 feature network, grade prediction and the image sets that metrics read."""
from __future__ import annotations

import csv
import dataclasses

import numpy as np
import PIL.Image
import pytest
import torch

from drgan.config import PRESETS, SEED_MAX, ModelConfig, preset
from drgan.errors import DrganError

TINY = preset("tiny-64")


# --- drgan.config -------------------------------------------------------------------------------

def test_config_limits_are_inclusive_and_refuse_one_more():
    """Each bound names the largest value taken: the bound itself is a valid config, one more is not."""
    assert dataclasses.replace(TINY, grader_width=512).grader_width == 512
    assert dataclasses.replace(TINY, mapping_layers=32).mapping_layers == 32
    assert dataclasses.replace(TINY, disc_scales=8).disc_scales == 8
    for field, value in (("grader_width", 513), ("mapping_layers", 33), ("disc_scales", 9)):
        with pytest.raises(DrganError, match=f"{field} {value} is out of range"):
            dataclasses.replace(TINY, **{field: value})


def test_width_lists_longer_than_eight_entries_are_refused():
    assert dataclasses.replace(TINY, disc_channels=(8,) * 8).disc_channels == (8,) * 8
    with pytest.raises(DrganError, match=r"disc_channels .* out of range \(at most 4096, 8 entries\)"):
        dataclasses.replace(TINY, disc_channels=(8,) * 9)


def test_encoder_widths_must_be_multiples_of_four():
    """The synthesis noise has C/4 channels: a width of 66 cannot hold it."""
    with pytest.raises(DrganError, match="must be positive multiples of 4"):
        dataclasses.replace(TINY, enc_channels=(8, 16, 32, 66))


@pytest.mark.parametrize("change, message", [
    ({"n_res_blocks": -1}, "n_res_blocks must be >= 0"),
    ({"mapping_layers": 0}, "mapping_layers must be >= 1"),
    ({"cond_channels": 7}, "cond_channels must be 8"),
    ({"n_res_blocks": True}, "n_res_blocks True is not an integer"),
    ({"sca": "yes"}, "sca 'yes' is not true or false"),
    ({"agm": 1}, "agm 1 is not true or false"),
])
def test_config_field_checks(change, message):
    with pytest.raises(DrganError, match=f"invalid model config: {message}"):
        dataclasses.replace(TINY, **change)


def test_a_generator_without_residual_blocks_is_a_valid_config():
    assert dataclasses.replace(TINY, n_res_blocks=0).n_res_blocks == 0


@pytest.mark.parametrize("change", [{"w_dim": -5}, {"w_dim": 0}, {"local_channels": [-4, 8]}, {"disc_channels": [0, 16, 32]},
                                    {"img_channels": 0}, {"num_grades": 0}])
def test_non_positive_sizes_in_a_run_config_are_one_error(change):
    """A hand-edited run.json with w_dim -5 was a torch traceback when the model was built; 0 built a model."""
    with pytest.raises(DrganError, match="invalid model config"):
        ModelConfig.from_dict({**TINY.to_dict(), **change})


@pytest.mark.parametrize("widths", [[8, 16, 32.7, 64], ["8", 16, 32, 64]])
def test_width_lists_take_integers_only(widths):
    """As the scalar fields do: 32.7 was cut to 32 and '8' read as 8."""
    with pytest.raises(DrganError, match="invalid model config"):
        ModelConfig.from_dict({**TINY.to_dict(), "enc_channels": widths})


def test_paper_preset_has_three_discriminators_and_a_four_layer_mapping():
    """DESIGN.md: three discriminators (1280, 640, 320) of four conv4x4 layers 64..512; a 4-layer
    512-d AGM mapping network."""
    cfg = preset("paper-1280")
    assert cfg.disc_scales == 3 and cfg.disc_channels == (64, 128, 256, 512)
    assert (cfg.mapping_layers, cfg.w_dim) == (4, 512)
    assert cfg.local_channels == (32, 64) and cfg.norm == "batch"
    assert (cfg.sca, cfg.agm, cfg.lesion_masks) == (True, True, True)


def test_small_preset_is_the_paper_scaled_down():
    """small-256: the paper's topology, sizes / 5 and channels / 4, QK dims C/d clamped at 4
    (d = 8, 16, 32 coarse to fine)."""
    paper, small = preset("paper-1280"), preset("small-256")
    assert small.resolution == paper.resolution // 5
    quarter = lambda widths: tuple(w // 4 for w in widths)  # noqa: E731
    assert small.enc_channels == quarter(paper.enc_channels)
    assert small.local_channels == quarter(paper.local_channels)
    assert small.disc_channels == quarter(paper.disc_channels)
    assert (small.w_dim, small.grader_width) == (paper.w_dim // 4, paper.grader_width // 4)
    coarse_to_fine = small.enc_channels[::-1]
    assert small.sca_qk_dims == tuple(max(4, c // d) for c, d in zip(coarse_to_fine, (8, 16, 32)))
    assert (small.n_res_blocks, small.mapping_layers, small.disc_scales) == (7, 4, 3)


def test_tiny_128_is_tiny_64_at_twice_the_side():
    assert preset("tiny-128") == dataclasses.replace(preset("tiny-64"), resolution=128)
    assert preset("tiny-128").stage_resolution("global") == 64
    assert sorted(PRESETS) == ["paper-1280", "small-256", "tiny-128", "tiny-64"]


def test_stage_resolution_and_unknown_stage():
    assert (TINY.stage_resolution("global"), TINY.stage_resolution("local")) == (32, 64)
    with pytest.raises(DrganError, match="unknown stage 'middle'"):
        TINY.stage_resolution("middle")


# --- drgan.runtime: devices ---------------------------------------------------------------------

@pytest.fixture
def cuda_visible(monkeypatch):
    """`n` visible CUDA devices as torch reports them (nothing is allocated on them)."""
    def see(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    return see


@pytest.mark.parametrize("name", ["cpu:0", "cpu:1", "auto:0", "tpu", "cuda:", "CUDA"])
def test_a_device_index_is_taken_for_cuda_only(name):
    from drgan.errors import UsageError
    from drgan.runtime import resolve_device

    with pytest.raises(UsageError, match="expected auto, cpu, cuda or cuda:N"):
        resolve_device(name)


def test_auto_is_cuda_when_visible_else_cpu(cuda_visible):
    from drgan.runtime import resolve_device

    cuda_visible(0)
    assert resolve_device("auto") == torch.device("cpu")
    cuda_visible(1)
    assert resolve_device("auto").type == "cuda"


def test_cuda_index_must_be_a_visible_device(cuda_visible):
    from drgan.errors import ParameterError
    from drgan.runtime import resolve_device

    cuda_visible(2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ParameterError, match=r"cuda:2: only 2 CUDA device\(s\) visible"):
        resolve_device("cuda:2")
    cuda_visible(0)
    with pytest.raises(ParameterError, match="cuda: no CUDA device is available"):
        resolve_device("cuda")


def test_a_ranks_device_index_is_its_local_rank_or_the_only_device(cuda_visible):
    from drgan.runtime import rank_gpu

    cuda_visible(1)  # a scheduler that gives each rank its own CUDA_VISIBLE_DEVICES
    assert rank_gpu(3) == 0
    cuda_visible(4)
    assert [rank_gpu(i) for i in range(4)] == [0, 1, 2, 3]
    with pytest.raises(DrganError, match="LOCAL_RANK=4 .* sees 4 GPUs"):
        rank_gpu(4)


@pytest.mark.parametrize("env, expected", [
    ({}, (0, 1, 0)),
    ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}, (3, 4, 1)),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2 with WORLD_SIZE=2"),
    ({"RANK": "-1", "WORLD_SIZE": "2"}, "RANK=-1 with WORLD_SIZE=2"),
    ({"LOCAL_RANK": "-1"}, "LOCAL_RANK=-1 .*need at least 0"),
    ({"LOCAL_RANK": "x"}, "LOCAL_RANK='x' .*not a whole number"),
])
def test_torchrun_ranks_from_the_environment(monkeypatch, env, expected):
    from drgan.runtime import torchrun_ranks

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if isinstance(expected, tuple):
        assert tuple(torchrun_ranks()) == expected
    else:
        with pytest.raises(DrganError, match=expected):
            torchrun_ranks()


# --- drgan.runtime: precision -------------------------------------------------------------------

def test_precision_auto_is_bf16_on_cuda_and_fp32_on_cpu():
    from drgan.errors import ParameterError
    from drgan.runtime import resolve_precision

    assert resolve_precision("auto", torch.device("cuda", 0)) == "bf16"
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert [resolve_precision(p, torch.device("cpu")) for p in ("fp32", "bf16", "fp16")] == ["fp32", "bf16", "fp16"]
    with pytest.raises(ParameterError, match="'fp64': expected auto, fp32, bf16, fp16"):
        resolve_precision("fp64", torch.device("cpu"))


def test_precision_names_map_to_their_dtypes():
    from drgan.runtime import autocast_dtype, precision_dtype

    assert [precision_dtype(p) for p in ("fp32", "bf16", "fp16")] == [torch.float32, torch.bfloat16, torch.float16]
    assert [autocast_dtype(p) for p in ("fp32", "bf16", "fp16")] == [None, torch.bfloat16, torch.float16]


# --- drgan.runtime: seeds and scoped settings ---------------------------------------------------

def test_seeded_generator_streams_differ_in_every_key():
    """(seed, purpose, rank, step): changing any one key gives another stream; the same keys the
    same stream, whatever torch's global seed."""
    from drgan.runtime import seeded_generator

    def draw(*keys):
        return torch.randint(0, 2**31, (4,), generator=seeded_generator(*keys)).tolist()

    base = draw(5, 0, 1, 7)
    torch.manual_seed(123)
    assert draw(5, 0, 1, 7) == base
    for other in ((6, 0, 1, 7), (5, 1, 1, 7), (5, 0, 0, 7), (5, 0, 1, 8), (5, 0, 1)):
        assert draw(*other) != base, other
    assert draw(5, 0, 1, 7) != draw(5, 0, 7, 1)  # keys are positional, not a sum


def test_epoch_seed_is_the_plain_formula_wherever_it_fits_64_bits():
    from drgan.runtime import epoch_seed

    assert epoch_seed(3, 2) == 3 * 100003 + 2
    seed = (2**63) // 100003 + 5  # seed * 100003 lies above 2**63 and below 2**64
    assert 2**63 < seed * 100003 + 4 < 2**64
    assert epoch_seed(seed, 4) == seed * 100003 + 4
    assert 0 <= epoch_seed(SEED_MAX, 10**6) < 2**64
    torch.Generator().manual_seed(epoch_seed(SEED_MAX, 10**6))  # a key torch takes


def test_deterministic_algorithms_restores_the_callers_setting():
    from drgan.runtime import deterministic_algorithms

    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        torch.use_deterministic_algorithms(True, warn_only=True)
        with deterministic_algorithms(False):
            assert not torch.are_deterministic_algorithms_enabled()
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        torch.use_deterministic_algorithms(False)
        with deterministic_algorithms():
            assert torch.are_deterministic_algorithms_enabled()
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def test_intra_op_threads_restores_the_thread_count():
    from drgan.runtime import intra_op_threads

    before = torch.get_num_threads()
    want = 1 if before != 1 else 2
    with intra_op_threads(want):
        assert torch.get_num_threads() == want
    assert torch.get_num_threads() == before


# --- drgan.info ---------------------------------------------------------------------------------

def test_softmax_exponentials_are_n_squared_per_sca_block():
    """tiny-64: Gm at 32 px, SCA at 4, 8, 16 px (N = 16, 64, 256 tokens)."""
    from drgan.info import attention_exps

    assert TINY.attention_tokens == (16, 64, 256)
    assert attention_exps(TINY) == 16**2 + 64**2 + 256**2
    assert attention_exps(dataclasses.replace(TINY, sca=False)) == 0


def test_cost_report_counts_every_generator_parameter_and_attention_product():
    """The per-module rows add up to the whole generator; the attention FLOPs are DESIGN.md's
    products: spatial Q K^T and A V (2 N^2 (Dqk + Dv)) and channel X X^T and A X (4 C^2 N)."""
    from drgan.info import cost_report
    from drgan.nn import DRGANGenerator

    for stage in ("global", "local"):  # the global stage ends in Gm's to_rgb, the local one in Gl
        report = cost_report(TINY, "tiny-64", stage)
        with torch.device("meta"):
            total = sum(p.numel() for p in DRGANGenerator(TINY, stage).parameters())
        assert report["params"] == total == sum(m["params"] for m in report["modules"]), stage
    want = sum(2 * n * n * (dqk + dv) + 4 * dv * dv * n for n, dqk, dv in TINY.attention_shapes)
    assert report["attention_flops"] == want
    assert report["ablations"] == []
    assert cost_report(dataclasses.replace(TINY, sca=False, lesion_masks=False), "x")["ablations"] == ["sca", "lesion_masks"]


def test_grader_summary_counts_the_epochs_trained():
    from drgan.info import format_grader

    report = {"name": "g", "resolution": 64, "grader_width": 8, "params": 1000, "flops": 2e9, "grading_vector": 256,
              "epochs": [{"val": {"accuracy": 0.5, "kappa": 0.25}}, {"val": {"accuracy": 0.75, "kappa": 0.5}}],
              "grading_space": False, "options": {"epochs": 5}}
    text = format_grader(report)
    assert "epochs trained: 2 of 5 (last: val accuracy 0.750" in text


# --- training.distributed -----------------------------------------------------------------------

def _dist_info(rank=0, world=1):
    from drgan.training.distributed import DistInfo

    return DistInfo(rank, world, torch.device("cpu"))


def test_only_rank_0_is_main_and_one_process_is_not_distributed():
    assert _dist_info(0, 1).is_main and not _dist_info(0, 1).enabled
    assert _dist_info(0, 2).is_main and _dist_info(0, 2).enabled
    assert not _dist_info(1, 2).is_main


@pytest.fixture
def torchrun_env(monkeypatch, cuda_visible):
    """A torchrun rank's environment with the process-group calls recorded instead of made."""
    import torch.distributed as dist

    calls = {}
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: calls.setdefault("group", kw))
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.setdefault("set_device", torch.device(d)))

    def env(rank, world, local_rank, gpus):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", str(world))
        monkeypatch.setenv("LOCAL_RANK", str(local_rank))
        cuda_visible(gpus)
        return calls
    return env


def test_setup_puts_each_rank_on_its_local_rank_gpu_with_nccl(torchrun_env):
    from drgan.training.distributed import setup

    calls = torchrun_env(rank=3, world=4, local_rank=1, gpus=2)
    info = setup("cuda")
    assert (info.rank, info.world, info.device) == (3, 4, torch.device("cuda", 1))
    assert calls["set_device"] == torch.device("cuda", 1)
    assert calls["group"] == {"backend": "nccl", "rank": 3, "world_size": 4}


def test_setup_of_a_cpu_rank_joins_with_gloo(torchrun_env):
    from drgan.training.distributed import setup

    calls = torchrun_env(rank=1, world=2, local_rank=1, gpus=0)
    info = setup("cpu")
    assert (info.rank, info.world, info.device) == (1, 2, torch.device("cpu"))
    assert calls == {"group": {"backend": "gloo", "rank": 1, "world_size": 2}}


def test_all_reduce_mean_divides_the_sum_by_the_world_and_keeps_the_input(monkeypatch):
    import torch.distributed as dist

    from drgan.training.distributed import all_reduce_mean

    other = torch.tensor([3.0, -1.0])  # what the second rank holds
    monkeypatch.setattr(dist, "all_reduce", lambda t: t.add_(other))
    mine = torch.tensor([1.0, 5.0])
    assert torch.equal(all_reduce_mean(mine, _dist_info(0, 2)), torch.tensor([2.0, 2.0]))
    assert torch.equal(mine, torch.tensor([1.0, 5.0]))
    assert all_reduce_mean(mine, _dist_info(0, 1)) is mine


def _sampler(count, rank, world, batch, seed=0):
    from drgan.training.distributed import ResumableSampler

    return ResumableSampler(list(range(count)), _dist_info(rank, world), batch, seed)


def test_sampler_shards_are_disjoint_whole_batches():
    """11 images on 2 ranks in batches of 2: 5 each, 2 whole batches each, no image twice."""
    shards = [_sampler(11, r, 2, 2) for r in range(2)]
    orders = [list(s) for s in shards]
    assert [s.batches_per_epoch for s in shards] == [2, 2]
    assert [len(o) for o in orders] == [4, 4] and [len(s) for s in shards] == [4, 4]
    assert len(set(orders[0]) | set(orders[1])) == 8


def test_sampler_resumes_at_a_batch_of_the_same_epoch_order():
    s = _sampler(12, 0, 1, 3, seed=7)
    s.set_epoch(2)
    full = list(s)
    assert sorted(full) == list(range(12)) and len(s) == 12
    s.set_epoch(2, start_batch=1)
    assert list(s) == full[3:] and len(s) == 9
    s.set_epoch(3)
    assert list(s) != full and sorted(s) == list(range(12))  # a new epoch, a new order
    s.set_epoch(2)
    assert list(s) == full


def test_sampler_takes_the_largest_seed():
    s = _sampler(8, 0, 1, 2, seed=SEED_MAX)
    s.set_epoch(5)
    assert sorted(s) == list(range(8))


def test_sampler_refuses_fewer_images_than_one_batch_per_process():
    from drgan.errors import ParameterError

    with pytest.raises(ParameterError, match=r"batch 3: the training split has 5 images, fewer than one batch per process \(2 process"):
        _sampler(5, 0, 2, 3)


# --- training.logger ----------------------------------------------------------------------------

def test_logger_passes_the_resume_purge_step_to_tensorboard(tmp_path, monkeypatch):
    import drgan.training.logger as logger

    made = []

    class Writer:
        def __init__(self, log_dir, purge_step=None):
            made.append((log_dir, purge_step))

        def close(self):
            pass

    monkeypatch.setattr(logger, "SummaryWriter", Writer)
    logger.RunLogger(tmp_path / "run", enabled=True, purge_step=41).close()
    assert made == [(str(tmp_path / "run" / "logs"), 41)]
    assert logger.RunLogger(tmp_path / "other", enabled=False, purge_step=41).writer is None and len(made) == 1
    assert not (tmp_path / "other").exists()


def test_logger_grids_are_named_by_zero_padded_step(tmp_path):
    from drgan.training.logger import RunLogger

    log = RunLogger(tmp_path / "run", enabled=True, purge_step=None)
    try:
        rows = [torch.zeros(2, 3, 8, 8), torch.ones(2, 3, 8, 8)]
        path = log.grid("fixed", rows, ["a", "b"], 12)
    finally:
        log.close()
    assert path == tmp_path / "run" / "samples" / "fixed-0000012.png" and path.is_file()
    assert RunLogger(tmp_path / "off", enabled=False, purge_step=None).grid("fixed", rows, ["a", "b"], 12) is None


def test_logger_refuses_a_run_whose_samples_folder_is_a_file(tmp_path):
    from drgan.training.logger import RunLogger

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "samples").write_text("")
    with pytest.raises(DrganError, match="samples: is a file, expected a folder"):
        RunLogger(tmp_path / "run", enabled=True, purge_step=None)
    assert not (tmp_path / "run" / "logs").exists()  # refused before TensorBoard wrote anything


# --- training.vgg -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vgg():
    from drgan.training.vgg import VGG19Features

    torch.manual_seed(0)
    return VGG19Features().eval()


def test_vgg_has_torchvisions_layer_indices(vgg):
    """torchvision's vgg19.features: convs at 0, 2, 5, ..., max pools at 4, 9, 18, 27, taps at
    relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 = 1, 6, 11, 20, 29."""
    from torch import nn

    from drgan.training.vgg import TAPS

    convs = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28)
    assert TAPS == (1, 6, 11, 20, 29) and len(vgg.features) == 30
    assert set(vgg.state_dict()) == {f"features.{i}.{p}" for i in convs for p in ("weight", "bias")}
    assert [i for i, m in enumerate(vgg.features) if isinstance(m, nn.MaxPool2d)] == [4, 9, 18, 27]
    assert all(isinstance(vgg.features[i], nn.ReLU) for i in TAPS)


def test_vgg_taps_are_relu_activations_of_each_scale(vgg):
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        outs = vgg(x)
    assert [tuple(o.shape[1:]) for o in outs] == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 2, 2)]
    assert all(o.min() >= 0 for o in outs)


def test_vgg_maps_minus_one_to_one_images_to_imagenet_statistics(vgg):
    """The first conv sees (x + 1) / 2 normalised by ImageNet's mean and std."""
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    seen = []
    hook = vgg.features[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        with torch.no_grad():
            for value in (mean, mean + std):
                vgg((2 * value - 1).view(1, 3, 1, 1).expand(1, 3, 16, 16))
    finally:
        hook.remove()
    assert torch.allclose(seen[0], torch.zeros_like(seen[0]), atol=1e-5)
    assert torch.allclose(seen[1], torch.ones_like(seen[1]), atol=1e-5)


def test_vgg_tap_weights_favour_the_deep_layers():
    """pix2pixHD's VGGLoss weights: 1/32, 1/16, 1/8, 1/4, 1 from relu1_1 to relu5_1."""
    from drgan.training.vgg import TAP_WEIGHTS, TAPS

    assert TAP_WEIGHTS == (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0) and len(TAP_WEIGHTS) == len(TAPS)


def test_loaded_vgg_is_frozen(vgg, tmp_path):
    from drgan.checkpoint import save_tensors
    from drgan.training.vgg import load_vgg19

    save_tensors(vgg.state_dict(), tmp_path / "vgg19.safetensors")
    net = load_vgg19(tmp_path / "vgg19.safetensors")
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    assert torch.equal(net.features[28].weight, vgg.features[28].weight)


def test_vgg_weights_of_the_wrong_shape_are_one_error(vgg, tmp_path):
    from drgan.checkpoint import save_tensors
    from drgan.errors import ParameterError
    from drgan.training.vgg import load_vgg19

    state = dict(vgg.state_dict())
    state["features.28.bias"] = torch.zeros(3)
    save_tensors(state, tmp_path / "bad.safetensors")
    with pytest.raises(ParameterError, match=r"missing none, wrong shape features\.28\.bias"):
        load_vgg19(tmp_path / "bad.safetensors")


# --- drgan.metrics.grade_prediction -------------------------------------------------------------

class _GradeFromPixel(torch.nn.Module):
    """A grader that reads the grade off the image's first pixel: predictions are known exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        return torch.nn.functional.one_hot(x[:, 0, 0, 0].long(), 5).float() * self.scale, None


def test_predict_grades_keeps_every_item_of_a_short_last_batch():
    from drgan.metrics.grade_prediction import predict_grades

    grades = [4, 0, 3, 1, 2, 2, 0]
    items = [{"image": torch.full((3, 4, 4), float((g + 1) % 5)), "grade": torch.tensor(g)} for g in grades]
    truth, pred = predict_grades(_GradeFromPixel(), items, batch=3, progress=False)
    assert truth.tolist() == grades
    assert pred.tolist() == [(g + 1) % 5 for g in grades]


def _dataset(root, rows, side=64):
    """A dataset folder: images/<id>.png (a flat colour per image) and labels.csv id,grade,split."""
    (root / "images").mkdir(parents=True)
    for i, (name, grade, split) in enumerate(rows):
        PIL.Image.new("RGB", (side, side), (10 * i, 200 - 10 * i, 7 * grade)).save(root / "images" / f"{name}.png")
    with open(root / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([["id", "grade", "split"], *rows])
    return root


def test_grade_dataset_measures_only_the_split_given(tmp_path):
    from drgan.checkpoint import save_module
    from drgan.metrics.grade_prediction import grade_dataset
    from drgan.nn import build_grader
    from drgan.runs import write_run_config

    run = tmp_path / "grader"
    model = build_grader(TINY)
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.copy_(torch.tensor([0.0, 0, 5, 0, 0]))  # grade 2 for every image
    write_run_config(run, TINY, "global", {"trainer": "grader"})
    save_module(model, run / "grader.safetensors")
    data = _dataset(tmp_path / "data", [["a", 2, "test"], ["b", 0, "train"], ["c", 2, "test"], ["d", 1, "train"],
                                        ["e", 3, "test"]])
    result = grade_dataset(run, data, split="test")
    assert result["count"] == 3 and result["accuracy"] == pytest.approx(2 / 3)
    assert grade_dataset(run, data)["count"] == 5


# --- drgan.metrics.images -----------------------------------------------------------------------

def test_dataset_sets_are_in_id_order_with_their_grades_and_split(tmp_path):
    from drgan.metrics.images import open_image_set

    data = _dataset(tmp_path / "d", [["c", 1, "train"], ["a", 3, "test"], ["b", 0, "train"], ["d", 3, "train"]])
    s = open_image_set(data)
    assert [p.name for p in s.paths] == ["a.png", "b.png", "c.png", "d.png"] and s.grades == [3, 0, 1, 3]
    train = open_image_set(data, "train")
    assert [p.stem for p in train.paths] == ["b", "c", "d"] and train.grades == [0, 1, 3]
    groups = s.by_grade()
    assert sorted(groups) == [0, 1, 3]
    assert [p.stem for p in groups[3].paths] == ["a", "d"] and groups[3].grades == [3, 3]
    assert [p.stem for p in groups[0].paths] == ["b"]


def test_plain_folder_takes_upper_case_suffixes_in_path_order(tmp_path):
    from drgan.metrics.images import open_image_set

    folder = tmp_path / "plain"
    (folder / "sub").mkdir(parents=True)
    for name in ("b.PNG", "a.jpg", "sub/c.Png"):
        PIL.Image.new("RGB", (8, 8)).save(folder / name, format="PNG" if "png" in name.lower() else "JPEG")
    (folder / "notes.txt").write_text("x")
    s = open_image_set(folder)
    assert [p.relative_to(folder).as_posix() for p in s.paths] == ["a.jpg", "b.PNG", "sub/c.Png"]
    assert s.grades is None
    with pytest.raises(DrganError, match="split 'test' needs a dataset folder"):
        open_image_set(folder, "test")  # a plain folder has no splits: not read whole instead


def test_content_hash_names_files_bytes_and_grades(tmp_path):
    from drgan.metrics.images import ImageSet

    root = tmp_path / "s"
    root.mkdir()
    for name, colour in (("a.png", 1), ("b.png", 2), ("c.png", 1)):
        PIL.Image.new("RGB", (4, 4), (colour, 0, 0)).save(root / name)
    a, b, c = root / "a.png", root / "b.png", root / "c.png"
    base = ImageSet(root, [a, b], [0, 1]).content_hash()
    assert ImageSet(root, [a, b], [0, 1]).content_hash() == base
    assert ImageSet(root, [a, b], [0, 2]).content_hash() != base      # a grade changed
    assert ImageSet(root, [c, b], [0, 1]).content_hash() != base      # same bytes, another name
    assert ImageSet(root, [a, b], None).content_hash() != base


def test_load_rgb_keeps_rgb_order_and_averages_boxes(tmp_path):
    from drgan.metrics.images import load_rgb

    pixels = np.zeros((4, 4, 3), np.uint8)
    pixels[..., 0] = 200                                       # red
    pixels[:2, :2, 2] = [[0, 40], [80, 120]]                   # blue varies in the top-left box
    PIL.Image.fromarray(pixels).save(tmp_path / "x.png")
    full = load_rgb(tmp_path / "x.png")
    assert full.shape == (4, 4, 3) and full.dtype == np.uint8 and np.array_equal(full, pixels)
    small = load_rgb(tmp_path / "x.png", 2)
    assert small.shape == (2, 2, 3) and small[0, 0].tolist() == [200, 0, 60] and small[1, 1].tolist() == [200, 0, 0]


def test_set_size_and_grade_average_line(tmp_path):
    from drgan.metrics.images import ImageSet, check_set_size, grade_average_line

    with pytest.raises(DrganError, match="1 image; swd needs at least 2 images per set"):
        check_set_size(ImageSet(tmp_path, [tmp_path / "a.png"], None), "swd")
    check_set_size(ImageSet(tmp_path, [tmp_path / "a.png", tmp_path / "b.png"], None), "swd")
    assert grade_average_line("FID", [0, 1, 2, 3, 4], 1.5) == "FID average over grades: 1.5000"
    assert grade_average_line("FID", [0, 2], 1.5) == \
        "FID average over grades (only grades 0,2 have >= 2 images in both sets): 1.5000"


def test_shared_grades_need_two_images_in_both_sets(tmp_path):
    from drgan.metrics.images import ImageSet, shared_grades

    paths = [tmp_path / f"{i}.png" for i in range(6)]
    real = ImageSet(tmp_path, paths, [0, 0, 1, 1, 2, 2])
    fake = ImageSet(tmp_path, paths, [0, 0, 1, 2, 2, 3])
    assert sorted(shared_grades(real, fake)) == [0, 2]
    with pytest.raises(DrganError, match="no grade has at least 2 images in both sets"):
        shared_grades(real, ImageSet(tmp_path, paths, [0, 1, 2, 3, 4, 3]))
