"""Conditional probability paths for flow matching: ``x_t`` between a base point and a data point.

A path pairs a base sample ``z`` (time 0) with a data point ``x`` (time 1) and gives, for each
``t ∈ [0, 1]``, a point ``x_t = ψ_t(z | x)`` and the conditional target velocity
``u_t = d x_t / dt``. Flow matching regresses a vector field ``v(t, x_t)`` on ``u_t``; the
minimiser is the marginal field whose flow carries the base distribution to the data
(Lipman et al. 2022). ``cost(z, x)`` is the pairing cost minimised by minibatch optimal
transport (Tong et al. 2023). Direction convention of the library: forward (t: 0 → 1) is the
generative direction, base side ``z``, data side ``x``.

Any object with these two methods is a path (``ProbabilityPath`` is the structural type); the
flow-matching objective uses nothing else, so manifold paths (geodesic interpolation on the
sphere) plug in the same way.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["ProbabilityPath", "CondOTPath", "VPPath", "PATHS", "make_path", "stratified_uniform"]


@runtime_checkable
class ProbabilityPath(Protocol):
    """Structural type of a conditional probability path (duck-typed; nothing inherits it).

    ``sample(z, x, t)`` returns ``(x_t, u_t)``: ``z`` ``(B, *event)`` base points at ``t = 0``,
    ``x`` ``(B, *event)`` data points at ``t = 1``, ``t`` ``(B,)`` times in ``[0, 1]``; ``x_t``
    and ``u_t = d x_t/dt`` have the shape of ``x``. ``cost(z, x)`` returns the ``(B, B)`` matrix
    of pairing costs ``c(z_i, x_j)`` used by minibatch optimal transport.
    """

    def sample(self, z: Tensor, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(x_t, u_t)`` on the conditional path from ``z`` (t = 0) to ``x`` (t = 1)."""
        ...

    def cost(self, z: Tensor, x: Tensor) -> Tensor:
        """``(B, B)`` pairing costs ``c(z_i, x_j)``."""
        ...


def _check(z: Tensor, x: Tensor, t: Tensor, name: str) -> Tensor:
    """Validate shapes; return ``t`` shaped ``(B, 1, ..., 1)`` to broadcast against ``x``."""
    if z.shape != x.shape or z.dim() < 2:
        raise ValueError(
            f"{name}: z and x must share a shape (B, *event), got {tuple(z.shape)} and "
            f"{tuple(x.shape)}"
        )
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.shape != (x.shape[0],):
        raise ValueError(f"{name}: t must be shaped ({x.shape[0]},), got {tuple(t.shape)}")
    return t.reshape(-1, *([1] * (x.dim() - 1)))


def stratified_uniform(n: int, dtype: torch.dtype | None = None,
                       device: torch.device | None = None) -> Tensor:
    """``n`` stratified uniform times ``u_i = (π_i + r_i)/n``, ``r_i ~ U[0, 1)``.

    ``π`` is a random permutation of ``0…n−1``: each ``u_i`` is uniform on ``[0, 1)`` and the
    batch covers every ``1/n``-wide stratum once, so a batch average over ``t`` has a lower
    variance than with independent draws.

    Example:
        >>> u = stratified_uniform(4)
        >>> sorted((u * 4).floor().int().tolist())
        [0, 1, 2, 3]
    """
    n = int(n)
    strata = torch.randperm(n, device=device).to(dtype or torch.get_default_dtype())
    return (strata + torch.rand(n, dtype=dtype, device=device)) / n


def squared_distance(z: Tensor, x: Tensor) -> Tensor:
    """``(B, B)`` matrix of ``‖z_i − x_j‖²`` (flattened event dimensions)."""
    z, x = z.reshape(z.shape[0], -1), x.reshape(x.shape[0], -1)
    return torch.cdist(z, x).pow(2)


