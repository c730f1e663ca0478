"""Device and precision: the names every command accepts, resolved in one place."""
from __future__ import annotations

import contextlib
import os
import re
from typing import Iterator, NamedTuple

import numpy as np
import torch

from drgan.config import PRECISIONS
from drgan.errors import DrganError, ParameterError, UsageError

_DTYPES = dict(zip(PRECISIONS, (torch.float32, torch.bfloat16, torch.float16)))
_DEVICE = re.compile(r"(auto|cpu|cuda)(:\d+)?")


def resolve_device(name: str) -> torch.device:
    """'auto' (CUDA when visible, else CPU), 'cpu', 'cuda' or 'cuda:N'; anything else is refused."""
    match = _DEVICE.fullmatch(name)
    if match is None or (match.group(1) != "cuda" and match.group(2)):
        raise UsageError(f"{{device}} {name!r}: expected auto, cpu, cuda or cuda:N")  # a wrong form, as click's choices
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ParameterError(f"{{device}} {name}: no CUDA device is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ParameterError(f"{{device}} {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return device


def current_gpu(device: str | torch.device) -> contextlib.AbstractContextManager:
    """Inside, a CUDA `device` is the current GPU (nothing changes for the CPU): what is made or
    launched without naming a device (a TensorRT engine, an AOTInductor package's weights, Triton
    kernels) goes to the current GPU, GPU 0 unless told."""
    device = torch.device(device)
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def rank_gpu(local_rank: int) -> int:
    """The GPU index of a torchrun process: its LOCAL_RANK, or 0 where the process sees one GPU
    alone (a scheduler that gives each rank its own CUDA_VISIBLE_DEVICES)."""
    count = torch.cuda.device_count()
    if count == 1:
        return 0
    if local_rank >= count:
        raise DrganError(f"LOCAL_RANK={local_rank} (torchrun's environment): this process sees {count} GPUs; "
                         f"start at most {count} processes per machine")
    return local_rank


class Ranks(NamedTuple):
    rank: int          # this process among all: RANK
    world: int         # processes in all: WORLD_SIZE
    local_rank: int    # this process on its machine (its GPU): LOCAL_RANK


def torchrun_ranks() -> Ranks:
    """This process's place under torchrun from its environment; (0, 1, 0) without torchrun. A
    value that is not a whole number, or a RANK outside 0..WORLD_SIZE-1, is one error naming the
    variable: the checks `--shard i/n` gets."""
    def read(name: str, default: str) -> int:
        text = os.environ.get(name, default)
        try:
            return int(text)
        except ValueError:
            raise DrganError(f"{name}={text!r} (torchrun's environment): not a whole number") from None

    world, rank, local_rank = read("WORLD_SIZE", "1"), read("RANK", "0"), read("LOCAL_RANK", "0")
    if world < 1:
        raise DrganError(f"WORLD_SIZE={world} (torchrun's environment): need at least 1")
    if world > 1 and "RANK" not in os.environ:
        raise DrganError(f"WORLD_SIZE={world} without RANK (torchrun's environment sets both)")
    if not 0 <= rank < world:
        raise DrganError(f"RANK={rank} with WORLD_SIZE={world} (torchrun's environment): need 0 <= RANK < WORLD_SIZE")
    if local_rank < 0:
        raise DrganError(f"LOCAL_RANK={local_rank} (torchrun's environment): need at least 0")
    return Ranks(rank, world, local_rank)


def resolve_precision(name: str, device: torch.device) -> str:
    """'auto' is bf16 on CUDA and fp32 elsewhere; the others are returned as given."""
    if name == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if name not in PRECISIONS:
        raise ParameterError(f"{{precision}} {name!r}: expected auto, {', '.join(PRECISIONS)}")
    return name


def precision_dtype(precision: str) -> torch.dtype:
    """The dtype of a precision name (drgan.config.PRECISIONS)."""
    return _DTYPES[precision]


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a precision name; None for fp32 (no autocast)."""
    return None if precision == "fp32" else _DTYPES[precision]


def seeded_generator(*keys: int) -> torch.Generator:
    """A CPU torch.Generator seeded by numpy's SeedSequence of `keys` (seed, purpose, rank, step...):
    distinct keys give independent streams, which arithmetic on a seed does not promise."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0]))


def epoch_seed(seed: int, epoch: int) -> int:
    """The key of a run's epoch: the loaders' sample order and the augmentations of
    `FundusDataset.set_epoch`. Kept to 64 bits, which torch's generators take, for every seed up to
    SEED_MAX; the same key as `seed * 100003 + epoch` wherever that fits."""
    return (seed * 100003 + epoch) % 2**64


@contextlib.contextmanager
def deterministic_algorithms(on: bool = True, warn_only: bool = False) -> Iterator[None]:
    """torch.use_deterministic_algorithms(on, warn_only=...) for the block, then the caller's
    setting again (kernels read it to choose a deterministic path, e.g. the attention backward)."""
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(on, warn_only=warn_only)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


@contextlib.contextmanager
def intra_op_threads(n: int) -> Iterator[None]:
    """Run the block's CPU tensor operations with n intra-op threads (the calling thread's
    setting), then restore it. Stages of a pipeline that has its own parallel lanes use 1: an
    OpenMP team per operation on top of the lanes oversubscribes the cores, and its waiting
    threads spin."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
