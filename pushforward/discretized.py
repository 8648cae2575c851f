"""Discretized logistic (mixture) distributions on the integers: exact probability masses.

A logistic ``L(μ, s)`` (CDF ``σ((v − μ)/s)``) discretized to the integers gives integer ``k``
the mass of the unit bin around it,

    P(k) = σ((k + ½ − μ)/s) − σ((k − ½ − μ)/s),

which sums to 1 over ``ℤ``. Written as ``σ(b) − σ(a) = (eᵇ − eᵃ) / ((1 + eᵃ)(1 + eᵇ))``,

    log P(k) = b − softplus(a) − softplus(b) + log(1 − e^{−1/s}),

every term is stable (no difference of two nearly equal CDFs is ever formed, in the tails
either). A mixture of ``K`` components adds ``log π_j`` and takes a log-sum-exp. These are the
priors of integer discrete flows (``pushforward.presets.idf``), whose ``log P(x)`` is then an
exact discrete log-probability, and whose entropy coder (``pushforward.compression``) turns the
same masses into code lengths.

References:
    PixelCNN++: Improving the PixelCNN with Discretized Logistic Mixture Likelihood, Salimans,
    Karpathy, Chen & Kingma, 2017, arXiv:1701.05517. Integer Discrete Flows and Lossless
    Compression, Hoogeboom, Peters, van den Berg & Welling, 2019, arXiv:1905.07376.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pushforward import _validation as _v
from pushforward.core import BaseDistribution
from pushforward.specs import serializable

__all__ = [
    "discretized_logistic_log_prob",
    "discretized_mixture_log_prob",
    "discretized_mixture_sample",
    "DiscretizedLogistic",
    "LOG_SCALE_MIN",
    "LOG_SCALE_MAX",
]

LOG_SCALE_MIN = -5.0  # s ≥ e⁻⁵ ≈ 0.0067: the bin mass of the mode is then 1 − 10⁻⁶⁴
LOG_SCALE_MAX = 9.0   # s ≤ e⁹ ≈ 8100 (far wider than any 8-bit latent needs)


def clamp_log_scale(log_scale: Tensor) -> Tensor:
    """``log s`` clamped to ``[LOG_SCALE_MIN, LOG_SCALE_MAX]``."""
    return log_scale.clamp(LOG_SCALE_MIN, LOG_SCALE_MAX)


def discretized_logistic_log_prob(z: Tensor, loc: Tensor, log_scale: Tensor) -> Tensor:
    """Elementwise ``log P(z)`` of integer ``z`` under a logistic discretized to unit bins.

    The logistic is ``L(loc, e^{log_scale})`` (formula in the module docstring); broadcasts.

    Example:
        >>> import torch
        >>> k = torch.arange(-60, 61.)
        >>> p = discretized_logistic_log_prob(k, torch.tensor(0.3), torch.tensor(0.5)).exp()
        >>> round(float(p.sum()), 12)
        1.0
    """
    inv_scale = torch.exp(-log_scale)
    a = (z - 0.5 - loc) * inv_scale
    b = a + inv_scale
    return b - F.softplus(a) - F.softplus(b) + torch.log(-torch.expm1(-inv_scale))


def discretized_mixture_log_prob(
    z: Tensor, logits: Tensor, loc: Tensor, log_scale: Tensor
) -> Tensor:
    """Elementwise ``log Σ_j π_j P_j(z)`` for a mixture of discretized logistics.

    Args:
        z: integer values (any float or integer dtype), shape ``S``.
        logits: unnormalised mixture weights, ``(*S, K)``.
        loc: component locations ``μ_j``, ``(*S, K)``.
        log_scale: component log-scales ``log s_j``, ``(*S, K)``.

    Returns:
        ``log P(z)``, shape ``S``.
    """
    z = z.to(loc.dtype).unsqueeze(-1)
    per_component = discretized_logistic_log_prob(z, loc, log_scale)
    return torch.logsumexp(torch.log_softmax(logits, -1) + per_component, -1)


def discretized_mixture_sample(
    logits: Tensor, loc: Tensor, log_scale: Tensor, temperature: float = 1.0
) -> Tensor:
    """Integer draws from the mixture with parameters ``(*S, K)``; returns shape ``S``.

    A component ``j ~ Cat(softmax(logits))`` by the Gumbel-max trick
    (``j = argmax_k logits_k − log(−log u_k)``: no value checks, so it runs on any device), then
    ``⌊μ_j + s_j·T·log(u/(1−u))⌉`` (``T`` the temperature, 1 for exact samples).
    """
    tiny = torch.finfo(logits.dtype).tiny
    gumbel = -torch.log(-torch.log(torch.rand_like(logits).clamp(tiny, 1 - 1e-7)))
    choice = (logits + gumbel).argmax(-1, keepdim=True)
    mu = loc.gather(-1, choice).squeeze(-1)
    s = log_scale.gather(-1, choice).squeeze(-1).exp()
    u = torch.rand_like(mu).clamp(1e-12, 1 - 1e-12)
    return torch.round(mu + temperature * s * (torch.log(u) - torch.log1p(-u)))


@serializable("discretized-logistic")
class DiscretizedLogistic(BaseDistribution):
    """A factorised mixture of discretized logistics on ``ℤ^shape`` with learned parameters.

    ``log P(z) = Σ_i log Σ_j π_ij P(z_i; μ_ij, s_ij)`` over the event (per element ``i`` when
    ``per_element``, else shared along everything but the first event dimension, i.e. per
    channel). Locations are ``μ = loc + unit·θ_μ`` and log-scales ``log s = log(scale·…)``
    with ``θ`` the raw parameters, so a parameter step of Adam's size moves a location in units
    of ``unit`` (pixels need ``unit`` of tens, not 10⁻³). Components start spread over
    ``loc ± scale``.

    Args:
        shape: the event shape.
        components: mixture components ``K``.
        loc: initial centre of the locations.
        scale: initial scale of every component.
        unit: how far one unit of a raw location parameter moves ``μ``.
        per_element: one mixture per element (True) or per channel (False).

    Example:
        >>> import torch
        >>> base = DiscretizedLogistic(3, components=2)
        >>> base.log_prob(torch.tensor([[0., 1., -2.]])).shape
        torch.Size([1])
    """

    def __init__(
        self,
        shape: int | Sequence[int],
        components: int = 1,
        loc: float = 0.0,
        scale: float = 1.0,
        unit: float = 1.0,
        per_element: bool = True,
    ) -> None:
        super().__init__()
        self.event_shape = _v.as_shape(shape)
        k = int(components)
        if k < 1:
            raise ValueError(f"DiscretizedLogistic: components must be >= 1, got {components}")
        if not (scale > 0 and unit > 0 and math.isfinite(scale) and math.isfinite(unit)):
            raise ValueError(f"DiscretizedLogistic: scale and unit must be positive, got "
                             f"{scale} and {unit}")
        param_shape = self.event_shape if per_element else self.event_shape[:1]
        self.components = k
        self.unit = float(unit)
        self.center = float(loc)
        spread = torch.linspace(-1.0, 1.0, k) if k > 1 else torch.zeros(1)
        self.logits = nn.Parameter(torch.zeros(*param_shape, k))
        self.raw_loc = nn.Parameter((scale / unit) * spread.expand(*param_shape, k).clone())
        self.raw_log_scale = nn.Parameter(torch.full((*param_shape, k), math.log(scale)))

    def params(self, batch: int = 1) -> tuple[Tensor, Tensor, Tensor]:
        """``(logits, loc, log_scale)``, each ``(batch, *event_shape, K)``."""
        shape = (batch, *self.event_shape, self.components)
        extra = len(self.event_shape) + 1 - self.raw_loc.dim()
        view = (*self.raw_loc.shape[:-1], *([1] * extra), self.components)
        loc = self.center + self.unit * self.raw_loc
        return (self.logits.reshape(view).expand(shape), loc.reshape(view).expand(shape),
                clamp_log_scale(self.raw_log_scale).reshape(view).expand(shape))

    def _log_prob(self, z: Tensor, context: Tensor | None) -> Tensor:
        """``log P(z)`` summed over the event, shape ``(batch,)``."""
        logits, loc, log_scale = self.params(z.shape[0])
        return discretized_mixture_log_prob(z, logits, loc, log_scale).flatten(1).sum(-1)

    @torch.no_grad()
    def _sample(self, n: int, context: Tensor | None, temperature: float) -> Tensor:
        """Integer-valued draws ``(n, *event_shape)`` in the parameters' dtype."""
        return discretized_mixture_sample(*self.params(n), temperature=temperature)

    def extra_repr(self) -> str:
        """What ``repr`` shows after the class name."""
        return f"event_shape={self.event_shape}, components={self.components}"
