"""Edges of writing, locking and resuming: temp files a writer leaves (or must not remove), lock
semantics beyond the first hold, checkpoint state that must round-trip or be refused, and which
weights a run folder hands out."""
from __future__ import annotations

import fcntl
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from drgan.errors import DrganError, ParameterError
from helpers import dead_pid


# ---- drgan.io: temp files and atomic writes

def test_remove_temp_files_removes_only_this_hosts_dead_writers_temps(tmp_path):
    """A temp of another host (a shared file system) is never judged by a local pid, and a hidden
    file that only looks like a temp (no owner pid in its name) is a user's, not drgan's."""
    from drgan.io import HOST, TEMP_MARK, remove_temp_files

    pid = dead_pid()
    dead_here = tmp_path / f".a.png{TEMP_MARK}{pid}-1@{HOST}"
    other_host = tmp_path / f".b.png{TEMP_MARK}{pid}-1@{HOST}x"
    not_ours = tmp_path / f".notes{TEMP_MARK}draft"
    for path in (dead_here, other_host, not_ours):
        path.write_bytes(b"x")
    assert remove_temp_files(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([other_host.name, not_ours.name])


def test_a_zombie_writers_temps_are_removed(tmp_path):
    """A writer killed by `timeout` stays a zombie until its parent collects it, and a zombie still
    answers signal 0: it has ended all the same, so its temps go."""
    import subprocess
    import sys
    import time

    from drgan.io import HOST, TEMP_MARK, pid_alive, remove_temp_files

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 30
        while (Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
               and time.monotonic() < deadline):
            time.sleep(0.01)
        (tmp_path / f".a.png{TEMP_MARK}{child.pid}-1@{HOST}").write_bytes(b"x")
        assert not pid_alive(child.pid) and pid_alive(os.getpid())
        assert remove_temp_files(tmp_path) == 1 and not list(tmp_path.iterdir())
    finally:
        child.wait()


def test_a_write_interrupted_midway_leaves_the_old_file_and_no_temp(tmp_path):
    from drgan.io import atomic_save

    path = tmp_path / "result.json"
    path.write_text("old")

    def write(tmp):
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_save(path, write)
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"] and path.read_text() == "old"


def test_a_writer_that_creates_a_private_temp_file_still_gives_a_plain_files_mode(tmp_path):
    """Writers that go through mkstemp leave 0600; the result has the mode of a plain open()."""
    from drgan.io import atomic_save

    umask = os.umask(0o022)
    os.umask(umask)

    def write(tmp):
        tmp.write_bytes(b"x")
        os.chmod(tmp, 0o600)

    atomic_save(tmp_path / "model.pt2", write, keep_suffix=True)
    assert (tmp_path / "model.pt2").stat().st_mode & 0o777 == 0o666 & ~umask


def test_an_output_suffix_in_capitals_is_accepted(tmp_path):
    from drgan.io import check_output_file

    check_output_file(tmp_path / "sheet.PNG", ".png", "a contact sheet", lambda p: True)
    with pytest.raises(DrganError, match=r"sheet.jpg: a contact sheet is written as .png"):
        check_output_file(tmp_path / "sheet.jpg", ".png", "a contact sheet", lambda p: True)


# ---- drgan.runs: claimed folders

def test_a_folder_holding_only_a_users_hidden_file_is_not_claimed(tmp_path):
    from drgan.runs import claimed_folder

    out = tmp_path / "exp"
    out.mkdir()
    (out / ".notes").write_text("mine")
    with pytest.raises(ParameterError, match=r"folder not empty and not an experiment \(no experiment.json\)"):
        with claimed_folder(out, "experiment.json", {"epochs": 1}, "an experiment"):
            pass
    assert [p.name for p in out.iterdir()] == [".notes"]


def test_a_claimed_folder_is_released_when_its_job_ends(tmp_path, other_holder):
    from drgan import locks
    from drgan.runs import claimed_folder

    out = tmp_path / "exp"
    with claimed_folder(out, "experiment.json", {"epochs": 1}, "an experiment"):
        assert locks.holds(out)
    assert not locks.holds(out)
    other_holder(out / ".drgan.lock", fcntl.LOCK_EX)  # another process may take it now


# ---- drgan.locks

def test_asking_whether_a_shard_is_alone_leaves_its_folder_shared(folder, other_holder):
    """Whatever the answer, the folder's lock is shared again after the question: other shards
    may still join, and no exclusive holder can take it meanwhile."""
    from drgan import locks

    locks.hold(folder, "0/2")
    assert locks.alone(folder)
    other_holder(folder / ".drgan.lock", fcntl.LOCK_SH)  # a second shard joins
    other = other_holder(folder / ".drgan.lock", fcntl.LOCK_SH)
    assert not locks.alone(folder)
    fcntl.flock(other, fcntl.LOCK_UN)
    with pytest.raises(BlockingIOError):
        other_holder(folder / ".drgan.lock", fcntl.LOCK_EX)


def test_a_section_admits_one_holder_at_a_time(folder, other_holder):
    from drgan import locks

    locks.hold(folder, "0/2")
    with locks.section(folder):
        with pytest.raises(BlockingIOError):
            other_holder(folder / ".drgan.lock-section", fcntl.LOCK_EX)
    other_holder(folder / ".drgan.lock-section", fcntl.LOCK_EX)


def test_an_exclusive_hold_replaces_a_longer_pid_left_in_the_lock_file(folder):
    from drgan import locks

    folder.mkdir()
    (folder / ".drgan.lock").write_text("1234567890123\n")  # a pid left by an earlier holder
    locks.hold(folder)
    assert (folder / ".drgan.lock").read_text() == f"{os.getpid()}\n"


def test_a_folder_named_by_a_relative_path_is_known_as_held(tmp_path, monkeypatch):
    from drgan import locks

    monkeypatch.chdir(tmp_path)
    try:
        locks.hold("f")
        assert locks.holds("f") and locks.holds(tmp_path / "f") and locks.alone("f")
    finally:
        locks.release("f")
    assert not locks.holds("f")


# ---- drgan.checkpoint

def test_the_weights_hash_tells_apart_the_same_bytes_under_other_names_or_shapes():
    from drgan.checkpoint import weights_sha256

    def module(**tensors):
        m = torch.nn.Module()
        for name, t in tensors.items():
            m.register_buffer(name, t)
        return m

    same = weights_sha256(module(a=torch.zeros(2, 3)))
    assert same == weights_sha256(module(a=torch.zeros(2, 3)))
    assert same != weights_sha256(module(a=torch.zeros(3, 2)))
    assert same != weights_sha256(module(b=torch.zeros(2, 3)))


def test_load_generator_takes_g_without_ema_and_refuses_a_grader_run(tmp_path):
    from drgan.checkpoint import load_generator, load_tensors, save_module
    from drgan.config import preset
    from drgan.nn import DRGANGenerator
    from drgan.runs import write_run_config

    cfg = preset("tiny-64")
    run = tmp_path / "run"
    write_run_config(run, cfg, "local", {"trainer": "gan"})
    for seed, name in ((0, "G.safetensors"), (1, "G_ema.safetensors")):
        torch.manual_seed(seed)
        save_module(DRGANGenerator(cfg, "local"), run / name)
    for ema, name in ((False, "G.safetensors"), (True, "G_ema.safetensors")):
        loaded = load_generator(run, ema=ema).state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in load_tensors(run / name).items()), name
    write_run_config(tmp_path / "grader", cfg, "local", {"trainer": "grader"})
    with pytest.raises(ParameterError, match=r"grader: a grader run, not a gan run$"):
        load_generator(tmp_path / "grader")


