"""Autoregressive presets: MAF, IAF, NSF (autoregressive or coupling spline) and NAF.

Each stacks ``transforms`` layers on a standard normal base. Between layers the features are
permuted (``permutation="reverse"`` alternates the natural and reversed order, ``"random"`` draws
one order per layer from ``seed``, ``"none"`` keeps the natural order). For autoregressive layers
the permutation is realised as the MADE ordering of each layer, which is the same map as a
``Permutation`` layer before it (up to relabelling ``z``, which a standard normal base does not
see) without the copy; coupling layers get explicit ``Reverse`` / ``RandomPermutation`` layers.
"""

from __future__ import annotations

from collections.abc import Sequence

from pushforward._registry import register
from pushforward.core import Flow, Transform
from pushforward.distributions import StandardNormal
from pushforward.transforms.autoregressive import InverseAutoregressive, MaskedAutoregressive
from pushforward.transforms.linear import RandomPermutation
from pushforward.transforms.naf import NeuralAutoregressive

__all__ = ["MAF", "IAF", "NSF", "NAF"]

_PERMUTATIONS = ("reverse", "random", "none")


def _check(name: str, permutation: str) -> None:
    """The permutation option (sizes are checked once for every preset by the registry)."""
    if permutation not in _PERMUTATIONS:
        raise ValueError(
            f"{name}: permutation must be one of {_PERMUTATIONS}, got {permutation!r}"
        )


def _ordering(permutation: str, layer: int) -> str:
    if permutation == "reverse":
        return "reversed" if layer % 2 else "natural"
    return "random" if permutation == "random" else "natural"


def _autoregressive(
    cls: type, features: int, context: int, transforms: int, permutation: str, seed: int,
    **options: object,
) -> list[Transform]:
    return [
        cls(
            features,
            context,
            ordering=_ordering(permutation, i),
            seed=seed + i,
            **options,
        )
        for i in range(transforms)
    ]


@register("maf", accepts=("vectors", "context"))
def MAF(
    features: int,
    context: int = 0,
    *,
    transforms: int = 5,
    hidden: Sequence[int] = (128, 128),
    residual: bool = False,
    activation: str = "relu",
    permutation: str = "reverse",
    seed: int = 0,
    identity_init: bool = False,
) -> Flow:
    """Masked autoregressive flow: ``transforms`` affine MAF layers on ``N(0, I)``.

    Density evaluation is one MADE pass per layer; sampling is sequential (``d`` passes per
    layer).

    Args:
        features: the dimension ``d``.
        context: width of the context (0: unconditional).
        transforms: number of MAF layers.
        hidden: MADE hidden widths.
        residual: masked residual blocks in the MADEs.
        activation: MADE activation.
        permutation: ``"reverse"``, ``"random"`` or ``"none"`` between layers.
        seed: seed of the random orderings.
        identity_init: start every layer at the identity (zero last conditioner layer) instead
            of at random.

    Returns:
        A ``Flow`` on a ``StandardNormal`` base, with ``flow.config`` recording the options.

    References:
        Masked Autoregressive Flow for Density Estimation. Papamakarios, Pavlakou, Murray, 2017.
        arXiv:1705.07057.

    Example:
        >>> import torch
        >>> flow = MAF(2, transforms=2, hidden=(16, 16))
        >>> flow.log_prob(torch.randn(4, 2)).shape
        torch.Size([4])
    """
    _check("MAF", permutation)
    layers = _autoregressive(
        MaskedAutoregressive, features, context, transforms, permutation, seed,
        hidden=hidden, residual=residual, activation=activation, identity_init=identity_init,
    )
    return Flow(layers, StandardNormal(features))


@register("iaf", accepts=("vectors", "context"))
def IAF(
    features: int,
    context: int = 0,
    *,
    transforms: int = 5,
    hidden: Sequence[int] = (128, 128),
    residual: bool = False,
    activation: str = "relu",
    permutation: str = "reverse",
    seed: int = 0,
    identity_init: bool = False,
) -> Flow:
    """Inverse autoregressive flow: ``transforms`` affine IAF layers on ``N(0, I)``.

    Sampling is one MADE pass per layer; density evaluation is sequential (``d`` passes per
    layer), so IAF suits variational inference and reverse-KL fitting more than density
    estimation.

    Args:
        features: the dimension ``d``.
        context: width of the context (0: unconditional).
        transforms: number of IAF layers.
        hidden: MADE hidden widths.
        residual: masked residual blocks in the MADEs.
        activation: MADE activation.
        permutation: ``"reverse"``, ``"random"`` or ``"none"`` between layers.
        seed: seed of the random orderings.
        identity_init: start every layer at the identity (zero last conditioner layer) instead
            of at random.

    Returns:
        A ``Flow`` on a ``StandardNormal`` base, with ``flow.config`` recording the options.

    References:
        Improving Variational Inference with Inverse Autoregressive Flow. Kingma, Salimans,
        Jozefowicz, Chen, Sutskever, Welling, 2016. arXiv:1606.04934.

    Example:
        >>> flow = IAF(2, transforms=2, hidden=(16, 16))
        >>> flow.sample(3).shape
        torch.Size([3, 2])
    """
    _check("IAF", permutation)
    layers = _autoregressive(
        InverseAutoregressive, features, context, transforms, permutation, seed,
        hidden=hidden, residual=residual, activation=activation, identity_init=identity_init,
    )
    return Flow(layers, StandardNormal(features))


@register("nsf", accepts=("vectors", "context"))
def NSF(
    features: int,
    context: int = 0,
    *,
    transforms: int = 5,
    hidden: Sequence[int] = (128, 128),
    bins: int = 8,
    bound: float = 5.0,
    coupling: bool = False,
    residual: bool = False,
    activation: str = "relu",
    permutation: str = "reverse",
    seed: int = 0,
    identity_init: bool = False,
) -> Flow:
    """Neural spline flow: rational-quadratic spline layers with linear tails on ``N(0, I)``.

    Autoregressive by default (a MAF whose elementwise map is a spline, one MADE pass per layer
    for the density); ``coupling=True`` uses spline coupling layers instead (one pass in both
    directions); their halves swap from layer to layer (``permutation="random"``: a random
    permutation layer between them instead).

    Args:
        features: the dimension ``d``.
        context: width of the context (0: unconditional).
        transforms: number of spline layers.
        hidden: conditioner hidden widths.
        bins: spline bins ``K``.
        bound: the spline acts on ``[−bound, bound]`` and is the identity outside.
        coupling: coupling instead of autoregressive layers.
        residual: masked residual blocks in the MADEs (autoregressive only).
        activation: conditioner activation.
        permutation: ``"reverse"``, ``"random"`` or ``"none"`` between layers.
        seed: seed of the random permutations.
        identity_init: start every layer at the identity (zero last conditioner layer) instead
            of at random.

    Returns:
        A ``Flow`` on a ``StandardNormal`` base, with ``flow.config`` recording the options.

    References:
        Neural Spline Flows. Durkan, Bekasov, Murray, Papamakarios, 2019. arXiv:1906.04032.

    Example:
        >>> import torch
        >>> flow = NSF(2, transforms=2, hidden=(16, 16), bins=4)
        >>> flow.log_prob(torch.randn(4, 2)).shape
        torch.Size([4])
    """
    _check("NSF", permutation)
    if not coupling:
        layers = _autoregressive(
            MaskedAutoregressive, features, context, transforms, permutation, seed,
            transformer="spline", hidden=hidden, residual=residual, activation=activation,
            bins=bins, bound=bound, identity_init=identity_init,
        )
        return Flow(layers, StandardNormal(features))
    if residual:
        raise ValueError("NSF: residual=True applies to autoregressive layers only")
    return Flow(
        _coupling_layers(features, context, transforms, hidden, bins, bound, activation,
                         permutation, seed, identity_init),
        StandardNormal(features),
    )


def _coupling_layers(
    features: int, context: int, transforms: int, hidden: Sequence[int], bins: int,
    bound: float, activation: str, permutation: str, seed: int, identity_init: bool,
) -> list[Transform]:
    from pushforward.transforms.coupling import Coupling, coupling_mask

    if features < 2:
        raise ValueError("NSF: coupling layers need features >= 2 (use coupling=False)")
    layers: list[Transform] = []
    for i in range(transforms):
        if permutation == "random":
            # a fresh random permutation before every layer, the half mask stays put
            if i:
                layers.append(RandomPermutation(features, seed=seed + i))
            mask = coupling_mask(features, "half")
        else:
            # "reverse" (and "none", which would leave half the features untouched forever):
            # the two halves swap roles from one layer to the next
            mask = coupling_mask(features, "half", flip=i % 2 == 1)
        layers.append(
            Coupling(mask, "spline", context, hidden=hidden, activation=activation, bins=bins,
                     bound=bound, identity_init=identity_init)
        )
    return layers


@register("naf", accepts=("vectors", "context"))
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
    layers: list[Transform] = [
        NeuralAutoregressive(
            features, context, components, tuple(hidden),
            ordering="natural" if i % 2 == 0 else "reversed",
        )
        for i in range(int(transforms))
    ]
    return Flow(layers, StandardNormal(features))
