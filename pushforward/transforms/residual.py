"""Invertible residual blocks (i-ResNet / Residual Flows): ``z = x + g(x)`` with ``Lip(g) < 1``.

The residual sits on the **normalizing** side, as in the papers: the density needs one pass,
``z = x + g(x)``, ``log p(x) = log p₀(z) + log det(I + J_g(x))``. The generative direction is
its inverse, ``x = z − g(x)``, solved by fixed-point iteration (a contraction, since
``Lip(g) < 1``) polished by Newton steps when ``d`` is small.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pushforward import _validation as _v
from pushforward._validation import in_torch_func
from pushforward.core import Transform
from pushforward.specs import serializable

__all__ = ["ResidualBlock", "LipschitzLinear", "LipSwish"]

_LOGDET_MODES = ("auto", "exact", "roulette", "series")


class LipSwish(nn.Module):
    """``x σ(βx) / 1.1`` with a learnable ``β = softplus(β̂) > 0``: smooth and 1-Lipschitz.

    References:
        Residual Flows for Invertible Generative Modeling, Chen et al., 2019, arXiv:1906.02735.
    """

    def __init__(self) -> None:
        super().__init__()
        self.beta_raw = nn.Parameter(torch.tensor(0.5413))  # softplus(0.5413) ≈ 1

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return x * torch.sigmoid(F.softplus(self.beta_raw) * x) / 1.1


class LipschitzLinear(nn.Module):
    """A linear layer whose weight is rescaled so its spectral norm is at most ``coeff``.

    ``W̄ = W / max(1, σ(W)/coeff)`` (only shrinks; Behrmann et al. 2019, Chen et al. 2019).
    ``σ`` is computed exactly (``spectral="exact"``: ``‖W‖₂`` from an SVD, deterministic in
    every mode) or by power iteration (``spectral="power"``: ``iterations`` steps per training
    call on persistent vectors ``u, v``; eval mode and float64 use the exact, converged ``σ`` and
    never update the vectors, so the map is a fixed function of the parameters).

    An optional unnormalised ``context`` input is added: ``W̄ x + C c + b`` (the Lipschitz
    bound concerns ``x`` only).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        coeff: float = 0.97,
        context_features: int = 0,
        spectral: str = "exact",
        iterations: int = 1,
    ) -> None:
        super().__init__()
        if not 0 < coeff < 1:
            raise ValueError(f"LipschitzLinear: coeff must be in (0, 1), got {coeff}")
        if spectral not in ("exact", "power"):
            raise ValueError(
                f"LipschitzLinear: spectral must be 'exact' or 'power', got {spectral!r}"
            )
        self.coeff, self.spectral, self.iterations = float(coeff), spectral, int(iterations)
        linear = nn.Linear(in_features, out_features)
        self.weight, self.bias = linear.weight, linear.bias
        self.context = (
            nn.Linear(context_features, out_features, bias=False) if context_features else None
        )
        if spectral == "power":
            self.register_buffer("u", F.normalize(torch.randn(out_features), dim=0))
            self.register_buffer("v", F.normalize(torch.randn(in_features), dim=0))

    def sigma(self) -> Tensor:
        """The (estimated) spectral norm of the raw weight."""
        w = self.weight
        if self.spectral == "exact" or not self.training or w.dtype == torch.float64:
            return torch.linalg.matrix_norm(w, ord=2)
        with torch.no_grad():
            u, v = self.u, self.v
            for _ in range(self.iterations):
                v = F.normalize(w.T @ u, dim=0)
                u = F.normalize(w @ v, dim=0)
            self.u.copy_(u)
            self.v.copy_(v)
        return torch.dot(u, w @ v)

    def normalized_weight(self) -> Tensor:
        """``W̄ = W / max(1, σ/coeff)``."""
        return self.weight / torch.clamp(self.sigma() / self.coeff, min=1.0)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:  # noqa: D102
        out = F.linear(x, self.normalized_weight(), self.bias)
        if self.context is not None:
            assert context is not None
            out = out + self.context(context.to(x.dtype))
        return out


