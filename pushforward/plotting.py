"""Figures as PNG files: training curves, samples beside data, 2-D density heat maps, image grids.

The only module that imports matplotlib, and only when a function is called. It draws on
``matplotlib.figure.Figure`` objects directly (the Agg canvas), never through ``pyplot``, so it
neither needs a display nor changes the backend of the calling program.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pushforward import _validation as _v

__all__ = [
    "plot_history",
    "plot_samples",
    "plot_density",
    "plot_sphere_density",
    "plot_image_grid",
    "image_grid",
]


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _numpy(x: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def plot_history(history: Any, path: str | os.PathLike, title: str = "training") -> Path:
    """Training curves: per-step NLL (with a moving average), per-epoch train and val NLL."""
    fig = _figure(7, 4)
    ax = fig.add_subplot()
    steps = np.arange(1, len(history.step_nll) + 1)
    if len(steps):
        nll = np.asarray(history.step_nll, dtype=np.float64)
        ax.plot(steps, nll, color="tab:blue", alpha=0.25, lw=0.8, label="train (per step)")
        window = max(1, len(nll) // 50)
        if window > 1:
            smooth = np.convolve(nll, np.ones(window) / window, mode="valid")
            ax.plot(steps[window - 1:], smooth, color="tab:blue", lw=1.5,
                    label=f"train ({window}-step mean)")
    if history.train_nll and len(history.train_nll) > 1:
        ax.plot(history.epoch_step, history.train_nll, "o-", color="tab:green", ms=3,
                label="train (epoch mean)")
    if history.val_nll:
        ax.plot(history.val_step, history.val_nll, "s-", color="tab:orange", ms=3,
                label="validation")
    if history.best_step is not None:
        ax.axvline(history.best_step, color="tab:orange", ls=":", lw=1)
    if len(steps):
        low = np.nanpercentile(history.step_nll, 1)
        high = np.nanpercentile(history.step_nll[len(history.step_nll) // 10:] or
                                history.step_nll, 99)
        if history.val_nll:
            low, high = min(low, min(history.val_nll)), max(high, max(history.val_nll))
        pad = 0.1 * (high - low + 1e-9)
        ax.set_ylim(low - pad, high + 3 * pad)
    ax.set_xlabel("step")
    ax.set_ylabel("negative log-likelihood (nats)")
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _limits(data: np.ndarray, margin: float = 0.1) -> tuple[tuple[float, float], ...]:
    low = np.percentile(data, 0.5, axis=0)
    high = np.percentile(data, 99.5, axis=0)
    pad = margin * (high - low + 1e-9)
    return tuple((float(lo - p), float(hi + p)) for lo, hi, p in zip(low, high, pad))


def plot_samples(data: Tensor | np.ndarray, samples: Tensor | np.ndarray,
                 path: str | os.PathLike, labels: tuple[str, str] = ("x1", "x2"),
                 title: str = "") -> Path:
    """Data beside samples (the first two columns), on the same axes limits."""
    data, samples = _numpy(data), _numpy(samples)
    data = data.reshape(len(data), -1)[:, :2]
    samples = samples.reshape(len(samples), -1)[:, :2]
    if data.shape[1] < 2:
        data = np.concatenate([data, np.zeros_like(data)], axis=1)
        samples = np.concatenate([samples, np.zeros_like(samples)], axis=1)
    xlim, ylim = _limits(data)
    fig = _figure(9, 4.5)
    for i, (points, name) in enumerate(((data, "data"), (samples, "samples"))):
        ax = fig.add_subplot(1, 2, i + 1)
        ax.scatter(points[:, 0], points[:, 1], s=2, alpha=0.4,
                   color="tab:blue" if i == 0 else "tab:red", rasterized=True)
        ax.set_xlim(xlim)
        ax.set_ylim(ylim)
        ax.set_title(f"{name} ({len(points)})")
        ax.set_xlabel(labels[0])
        ax.set_ylabel(labels[1])
        ax.set_aspect("equal" if _similar(xlim, ylim) else "auto")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _similar(a: tuple[float, float], b: tuple[float, float]) -> bool:
    ra, rb = a[1] - a[0], b[1] - b[0]
    return 0.2 < ra / rb < 5


@torch.no_grad()
def plot_density(flow: Any, data: Tensor | np.ndarray, path: str | os.PathLike,
                 resolution: int = 200, title: str = "learned density") -> Path:
    """Heat map of ``exp(flow.log_prob)`` on a grid around 2-D ``data`` (data drawn on top)."""
    data = _numpy(data)
    if data.ndim != 2 or data.shape[1] != 2:
        raise ValueError(f"plot_density needs 2-D data (N, 2), got shape {data.shape}")
    xlim, ylim = _limits(data, 0.15)
    xs = np.linspace(*xlim, resolution)
    ys = np.linspace(*ylim, resolution)
    grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    dtype, device = _v.dtype_of(flow), _v.device_of(flow)
    log_p = []
    # Validation off: grid points outside a bounded flow's box (``--bounds``) get a density of
    # about 0 (the sigmoid's inverse clamps them to the edge) instead of raising.
    with _v.validation(False):
        for chunk in np.array_split(grid, max(1, len(grid) // 8192)):
            x = torch.as_tensor(chunk, dtype=dtype, device=device)
            log_p.append(flow.log_prob(x).double().cpu().numpy())
    density = np.exp(np.concatenate(log_p)).reshape(resolution, resolution)
    density = np.where(np.isfinite(density), density, 0.0)
    fig = _figure(9, 4.5)
    ax = fig.add_subplot(1, 2, 1)
    ax.scatter(data[:, 0], data[:, 1], s=2, alpha=0.4, rasterized=True)
    ax.set_xlim(xlim)
    ax.set_ylim(ylim)
    ax.set_title(f"data ({len(data)})")
    ax = fig.add_subplot(1, 2, 2)
    image = ax.imshow(density, origin="lower", extent=(*xlim, *ylim), aspect="auto",
                      cmap="viridis")
    fig.colorbar(image, ax=ax, shrink=0.8, label="p(x)")
    ax.set_title(title)
    return _save(fig, path)


@torch.no_grad()
def plot_sphere_density(flow: Any, latlon: Tensor | np.ndarray, path: str | os.PathLike,
                        resolution: int = 180, title: str = "learned density on S²") -> Path:
    """Equirectangular map of a flow on S² (density w.r.t. area), with the data on top.

    Args:
        flow: a flow on unit vectors in R³.
        latlon: the data as latitude, longitude in degrees ``(N, 2)``.
        path: the PNG file to write.
        resolution: grid cells along the longitude (half as many along the latitude).
        title: the figure's title.

    Returns:
        The path written.
    """
    from pushforward.data.tabular import latlon_to_unit

    latlon = _numpy(latlon)
    lat = np.linspace(-89.5, 89.5, resolution // 2)
    lon = np.linspace(-179.5, 179.5, resolution)
    grid = np.stack(np.meshgrid(lat, lon, indexing="ij"), axis=-1).reshape(-1, 2)
    x = torch.as_tensor(latlon_to_unit(grid), dtype=_v.dtype_of(flow)).to(_v.device_of(flow))
    x = x / x.norm(dim=1, keepdim=True)
    log_p = torch.cat([flow.log_prob(chunk) for chunk in x.split(8192)]).double().cpu().numpy()
    density = np.exp(log_p).reshape(len(lat), len(lon))
    density = np.where(np.isfinite(density), density, 0.0)
    fig = _figure(9, 4.8)
    ax = fig.add_subplot()
    image = ax.imshow(density, origin="lower", extent=(-180, 180, -90, 90), cmap="viridis",
                      aspect="auto")
    ax.scatter(latlon[:, 1], latlon[:, 0], s=2, color="white", alpha=0.5, rasterized=True)
    fig.colorbar(image, ax=ax, shrink=0.8, label="p(x) per unit area")
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    ax.set_title(title)
    return _save(fig, path)


def image_grid(images: Tensor | np.ndarray, nrow: int | None = None, pad: int = 1) -> np.ndarray:
    """Tile images ``(N, C, H, W)`` (values in [0, 1]) into one array.

    The result is ``(H', W')`` (one channel) or ``(H', W', 3)``.
    """
    images = np.clip(_numpy(images), 0.0, 1.0)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {images.shape}")
    n, c, h, w = images.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(n))))
    ncol = int(math.ceil(n / nrow))
    grid = np.ones((c, ncol * (h + pad) + pad, nrow * (w + pad) + pad))
    for i in range(n):
        r, q = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[:, top:top + h, left:left + w] = images[i]
    return grid[0] if c == 1 else np.moveaxis(grid[:3], 0, -1)


def plot_image_grid(samples: Tensor | np.ndarray, path: str | os.PathLike,
                    data: Tensor | np.ndarray | None = None, nrow: int | None = None,
                    title: str = "") -> Path:
    """A grid of images in [0, 1] (with a grid of ``data`` beside it if given)."""
    panels = [("samples", samples)] if data is None else [("data", data), ("samples", samples)]
    fig = _figure(4.5 * len(panels), 4.8)
    for i, (name, images) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        grid = image_grid(images, nrow)
        ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, vmin=0, vmax=1,
                  interpolation="nearest")
        ax.set_title(name)
        ax.axis("off")
    if title:
        fig.suptitle(title)
    return _save(fig, path)
