"""Shared-parameter kernels of the sphere flows (private).

A chain of small manifold layers (``n = 3``) is bound by per-operation overhead, not arithmetic.
Two things cost most per layer and call: building the constrained matrix ``M = P L U`` through
some 25 autograd nodes, and an ``LU`` solve per call for the inverse. Here the matrix (or its
inverse, formed once per call from the factors) is one ``torch.autograd.Function``
(:class:`FactoredMatrix`) with the backward written out by hand, and the batch side is the plain
formula with one matrix product (:func:`normalized_affine_reference`,
:func:`normalized_affine_inverse_reference`).

Double backward (``create_graph=True``: gradient penalties, score matching) recomputes the
factored matrix with autograd inside ``backward``, so higher derivatives stay exact. Under a
``torch.func`` transform the callers use the autograd path instead.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = [
    "FactoredMatrix",
    "factored_matrix_reference",
    "normalized_affine_reference",
    "normalized_affine_inverse_reference",
]


def normalized_affine_reference(z: Tensor, m: Tensor | None, b: Tensor | None
                                ) -> tuple[Tensor, Tensor]:
    """``x = M(z + b)/‖M(z + b)‖``, ``log R − log|det M| = log(1 + zᵀb) − n log‖M(z + b)‖``.

    Args:
        z: points ``(batch, n)`` on the sphere.
        m: one matrix ``M`` ``(n, n)``, or None for the identity.
        b: one shift ``(n,)`` in the open unit ball, or None for 0.

    Returns:
        ``x`` ``(batch, n)`` and ``log R`` without the ``log|det M|`` term, ``(batch,)``.
    """
    n = z.shape[-1]
    u = z if b is None else z + b
    if m is not None:
        u = u @ m.T
    r = torch.linalg.vector_norm(u, dim=-1)
    ladj = -n * torch.log(r)
    if b is not None:
        ladj = ladj + torch.log1p(z @ b)
    return u / r.unsqueeze(-1), ladj


def normalized_affine_inverse_reference(x: Tensor, a: Tensor | None, b: Tensor | None,
                                        s: Tensor | None) -> tuple[Tensor, Tensor]:
    """Inverse of the normalised affine map, given ``A = M⁻¹``, ``b`` and ``s = 1 − ‖b‖²``.

    With ``w = Ax``, ``t = wᵀb``, ``ρ² = ‖w‖²``, ``d = sqrt(t² + ρ²s)``:
    ``ℓ = (t + d)/ρ²`` (written ``s/(d − t)`` for ``t < 0``), ``z = ℓw − b`` and
    ``−log R(z) − (−log|det M|) = (n − 1) log ℓ − log d``; without ``b``: ``z = w/ρ``,
    ``−(n/2) log ρ²``.

    Args:
        x: points ``(batch, n)`` on the sphere.
        a: ``M⁻¹`` ``(n, n)``, or None for the identity.
        b: ``(n,)`` in the open unit ball, or None.
        s: ``1 − ‖b‖²`` as a tensor ``(1,)`` (exact, from the ball parametrisation), with ``b``.

    Returns:
        ``z`` ``(batch, n)`` and the log volume ratio of the inverse without ``−log|det M|``.
    """
    n = x.shape[-1]
    w = x if a is None else x @ a.T
    rho = torch.linalg.vector_norm(w, dim=-1)  # one kernel; (w * w).sum(-1) is two, slower
    if b is None:
        return w / rho.unsqueeze(-1), -n * torch.log(rho)
    assert s is not None
    rho2 = rho * rho
    t = w @ b
    d = torch.sqrt(t * t + rho2 * s)
    ell = torch.where(t >= 0, (t + d) / rho2, s / (d - t))
    return ell.unsqueeze(-1) * w - b, (n - 1) * torch.log(ell) - torch.log(d)




def factored_matrix_reference(lower: Tensor, upper: Tensor, log_diag: Tensor,
                              permutation: Tensor, sign: Tensor, identity: Tensor,
                              invert: bool) -> tuple[Tensor, Tensor]:
    """``M = P L U`` (or ``M⁻¹``) and ``log|det M|`` by plain autograd operations.

    ``L = tril(lower, −1) + I``, ``U = triu(upper, 1) + diag(sign ⊙ exp(log_diag))``.

    Returns:
        ``M`` or ``M⁻¹``, shape ``(d, d)``, and ``log|det M| = Σ log_diag``, shape ``(1,)``.
    """
    lo = torch.tril(lower, -1) + identity
    up = torch.triu(upper, 1) + torch.diag(sign * log_diag.exp())
    m = permutation @ lo @ up
    # inv_ex: invertible by construction, so no error check (a host sync on a GPU).
    return torch.linalg.inv_ex(m)[0] if invert else m, log_diag.sum(-1, keepdim=True)


class FactoredMatrix(torch.autograd.Function):
    """:func:`factored_matrix_reference` as one autograd node with a hand-written backward.

    With ``Ũ = U``, ``Q = P L`` and upstream ``(G_M, g)`` (``G_M = −Mᵀ⁻¹ G_A Mᵀ⁻¹`` when the
    output is ``A = M⁻¹``): ``∂lower = tril(Pᵀ G_M Uᵀ, −1)``, ``G_U = Qᵀ G_M``,
    ``∂upper = triu(G_U, 1)``, ``∂log_diag = diag(G_U) ⊙ sign ⊙ exp(log_diag) + g``.
    The permutation, signs and identity are constants (no gradient).

    Example:
        >>> import torch
        >>> lower, upper = torch.zeros(2, 2), torch.zeros(2, 2)
        >>> log_diag, sign, eye = torch.zeros(2), torch.ones(2), torch.eye(2)
        >>> a, logdet = FactoredMatrix.apply(lower, upper, log_diag, eye, sign, eye, True)
        >>> a.tolist(), logdet.tolist()
        ([[1.0, 0.0], [0.0, 1.0]], [0.0])
    """

    @staticmethod
    def forward(ctx: Any, lower: Tensor, upper: Tensor, log_diag: Tensor, permutation: Tensor,
                sign: Tensor, identity: Tensor, invert: bool) -> tuple[Tensor, Tensor]:
        diag_u = sign * log_diag.exp()
        q = permutation @ (torch.tril(lower, -1) + identity)
        up = torch.triu(upper, 1) + torch.diag(diag_u)
        m = q @ up
        out = torch.linalg.inv_ex(m)[0] if invert else m  # no error check: no host sync
        ctx.save_for_backward(lower, upper, log_diag, permutation, sign, identity, out)
        ctx.invert = invert
        ctx.factors = (q, up, diag_u)
        return out, log_diag.sum(-1, keepdim=True)

    @staticmethod
    def backward(ctx: Any, g_out: Tensor, g_logdet: Tensor) -> tuple[Tensor | None, ...]:
        lower, upper, log_diag, permutation, sign, identity, out = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: differentiate the reference
            with torch.enable_grad():
                leaves = (lower, upper, log_diag)
                outputs = factored_matrix_reference(*leaves, permutation, sign, identity,
                                                    ctx.invert)
                grads = torch.autograd.grad(outputs, leaves, (g_out, g_logdet),
                                            create_graph=True, allow_unused=True)
            return (*grads, None, None, None, None)
        q, up, diag_u = ctx.factors
        g_m = -(out.T @ g_out @ out.T) if ctx.invert else g_out
        g_lower = torch.tril(permutation.T @ g_m @ up.T, -1)
        g_up = q.T @ g_m
        g_log_diag = torch.diagonal(g_up).mul(diag_u).add_(g_logdet)
        return g_lower, torch.triu(g_up, 1), g_log_diag, None, None, None, None
