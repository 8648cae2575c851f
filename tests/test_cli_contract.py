"""CLI papercuts of issue 14: resuming from nothing is an error; ``sample`` keeps the dtype."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from processes import child_env

from pushforward.cli import main


def _main(*args: str) -> int:
    threads = torch.get_num_threads()
    try:
        return main(list(args))
    finally:
        torch.set_num_threads(threads)


def test_resume_from_an_empty_folder_is_an_error_naming_it(tmp_path, capsys):
    out = tmp_path / "empty-run"
    out.mkdir()
    code = _main("train", "--resume", "--out", str(out), "--steps", "5", "--no-progress")
    err = capsys.readouterr().err
    assert code != 0
    assert str(out) in err and "resume" in err and "Traceback" not in err
    assert not any(out.iterdir()), "a fresh run was started anyway"


def test_resume_from_a_missing_folder_exits_non_zero(tmp_path):
    import subprocess

    out = tmp_path / "no-such-run"
    result = subprocess.run(
        [sys.executable, "-m", "pushforward", "train", "--resume", "--out", str(out),
         "--steps", "5", "--no-progress"],
        capture_output=True, text=True, env=child_env(), timeout=300,
    )
    assert result.returncode != 0
    assert str(out) in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sample_keeps_the_model_dtype(tmp_path, dtype):
    out = tmp_path / "run"
    assert _main("train", "--dataset", "moons", "--steps", "5", "--out", str(out),
                 "--no-progress", "--dtype", dtype) == 0
    samples = tmp_path / "s.npy"
    assert _main("sample", "--checkpoint", str(out), "-n", "7", "--out", str(samples)) == 0
    array = np.load(samples)
    assert array.shape == (7, 2)
    assert array.dtype == np.dtype(dtype)
