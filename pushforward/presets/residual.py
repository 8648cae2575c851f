"""Residual presets, ``x = z + g(z)`` layer by layer: Planar, Radial, Sylvester and ResidualFlow.

Planar, radial and Sylvester layers are contractive-free residual maps with a closed-form ladj
and a numerical inverse (the density direction); residual flows put the residual on the
normalizing side (one pass for the density, fixed-point iteration to sample).
"""

from __future__ import annotations

from collections.abc import Sequence

from pushforward._registry import register
from pushforward._validation import check_int
from pushforward.core import Flow, Transform
from pushforward.distributions import StandardNormal
from pushforward.presets._common import dimension, vector_flow
from pushforward.transforms import planar as _planar
from pushforward.transforms import residual as _residual
from pushforward.transforms import sylvester as _sylvester
from pushforward.transforms.elementwise import Affine
from pushforward.transforms.normalization import ActNorm

__all__ = ["Planar", "Radial", "Sylvester", "ResidualFlow"]


@register("planar", accepts=("vectors", "images", "context"))
def Planar(
    features: int | None = None,
    context: int = 0,
    *,
    shape: Sequence[int] | None = None,
    transforms: int = 16,
    hidden: Sequence[int] = (32,),
    activation: str = "tanh",
) -> Flow:
    """A stack of planar layers and a final elementwise affine map (Rezende & Mohamed, 2015).

    ``x = A(f_K ∘ … ∘ f_1(z))``, ``f_k`` planar, ``A`` elementwise affine. The density needs
    the numerical inverse of every planar layer (bracketed Newton, to round-off).

    Args:
        features: the dimension (or give ``shape``).
        context: context width; each layer's ``(u, w, b)`` then comes from a network of it.
        shape: an event shape to model flattened (e.g. ``(C, H, W)``).
        transforms: the number of planar layers.
        hidden: hidden widths of the context networks.
        activation: activation of the context networks.

    Returns:
        A ``Flow`` on a ``StandardNormal`` base, with ``flow.config`` recording the options.

    References:
        Variational Inference with Normalizing Flows, Rezende & Mohamed, 2015, arXiv:1505.05770.

    Example:
        >>> import torch
        >>> Planar(2, transforms=2).log_prob(torch.randn(5, 2)).shape
        torch.Size([5])
    """
    d = dimension("Planar", features, shape)
    k = check_int(transforms, "Planar", "transforms")
    layers: list[Transform] = [
        _planar.Planar(d, context, tuple(hidden), activation) for _ in range(k)
    ]
    return vector_flow([*layers, Affine(d)], d, shape)


@register("radial", accepts=("vectors", "images", "context"))
def Radial(
    features: int | None = None,
    context: int = 0,
    *,
    shape: Sequence[int] | None = None,
    transforms: int = 16,
    hidden: Sequence[int] = (32,),
    activation: str = "tanh",
) -> Flow:
    """A stack of radial layers and a final elementwise affine map (Rezende & Mohamed, 2015).

    Args:
        features: the dimension (or give ``shape``).
        context: context width; each layer's ``(z₀, α, β)`` then comes from a network of it.
        shape: an event shape to model flattened.
        transforms: the number of radial layers.
        hidden: hidden widths of the context networks.
        activation: activation of the context networks.

    Returns:
        A ``Flow`` on a ``StandardNormal`` base, with ``flow.config`` recording the options.

    References:
        Variational Inference with Normalizing Flows, Rezende & Mohamed, 2015, arXiv:1505.05770.

    Example:
        >>> import torch
        >>> Radial(2, transforms=2).sample(4).shape
        torch.Size([4, 2])
    """
    d = dimension("Radial", features, shape)
    k = check_int(transforms, "Radial", "transforms")
    layers: list[Transform] = [
        _planar.Radial(d, context, tuple(hidden), activation) for _ in range(k)
    ]
    return vector_flow([*layers, Affine(d)], d, shape)


