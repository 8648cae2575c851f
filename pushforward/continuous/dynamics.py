"""The joint ODE of a CNF: state, log-density and RNODE integrands, with an NFE counter.

For a field ``f(t, z)`` the system integrated by ``CNF`` is

    dz/dt = f(t, z),   dℓ/dt = tr(∂f/∂z),   dK/dt = ‖f‖²,   dJ/dt = ‖∂f/∂z‖_F²,

where ``ℓ`` accumulates the log-determinant and ``K``, ``J`` (present only when regularising)
are RNODE's kinetic-energy and Jacobian-Frobenius integrals. Under Hutchinson's estimator
the trace is ``εᵀ(∂f/∂z)ε`` and the Frobenius term ``‖εᵀ ∂f/∂z‖²`` with the same noise ``ε``,
drawn once per solve.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pushforward.continuous.traces import divergence_exact, divergence_hutchinson

__all__ = ["CNFDynamics", "FieldDynamics", "SolveRecord"]


class CNFDynamics:
    """The right-hand side ``(t, state) -> d state/dt`` of one CNF solve.

    One instance per solve: it holds the context and the noise of that solve and counts the
    field evaluations, those made while the solver runs (``nfe_forward``) apart from those
    made later by the adjoint backward pass (``nfe_backward``).

    Args:
        field: the vector field, called ``field(t, z)`` or ``field(t, z, context)``.
        context: the context passed to the field (None: the field is called without one).
        noise: Hutchinson's noise (None: exact trace and exact Frobenius norm).
        regularize: also return the two RNODE integrands.
    """

    def __init__(
        self,
        field: nn.Module,
        context: Tensor | None,
        noise: Tensor | None,
        regularize: bool,
    ) -> None:
        self.field = field
        self.context = context
        self.noise = noise
        self.regularize = regularize
        self.solving = True
        self.nfe_forward = 0
        self.nfe_backward = 0

    def evaluate(self, t: Tensor, z: Tensor) -> Tensor:
        """``f(t, z)`` with the solve's context, checked for shape on the first call."""
        out = self.field(t, z) if self.context is None else self.field(t, z, self.context)
        if self.nfe_forward + self.nfe_backward <= 1:
            if not isinstance(out, Tensor) or out.shape != z.shape:
                got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise ValueError(
                    f"CNF: the field returned {got} for a state of shape {tuple(z.shape)}; "
                    "field(t, z, context) must return dz/dt with the shape of z"
                )
        return out

    def count(self) -> None:
        """One more field evaluation: of the solve, or of the adjoint backward pass after it."""
        if self.solving:
            self.nfe_forward += 1
        else:
            self.nfe_backward += 1

    def __call__(self, t: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """The time derivative of the state at ``t`` (counting field evaluations)."""
        self.count()
        create_graph = torch.is_grad_enabled()
        z = state[0]
        with torch.enable_grad():
            if not z.requires_grad:
                z = z.detach().requires_grad_(True)
            out = self.evaluate(t, z)
            if self.noise is None:
                trace, frobenius = divergence_exact(out, z, create_graph)
            else:
                trace, frobenius = divergence_hutchinson(out, z, self.noise, create_graph)
        if not create_graph:
            out, trace, frobenius = out.detach(), trace.detach(), frobenius.detach()
        if not self.regularize:
            return out, trace
        kinetic = out.pow(2).reshape(out.shape[0], -1).sum(-1)
        return out, trace, kinetic, frobenius


class FieldDynamics(CNFDynamics):
    """``(t, (z,)) -> (f(t, z),)``: the state alone, for a solve whose ``ladj`` nobody reads.

    No trace and no autograd inside the right-hand side (``CNF.push``); counts evaluations as
    ``CNFDynamics`` does.
    """

    def __init__(self, field: nn.Module, context: Tensor | None) -> None:
        super().__init__(field, context, None, False)

    def __call__(self, t: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """``dz/dt`` at ``t``."""
        self.count()
        return (self.evaluate(t, state[0]),)


class SolveRecord:
    """What a CNF's last solve left behind: its dynamics (NFE counters) and RNODE integrals.

    Kept outside the module's tensors: a deep copy or a pickle of the CNF starts afresh.
    """

    def __init__(self) -> None:
        self.dynamics: CNFDynamics | None = None
        self.kinetic: Tensor | None = None
        self.frobenius: Tensor | None = None

    def __deepcopy__(self, memo: dict) -> SolveRecord:
        return SolveRecord()

    def __reduce__(self) -> tuple:
        return (SolveRecord, ())
