"""Presets beyond the article: Sylvester flows, residual flows and neural autoregressive flows."""

from __future__ import annotations

from collections.abc import Sequence

from pushforward._registry import register
from pushforward.core import Flow, Transform
from pushforward.distributions import StandardNormal
from pushforward.transforms import naf as _naf
from pushforward.transforms import residual as _residual
from pushforward.transforms import sylvester as _sylvester
from pushforward.transforms.elementwise import Affine
from pushforward.transforms.normalization import ActNorm

__all__ = ["Sylvester", "ResidualFlow", "NAF"]


def _check(name: str, features: int, context: int, transforms: int) -> None:
    if isinstance(features, bool) or int(features) < 1:
        raise ValueError(f"{name}: features must be a positive int, got {features!r}")
    if int(context) < 0:
        raise ValueError(f"{name}: context must be >= 0, got {context!r}")
    if int(transforms) < 1:
        raise ValueError(f"{name}: transforms must be >= 1, got {transforms!r}")


@register("sylvester")
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
    _check("Sylvester", features, context, transforms)
    layers: list[Transform] = [
        _sylvester.Sylvester(features, columns, variant, flip=i % 2 == 1,
                             context_features=context, hidden=tuple(hidden))
        for i in range(int(transforms))
    ]
    layers.append(Affine(features))
    return Flow(layers, StandardNormal(features))


@register("residualflow")
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
    _check("ResidualFlow", features, context, transforms)
    layers: list[Transform] = []
    for _ in range(int(transforms)):
        layers.append(_residual.ResidualBlock(
            features, tuple(hidden), context, coeff, logdet, terms, exact_below=exact_below,
            spectral=spectral,
        ))
        layers.append(ActNorm(features))
    return Flow(layers, StandardNormal(features))


@register("naf")
def NAF(  # noqa: N802
    features: int,
    context: int = 0,
    transforms: int = 3,
    components: int = 8,
    hidden: Sequence[int] = (64, 64),
) -> Flow:
    """A neural autoregressive flow: deep sigmoidal layers on MADEs, orderings alternating.

    Density is one MADE pass per layer; sampling inverts each layer feature by feature by
    bracketed bisection-safeguarded Newton (``d`` passes per layer).

    Args:
        features: the dimension ``d``.
        context: width of the context (fed to every MADE).
        transforms: number of NAF layers.
        components: sigmoids per feature.
        hidden: MADE hidden widths.

    Returns:
        A ``Flow`` on a ``StandardNormal`` base, with ``flow.config`` recording the options.

    References:
        Neural Autoregressive Flows, Huang et al., 2018, arXiv:1804.00779.

    Example:
        >>> import torch, pushforward as pf
        >>> flow = pf.flows.NAF(2, transforms=2, hidden=(16,))
        >>> flow.log_prob(torch.randn(3, 2)).shape
        torch.Size([3])
    """
    _check("NAF", features, context, transforms)
    layers: list[Transform] = [
        _naf.NeuralAutoregressive(
            features, context, components, tuple(hidden),
            ordering="natural" if i % 2 == 0 else "reversed",
        )
        for i in range(int(transforms))
    ]
    return Flow(layers, StandardNormal(features))
