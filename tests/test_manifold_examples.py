"""Smoke tests of the manifold examples in their ``--quick`` modes (seconds each)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EARTH = ROOT.parent / "shared" / "data" / "earth"


def _run(args, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.skipif(not (EARTH / "volerup.csv").is_file(), reason="Earth data not present")
def test_earth_example_quick(tmp_path):
    out = tmp_path / "earth"
    result = _run([str(ROOT / "examples" / "earth.py"), "--quick", "--out", str(out),
                   "--data", str(EARTH)], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / "earth_results.json").read_text())
    nll = record["results"]["volcano"]["mean"]
    assert nll < record["uniform"]  # even 30 flow-matching steps beat the uniform density
    assert (out / "earth_volcano.png").stat().st_size > 1000


@pytest.mark.skipif(not (EARTH / "volerup.csv").is_file(), reason="Earth data not present")
def test_earth_example_options_reach_the_run(tmp_path):
    out = tmp_path / "earth"
    result = _run([str(ROOT / "examples" / "earth.py"), "--quick", "--out", str(out),
                   "--data", str(EARTH), "--option", "frequencies=2", "--batch-size", "64",
                   "--lr", "0.01", "--pairs", "1"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads((out / "earth" / "volcano.json").read_text())["runs"][0]
    assert run["options"] == {"hidden": [32, 32], "frequencies": 2}
    assert run["training"] == {"batch_size": 64, "lr": 0.01, "pairs": 1}
    bad = _run([str(ROOT / "examples" / "earth.py"), "--quick", "--out", str(out),
                "--data", str(EARTH), "--option", "frequencies"], tmp_path)
    assert bad.returncode == 2 and "KEY=VALUE" in bad.stderr


def test_calibration_example_quick(tmp_path):
    out = tmp_path / "calibration.json"
    result = _run([str(ROOT / "examples" / "calibration.py"), "--quick", "--out", str(out)],
                  tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(out.read_text())
    table = record["GaussianNB"]  # badly overconfident: every calibration map must help
    before = table["uncalibrated"]["log_loss"]
    assert table["temperature scaling"]["log_loss"] < before
    assert table["GeneralizedCalibration (disc.)"]["log_loss"] < before
    generative = record["LogisticRegression"]["Calibration (gen.)"]
    assert math.isfinite(generative["log_loss"]) and generative["accuracy"] > 0.8
