"""Time-conditioned vector fields ``f(t, z, context)`` for continuous flows."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from pushforward import _validation as _v
from pushforward.nn import activation as make_activation
from pushforward.specs import serializable

__all__ = ["ConcatSquash", "TimeMLP", "TIME_INPUTS"]

TIME_INPUTS = ("gated", "concat")


@serializable("concat-squash")
class ConcatSquash(nn.Module):
    """A linear layer conditioned on ``h = [t, context]``.

    ``gated`` (FFJORD's ConcatSquashLinear): ``y = (W x + b) ⊙ σ(G h + g) + B h``;
    ``concat``: ``y = W [x, h] + b``. The gate's bias starts at 3 (``σ ≈ 0.95``): a fresh layer
    is nearly a plain linear layer, which trains markedly faster than a half-closed gate.

    Args:
        in_features: width of ``x``.
        out_features: width of ``y``.
        cond_features: width of ``h`` (1 + context width).
        time: ``"gated"`` or ``"concat"``.
    """

    def __init__(
        self, in_features: int, out_features: int, cond_features: int, time: str = "gated"
    ) -> None:
        super().__init__()
        if time not in TIME_INPUTS:
            raise ValueError(
                f"unknown time input {time!r}; choose one of {', '.join(TIME_INPUTS)}"
            )
        self.time = time
        if time == "gated":
            self.linear = nn.Linear(in_features, out_features)
            self.gate = nn.Linear(cond_features, out_features)
            self.shift = nn.Linear(cond_features, out_features, bias=False)
            nn.init.constant_(self.gate.bias, 3.0)
        else:
            self.linear = nn.Linear(in_features + cond_features, out_features)

    def forward(self, x: Tensor, h: Tensor) -> Tensor:  # noqa: D102
        if self.time == "gated":
            return self.linear(x) * torch.sigmoid(self.gate(h)) + self.shift(h)
        return self.linear(torch.cat([x, h], dim=-1))

    def zero_(self) -> ConcatSquash:
        """Zero the output (the layer then returns 0 whatever its input)."""
        with torch.no_grad():
            nn.init.zeros_(self.linear.weight)
            nn.init.zeros_(self.linear.bias)
            if self.time == "gated":
                nn.init.zeros_(self.shift.weight)
        return self


@serializable("time-mlp")
class TimeMLP(nn.Module):
    """A multi-layer perceptron vector field ``dz/dt = f(t, z, context)`` on vectors.

    Every layer sees ``h = [t, context]``, gated (``y = (Wx + b) ⊙ σ(Gh + g) + Bh``) or
    concatenated (``y = W[x, h] + b``); smooth activations between layers (the ODE solver and
    the trace need a smooth field: tanh, softplus, SiLU). PyTorch's default initialisation
    gives a small field (a fresh CNF is close to the identity); ``zero_last=True`` makes it
    exactly the identity, at the cost of slower early training (the hidden layers get no
    gradient until the last layer moves).

    Args:
        features: width of ``z`` (input and output).
        hidden: widths of the hidden layers.
        context_features: width of the context (0: unconditional).
        activation: name or factory of a smooth activation.
        time: ``"gated"`` or ``"concat"`` time/context input.
        zero_last: start with a zero last layer (exactly the identity flow).

    Raises:
        ValueError: a context is missing or unexpected at call time.

    References:
        FFJORD: Free-form continuous dynamics for scalable reversible generative models.
        W. Grathwohl, R. T. Q. Chen, J. Bettencourt, I. Sutskever, D. Duvenaud, 2018.
        arXiv:1810.01367.

    Example:
        >>> import torch
        >>> f = TimeMLP(2, hidden=(16,))
        >>> f(torch.tensor(0.5), torch.randn(4, 2)).shape
        torch.Size([4, 2])
    """

    def __init__(
        self,
        features: int,
        hidden: Sequence[int] = (64, 64),
        context_features: int = 0,
        activation: str | Callable[[], nn.Module] = "tanh",
        time: str = "gated",
        zero_last: bool = False,
    ) -> None:
        super().__init__()
        self.features = _v.check_int(features, "TimeMLP", "features", type_error=False)
        self.context_features = _v.check_int(context_features, "TimeMLP", "context_features", 0,
                                             type_error=False)
        widths = [self.features, *(int(h) for h in hidden), self.features]
        cond = 1 + self.context_features
        self.layers = nn.ModuleList(
            ConcatSquash(a, b, cond, time) for a, b in zip(widths[:-1], widths[1:])
        )
        self.activations = nn.ModuleList(make_activation(activation) for _ in widths[1:-1])
        if zero_last:
            self.layers[-1].zero_()  # type: ignore[operator]

    def forward(self, t: Tensor, z: Tensor, context: Tensor | None = None) -> Tensor:
        """``dz/dt`` at time ``t`` (a scalar or ``(batch,)``), ``z`` ``(batch, features)``."""
        if (context is None) != (self.context_features == 0):
            raise ValueError(
                f"TimeMLP: built for context_features={self.context_features} but called "
                f"{'without' if context is None else 'with'} a context"
            )
        t = torch.as_tensor(t, dtype=z.dtype, device=z.device)
        h = t.reshape(-1, 1).expand(z.shape[0], 1)
        if context is not None:
            h = torch.cat([h, context.to(z.dtype)], dim=-1)
        x = z
        for i, layer in enumerate(self.layers):
            x = layer(x, h)
            if i < len(self.activations):
                x = self.activations[i](x)
        return x