class CondOTPath:
    """The conditional optimal-transport path (Lipman et al. 2022, eq. 20).

    ``x_t = (1 − (1 − σ_min) t) z + t x`` and ``u_t = x − (1 − σ_min) z``: a straight line from
    the base point to (a ``σ_min``-ball around) the data point at constant speed. Pairing cost
    ``‖z − x‖²``.

    Args:
        sigma_min: width ``σ_min ∈ [0, 1)`` of the conditional path at ``t = 1``.

    Raises:
        ValueError: ``sigma_min`` outside ``[0, 1)``.

    References:
        Flow matching for generative modeling. Y. Lipman, R. T. Q. Chen, H. Ben-Hamu,
        M. Nickel, M. Le, 2022. arXiv:2210.02747.

    Example:
        >>> import torch
        >>> path = CondOTPath(sigma_min=0.0)
        >>> z, x = torch.zeros(2, 2), torch.ones(2, 2)
        >>> x_t, u_t = path.sample(z, x, torch.tensor([0.25, 1.0]))
        >>> x_t.tolist(), u_t.tolist()
        ([[0.25, 0.25], [1.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]])
    """

    def __init__(self, sigma_min: float = 1e-4) -> None:
        sigma_min = float(sigma_min)
        if not (0.0 <= sigma_min < 1.0):
            raise ValueError(f"CondOTPath: sigma_min must be in [0, 1), got {sigma_min}")
        self.sigma_min = sigma_min

    def sample(self, z: Tensor, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(x_t, u_t)``: ``x_t = (1 − (1 − σ_min) t) z + t x``, ``u_t = x − (1 − σ_min) z``."""
        t = _check(z, x, t, "CondOTPath")
        shrink = 1.0 - self.sigma_min
        return (1 - shrink * t) * z + t * x, x - shrink * z

    def cost(self, z: Tensor, x: Tensor) -> Tensor:
        """``‖z_i − x_j‖²``, ``(B, B)``."""
        return squared_distance(z, x)

    def __repr__(self) -> str:
        return f"CondOTPath(sigma_min={self.sigma_min:g})"


VP_SCHEDULES = ("diffusion", "cosine")


class VPPath:
    """A variance-preserving path ``x_t = α_t x + σ_t z`` with ``α_t² + σ_t² = 1``.

    ``u_t = α̇_t x + σ̇_t z``. Two schedules:

    - ``"diffusion"`` (Lipman et al. 2022, eq. 19; the VP-SDE of Song et al. 2021):
      ``α_t = exp(−½ T(1 − t))``, ``T(s) = β_min s + ½ (β_max − β_min) s²``. At ``t = 0`` the
      point is ``z`` up to ``α_0 = e^{−T(1)/2}`` (6.6e-3 with the defaults); near ``t = 1``,
      ``σ̇_t`` diverges, so times are clipped to ``1 − t_eps``.
    - ``"cosine"`` (the trigonometric interpolant of Albergo & Vanden-Eijnden 2023):
      ``α_t = sin(πt/2)``, ``σ_t = cos(πt/2)``, exact at both ends and smooth.

    Pairing cost ``‖z − x‖²`` (any cost gives a valid coupling; this one shortens paths).

    Args:
        schedule: ``"diffusion"`` or ``"cosine"``.
        beta_min: ``β_min`` of the diffusion schedule.
        beta_max: ``β_max`` of the diffusion schedule.
        t_eps: times are clipped to ``[0, 1 − t_eps]`` under the diffusion schedule.

    Raises:
        ValueError: an unknown schedule, ``0 ≤ β_min < β_max`` violated, ``t_eps`` outside
            ``(0, 0.5)``.

    References:
        Flow matching for generative modeling. Y. Lipman, R. T. Q. Chen, H. Ben-Hamu,
        M. Nickel, M. Le, 2022. arXiv:2210.02747.
        Building normalizing flows with stochastic interpolants. M. S. Albergo,
        E. Vanden-Eijnden, 2023. arXiv:2209.15571.

    Example:
        >>> import torch
        >>> path = VPPath("cosine")
        >>> x_t, u_t = path.sample(torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1))
        >>> torch.allclose(x_t, torch.ones(1, 2))
        True
    """

    def __init__(
        self,
        schedule: str = "diffusion",
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        t_eps: float = 1e-5,
    ) -> None:
        if schedule not in VP_SCHEDULES:
            raise ValueError(
                f"VPPath: unknown schedule {schedule!r}; choose one of {', '.join(VP_SCHEDULES)}"
            )
        beta_min, beta_max, t_eps = float(beta_min), float(beta_max), float(t_eps)
        if not (0.0 <= beta_min < beta_max and math.isfinite(beta_max)):
            raise ValueError(
                f"VPPath: need 0 <= beta_min < beta_max, got {beta_min} and {beta_max}"
            )
        if not (0.0 < t_eps < 0.5):
            raise ValueError(f"VPPath: t_eps must be in (0, 0.5), got {t_eps}")
        self.schedule = schedule
        self.beta_min, self.beta_max, self.t_eps = beta_min, beta_max, t_eps

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(α_t, σ_t, α̇_t, σ̇_t)`` at times ``t`` (any shape)."""
        if self.schedule == "cosine":
            angle = 0.5 * math.pi * t
            half_pi = 0.5 * math.pi
            return angle.sin(), angle.cos(), half_pi * angle.cos(), -half_pi * angle.sin()
        t = t.clamp(max=1.0 - self.t_eps)
        s = 1.0 - t
        big_t = self.beta_min * s + 0.5 * (self.beta_max - self.beta_min) * s * s
        rate = self.beta_min + (self.beta_max - self.beta_min) * s  # T'(s)
        alpha = torch.exp(-0.5 * big_t)
        sigma = torch.sqrt(-torch.expm1(-big_t))  # sqrt(1 − α²), accurate for small T
        d_alpha = 0.5 * rate * alpha  # d/dt α(1 − t)
        d_sigma = -0.5 * rate * alpha * alpha / sigma
        return alpha, sigma, d_alpha, d_sigma

    def sample(self, z: Tensor, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(x_t, u_t)`` with ``x_t = α_t x + σ_t z``, ``u_t = α̇_t x + σ̇_t z``."""
        t = _check(z, x, t, "VPPath")
        alpha, sigma, d_alpha, d_sigma = self.coefficients(t)
        return alpha * x + sigma * z, d_alpha * x + d_sigma * z

    def cost(self, z: Tensor, x: Tensor) -> Tensor:
        """``‖z_i − x_j‖²``, ``(B, B)``."""
        return squared_distance(z, x)

    def __repr__(self) -> str:
        if self.schedule == "cosine":
            return "VPPath(schedule='cosine')"
        return f"VPPath(beta_min={self.beta_min:g}, beta_max={self.beta_max:g})"


PATHS = ("cond-ot", "vp")


def make_path(path: str | ProbabilityPath) -> ProbabilityPath:
    """A path from its name (``"cond-ot"``, ``"vp"``) or a path object (returned as is).

    Raises:
        ValueError: an unknown name, or an object without ``sample`` and ``cost``.
    """
    if isinstance(path, str):
        if path in ("cond-ot", "condot", "ot"):
            return CondOTPath()
        if path == "vp":
            return VPPath()
        raise ValueError(f"unknown path {path!r}; choose one of {', '.join(PATHS)} or pass a "
                         "path object")
    if not (callable(getattr(path, "sample", None)) and callable(getattr(path, "cost", None))):
        raise ValueError(
            f"a path needs sample(z, x, t) and cost(z, x) methods, got {type(path).__name__}"
        )
    return path
