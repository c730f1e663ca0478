"""Two gloo processes train a few GAN steps; DDP keeps the replicas identical."""
from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from drgan.training.gan import GanTrainer
from drgan.training.options import GanOptions
from drgan.training.interrupts import way_on_told
from training_fixtures import PhantomSet, write_space


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)


def _worker(rank: int, world: int, port: int, tmp: str) -> None:
    _join(rank, world, port)
    opts = GanOptions(out=f"{tmp}/run", grading_space=f"{tmp}/space.safetensors", preset="tiny-64", perceptual="none",
                      batch=2, max_steps=3, log_every=1, sample_every=1000, checkpoint_every=1000)
    trainer = GanTrainer(opts, PhantomSet(8))
    report = trainer.fit()
    state = {f"G.{k}": v for k, v in trainer.G.state_dict().items()} | {f"D.{k}": v for k, v in trainer.D.state_dict().items()}
    state["steps"] = torch.tensor(report["steps"])
    save_file({k: v.contiguous() for k, v in state.items()}, f"{tmp}/rank{rank}.safetensors")
    torch.distributed.destroy_process_group()


def test_two_process_gloo_keeps_replicas_identical(tmp_path):
    write_space(tmp_path / "space.safetensors")
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    assert int(r0["steps"]) == int(r1["steps"]) == 3
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    # Rank 0 checkpoints; its weights are the trained replicas (not the initial ones).
    saved = load_file(str(tmp_path / "run" / "G.safetensors"))
    assert all(torch.equal(saved[k], r0[f"G.{k}"]) for k in saved)
    init = GanTrainer(GanOptions(out=str(tmp_path / "fresh"), grading_space=str(tmp_path / "space.safetensors"), preset="tiny-64",
                                 perceptual="none", batch=2), PhantomSet(8)).G.state_dict()
    assert any(not torch.equal(init[k], saved[k]) for k in saved)


class _InterruptedTrainer(GanTrainer):
    """Ctrl-C during step 3. A subclass, not a patched instance: a closure over the instance's own
    method would keep the DDP replicas, and with them the process group, alive in a reference cycle
    until interpreter exit, where freeing gloo's threads can abort the process."""

    def train_step(self, batch, step):
        values = super().train_step(batch, step)
        if step == 2:
            signal.raise_signal(signal.SIGINT)
        return values


def _interrupted_worker(rank: int, world: int, port: int, tmp: str) -> None:
    """Ctrl-C on every rank during step 3; the last checkpoint holds step 2."""
    _join(rank, world, port)
    opts = GanOptions(out=f"{tmp}/run", grading_space=f"{tmp}/space.safetensors", preset="tiny-64", perceptual="none",
                      batch=2, max_steps=10, sample_every=1000, checkpoint_every=2)
    trainer = _InterruptedTrainer(opts, PhantomSet(8))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.suppress(KeyboardInterrupt):
        trainer.fit()
    Path(f"{tmp}/err{rank}.txt").write_text(err.getvalue() + f"told: {way_on_told()}\n")
    torch.distributed.destroy_process_group()


def test_an_interrupted_multi_process_run_names_its_last_checkpoint_once(tmp_path):
    """A checkpoint is a collective call other ranks may not reach, so none is made after the
    interrupt; rank 0 alone says which one a resume starts from."""
    write_space(tmp_path / "space.safetensors")
    mp.spawn(_interrupted_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    run = tmp_path / "run"
    assert f"interrupted: at step 3; its last checkpoint, step 2, is in {run}; continue with --resume\n" in (tmp_path / "err0.txt").read_text()
    # Rank 1's command adds no `aborted` of its own: the way on is told, by rank 0.
    assert (tmp_path / "err1.txt").read_text() == "told: True\n" and "told: True" in (tmp_path / "err0.txt").read_text()
    assert json.loads((run / "state.json").read_text())["step"] == 2
