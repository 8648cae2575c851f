"""Base distributions on the sphere ``𝕊ⁿ⁻¹``: uniform, von Mises–Fisher, and a vMF mixture.

Densities are with respect to the sphere's surface (Hausdorff) measure, the measure the spherical
flows' ``log R`` refers to, so ``Flow(spherical_chain, base)`` has an exact density on the sphere.

References:
    Simulation of the von Mises Fisher distribution. Wood, A. T. A., 1994. Communications in
    Statistics - Simulation and Computation 23(1).
    Directional Statistics. Mardia & Jupp, 2000 (the vMF density and normaliser).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from pushforward.core import BaseDistribution
from pushforward.manifolds._bessel import vmf_log_normalizer
from pushforward.manifolds._params import as_tensor, initial_dtype
from pushforward.manifolds.spaces import Sphere
from pushforward.specs import serializable

__all__ = ["UniformSphere", "VonMisesFisher", "VonMisesFisherMixture", "sample_vmf"]


def _no_temperature(owner: str, temperature: float) -> None:
    """The manifold bases define no tempered sampling: only ``temperature=1``.

    Raises:
        ValueError: any other temperature.
    """
    if temperature != 1.0:
        raise ValueError(f"{owner}.sample: temperature is defined for the Gaussian bases only, "
                         f"got {temperature}")


def sample_vmf(mean: Tensor, concentration: Tensor) -> Tensor:
    """One exact vMF draw per row: ``mean (N, n)`` unit vectors, ``concentration (N,)`` > 0.

    Wood's (1994) rejection sampler for the component ``w = μᵀx`` (run in float64: ``w`` sits
    within ``1/κ`` of 1 for large ``κ``), a uniform direction on the orthogonal ``𝕊ⁿ⁻²``, and a
    Householder reflection taking the last axis to ``μ``. Differentiable in ``mean`` only.

    Args:
        mean: unit mean directions ``μ``, ``(N, n)``.
        concentration: ``κ > 0`` per row, ``(N,)``.

    Returns:
        ``(N, n)`` points on the sphere, one per row of ``mean``.

    Raises:
        ValueError: a non-finite or non-positive concentration.
        RuntimeError: the rejection sampler did not converge (not observed in the tests).
    """
    count, n = mean.shape
    kappa = concentration.detach().double()
    if not bool(torch.isfinite(kappa).all() and (kappa > 0).all()):
        raise ValueError("sample_vmf: concentrations must be finite and > 0")
    m1 = n - 1.0
    b = m1 / (2 * kappa + torch.sqrt(4 * kappa * kappa + m1 * m1))
    x0 = (1 - b) / (1 + b)
    c = kappa * x0 + m1 * torch.log1p(-x0 * x0)
    beta = torch.distributions.Beta(
        torch.tensor(m1 / 2, dtype=torch.float64), torch.tensor(m1 / 2, dtype=torch.float64)
    )
    w = torch.empty(count, dtype=torch.float64)
    todo = torch.arange(count)
    for _ in range(1000):
        if todo.numel() == 0:
            break
        zb = beta.sample((todo.numel(),))
        u = torch.rand(todo.numel(), dtype=torch.float64)
        bt, x0t, ct, kt = b[todo], x0[todo], c[todo], kappa[todo]
        wt = (1 - (1 + bt) * zb) / (1 - (1 - bt) * zb)
        ok = kt * wt + m1 * torch.log1p(-x0t * wt) - ct >= torch.log(u)
        w[todo[ok]] = wt[ok]
        todo = todo[~ok]
    if todo.numel():
        raise RuntimeError("sample_vmf: rejection sampler did not converge")
    v = torch.randn(count, n - 1, dtype=torch.float64)
    v = v / torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    radius = torch.sqrt(((1 - w) * (1 + w)).clamp(min=0))
    x = torch.cat([radius[:, None] * v, w[:, None]], dim=-1).to(mean.dtype).to(mean.device)
    # Householder reflection taking e_n to μ: H = I − 2uuᵀ/‖u‖², u = e_n − μ.
    e = torch.zeros_like(mean)
    e[:, -1] = 1
    u = e - mean
    norm2 = (u * u).sum(-1, keepdim=True)
    flip = norm2 > 1e-20
    reflected = x - 2 * u * (u * x).sum(-1, keepdim=True) / torch.where(flip, norm2, 1.0)
    return torch.where(flip, reflected, x)


@serializable("uniform-sphere")
class UniformSphere(BaseDistribution):
    """The uniform distribution on ``𝕊ⁿ⁻¹``: ``log p = −log|𝕊ⁿ⁻¹|`` (``log 4π`` on S²).

    Args:
        n: ambient dimension.
    """

    def __init__(self, n: int) -> None:
        super().__init__()
        self.sphere = Sphere(n)
        self.event_shape = (self.sphere.n,)
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    def _check_z(self, z: Tensor) -> None:
        self.sphere.validate(z, owner="UniformSphere.log_prob")

    def _log_prob(self, z: Tensor, context: Tensor | None) -> Tensor:
        """``log p(z)`` of points on the manifold, ``(batch,)`` (w.r.t. its volume)."""
        return z.new_full((z.shape[0],), -self.sphere.log_volume)

    def _sample(self, n: int, context: Tensor | None, temperature: float) -> Tensor:
        """``n`` points drawn on the manifold, ``(n, ambient dimension)``."""
        _no_temperature("UniformSphere", temperature)
        g = torch.randn(n, self.sphere.n, dtype=self._anchor.dtype, device=self._anchor.device)
        return self.sphere.project(g)

    def extra_repr(self) -> str:
        """What ``repr`` shows after the class name."""
        return f"n={self.sphere.n}"


@serializable("von-mises-fisher")
class VonMisesFisher(BaseDistribution):
    """The von Mises–Fisher distribution ``p(x) = C_n(κ) exp(κ μᵀx)`` on ``𝕊ⁿ⁻¹``, learnable.

    ``C_n(κ) = κ^{n/2−1} / ((2π)^{n/2} I_{n/2−1}(κ))`` is computed stably for all ``κ > 0``
    (closed form ``κ / (4π sinh κ)`` on S²). ``μ = v/‖v‖`` and ``κ = exp(ρ)`` with ``v``, ``ρ``
    free. Exact sampling by Wood's algorithm.

    Args:
        n: ambient dimension.
        mean: initial unit mean direction ``μ`` (default ``e_n``); not unit -> ``ValueError``.
        concentration: initial ``κ > 0`` (default 1).

    Example:
        >>> import torch
        >>> d = VonMisesFisher(3, concentration=torch.tensor(1e4, dtype=torch.float64))
        >>> x = d.sample(1000)
        >>> bool((x.norm(dim=-1) - 1).abs().max() < 1e-12), bool(x[:, 2].min() > 0.99)
        (True, True)
    """

    def __init__(self, n: int, mean: Tensor | None = None,
                 concentration: float | Tensor | None = None) -> None:
        super().__init__()
        self.sphere = Sphere(n)
        n = self.sphere.n
        self.event_shape = (n,)
        dtype = initial_dtype(mean, concentration)
        if mean is None:
            mu = torch.zeros(n, dtype=torch.float64)
            mu[-1] = 1
        else:
            mu = as_tensor(mean, (n,), "VonMisesFisher", "mean")
            if abs(float(mu.norm()) - 1) > 1e-6:
                raise ValueError(
                    "VonMisesFisher: mean must be a unit vector, got "
                    f"‖mean‖ = {float(mu.norm()):.6g}"
                )
        kappa = torch.ones((), dtype=torch.float64) if concentration is None else as_tensor(
            concentration, (), "VonMisesFisher", "concentration")
        if not float(kappa) > 0:
            raise ValueError(f"VonMisesFisher: concentration must be > 0, got {float(kappa):.6g}")
        self.raw_mean = nn.Parameter(mu.to(dtype))
        self.log_concentration = nn.Parameter(kappa.log().to(dtype))

    @property
    def mean(self) -> Tensor:
        """The unit mean direction ``μ``."""
        return self.raw_mean / torch.linalg.vector_norm(self.raw_mean)

    @property
    def concentration(self) -> Tensor:
        """``κ > 0``."""
        return self.log_concentration.exp()

    def _check_z(self, z: Tensor) -> None:
        self.sphere.validate(z, owner="VonMisesFisher.log_prob")

    def _log_prob(self, z: Tensor, context: Tensor | None) -> Tensor:
        """``log p(z)`` of points on the manifold, ``(batch,)`` (w.r.t. its volume)."""
        kappa = self.concentration.to(z.dtype)
        log_c = vmf_log_normalizer(self.sphere.n, kappa)
        return log_c + kappa * (z @ self.mean.to(z.dtype))

    def _sample(self, n: int, context: Tensor | None, temperature: float) -> Tensor:
        """``n`` points drawn on the manifold, ``(n, ambient dimension)``."""
        _no_temperature("VonMisesFisher", temperature)
        mu = self.mean.expand(n, -1)
        return sample_vmf(mu, self.concentration.expand(n))

    def extra_repr(self) -> str:
        """What ``repr`` shows after the class name."""
        return f"n={self.sphere.n}"


@serializable("von-mises-fisher-mixture")
class VonMisesFisherMixture(BaseDistribution):
    """A mixture ``p(x) = Σ_k π_k vMF(x; μ_k, κ_k)`` on ``𝕊ⁿ⁻¹``, all parts learnable.

    ``π = softmax(logits)``, ``μ_k = v_k/‖v_k‖``, ``κ_k = exp(ρ_k)``. As the base of a chain of
    spherical flows it gives a multi-modal flow with an exact density; on its own it is the
    classical mixture baseline for data on the sphere.

    Args:
        n: ambient dimension.
        components: number of components ``K``.
        means: initial unit means ``(K, n)`` (default: ``K`` directions drawn uniformly with
            ``seed``; data points make a good start).
        concentration: initial ``κ`` of every component (default 10).
        seed: seed of the default means.
    """

    def __init__(self, n: int, components: int = 8, means: Tensor | None = None,
                 concentration: float = 10.0, seed: int = 0) -> None:
        super().__init__()
        self.sphere = Sphere(n)
        n = self.sphere.n
        k = int(components)
        if k < 1:
            raise ValueError(f"VonMisesFisherMixture: components must be >= 1, got {components}")
        self.event_shape = (n,)
        if means is None:
            g = torch.Generator().manual_seed(int(seed))
            mu = self.sphere.project(torch.randn(k, n, generator=g, dtype=torch.float64))
        else:
            mu = as_tensor(means, (k, n), "VonMisesFisherMixture", "means")
            norms = mu.norm(dim=-1)
            if float((norms - 1).abs().max()) > 1e-6:
                raise ValueError("VonMisesFisherMixture: means must be unit vectors")
        if not (math.isfinite(float(concentration)) and float(concentration) > 0):
            raise ValueError(f"VonMisesFisherMixture: concentration must be finite and > 0, "
                             f"got {concentration}")
        dtype = initial_dtype(means)
        self.raw_means = nn.Parameter(mu.to(dtype))
        self.log_concentration = nn.Parameter(torch.full((k,), math.log(concentration),
                                                         dtype=dtype))
        self.logits = nn.Parameter(torch.zeros(k, dtype=dtype))

    @property
    def means(self) -> Tensor:
        """Unit means ``(K, n)``."""
        return self.raw_means / torch.linalg.vector_norm(self.raw_means, dim=-1, keepdim=True)

    @property
    def concentration(self) -> Tensor:
        """``κ_k > 0``, shape ``(K,)``."""
        return self.log_concentration.exp()

    @property
    def weights(self) -> Tensor:
        """Mixture weights ``π``, shape ``(K,)``."""
        return torch.softmax(self.logits, -1)

    def _check_z(self, z: Tensor) -> None:
        self.sphere.validate(z, owner="VonMisesFisherMixture.log_prob")

    def _log_prob(self, z: Tensor, context: Tensor | None) -> Tensor:
        """``log p(z)`` of points on the manifold, ``(batch,)`` (w.r.t. its volume)."""
        kappa = self.concentration.to(z.dtype)
        log_c = vmf_log_normalizer(self.sphere.n, kappa)
        parts = log_c + kappa * (z @ self.means.to(z.dtype).T)
        return torch.logsumexp(parts + torch.log_softmax(self.logits.to(z.dtype), -1), dim=-1)

    def _sample(self, n: int, context: Tensor | None, temperature: float) -> Tensor:
        """``n`` points drawn on the manifold, ``(n, ambient dimension)``."""
        _no_temperature("VonMisesFisherMixture", temperature)
        with torch.no_grad():
            idx = (torch.multinomial(self.weights.detach(), n, replacement=True) if n
                   else torch.zeros(0, dtype=torch.long, device=self.logits.device))
        return sample_vmf(self.means[idx], self.concentration[idx])

    def extra_repr(self) -> str:
        """What ``repr`` shows after the class name."""
        return f"n={self.sphere.n}, components={self.logits.numel()}"
