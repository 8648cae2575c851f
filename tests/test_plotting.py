"""Plotting writes real PNG files and never touches pyplot's global state."""

import numpy as np
import pytest
import torch

import pushforward as pf
from pushforward import plotting
from pushforward.training import History

PNG = b"\x89PNG\r\n\x1a\n"


def test_image_grid_layout():
    images = torch.rand(5, 1, 4, 3)
    grid = plotting.image_grid(images, nrow=3, pad=1)
    assert grid.shape == (2 * 5 + 1, 3 * 4 + 1)
    np.testing.assert_allclose(grid[1:5, 1:4], images[0, 0].numpy())
    rgb = plotting.image_grid(torch.rand(4, 3, 2, 2))
    assert rgb.shape == (7, 7, 3)
    with pytest.raises(ValueError):
        plotting.image_grid(torch.rand(4, 2, 2))


def test_figures_are_pngs(tmp_path):
    history = History(train_nll=[2.0, 1.5], epoch_step=[10, 20], val_nll=[1.8, 1.6],
                      val_step=[10, 20], step_nll=list(np.linspace(3, 1.4, 20)),
                      best_step=20)
    paths = [
        plotting.plot_history(history, tmp_path / "loss.png"),
        plotting.plot_history(History(), tmp_path / "empty.png"),
        plotting.plot_samples(torch.randn(100, 2), torch.randn(100, 2), tmp_path / "s.png"),
        plotting.plot_samples(torch.randn(50, 5), torch.randn(50, 5), tmp_path / "s5.png"),
        plotting.plot_image_grid(torch.rand(9, 1, 8, 8), tmp_path / "g.png",
                                 data=torch.rand(9, 1, 8, 8)),
        plotting.plot_density(pf.Flow(pf.transforms.Affine(2), pf.StandardNormal(2)),
                              torch.randn(200, 2), tmp_path / "d.png", resolution=40),
    ]
    for path in paths:
        assert path.read_bytes().startswith(PNG)
    with pytest.raises(ValueError, match="2-D"):
        plotting.plot_density(None, torch.randn(10, 3), tmp_path / "x.png")
    source = open(plotting.__file__).read()
    assert "pyplot" not in source.replace("never through ``pyplot``", "")