# ---- drgan.training.state

def test_rng_states_round_trip_through_a_checkpoints_json_and_tensors(tmp_path):
    """Python's, numpy's and torch's generators continue, after a restore, exactly where they were
    saved, whatever was drawn in between."""
    from drgan.checkpoint import load_tensors, save_tensors
    from drgan.training.state import rng_state, set_rng_state

    cpu = torch.device("cpu")
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    plain, tensors = rng_state(cpu)
    plain = json.loads(json.dumps(plain))
    save_tensors(tensors, tmp_path / "rng.safetensors")

    def draws():
        return random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()

    expected = draws()
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(plain, load_tensors(tmp_path / "rng.safetensors"), cpu)
    assert draws() == expected


def test_recover_removes_the_checkpoint_folder_a_killed_writer_had_not_committed(tmp_path):
    from drgan.io import HOST, TEMP_MARK
    from drgan.training.state import recover_checkpoint

    run = tmp_path / "run"
    cut = run / f".checkpoint.next{TEMP_MARK}{dead_pid()}-1@{HOST}"
    cut.mkdir(parents=True)
    (cut / "G.safetensors").write_bytes(b"partial")
    (run / "state.json").write_text("{}")
    recover_checkpoint(run)
    assert [p.name for p in run.iterdir()] == ["state.json"]


def test_a_checkpoint_write_interrupted_midway_leaves_no_temp_folder(tmp_path):
    from drgan.training.state import write_checkpoint

    run = tmp_path / "run"
    run.mkdir()

    def write(folder):
        (folder / "G.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_checkpoint(run, write)
    assert list(run.iterdir()) == []


def _state_run(tmp_path, meta):
    from drgan.training.state import save_state

    run = tmp_path / "run"
    run.mkdir()
    save_state(run, meta, {"x": torch.zeros(2)})
    return run


def test_load_state_refuses_state_tensors_written_at_another_step(tmp_path):
    from drgan.checkpoint import save_tensors
    from drgan.training.state import load_state

    run = _state_run(tmp_path, {"step": 2})
    assert load_state(run, {"step": int})[0] == {"step": 2}
    save_tensors({"x": torch.ones(2)}, run / "state.safetensors", metadata={"step": "1"})
    with pytest.raises(DrganError, match=r"state.safetensors: written at step 1, but state.json is at step 2"):
        load_state(run, {"step": int})


def test_load_state_refuses_a_count_given_as_true_or_false(tmp_path):
    from drgan.training.state import load_state

    run = _state_run(tmp_path, {"step": 1, "epoch": True})
    with pytest.raises(DrganError, match=r"damaged training state \(missing or invalid: epoch\)"):
        load_state(run, {"step": int, "epoch": int})


def test_an_optimizer_state_missing_an_entry_is_one_error_naming_the_file(tmp_path):
    from drgan.training.state import optimizer_from_state, restoring

    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))])
    with pytest.raises(DrganError, match=r"run/state.json: damaged training state \(KeyError: 'param_groups'\)"):
        with restoring(tmp_path / "run"):
            optimizer_from_state(opt, "opt_G", {"state": {}}, {})
