"""Faults during training: SIGKILL at a random moment, and SIGKILL inside a checkpoint write.

A child process trains a small MAF with ``pf.fit`` and checkpoints; the parent kills it with
SIGKILL (no handler can run), then resumes in-process and compares with an uninterrupted run of
the same seed: the final parameters and the whole per-step loss history must be bit-identical,
i.e. nothing was lost but the steps after the last checkpoint, which are recomputed exactly.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import pushforward as pf
from pushforward.training import checkpoint as ckpt

ROOT = Path(__file__).parents[1]
STEPS = 120
KWARGS = dict(steps=STEPS, batch_size=64, lr=5e-3, seed=3, progress=False, checkpoint_every=7)

CHILD = textwrap.dedent(
    """
    import os, sys, time
    import torch
    torch.set_num_threads(1)
    import pushforward as pf
    from pushforward.training import checkpoint as ckpt

    folder, block_at, slow = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    real_replace, real_fsync = os.replace, os.fsync
    calls = [0]

    def replace(src, dst):  # the rename that publishes a checkpoint file
        calls[0] += 1
        if calls[0] == block_at:  # stop inside this write: the parent kills us here
            open(os.path.join(os.path.dirname(folder), "blocked"), "w").close()
            time.sleep(600)
        time.sleep(slow)
        return real_replace(src, dst)

    def fsync(fd):  # widen the window between the temp file's data and its rename
        time.sleep(slow)
        return real_fsync(fd)

    ckpt.os.replace, ckpt.os.fsync = replace, fsync
    open(os.path.join(os.path.dirname(folder), "started"), "w").close()
    x = torch.randn(640, 2, generator=torch.Generator().manual_seed(0)) * torch.tensor([1., 3.])
    torch.manual_seed(0)
    flow = pf.flows.build("maf", features=2, transforms=2, hidden=[16])
    pf.fit(flow, x, checkpoint_dir=folder, **KWARGS)
    """
).replace("**KWARGS", ", ".join(f"{k}={v!r}" for k, v in KWARGS.items()) + "")


def _data():
    return torch.randn(640, 2, generator=torch.Generator().manual_seed(0)) * torch.tensor([1., 3.])


def _flow(seed=0):
    torch.manual_seed(seed)
    return pf.flows.build("maf", features=2, transforms=2, hidden=[16])


@pytest.fixture(scope="module")
def reference():
    torch.set_num_threads(1)
    flow = _flow()
    start = time.perf_counter()
    history = pf.fit(flow, _data(), **KWARGS)
    return flow, history, time.perf_counter() - start


def _spawn(folder: Path, block_at: int = 0, slow: float = 0.0) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(folder), str(block_at), str(slow)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


def _wait(path: Path, process: subprocess.Popen, timeout: float = 180) -> None:
    start = time.time()
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"child exited early: {process.stderr.read().decode()}")
        if time.time() - start > timeout:
            process.kill()
            raise AssertionError(f"{path.name} never appeared")
        time.sleep(0.01)


def _resume_and_compare(folder: Path, reference) -> int:
    """Resume from ``folder``; assert the end equals the uninterrupted run; return the step
    the checkpoint held (0: none was written before the kill)."""
    ref_flow, ref_history, _ = reference
    done = 0
    if (folder / ckpt.STATE_FILE).exists():
        _, meta = ckpt.read_tensors(folder / ckpt.STATE_FILE)  # loadable after the kill
        done = meta["state"]["step"]
        assert done % KWARGS["checkpoint_every"] == 0 or done == STEPS
    # Other RNG state and other initial weights: all must be restored from the checkpoint
    # (with no checkpoint yet, the run restarts from scratch, from the same initial model).
    flow = _flow(seed=5 if done else 0)
    torch.manual_seed(987)
    history = pf.fit(flow, _data(), checkpoint_dir=folder, resume=True, **KWARGS)
    assert history.step_nll == ref_history.step_nll  # nothing lost, nothing repeated twice
    for (name, a), b in zip(ref_flow.state_dict().items(), flow.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    return done


def test_sigkill_inside_a_checkpoint_write_keeps_the_previous_one(tmp_path, reference):
    # Block on a random rename of the second or third checkpoint (each checkpoint renames
    # training_state.safetensors, model.safetensors and config.json), then SIGKILL.
    block_at = random.Random().randint(4, 9)
    folder = tmp_path / "run"
    process = _spawn(folder, block_at=block_at)
    _wait(tmp_path / "blocked", process)
    before = {p.name: p.read_bytes() for p in folder.iterdir() if not p.name.endswith(".tmp")}
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    after = {p.name: p.read_bytes() for p in folder.iterdir() if not p.name.endswith(".tmp")}
    assert after == before, f"a published file changed during the killed write {block_at}"
    pf.load(folder)  # the previous model is loadable
    ckpt.read_tensors(folder / ckpt.STATE_FILE)
    assert _resume_and_compare(folder, reference) > 0


@pytest.mark.slow
@pytest.mark.parametrize("attempt", range(8))
def test_sigkill_at_a_random_moment_resumes_bit_identically(tmp_path, reference, attempt):
    # The moment is uniform over the child's run (its import time included); slow fsync and
    # rename widen the checkpoint writes so a fair share of the kills lands inside one.
    rng = random.Random()
    seed = rng.randrange(2**32)
    delay = random.Random(seed).uniform(0.0, 1.5 * reference[2] + 0.3)
    folder = tmp_path / "run"
    process = _spawn(folder, slow=0.01)
    _wait(tmp_path / "started", process)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    done = _resume_and_compare(folder, reference)
    print(f"kill seed {seed}: after {delay:.2f}s, checkpoint at step {done}")
