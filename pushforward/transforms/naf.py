"""Neural autoregressive flows: a deep sigmoidal transformer on a MADE conditioner (NAF)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pushforward import _validation as _v
from pushforward.specs import serializable
from pushforward.transforms._roots import newton_attach, solve_increasing
from pushforward.transforms.autoregressive import MaskedAutoregressive
from pushforward.transforms.maps import register_map

__all__ = ["DeepSigmoidalMap", "NeuralAutoregressive"]

_MIN_SLOPE = 1e-3
_SHIFT = math.log(math.expm1(1.0 - _MIN_SLOPE))  # a = 1 when the raw parameter is 0


@serializable("deep-sigmoidal-map")
class DeepSigmoidalMap:
    """The deep sigmoidal flow (DSF) transformer of NAF, an increasing map of ``ℝ`` onto ``ℝ``.

    On the normalizing side, ``z = σ⁻¹(Σ_k w_k σ(a_k x + b_k))`` with ``a_k > 0``
    (``a = 10⁻³ + softplus(â)``), ``w = softmax(ŵ)`` and free ``b``; ``3K`` parameters per
    element. All-zero parameters give the identity. The derivative is
    ``∂z/∂x = Σ_k w_k a_k σ'(a_k x + b_k) / (u (1 − u))`` with ``u = Σ_k w_k σ(a_k x + b_k)``,
    evaluated in log space (``log u`` and ``log(1 − u)`` by log-sum-exp), so neither saturates.
    ``z`` is squeezed between ``min_k(a_k x + b_k)`` and ``max_k(a_k x + b_k)``, hence onto ``ℝ``.

    ``inverse`` (``x → z``) is closed form; ``forward`` (``z → x``) solves ``z = s(x)`` by a
    bracketed, bisection-safeguarded Newton iteration to round-off (the bracket
    ``[min_k (z − b_k)/a_k, max_k (z − b_k)/a_k]`` always holds the root), with the implicit
    gradient re-attached.

    Args:
        components: the number ``K`` of sigmoids.

    References:
        Neural Autoregressive Flows, Huang, Krueger, Lacoste & Courville, 2018,
        arXiv:1804.00779.
    """

    def __init__(self, components: int = 8) -> None:
        self.components = _v.check_int(components, "DeepSigmoidalMap", "components",
                                       type_error=False)
        self.params = 3 * self.components

    def _split(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        raw_a, b, raw_w = params.unflatten(-1, (3, self.components)).unbind(-2)
        a = _MIN_SLOPE + F.softplus(raw_a + _SHIFT)
        return a, b, torch.log_softmax(raw_w, dim=-1)

    def _evaluate(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """``z = s(x)`` and ``log s'(x)``, elementwise."""
        a, b, log_w = self._split(params)
        pre = a * x.unsqueeze(-1) + b
        log_sig, log_sig_neg = F.logsigmoid(pre), F.logsigmoid(-pre)
        log_u = torch.logsumexp(log_w + log_sig, dim=-1)
        log_1mu = torch.logsumexp(log_w + log_sig_neg, dim=-1)
        log_slope = torch.logsumexp(log_w + a.log() + log_sig + log_sig_neg, dim=-1)
        return log_u - log_1mu, log_slope - log_u - log_1mu

    def inverse(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """``z = s(x)`` and ``log|∂z/∂x|``."""
        return self._evaluate(x, params)

    def forward(self, z: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """``x = s⁻¹(z)`` (numerical) and ``log|∂x/∂z| = −log s'(x)``."""
        fixed = params.detach()
        with torch.no_grad():
            a, b, _ = self._split(fixed)
            ends = (z.detach().unsqueeze(-1) - b) / a
            lo, hi = ends.min(-1).values, ends.max(-1).values

        def f(u: Tensor) -> tuple[Tensor, Tensor]:
            value, log_slope = self._evaluate(u, fixed)
            return value, log_slope.exp()

        x = solve_increasing(f, z, lo, hi)
        value, log_slope = self._evaluate(x, params)
        x = newton_attach(x, value, log_slope.exp(), z)
        return x, -self._evaluate(x, params)[1]

    def __repr__(self) -> str:
        return f"DeepSigmoidalMap(components={self.components})"


register_map("sigmoidal", DeepSigmoidalMap)


@serializable("neural-autoregressive")
class NeuralAutoregressive(MaskedAutoregressive):
    """A neural autoregressive flow layer (NAF with the deep sigmoidal transformer).

    Normalizing (density) direction, one MADE pass:
    ``z_i = σ⁻¹(Σ_k w_ik σ(a_ik x_i + b_ik))`` with ``(a_i, b_i, w_i) = MADE(x_{<i}, c)``,
    ``ladj = Σ_i log ∂z_i/∂x_i`` (see ``DeepSigmoidalMap``). Generative direction (numerical):
    feature by feature in the ordering, ``x_i`` solves the increasing scalar equation
    ``s(x_i; θ_i(x_{<i})) = z_i`` by bracketed bisection-safeguarded Newton to round-off;
    ``ladj = −Σ_i log s'(x_i)``. The MADE's last layer starts at zero, so the layer starts at
    the identity.

    Args:
        features: the dimension ``d``.
        context_features: width of the context fed to the MADE (0: none).
        components: sigmoids per feature ``K``.
        hidden: MADE hidden widths.
        ordering: ``"natural"``, ``"reversed"``, ``"random"`` or the features in generation order.
        seed: seed of the random ordering.
        residual: masked residual blocks in the MADE.
        activation: MADE activation.

    References:
        Neural Autoregressive Flows, Huang, Krueger, Lacoste & Courville, 2018,
        arXiv:1804.00779.

    Example:
        >>> import torch
        >>> naf = NeuralAutoregressive(3, components=4, hidden=(16,))
        >>> z, ladj = naf.inverse(torch.randn(5, 3))
        >>> z.shape, ladj.shape
        (torch.Size([5, 3]), torch.Size([5]))
    """

    analytic_inverse = False

    def __init__(
        self,
        features: int,
        context_features: int = 0,
        components: int = 8,
        hidden: Sequence[int] = (64, 64),
        ordering: str | Sequence[int] = "natural",
        seed: int = 0,
        residual: bool = False,
        activation: str | Callable[[], nn.Module] = "relu",
    ) -> None:
        super().__init__(
            features,
            context_features,
            transformer=DeepSigmoidalMap(components),
            hidden=hidden,
            ordering=ordering,
            seed=seed,
            residual=residual,
            activation=activation,
        )
