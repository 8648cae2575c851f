"""The scale of flow matching's data smoothing on the sphere, chosen by cross-validation.

``GeodesicPath.smooth`` moves each training point ``xᵢ`` by a tangent Gaussian of width
``α · d₂(xᵢ)`` (``d₂``: the distance to its second-nearest other point), so the data the field
regresses on are a draw from an adaptive kernel estimate of the data's density. Its spherical
counterpart with von Mises–Fisher kernels,

    p_α(x) = (1/N) Σᵢ C(κᵢ) exp(κᵢ xᵀxᵢ),   κᵢ = 1/(α · max(d₂(xᵢ), h))²,

is scored here by ``K``-fold cross-validation over the training set (each fold's held-out
points under the estimate of the other folds, its ``d₂`` measured there) and the scale ``α``
of the grid ``0.25 · 2^{k/4}`` (0.25 … 2) with the highest held-out log-likelihood is the one
flow matching uses. The floor ``h`` (0.001 rad) bounds the density at exactly repeated
locations. The preferred ``α`` differs between data sets (Earth data, 10 folds: volcano
0.35–0.42, fire 0.42–0.5, earthquake 0.84, flood 1.0), and the flows follow it (Earth guide).

The folds come from a generator of their own (seed 0): the choice is a function of the data
and leaves torch's global random state alone.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pushforward.manifolds._bessel import vmf_log_normalizer
from pushforward.manifolds.neighbours import neighbour_distances

__all__ = ["SCALES", "kernel_log_density", "scale_log_likelihoods", "cross_validated_scale"]

#: the candidate scales ``α = 0.25 · 2^{k/4}``, ``k = 0 … 12``
SCALES = tuple(0.25 * 2 ** (k / 4) for k in range(13))
#: the least bandwidth, in radians (repeated locations have ``d₂ = 0``)
FLOOR = 1e-3


def kernel_log_density(centres: Tensor, kappa: Tensor | float, x: Tensor) -> Tensor:
    """``log p(x) = log (1/N) Σᵢ C(κᵢ) exp(κᵢ xᵀxᵢ)``, ``(batch,)``, in float64.

    Args:
        centres: the kernels' means ``xᵢ``, ``(N, n)`` on the sphere.
        kappa: their concentrations, one or ``(N,)``.
        x: the points scored, ``(batch, n)``.
    """
    centres, x = centres.double(), x.double()
    kappa = torch.as_tensor(kappa, dtype=torch.float64, device=centres.device)
    log_c = vmf_log_normalizer(centres.shape[1], kappa)
    parts = [torch.logsumexp(kappa * (chunk @ centres.T) + log_c, dim=1)
             for chunk in x.split(1024)]
    return torch.cat(parts) - math.log(centres.shape[0])


def scale_log_likelihoods(x: Tensor, scales: tuple[float, ...] = SCALES, folds: int = 10,
                          floor: float = FLOOR) -> Tensor:
    """The mean held-out ``log p_α`` of the points ``x`` for each ``α`` of ``scales``.

    Args:
        x: the training set ``(N, n)`` on the sphere, ``N ≥ 2``.
        scales: the candidate ``α``.
        folds: ``K``, the number of cross-validation folds (at most ``N``: leave-one-out).
        floor: the least bandwidth ``h``.

    Returns:
        ``(len(scales),)`` float64: ``(1/N) Σ_folds Σ_held-out log p_α``.

    Raises:
        ValueError: fewer than 2 points or folds, or a bad shape.
    """
    if x.dim() != 2 or x.shape[0] < 2 or folds < 2:
        raise ValueError(f"scale_log_likelihoods: need (N, n) points with N >= 2 and folds "
                         f">= 2, got shape {tuple(x.shape)} and folds={folds}")
    x = x.detach().double()
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(x.shape[0], generator=generator).to(x.device)
    total = torch.zeros(len(scales), dtype=torch.float64, device=x.device)
    for held in order.chunk(min(folds, x.shape[0])):
        kept = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        kept[held] = False
        centres = x[kept]
        width = neighbour_distances(centres, 2)[1].clamp(min=floor)
        for i, scale in enumerate(scales):
            total[i] += kernel_log_density(centres, 1 / (scale * width) ** 2, x[held]).sum()
    return total / x.shape[0]


def cross_validated_scale(x: Tensor, scales: tuple[float, ...] = SCALES, folds: int = 10,
                          floor: float = FLOOR) -> float:
    """``argmax_α`` of the ``K``-fold held-out log-likelihood (``scale_log_likelihoods``).

    A single point has ``d₂ = 0`` and is not moved at any scale: the grid's middle then.

    Example:
        >>> import torch
        >>> x = torch.nn.functional.normalize(torch.randn(400, 3), dim=-1)  # uniform data
        >>> cross_validated_scale(x) >= 1  # the widest kernels fit a flat density best
        True
    """
    if x.shape[0] < 2:
        return scales[len(scales) // 2]
    return scales[int(scale_log_likelihoods(x, scales, folds, floor).argmax())]