class _Residual(nn.Module):
    """``g(x, c)``: spectrally normalised linear layers with LipSwish between them."""

    def __init__(
        self,
        features: int,
        hidden: Sequence[int],
        coeff: float,
        context_features: int,
        spectral: str,
    ) -> None:
        super().__init__()
        widths = [features, *(int(h) for h in hidden), features]
        self.layers = nn.ModuleList(
            LipschitzLinear(a, b, coeff, context_features if i == 0 else 0, spectral)
            for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]))
        )
        self.activations = nn.ModuleList(LipSwish() for _ in widths[1:-1])

    def forward(self, x: Tensor, context: Tensor | None) -> Tensor:  # noqa: D102
        weights = [layer.normalized_weight() for layer in self.layers]
        return self.apply_with(weights, x, context)

    def apply_with(self, weights: list[Tensor], x: Tensor, context: Tensor | None) -> Tensor:
        """``g(x)`` with precomputed normalised weights (one SVD per call, not per point)."""
        for i, (layer, w) in enumerate(zip(self.layers, weights)):
            out = F.linear(x, w, layer.bias)
            if layer.context is not None:
                assert context is not None
                out = out + layer.context(context.to(x.dtype))
            x = out if i == len(self.layers) - 1 else self.activations[i](out)
        return x


