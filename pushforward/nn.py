"""Conditioner networks shared by the transforms.

Only generic building blocks live here; family-specific networks (MADE masks, conv nets,
time-conditioned fields) are added beside them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["MLP", "activation", "with_context"]

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
}


def activation(name: str | Callable[[], nn.Module]) -> nn.Module:
    """An activation module from its name (relu, elu, gelu, silu, tanh, softplus) or a factory."""
    if callable(name) and not isinstance(name, str):
        return name()
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}"
        ) from None


_make_activation = activation


class MLP(nn.Sequential):
    """A multi-layer perceptron ``in_features -> hidden... -> out_features``.

    Args:
        in_features: input width.
        out_features: output width.
        hidden: widths of the hidden layers.
        activation: name or factory of the activation between layers.
        zero_last: initialise the last layer to zero (the transform starts at the identity).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (64, 64),
        activation: str | Callable[[], nn.Module] = "relu",
        zero_last: bool = False,
    ) -> None:
        widths = [int(in_features), *(int(h) for h in hidden), int(out_features)]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(widths) - 2:
                layers.append(_make_activation(activation))
        super().__init__(*layers)
        self.in_features = widths[0]
        self.out_features = widths[-1]
        if zero_last:
            last = layers[-1]
            assert isinstance(last, nn.Linear)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return super().forward(x)


def with_context(x: Tensor, context: Tensor | None) -> Tensor:
    """Concatenate a context to the features: ``[x, context]`` along the last dimension."""
    return x if context is None else torch.cat([x, context.to(x.dtype)], dim=-1)
