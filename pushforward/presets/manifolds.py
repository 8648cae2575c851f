"""Presets on manifolds: ``"sphere"``, a deep chain of normalised affine maps on ``𝕊ⁿ⁻¹``.

The CLI's ``--manifold sphere`` builds this preset (``features=3`` for latitude/longitude data).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pushforward._registry import register
from pushforward.core import Flow
from pushforward.manifolds.sphere_bases import (
    UniformSphere,
    VonMisesFisher,
    VonMisesFisherMixture,
)
from pushforward.manifolds.spherical import NormalizedAffine

__all__ = ["SphericalFlow"]

_BASES = ("uniform", "vmf", "mixture")


@register("sphere", accepts=("sphere", "context"))
def SphericalFlow(
    features: int = 3,
    context: int = 0,
    transforms: int = 8,
    base: str = "uniform",
    components: int = 16,
    concentration: float = 10.0,
    hidden: Sequence[int] = (64, 64),
    init_scale: float = 0.1,
    seed: int = 0,
) -> Flow:
    """A flow on the sphere ``𝕊^{features−1}``: a chain of ``NormalizedAffine`` layers.

    Each layer is ``x = (Mz + c)/‖Mz + c‖`` (``‖M⁻¹c‖ < 1``, ``M`` invertible by
    parametrisation); with ``context > 0`` every layer's parameters get per-sample offsets from a
    context network. Layers start near the identity (``M = I + init_scale·N(0, 1)`` drawn from
    ``seed``, ``c = 0``) so they differ from one another. Densities are with respect to the
    sphere's surface measure (log 4π for the uniform on S²).

    Args:
        features: ambient dimension ``n`` (3 for the 2-sphere).
        context: context width (0: unconditional).
        transforms: number of layers.
        base: ``"uniform"``, ``"vmf"`` (learnable von Mises–Fisher) or ``"mixture"`` (learnable
            mixture of ``components`` vMFs, a multi-modal base).
        components: mixture components (``base="mixture"``).
        concentration: initial ``κ`` of the vMF base or of every mixture component.
        hidden: hidden widths of the context networks.
        init_scale: spread of the initial matrices around the identity.
        seed: seed of the initial matrices and mixture means.

    Returns:
        A ``Flow`` on the sphere whose base is ``UniformSphere``, ``VonMisesFisher`` or
        ``VonMisesFisherMixture`` (``base=``).

    Example:
        >>> import torch
        >>> flow = SphericalFlow(3, transforms=2)
        >>> x = flow.sample(4)
        >>> bool(((x.norm(dim=-1) - 1).abs() < 1e-5).all()), flow.log_prob(x).shape
        (True, torch.Size([4]))
    """
    n = int(features)
    if n < 2:
        raise ValueError(f"sphere preset: features must be >= 2 (ambient dimension), got {n}")
    if int(transforms) < 1:
        raise ValueError(f"sphere preset: transforms must be >= 1, got {transforms}")
    if base not in _BASES:
        raise ValueError(f"sphere preset: base must be one of {_BASES}, got {base!r}")
    generator = torch.Generator().manual_seed(int(seed))
    dtype = torch.get_default_dtype()
    layers = []
    for _ in range(int(transforms)):
        noise = torch.randn(n, n, generator=generator, dtype=torch.float64)
        matrix = (torch.eye(n, dtype=torch.float64) + float(init_scale) * noise).to(dtype)
        layers.append(NormalizedAffine(n, matrix=matrix, context_features=int(context),
                                       hidden=tuple(hidden)))
    if base == "uniform":
        prior: torch.nn.Module = UniformSphere(n)
    elif base == "vmf":
        prior = VonMisesFisher(n, concentration=torch.tensor(float(concentration), dtype=dtype))
    else:
        prior = VonMisesFisherMixture(n, components=int(components),
                                      concentration=float(concentration), seed=int(seed))
        prior = prior.to(dtype)
    return Flow(layers, prior)
