"""Base distributions on the simplex ``Δⁿ⁻¹``: Dirichlet (learnable) and uniform.

Densities are with respect to the Lebesgue measure of the chart ``(p_1, …, p_{n−1})`` (the usual
Dirichlet convention), the same measure the calibration flows' ``log R`` refers to; so a Dirichlet
pushed through :class:`~pushforward.manifolds.Calibration` is an exact generative calibration
model (the SGB distribution of SPEC §4.1).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from pushforward.core import BaseDistribution
from pushforward.manifolds._params import as_tensor, initial_dtype
from pushforward.manifolds.spaces import Simplex
from pushforward.manifolds.sphere_bases import _no_temperature
from pushforward.specs import serializable

__all__ = ["Dirichlet", "UniformSimplex"]


def _clean(p: Tensor) -> Tensor:
    """Lift exact zeros (underflow of tiny gamma variates) and renormalise."""
    p = p.clamp(min=torch.finfo(p.dtype).tiny)
    return p / p.sum(-1, keepdim=True)


@serializable("dirichlet")
class Dirichlet(BaseDistribution):
    """``Dir(α)``: ``log p = log Γ(Σα) − Σ log Γ(α_i) + Σ (α_i − 1) log p_i``, learnable ``α``.

    ``α = exp(ρ)`` with ``ρ`` free, so ``α > 0`` always. Samples are reparametrised (``rsample``
    of ``torch.distributions.Dirichlet``).

    Args:
        n: number of classes.
        concentration: initial ``α`` (default all ones, the uniform distribution); a scalar is
            broadcast; non-positive entries raise ``ValueError``.
    """

    def __init__(self, n: int, concentration: float | Tensor | None = None) -> None:
        super().__init__()
        self.simplex = Simplex(n)
        n = self.simplex.n
        self.event_shape = (n,)
        dtype = initial_dtype(concentration)
        if concentration is None:
            alpha = torch.ones(n, dtype=torch.float64)
        else:
            alpha = torch.as_tensor(concentration, dtype=torch.float64)
            alpha = as_tensor(alpha.expand(n) if alpha.dim() == 0 else alpha, (n,),
                              "Dirichlet", "concentration")
        if not bool((alpha > 0).all()):
            raise ValueError(f"Dirichlet: concentration must be > 0, got {alpha.tolist()}")
        self.log_concentration = nn.Parameter(alpha.log().to(dtype))

    @property
    def concentration(self) -> Tensor:
        """``α > 0``, shape ``(n,)``."""
        return self.log_concentration.exp()

    def _check_z(self, z: Tensor) -> None:
        self.simplex.validate(z, owner="Dirichlet.log_prob")

    def _log_prob(self, z: Tensor, context: Tensor | None) -> Tensor:
        """``log p(z)`` of points on the manifold, ``(batch,)`` (w.r.t. its volume)."""
        alpha = self.concentration.to(z.dtype)
        norm = torch.lgamma(alpha.sum()) - torch.lgamma(alpha).sum()
        return norm + (torch.log(z) * (alpha - 1)).sum(-1)

    def _sample(self, n: int, context: Tensor | None, temperature: float) -> Tensor:
        """``n`` points drawn on the manifold, ``(n, ambient dimension)`` (reparametrised)."""
        _no_temperature("Dirichlet", temperature)
        dist = torch.distributions.Dirichlet(self.concentration)
        return _clean(dist.rsample((n,)))

    def extra_repr(self) -> str:
        """What ``repr`` shows after the class name."""
        return f"n={self.simplex.n}"


@serializable("uniform-simplex")
class UniformSimplex(BaseDistribution):
    """The uniform distribution on ``Δⁿ⁻¹``: ``log p = log Γ(n) = log (n − 1)!`` (chart measure).

    Args:
        n: number of classes.
    """

    def __init__(self, n: int) -> None:
        super().__init__()
        self.simplex = Simplex(n)
        self.event_shape = (self.simplex.n,)
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    def _check_z(self, z: Tensor) -> None:
        self.simplex.validate(z, owner="UniformSimplex.log_prob")

    def _log_prob(self, z: Tensor, context: Tensor | None) -> Tensor:
        """``log p(z)`` of points on the manifold, ``(batch,)`` (w.r.t. its volume)."""
        return z.new_full((z.shape[0],), math.lgamma(self.simplex.n))

    def _sample(self, n: int, context: Tensor | None, temperature: float) -> Tensor:
        """``n`` points drawn on the manifold, ``(n, ambient dimension)``."""
        _no_temperature("UniformSimplex", temperature)
        e = -torch.log(torch.rand(n, self.simplex.n, dtype=self._anchor.dtype,
                                  device=self._anchor.device).clamp(min=1e-300))
        return _clean(e / e.sum(-1, keepdim=True))

    def extra_repr(self) -> str:
        """What ``repr`` shows after the class name."""
        return f"n={self.simplex.n}"
