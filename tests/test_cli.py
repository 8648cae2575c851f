"""The ``pushforward`` command end to end: train, sample, eval, plot, datasets, errors, signals."""

import json
import math
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from processes import child_env

import pushforward as pf
from pushforward.cli import main
from pushforward.training import checkpoint as ckpt

PNG = b"\x89PNG\r\n\x1a\n"
SMALL = ["--option", "transforms=2", "--option", "hidden=[32,32]"]


def _cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "pushforward", *args], capture_output=True,
                          text=True, env=child_env(), timeout=300, **kwargs)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    threads = torch.get_num_threads()
    try:
        code = main(["train", "--dataset", "moons", "--steps", "200", "--out", str(out),
                     "--no-progress", "--seed", "1"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    return out


def test_train_writes_the_output_folder(trained, capsys):
    for name in ("model.safetensors", "config.json", "metrics.json", "loss.png",
                 "samples.png", "density.png"):
        assert (trained / name).is_file(), name
    for name in ("loss.png", "samples.png", "density.png"):
        data = (trained / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000
    metrics = json.loads((trained / "metrics.json").read_text())
    baseline = metrics["baseline_nll"]
    x = pf.data.load_dataset("moons", seed=1).test.double()
    assert baseline == pytest.approx(
        float((0.5 * x.pow(2).sum(1) + math.log(2 * math.pi)).mean()), rel=1e-6)
    assert metrics["test_nll"] < baseline - 0.8  # N(0, I) on moons: about 2.5 nats
    assert "test_bits_per_dim" not in metrics
    flow = pf.training.load(trained)
    assert flow.config["flow"] == "nsf"


def test_sample_eval_plot_from_the_checkpoint(trained, tmp_path, capsys):
    out = tmp_path / "s.npy"
    assert main(["sample", "--checkpoint", str(trained), "-n", "300", "--out", str(out)]) == 0
    samples = np.load(out)
    assert samples.shape == (300, 2) and np.isfinite(samples).all()
    # in the user's units: near the moons, not standardised
    assert abs(samples[:, 0].mean() - 0.5) < 0.3
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(trained)]) == 0
    printed = capsys.readouterr().out
    value = float(printed.split("NLL")[1].split()[0])
    metrics = json.loads((trained / "metrics.json").read_text())
    assert value == pytest.approx(metrics["test_nll"], abs=1e-4)
    assert main(["eval", "--checkpoint", str(trained), "--dataset", "circles"]) == 0
    other = float(capsys.readouterr().out.split("NLL")[1].split()[0])
    assert other > value + 1.0  # a moons model fits circles badly
    (trained / "density.png").unlink()
    assert main(["plot", "--checkpoint", str(trained)]) == 0
    assert (trained / "density.png").read_bytes().startswith(PNG)


def test_datasets_lists_everything(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    for name in ("moons", "8gaussians", "checkerboard", "digits", "fashion-mnist", "nsf"):
        assert name in out


@pytest.mark.parametrize("argv", [
    ["train", "--dataset", "nope"],
    ["train", "--flow", "nope", "--steps", "1"],
    ["train", "--bogus"],
    ["train", "--steps", "0"],
    ["train", "--steps", "5", "--epochs", "1"],
    ["train", "--dataset", "/no/such/file.csv"],
    ["eval", "--checkpoint", "/no/such/folder"],
    ["sample"],
    ["frobnicate"],
    [],
])
def test_errors_are_one_line(argv, capsys, tmp_path):
    code = main([*argv, "--out", str(tmp_path / "o")] if argv[:1] == ["train"] else argv)
    assert code != 0
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err, err


def test_tampered_checkpoint_refused_without_traceback(trained, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("model.safetensors", "config.json"):
        (bad / name).write_bytes((trained / name).read_bytes())
    data = bytearray((bad / "model.safetensors").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "model.safetensors").write_bytes(bytes(data))
    result = _cli("eval", "--checkpoint", str(bad))
    assert result.returncode != 0
    err = result.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "checksum" in err


def test_csv_run_in_user_units(tmp_path):
    csv = tmp_path / "data.csv"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 3)) @ np.diag([100.0, 1.0, 0.01]) + 50.0
    csv.write_text("# measurements\n" + "\n".join(",".join(f"{v:.6f}" for v in r) for r in x))
    out = tmp_path / "csv"
    assert main(["train", "--dataset", str(csv), "--flow", "maf", "--steps", "60",
                 "--out", str(out), "--no-progress", *SMALL]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_nll"] < metrics["baseline_nll"]
    assert not (out / "density.png").exists()
    assert main(["sample", "--checkpoint", str(out), "-n", "2000",
                 "--out", str(tmp_path / "c.npy")]) == 0
    samples = np.load(tmp_path / "c.npy")
    np.testing.assert_allclose(samples.mean(0), x.mean(0), atol=0.3 * x.std(0).max())


@pytest.mark.slow
def test_digits_run_reports_bits_per_dim(tmp_path):
    out = tmp_path / "digits"
    assert main(["train", "--dataset", "digits", "--flow", "maf", "--steps", "20",
                 "--out", str(out), "--no-progress", *SMALL]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    expected = (metrics["test_nll"] + 64 * math.log(17)) / (64 * math.log(2))
    assert metrics["test_bits_per_dim"] == pytest.approx(expected)
    assert (out / "samples.png").read_bytes().startswith(PNG)


def test_sphere_manifold_run(tmp_path):
    if "sphere" not in pf.flows.names():
        pytest.skip("no sphere preset registered")
    csv = tmp_path / "quakes.csv"
    rng = np.random.default_rng(0)
    rows = np.stack([rng.normal(30, 8, 300).clip(-89, 89), rng.normal(100, 15, 300)], 1)
    csv.write_text("lat,lon\n" + "\n".join(f"{a:.4f},{b:.4f}" for a, b in rows))
    out = tmp_path / "sphere"
    assert main(["train", "--dataset", str(csv), "--manifold", "sphere", "--steps", "40",
                 "--out", str(out), "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_nll"] < math.log(4 * math.pi)
    assert main(["sample", "--checkpoint", str(out), "-n", "50",
                 "--out", str(tmp_path / "s.npy")]) == 0
    latlon = np.load(tmp_path / "s.npy")
    assert latlon.shape == (50, 2) and (np.abs(latlon[:, 0]) <= 90).all()


def _wait_for(path, process, timeout=120):
    start = time.time()
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"train exited early: {process.communicate()}")
        if time.time() - start > timeout:
            process.kill()
            raise AssertionError("no checkpoint appeared")
        time.sleep(0.1)


def test_sigterm_saves_and_resume_finishes(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--dataset", "moons", "--flow", "maf", "--steps", "5000",
            "--checkpoint-every", "10", "--out", str(out), "--no-progress", *SMALL]
    process = subprocess.Popen([sys.executable, "-m", "pushforward", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=child_env())
    _wait_for(out / ckpt.STATE_FILE, process)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode in (0, 130), stderr
    assert "Traceback" not in stderr and "--resume" in stderr
    _, meta = ckpt.read_tensors(out / ckpt.STATE_FILE)
    done = meta["state"]["step"]
    assert 0 < done < 5000
    pf.training.load(out)  # what was saved is a loadable model
    result = _cli("train", "--resume", "--out", str(out), "--steps", str(done + 30),
                  "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stdout
    history = json.loads((out / "history.json").read_text())
    assert history["steps"] == done + 30
    assert json.loads((out / "metrics.json").read_text())["steps"] == done + 30


@pytest.mark.slow
def test_sigkill_and_resume_is_bit_identical(tmp_path):
    args = ["--dataset", "moons", "--flow", "maf", "--steps", "300", "--checkpoint-every",
            "20", "--no-progress", *SMALL]
    reference = tmp_path / "reference"
    assert _cli("train", *args, "--out", str(reference)).returncode == 0
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "pushforward", "train", *args,
                                "--out", str(killed)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=child_env())
    _wait_for(killed / ckpt.STATE_FILE, process)
    while process.poll() is None:
        _, meta = ckpt.read_tensors(killed / ckpt.STATE_FILE)
        if meta["state"]["step"] >= 60:
            process.kill()
            break
        time.sleep(0.05)
    process.wait()
    result = _cli("train", "--resume", "--out", str(killed))
    assert result.returncode == 0, result.stderr
    a, _ = ckpt.read_tensors(reference / ckpt.MODEL_FILE)
    b, _ = ckpt.read_tensors(killed / ckpt.MODEL_FILE)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key




def test_resume_keeps_the_run_settings(trained, tmp_path, capsys):
    assert main(["train", "--resume", "--out", str(trained), "--flow", "maf"]) == 1
    err = capsys.readouterr().err
    assert "differs from the run" in err and "\n" not in err.strip()
    assert main(["eval", "--checkpoint", str(trained), "--split", "all"]) == 0
    assert "20000 points" in capsys.readouterr().out
