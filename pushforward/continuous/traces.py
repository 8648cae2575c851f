"""Trace estimators for the divergence ``tr(∂f/∂z)`` of a vector field, per sample.

``exact_trace`` uses one vector-Jacobian product per dimension (``d`` backward passes: right for
small ``d``); ``hutchinson_trace`` uses Hutchinson's estimator ``tr J = E[εᵀ J ε]`` with one
product ``εᵀJ`` and ``ε`` Gaussian or Rademacher (``E[εεᵀ] = I``). Both assume the samples of a
batch do not interact (row ``b`` of the output depends only on row ``b`` of the input).

The private ``_divergence_*`` functions also return the squared Frobenius norm of the Jacobian
(exactly, or by ``‖εᵀJ‖²`` with the same noise), which RNODE's regulariser needs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["exact_trace", "hutchinson_trace", "sample_noise", "NOISES", "divergence_exact",
           "divergence_hutchinson"]

NOISES = ("gaussian", "rademacher")
"""Hutchinson noise kinds: Gaussian ``ε ~ N(0, I)`` or Rademacher ``ε ∈ {−1, 1}^d``."""


def sample_noise(like: Tensor, kind: str = "gaussian") -> Tensor:
    """Noise with ``E[ε] = 0`` and ``E[εεᵀ] = I``, shaped, typed and placed like ``like``.

    Args:
        like: a tensor whose shape, dtype and device the noise copies.
        kind: ``"gaussian"`` (``N(0, I)``) or ``"rademacher"`` (``±1`` with probability ½).

    Returns:
        ``ε`` with the shape, dtype and device of ``like``.

    Raises:
        ValueError: an unknown kind.
    """
    if kind == "gaussian":
        return torch.randn_like(like)
    if kind == "rademacher":
        return torch.randint_like(like, 0, 2).mul_(2).sub_(1)
    raise ValueError(f"unknown noise {kind!r}; choose one of {', '.join(NOISES)}")


def _grad(out: Tensor, z: Tensor, weight: Tensor, create_graph: bool) -> Tensor:
    """``weightᵀ ∂out/∂z`` (zero where ``out`` does not depend on ``z``)."""
    if not out.requires_grad:
        return torch.zeros_like(z)
    (g,) = torch.autograd.grad(
        out, z, weight, create_graph=create_graph, retain_graph=True, allow_unused=True
    )
    return torch.zeros_like(z) if g is None else g


def divergence_exact(out: Tensor, z: Tensor, create_graph: bool) -> tuple[Tensor, Tensor]:
    """``(tr ∂out/∂z, ‖∂out/∂z‖_F²)`` per sample, from one VJP per dimension.

    Args:
        out: the field's output ``(batch, *event)``, computed from ``z``.
        z: the input (requires grad).
        create_graph: keep the graph (for a gradient of the result).

    Returns:
        The trace and the squared Frobenius norm, each ``(batch,)``.
    """
    d = out[0].numel() if out.shape[0] else 0
    flat = out.reshape(out.shape[0], -1)
    trace = z.new_zeros(z.shape[0])
    frobenius = z.new_zeros(z.shape[0])
    for i in range(d):
        weight = torch.zeros_like(flat)
        weight[:, i] = 1
        row = _grad(flat, z, weight, create_graph).reshape(z.shape[0], -1)
        trace = trace + row[:, i]
        frobenius = frobenius + row.pow(2).sum(-1)
    return trace, frobenius


def divergence_hutchinson(
    out: Tensor, z: Tensor, noise: Tensor, create_graph: bool
) -> tuple[Tensor, Tensor]:
    """``(εᵀ J ε, ‖εᵀ J‖²)`` per sample with ``J = ∂out/∂z`` and ``ε = noise``.

    Args:
        out: the field's output ``(batch, *event)``, computed from ``z``.
        z: the input (requires grad).
        noise: ``ε``, shaped like ``z``.
        create_graph: keep the graph (for a gradient of the result).

    Returns:
        The unbiased trace estimate and ``‖εᵀ J‖²``, each ``(batch,)``.
    """
    vjp = _grad(out, z, noise, create_graph)
    trace = (vjp * noise).reshape(z.shape[0], -1).sum(-1)
    frobenius = vjp.pow(2).reshape(z.shape[0], -1).sum(-1)
    return trace, frobenius


def _output(f: Callable[[Tensor], Tensor] | Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    if isinstance(f, Tensor):
        if not z.requires_grad:
            raise ValueError(
                "trace: z must be the tensor (requiring grad) that f was computed from"
            )
        return f, z
    if not callable(f):
        raise TypeError(f"trace: f must be a callable or a tensor, got {type(f).__name__}")
    if not z.requires_grad:
        z = z.detach().requires_grad_(True)
    with torch.enable_grad():
        return f(z), z


def exact_trace(
    f: Callable[[Tensor], Tensor] | Tensor, z: Tensor, create_graph: bool = False
) -> Tensor:
    """``tr(∂f/∂z)`` per sample with one vector-Jacobian product per dimension.

    Args:
        f: a batch-wise function ``(batch, *shape) -> (batch, *shape)``, or its output already
            computed from ``z`` (which must require grad).
        z: the points, ``(batch, *shape)``.
        create_graph: keep the graph so the trace can be differentiated.

    Returns:
        The traces, ``(batch,)``.

    Example:
        >>> import torch
        >>> A = torch.tensor([[1.0, 2.0], [0.5, -3.0]])
        >>> exact_trace(lambda z: z @ A.T, torch.randn(4, 2))
        tensor([-2., -2., -2., -2.])
    """
    out, z = _output(f, z)
    with torch.enable_grad():
        return divergence_exact(out, z, create_graph)[0]


def hutchinson_trace(
    f: Callable[[Tensor], Tensor] | Tensor,
    z: Tensor,
    noise: str | Tensor = "gaussian",
    create_graph: bool = False,
) -> Tensor:
    """Hutchinson's unbiased estimate ``εᵀ (∂f/∂z) ε`` of ``tr(∂f/∂z)``, per sample.

    One vector-Jacobian product whatever the dimension; ``E_ε[εᵀ J ε] = tr J`` for any ``ε``
    with ``E[εεᵀ] = I``. With ``S = (J + Jᵀ)/2`` the variance is ``2‖S‖_F²`` for Gaussian noise
    and ``2 Σ_{i≠j} S_ij²`` for Rademacher noise (smaller: the diagonal adds none).

    Args:
        f: a batch-wise function ``(batch, *shape) -> (batch, *shape)``, or its output already
            computed from ``z`` (which must require grad).
        z: the points, ``(batch, *shape)``.
        noise: ``"gaussian"``, ``"rademacher"``, or the noise tensor itself (shape of ``z``).
        create_graph: keep the graph so the estimate can be differentiated.

    Returns:
        The estimates, ``(batch,)`` (one noise draw per sample).

    References:
        A stochastic estimator of the trace of the influence matrix for Laplacian smoothing
        splines. M. F. Hutchinson, 1989.
        FFJORD: Free-form continuous dynamics for scalable reversible generative models.
        W. Grathwohl, R. T. Q. Chen, J. Bettencourt, I. Sutskever, D. Duvenaud, 2018.
        arXiv:1810.01367.

    Example:
        >>> import torch
        >>> A = torch.tensor([[1.0, 2.0], [0.5, -3.0]])
        >>> z = torch.randn(20000, 2)
        >>> estimate = hutchinson_trace(lambda z: z @ A.T, z, "rademacher")
        >>> abs(float(estimate.mean()) - (-2.0)) < 0.1
        True
    """
    out, z = _output(f, z)
    if isinstance(noise, str):
        noise = sample_noise(z, noise)
    elif noise.shape != z.shape:
        raise ValueError(
            f"hutchinson_trace: noise has shape {tuple(noise.shape)}, z has {tuple(z.shape)}"
        )
    with torch.enable_grad():
        return divergence_hutchinson(out, z, noise.to(z), create_graph)[0]
