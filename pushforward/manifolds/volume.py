"""The generic differential volume ratio of a map between manifolds, by autograd (SPEC §4).

For an ``m``-manifold ``ℳ ⊂ ℝⁿ`` and a map ``f: ℳ → ℳ`` written in ambient coordinates,

    R_f(x) = |det(T_yᵀ F_x T_x)|,   y = f(x),

with ``F_x`` the ``n × n`` ambient Jacobian of ``f`` and ``T_x`` an ``n × m`` matrix of orthonormal
columns spanning the tangent space at ``x``. The density of ``y = f(x)`` with respect to the
manifold's volume (Hausdorff) measure is ``p_Y(y) = p_X(x) / R_f(x)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["log_volume_ratio", "tangent_from_projection", "volume_ratio_reference"]


def _ambient_jacobian(fn: Callable[[Tensor], Tensor], x: Tensor, create_graph: bool) -> tuple:
    """``(fn(x), J)`` with ``J[b] = ∂fn(x)[b] / ∂x[b]`` of shape ``(batch, n, n)``.

    ``fn`` must act on each row independently (true of every transform in eval mode); the
    Jacobian then takes ``n`` backward passes for the whole batch.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True) if not x.requires_grad else x
        y = fn(x)
        if isinstance(y, tuple):
            y = y[0]
        if y.shape != x.shape:
            raise ValueError(
                f"log_volume_ratio: the map must keep the ambient shape, got {tuple(y.shape)} "
                f"from {tuple(x.shape)}"
            )
        rows = []
        for i in range(x.shape[1]):
            (g,) = torch.autograd.grad(
                y[:, i].sum(), x, create_graph=create_graph, retain_graph=True,
                allow_unused=True,
            )
            rows.append(torch.zeros_like(x) if g is None else g)
        return y, torch.stack(rows, dim=1)


def tangent_from_projection(
    project: Callable[[Tensor], Tensor], x: Tensor, dim: int
) -> Tensor:
    """Orthonormal tangent bases ``(batch, n, dim)`` at ``x`` from the projection's Jacobian.

    The Jacobian ``Π_x`` of an idempotent projection ``π`` onto the manifold has the tangent
    space at ``x`` as its column space. The SPEC's recipe takes the first ``dim`` columns of the
    ``Q`` of a QR of ``Π_x``; that fails when those particular columns happen to be dependent
    (on the sphere, whenever ``x_n = 0``), so the left singular vectors of the ``dim`` largest
    singular values are used instead: the same subspace, always well defined. The bases carry no
    gradient (the volume ratio does not depend on the choice of basis; to first order neither
    does its derivative).

    Args:
        project: the projection ``π``, ``(batch, n) -> (batch, n)``.
        x: points on the manifold, ``(batch, n)``.
        dim: the manifold's dimension ``m``.

    Returns:
        ``T`` with ``T[b]ᵀ T[b] = I_m``, shape ``(batch, n, dim)``.
    """
    _, jac = _ambient_jacobian(project, x.detach(), create_graph=False)
    u, _, _ = torch.linalg.svd(jac.detach())
    return u[..., :dim]


def log_volume_ratio(
    f: Callable[[Tensor], Tensor | tuple[Tensor, ...]],
    project: Callable[[Tensor], Tensor],
    x: Tensor,
    dim: int,
) -> Tensor:
    """``log R_f(x) = log|det(T_yᵀ F_x T_x)|`` per sample, by autograd (the reference).

    ``F_x`` is the ambient Jacobian of ``f`` at ``x`` (``n`` backward passes for the batch),
    ``T_x`` and ``T_y`` orthonormal tangent bases at ``x`` and at ``y = f(x)`` taken from the
    Jacobian of the projection (:func:`tangent_from_projection`). O(n³) per sample: the reference
    every closed-form volume ratio is tested against. The result is differentiable with respect
    to the parameters of ``f`` (and to ``x``).

    Args:
        f: the map in ambient coordinates, ``(batch, n) -> (batch, n)`` acting row by row (a
            ``Transform``'s forward, whose ``(x, ladj)`` output is accepted: the first item is
            used).
        project: an idempotent projection onto the manifold (e.g. ``Sphere(n).project``).
        x: points on the manifold, ``(batch, n)``.
        dim: the manifold's dimension ``m`` (``n − 1`` for the sphere and the simplex).

    Returns:
        ``log R_f(x)``, shape ``(batch,)``.

    Raises:
        ValueError: ``x`` is not ``(batch, n)`` or ``dim`` is not in ``1 … n``.

    Example:
        >>> import torch
        >>> from pushforward.manifolds import Sphere
        >>> s = Sphere(3)
        >>> x = s.project(torch.randn(4, 3, dtype=torch.float64))
        >>> r = log_volume_ratio(lambda u: s.project(2 * u), s.project, x, 2)
        >>> bool(r.abs().max() < 1e-12)
        True
    """
    if not isinstance(x, Tensor) or x.dim() != 2:
        raise ValueError(f"log_volume_ratio: x must be (batch, n), got {getattr(x, 'shape', x)}")
    dim = int(dim)
    if not 1 <= dim <= x.shape[1]:
        raise ValueError(f"log_volume_ratio: dim must be in 1..{x.shape[1]}, got {dim}")
    if x.shape[0] == 0:
        return x.new_zeros(0)
    y, jac = _ambient_jacobian(f, x, create_graph=torch.is_grad_enabled())
    t_x = tangent_from_projection(project, x, dim).to(jac.dtype)
    t_y = tangent_from_projection(project, y.detach(), dim).to(jac.dtype)
    return torch.linalg.slogdet(t_y.transpose(1, 2) @ jac @ t_x)[1]


def volume_ratio_reference(manifold: object) -> Callable:
    """A ``ladj_reference`` for ``check_transform`` on ``manifold`` (a ``Sphere`` or ``Simplex``).

    The reference is the log volume ratio of the transform's forward map at the base-side points
    ``z`` (which must lie on the manifold), computed by autograd.

    Args:
        manifold: a ``Sphere`` or ``Simplex`` (anything with ``project`` and ``dim``).

    Returns:
        ``reference(t, z, context) = log_volume_ratio(t(·, context), manifold.project, z,
        manifold.dim)``, a function returning ``(batch,)``.

    Example:
        >>> import torch
        >>> from pushforward.diagnostics import check_transform
        >>> from pushforward.manifolds import NormalizedLinear, Sphere
        >>> s = Sphere(3)
        >>> x = s.project(torch.randn(5, 3, dtype=torch.float64))
        >>> ref = volume_ratio_reference(s)
        >>> errors = check_transform(NormalizedLinear(3), x, ladj_reference=ref)
        >>> errors["jacobian"] < 1e-9
        True
    """
    project = manifold.project  # type: ignore[attr-defined]
    dim = int(manifold.dim)  # type: ignore[attr-defined]

    def reference(t: Callable, z: Tensor, context: Tensor | None = None) -> Tensor:
        return log_volume_ratio(lambda u: t(u, context)[0], project, z, dim)

    return reference
