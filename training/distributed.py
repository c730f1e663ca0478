"""torchrun / DistributedDataParallel plumbing: process group, device, sampler, rank-0 duties.

A plain `python` process is world size 1 and needs no process group. Under torchrun the
`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR` and `MASTER_PORT` variables are set; the
backend is nccl for CUDA devices and gloo on CPU.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler, Sampler

from drgan.errors import ParameterError
from drgan.runtime import rank_gpu, resolve_device, torchrun_ranks


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup(device: str) -> DistInfo:
    """Join the torchrun process group when there is one; pick this process's device."""
    rank, world, local_rank = torchrun_ranks()
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", rank_gpu(local_rank) if world > 1 else (dev.index or 0))
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
    return DistInfo(rank, world, dev)


def teardown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean over ranks (a NaN on any rank reaches every rank, so all stop together)."""
    if info.enabled:
        values = values.clone()
        dist.all_reduce(values)
        values /= info.world
    return values


def gather_objects(obj: object, info: DistInfo) -> list[object]:
    """Every rank's `obj`, in rank order (on every rank)."""
    if not info.enabled:
        return [obj]
    out: list[object] = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def broadcast_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Rank 0's buffers (batch-norm statistics) everywhere; DDP only syncs them at each forward."""
    if info.enabled:
        for buf in module.buffers():
            dist.broadcast(buf, 0)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


class ResumableSampler(Sampler[int]):
    """DistributedSampler's per-epoch shuffled shard, started at a given batch of the epoch.

    The order depends only on (seed, epoch, rank), so a resumed run sees the same batches.
    """

    def __init__(
        self,
        dataset: Dataset,   # indexable dataset
        info: DistInfo,     # this process's rank and the world size
        batch: int,         # per-process batch (whole batches only: drop_last)
        seed: int,          # shuffling seed
    ) -> None:
        # DistributedSampler seeds torch with seed + epoch, which must fit 64 bits: 63-bit seeds
        # leave room for any epoch and keep every smaller seed's order.
        self.inner = DistributedSampler(dataset, num_replicas=info.world, rank=info.rank, shuffle=True, seed=seed % 2**63,
                                        drop_last=True)
        self.batch = batch
        self.start_batch = 0
        self.batches_per_epoch = len(self.inner) // batch
        if self.batches_per_epoch == 0:
            raise ParameterError(
                f"{{batch}} {batch}: the training split has {len(dataset)} images, fewer than one batch "
                f"per process ({info.world} process(es))"
            )

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.inner.set_epoch(epoch)
        self.start_batch = start_batch

    def __iter__(self) -> Iterator[int]:
        indices = list(self.inner)[: self.batches_per_epoch * self.batch]
        return iter(indices[self.start_batch * self.batch:])

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch
