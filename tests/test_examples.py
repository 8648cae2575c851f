"""Smoke tests of the application examples: each runs end to end with its ``--quick`` budget."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_images_quick(tmp_path):
    results = _example("images").main(["--quick", "--out", str(tmp_path)])
    assert [r["flow"] for r in results] == ["glow", "realnvp"]
    for r in results:
        assert math.isfinite(r["test_bits_per_dim"]) and 0 < r["test_bits_per_dim"] < 10
        folder = tmp_path / f"digits-{r['flow']}"
        assert (folder / "samples.png").stat().st_size > 1000
        assert "Invertibility report" in (folder / "invertibility.txt").read_text()
        assert (folder / "config.json").is_file()  # saved with pushforward.training.save


def test_point_clouds_quick(tmp_path):
    results = _example("point_clouds").main(["--quick", "--out", str(tmp_path)])
    assert set(results["shapes"]) == set(_example("point_clouds").SHAPES)
    for r in results["shapes"].values():
        assert math.isfinite(r["test_nll"]) and r["chamfer_samples_vs_test"] > 0
    assert (tmp_path / "point_clouds.png").stat().st_size > 1000
    assert json.loads((tmp_path / "metrics.json").read_text()) == results


def test_point_cloud_shapes_are_what_they_claim():
    module = _example("point_clouds")
    torus = torch.from_numpy(module.make_shape("torus", 2000, 0)).double()
    ring_distance = (torus[:, :2].norm(dim=1) - 1.3).hypot(torus[:, 2])
    assert float(ring_distance.max()) <= 0.45 + 1e-6  # inside the tube of radius 0.45
    with pytest.raises(ValueError, match="unknown shape"):
        module.make_shape("cube", 10, 0)


def test_anomaly_quick(tmp_path):
    results = _example("anomaly").main(["--quick", "--out", str(tmp_path)])
    cancer = results["breast_cancer"]
    assert set(cancer["auroc"]) == {"MAF NLL", "MAF typicality", "Gaussian NLL (baseline)"}
    assert all(0 <= v <= 1 for v in cancer["auroc"].values())
    images = results["fashion_vs_mnist"]
    if images is not None:  # only where the Fashion-MNIST and MNIST files are installed
        assert set(images["auroc"]) == {"NLL (−log p)", "typicality |NLL − Ĥ|",
                                        "NLL − zlib complexity"}
        assert (tmp_path / "fashion_vs_mnist_nll.png").is_file()
