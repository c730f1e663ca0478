import os
import signal

import pytest
import torch

# Without a GPU the Triton kernels run on CPU tensors in Triton's interpreter (set before import).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Python leaves Ctrl-C ignored when a non-interactive shell starts it in the background (`pytest &`);
# the interrupt tests send themselves SIGINT and need its usual handler.
signal.signal(signal.SIGINT, signal.default_int_handler)

# Two cores: keep intra-op threads bounded so parallel test processes do not thrash.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def one_thread():
    """One intra-op thread: on two shared cores, spinning threads fight the other test processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


_HOLD = "import sys; from drgan import locks; locks.hold(sys.argv[1], sys.argv[2] or None); print('held', flush=True); sys.stdin.read()"


@pytest.fixture
def lock_holder():
    """hold(folder, shard=None) -> pid of another process that holds the folder's lock until the test ends."""
    import subprocess
    import sys

    children = []

    def hold(folder, shard=None) -> int:
        child = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder), shard or ""],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        children.append(child)
        assert child.stdout.readline() == "held\n"
        return child.pid

    yield hold
    for child in children:
        child.stdin.close()
        child.wait()


# drgan.locks: another process's lock is simulated by a second open file description (flock locks
# belong to it, so this process conflicts with itself through it).
@pytest.fixture
def other_holder():
    import fcntl
    import os

    fds = []

    def take(path, mode, pid_text=None):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        fds.append(fd)
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
        if pid_text is not None:
            os.ftruncate(fd, 0)
            os.pwrite(fd, pid_text.encode(), 0)
        return fd

    yield take
    for fd in fds:
        os.close(fd)


@pytest.fixture
def folder(tmp_path):
    from drgan import locks

    yield tmp_path / "f"
    locks.release(tmp_path / "f")


@pytest.fixture
def drgan(capsys):
    """`drgan ARGS` in-process as the console script runs it: (exit code, stdout, stderr)."""
    from drgan.cli import cli
    from drgan.cli.common import run_command

    def call(*args) -> tuple[int, str, str]:
        rc = run_command(cli, args=[str(a) for a in args], prog_name="drgan")
        out, err = capsys.readouterr()
        return rc, out, err

    return call
