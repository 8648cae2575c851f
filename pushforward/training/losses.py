"""The training losses, one small class each.

``MaximumLikelihood`` and ``FlowMatching`` (defined in ``objectives``) and
``DequantizedLikelihood`` are ``Objective`` s: ``fit`` feeds them batches of data. ``ReverseKL``
needs no data: it draws from the flow (``fit_reverse_kl``). Every loss returns the scalar to
minimise; ``fit``'s ``Stepper`` does the rest.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from pushforward import _validation as _v
from pushforward.core import Flow
from pushforward.training.dequantization import VariationalDequantization, dequantized_log_prob
from pushforward.training.objectives import (
    FlowMatching,
    MaximumLikelihood,
    Objective,
    regularization,
)

__all__ = ["MaximumLikelihood", "FlowMatching", "DequantizedLikelihood", "ReverseKL"]


class DequantizedLikelihood(Objective):
    """The negative dequantisation bound of integer data, ``−mean log P(k)`` (a lower bound).

    ``log P(k) ≥ log mean_s exp[log p((k + u_s)/K) − log q(u_s | k)] − D log K`` with ``u_s ~ q``
    (uniform, or a learned ``VariationalDequantization`` trained jointly with the flow: its
    parameters join the optimizer). The batches are the integer levels ``k``.

    Args:
        levels: the number of levels ``K``.
        dequantizer: the learned noise ``q(u | k)``; None for uniform noise.
        samples: noise draws per point (more: the tighter importance-weighted bound).

    Example:
        >>> import torch, pushforward as pf
        >>> flow = pf.flows.MAF(2, transforms=1, hidden=[8])
        >>> k = torch.randint(0, 4, (8, 2))
        >>> loss, value = DequantizedLikelihood(4).loss(flow, flow.log_prob, k, None)
        >>> loss.shape
        torch.Size([])
    """

    name = "dequantized"

    def __init__(self, levels: int, dequantizer: VariationalDequantization | None = None,
                 samples: int = 1) -> None:
        self.levels = _v.check_int(levels, "DequantizedLikelihood", "levels", 2)
        self.samples = _v.check_int(samples, "DequantizedLikelihood", "samples")
        self.dequantizer = dequantizer

    def parameters(self) -> list[nn.Parameter]:
        """The dequantiser's parameters (none for uniform noise)."""
        return [] if self.dequantizer is None else list(self.dequantizer.parameters())

    def loss(
        self, flow: nn.Module, model: nn.Module, x: Tensor, context: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """``(−mean bound + regularisers, −mean bound)`` of a batch of levels ``x``."""
        if context is not None:
            raise ValueError("DequantizedLikelihood: a conditional model is not supported")
        nll = -dequantized_log_prob(flow, x, self.levels, self.dequantizer, self.samples).mean()
        extra = regularization(flow)
        return (nll if extra is None else nll + extra), nll


class ReverseKL:
    """The negative ELBO ``E_q[log q(x) − log p̃(x)] = KL(q ‖ p) − log Z``, ``x ~ q`` the flow.

    Args:
        log_density: ``log p̃``, mapping ``x (n, *event)`` to ``(n,)``, differentiable in ``x``.

    Example:
        >>> import torch, pushforward as pf
        >>> flow = pf.flows.MAF(2, transforms=1, hidden=[8])
        >>> ReverseKL(lambda x: -0.5 * (x ** 2).sum(-1)).loss(flow, 16).shape
        torch.Size([])
    """

    def __init__(self, log_density: Callable[[Tensor], Tensor]) -> None:
        self.log_density = log_density

    def loss(self, flow: Flow, batch_size: int) -> Tensor:
        """The loss of ``batch_size`` reparametrised draws, plus the flow's regularisers.

        Raises:
            ValueError: ``log_density`` returns the wrong shape.
        """
        with _v.validation(False):  # a non-finite draw is skipped by the stepper, not raised
            x, log_q = flow.rsample_and_log_prob(batch_size)
        log_p = self.log_density(x)
        if not isinstance(log_p, Tensor) or log_p.shape != log_q.shape:
            raise ValueError(
                f"fit_reverse_kl: log_density must return a tensor of shape "
                f"{tuple(log_q.shape)}, got {getattr(log_p, 'shape', type(log_p))}"
            )
        loss = (log_q - log_p).mean()
        extra = regularization(flow)
        return loss if extra is None else loss + extra