@register("sylvester", accepts=("vectors", "context"))
def Sylvester(  # noqa: N802
    features: int,
    context: int = 0,
    transforms: int = 8,
    variant: str = "orthogonal",
    columns: int | None = None,
    hidden: Sequence[int] = (64,),
) -> Flow:
    """A Sylvester flow: ``transforms`` Sylvester layers, then a learnable elementwise affine.

    The triangular variant alternates ``Q = I`` and the reversal permutation. The inverse (the
    density direction) is numerical: a back-substitution of increasing scalar equations solved
    to round-off (see ``pushforward.transforms.Sylvester``).

    Args:
        features: the dimension ``d``.
        context: width of the context (amortises ``R``, ``R̃``, ``b``).
        transforms: number of Sylvester layers.
        variant: ``"orthogonal"``, ``"householder"`` or ``"triangular"``.
        columns: ``M ≤ d`` (default ``d``).
        hidden: hidden widths of the context network.

    Returns:
        A ``Flow`` on a ``StandardNormal`` base, with ``flow.config`` recording the options.

    References:
        Sylvester Normalizing Flows for Variational Inference, van den Berg et al., 2018,
        arXiv:1803.05649.

    Example:
        >>> import torch, pushforward as pf
        >>> flow = pf.flows.Sylvester(2, transforms=2)
        >>> flow.log_prob(torch.randn(3, 2)).shape
        torch.Size([3])
    """
    layers: list[Transform] = [
        _sylvester.Sylvester(features, columns, variant, flip=i % 2 == 1,
                             context_features=context, hidden=tuple(hidden))
        for i in range(int(transforms))
    ]
    layers.append(Affine(features))
    return Flow(layers, StandardNormal(features))


@register("residualflow", accepts=("vectors", "context"))
def ResidualFlow(  # noqa: N802
    features: int,
    context: int = 0,
    transforms: int = 4,
    hidden: Sequence[int] = (64, 64),
    logdet: str = "auto",
    coeff: float = 0.97,
    terms: int = 2,
    exact_below: int = 16,
    spectral: str = "exact",
) -> Flow:
    """A residual flow: ``transforms`` × (ActNorm → invertible residual block).

    The residuals act on the normalizing side, ``z = x + g(x)``, so ``log_prob`` is one pass;
    sampling inverts each block by fixed point. ``logdet="auto"`` is exact (autograd Jacobian)
    for ``features ≤ exact_below`` and the unbiased Russian-roulette estimator otherwise.

    Args:
        features: the dimension ``d``.
        context: width of the context (fed to every residual network).
        transforms: number of residual blocks.
        hidden: hidden widths of each residual network.
        logdet: ``"auto"``, ``"exact"``, ``"roulette"`` or ``"series"``.
        coeff: spectral-norm bound per layer, in ``(0, 1)``.
        terms: exact series terms (roulette) or truncation (series).
        exact_below: the largest ``d`` for which ``"auto"`` is exact.
        spectral: ``"exact"`` (SVD) or ``"power"`` (power iteration while training).

    Returns:
        A ``Flow`` on a ``StandardNormal`` base, with ``flow.config`` recording the options.

    References:
        Residual Flows for Invertible Generative Modeling, Chen et al., 2019, arXiv:1906.02735.

    Example:
        >>> import torch, pushforward as pf
        >>> flow = pf.flows.ResidualFlow(2, transforms=2, hidden=(16,))
        >>> flow.log_prob(torch.randn(3, 2)).shape
        torch.Size([3])
    """
    layers: list[Transform] = []
    for _ in range(int(transforms)):
        layers.append(_residual.ResidualBlock(
            features, tuple(hidden), context, coeff, logdet, terms, exact_below=exact_below,
            spectral=spectral,
        ))
        layers.append(ActNorm(features))
    return Flow(layers, StandardNormal(features))