@serializable("residual-block")
class ResidualBlock(Transform):
    """An invertible residual block: normalizing ``z = x + g(x)``, generative its inverse.

    ``g`` is an MLP of spectrally normalised layers (``‖W̄‖₂ ≤ coeff < 1``) and 1-Lipschitz
    LipSwish activations, so ``Lip(g) < 1`` and the block is invertible.

    Inverse (normalizing, one pass): ``z = x + g(x, c)``,
    ``ladj = log det(I + J_g(x)) = Σ_{k≥1} (−1)^{k+1} tr(J_gᵏ)/k``.
    Forward (generative, numerical): ``x = z − g(x, c)`` by fixed-point iteration (geometric
    convergence at rate ``Lip(g)``), then Newton steps ``x ← x − (I + J_g)⁻¹(x + g(x) − z)`` when
    ``d ≤ exact_below``; ``ladj = −log det(I + J_g(x))``. Gradients of the generative direction
    are the implicit ones: a Newton step from the detached solution (``d ≤ exact_below``) or a
    backward hook solving ``(I + J_g)ᵀ u = v`` by fixed point.

    Log-determinant modes (``logdet``):
        ``"exact"``: ``slogdet(I + J_g)`` of the autograd Jacobian (d backward passes, batched;
        differentiable) — for small ``d``; ``exact_ladj = True``.
        ``"roulette"``: the unbiased Russian-roulette estimator (Chen et al. 2019) — the first
        ``terms`` terms of the series always, then ``N ~ Geometric(p)`` more, each term
        reweighted by ``1/P(N ≥ k − terms)``, traces by Hutchinson with one Gaussian ``v`` per
        sample; ``exact_ladj = False``.
        ``"series"``: the series truncated after ``terms`` terms (biased; i-ResNet).
        ``"auto"`` (default): exact when ``d ≤ exact_below``, roulette otherwise.

    Args:
        features: the dimension ``d``.
        hidden: hidden widths of ``g``.
        context_features: width of the context (fed to ``g``'s first layer, unnormalised).
        coeff: the spectral-norm bound per layer, in ``(0, 1)``.
        logdet: ``"auto"``, ``"exact"``, ``"roulette"`` or ``"series"``.
        terms: exact terms of the series (roulette) or the truncation (series).
        p: the geometric stopping probability of the roulette.
        exact_below: the largest ``d`` for which ``"auto"`` picks the exact mode.
        spectral: ``"exact"`` (SVD) or ``"power"`` (power iteration in training).
        max_iter: the largest number of fixed-point iterations of the generative direction.

    References:
        Invertible Residual Networks, Behrmann, Grathwohl, Chen, Duvenaud & Jacobsen, 2019,
        arXiv:1811.00995.
        Residual Flows for Invertible Generative Modeling, Chen, Behrmann, Duvenaud &
        Jacobsen, 2019, arXiv:1906.02735.

    Example:
        >>> import torch
        >>> t = ResidualBlock(2, hidden=(16,))
        >>> x = torch.randn(5, 2, dtype=torch.float64)
        >>> t = t.double()
        >>> z, ladj = t.inverse(x)
        >>> torch.allclose(t(z)[0], x, atol=1e-10)
        True
    """

    analytic_inverse = False

    def __init__(
        self,
        features: int,
        hidden: Sequence[int] = (64, 64),
        context_features: int = 0,
        coeff: float = 0.97,
        logdet: str = "auto",
        terms: int = 2,
        p: float = 0.5,
        exact_below: int = 16,
        spectral: str = "exact",
        max_iter: int = 2000,
    ) -> None:
        super().__init__(features, context_features=context_features)
        if logdet not in _LOGDET_MODES:
            raise ValueError(
                f"ResidualBlock: logdet must be one of {_LOGDET_MODES}, got {logdet!r}"
            )
        if not 0 < p < 1:
            raise ValueError(f"ResidualBlock: p must be in (0, 1), got {p}")
        _v.check_int(terms, "ResidualBlock", "terms", type_error=False)
        self.features = int(features)
        self.exact_below = int(exact_below)
        if logdet == "auto":
            logdet = "exact" if self.features <= self.exact_below else "roulette"
        self.logdet = logdet
        self.exact_ladj = logdet == "exact"
        self.terms, self.p, self.max_iter = int(terms), float(p), int(max_iter)
        self.g = _Residual(self.features, hidden, coeff, self.context_features, spectral)

    # -- log-determinants ---------------------------------------------------------------------
    def _jacobian(self, x: Tensor, context: Tensor | None, create_graph: bool) -> Tensor:
        """``J_g(x)``, ``(batch, d, d)``: ``vmap`` of ``jacrev`` over the batch.

        One path, inside a user's ``torch.func`` transform as outside it; without
        ``create_graph`` the result is a constant for the enclosing computation.
        """
        weights = [layer.normalized_weight() for layer in self.g.layers]

        def g_one(xi: Tensor, ci: Tensor | None) -> Tensor:
            return self.g.apply_with(weights, xi[None], None if ci is None else ci[None])[0]

        jacobian = torch.func.vmap(torch.func.jacrev(g_one),
                                   in_dims=(0, None if context is None else 0))
        if create_graph:
            return jacobian(x, context)
        with torch.no_grad():
            return jacobian(x, context)

    def _log_det(self, x: Tensor, context: Tensor | None) -> Tensor:
        """``log det(I + J_g(x))`` (exact or estimated, per ``self.logdet``)."""
        create = torch.is_grad_enabled()
        if self.logdet == "exact":
            jac = self._jacobian(x, context, create)
            eye = torch.eye(self.features, dtype=x.dtype, device=x.device)
            out = torch.linalg.slogdet(eye + jac)[1]
            return out if create else out.detach()
        v = torch.randn_like(x)
        if in_torch_func():  # requires_grad_ is not allowed there: torch.func's own vjp
            _, vjp = torch.func.vjp(lambda inp: self.g(inp, context), x)
            return self._series(lambda w: vjp(w)[0], v, create)
        with torch.enable_grad():
            inp = x if (create and x.requires_grad) else x.detach().requires_grad_(True)
            gx = self.g(inp, context)
            return self._series(
                lambda w: torch.autograd.grad(gx, inp, w, create_graph=create,
                                              retain_graph=True)[0], v, create)

    def _series(self, vjp: Callable[[Tensor], Tensor], v: Tensor, create: bool) -> Tensor:
        """``Σ_k (−1)^{k+1}/k · vᵀ J^k v`` by repeated vector-Jacobian products ``w ← Jᵀw``.

        Truncated after ``terms`` terms (``"series"``), or continued by a Russian roulette
        (``"roulette"``: a geometric number of extra terms, each reweighted by ``1/P(N ≥ k)``,
        unbiased).
        """
        w, total = v, v.new_zeros(v.shape[0])
        count = self.terms
        if self.logdet == "roulette":
            # A host-side count: drawn on the CPU whatever the device (no synchronisation).
            probs = torch.tensor(self.p, device="cpu")
            count += int(torch.distributions.Geometric(probs=probs).sample())
        for k in range(1, count + 1):
            w = vjp(w)
            weight = 1.0
            if self.logdet == "roulette" and k > self.terms:
                weight = (1 - self.p) ** -(k - self.terms)  # 1 / P(N ≥ k − terms)
            total = total + ((-1) ** (k + 1) / k * weight) * (w * v).sum(-1)
        return total if create else total.detach()

    def _inverse(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return x + self.g(x, context), self._log_det(x, context)

    @torch.no_grad()
    def _solve(self, z: Tensor, context: Tensor | None) -> Tensor:
        """``x`` with ``x + g(x) = z``: fixed point, then Newton polish for small ``d``."""
        weights = [layer.normalized_weight() for layer in self.g.layers]
        eps = torch.finfo(z.dtype).eps
        newton = self.features <= self.exact_below
        loose = math.sqrt(eps) if newton else 4 * eps
        x = z.clone()
        previous = math.inf
        for _ in range(self.max_iter):
            new = z - self.g.apply_with(weights, x, context)
            change = float((new - x).abs().max()) if x.numel() else 0.0
            x = new
            scale = 1 + float(x.abs().max()) if x.numel() else 1.0
            # Converged, or stalled at the round-off floor (the change no longer shrinks).
            if change <= loose * scale or (change >= previous and change <= 1e3 * eps * scale):
                break
            previous = change
        if newton:
            eye = torch.eye(self.features, dtype=z.dtype, device=z.device)
            for _ in range(8):
                residual = x + self.g.apply_with(weights, x, context) - z
                jac = self._jacobian(x, context, False)
                step = torch.linalg.solve(eye + jac, residual.unsqueeze(-1)).squeeze(-1)
                x = x - step
                if float(step.abs().max()) <= 4 * eps * (1 + float(x.abs().max())):
                    break
        return x

    def _attach(self, x: Tensor, z: Tensor, context: Tensor | None) -> Tensor:
        """Re-attach the implicit gradient of ``x(z, θ)`` to the detached solution ``x``."""
        if self.features <= self.exact_below or in_torch_func():
            jac = self._jacobian(x, context, False)
            eye = torch.eye(self.features, dtype=x.dtype, device=x.device)
            residual = x + self.g(x, context) - z
            return x - torch.linalg.solve(eye + jac, residual.unsqueeze(-1)).squeeze(-1)
        leaf = x.detach().requires_grad_(True)
        gx = self.g(leaf, context)
        out = z - gx
        max_iter, tol = self.max_iter, 4 * torch.finfo(x.dtype).eps

        def adjoint(v: Tensor) -> Tensor:  # solve (I + J)ᵀ u = v by u = v − Jᵀu
            u, previous = v, math.inf
            for _ in range(max_iter):
                (jtu,) = torch.autograd.grad(gx, leaf, u, retain_graph=True)
                new = v - jtu
                gap = float((new - u).detach().abs().max())
                scale = 1 + float(new.detach().abs().max())
                u = new
                if gap <= tol * scale or (gap >= previous and gap <= 250 * tol * scale):
                    break
                previous = gap
            return u

        out.register_hook(adjoint)
        return out

    def _forward(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        x = self._solve(z, context)
        if torch.is_grad_enabled():
            x = self._attach(x, z, context)
        return x, -self._log_det(x, context)

    def extra_repr(self) -> str:
        """What ``repr`` shows after the class name."""
        return f"{super().extra_repr()}, logdet={self.logdet!r}"
