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

__all__ = ["SCALES", "kernel_log_density", "scale_log_likelihoods", "cross_validated_scale",
           "seeded_permutation"]

#: the candidate scales ``α = 0.25 · 2^{k/4}``, ``k = 0 … 12``
SCALES = tuple(0.25 * 2 ** (k / 4) for k in range(13))
#: the least bandwidth, in radians (repeated locations have ``d₂ = 0``)
FLOOR = 1e-3


def seeded_permutation(n: int) -> Tensor:
    """A permutation of ``0 … n−1`` from a generator of its own (seed 0), on the CPU.

    The same for the same ``n``, and torch's global random state is left alone.
    """
    return torch.randperm(n, generator=torch.Generator().manual_seed(0))


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
    return torch.cat([_mixture_log_density(chunk @ centres.T, kappa, log_c)
                      for chunk in x.split(1024)])


def _mixture_log_density(cosines: Tensor, kappa: Tensor, log_c: Tensor) -> Tensor:
    """``log (1/N) Σᵢ C(κᵢ) exp(κᵢ cᵢ)`` per row of the cosines ``cᵢ = xᵀxᵢ``, ``(batch, N)``.

    ``log_c``: ``log C(κᵢ)``, the kernels' log normalisers.
    """
    return torch.logsumexp(kappa * cosines + log_c, dim=1) - math.log(cosines.shape[1])


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
    order = seeded_permutation(x.shape[0]).to(x.device)
    total = torch.zeros(len(scales), dtype=torch.float64, device=x.device)
    for held in order.chunk(min(folds, x.shape[0])):
        kept = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        kept[held] = False
        centres = x[kept]
        width = neighbour_distances(centres, 2)[1].clamp(min=floor)
        kappas = [1 / (scale * width) ** 2 for scale in scales]
        log_cs = [vmf_log_normalizer(x.shape[1], kappa) for kappa in kappas]
        for chunk in x[held].split(1024):
            cosines = chunk @ centres.T  # once per chunk, for every scale
            for i, (kappa, log_c) in enumerate(zip(kappas, log_cs)):
                total[i] += _mixture_log_density(cosines, kappa, log_c).sum()
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
