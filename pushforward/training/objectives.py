"""Training objectives for ``pushforward.fit``: maximum likelihood and flow matching.

An objective turns a batch into the scalar that ``fit`` minimises. ``fit(objective=...)``
accepts a name (``"mle"``, ``"flow-matching"``) or an instance; ``make_objective`` does the
translation. Every objective has:

- ``check(flow)``: raise ``ValueError`` if the flow cannot be trained this way;
- ``prepare(flow, data)``: see the training tensor once before the first step (None when the
  data is a Dataset); flow matching tabulates the smoothing distances there;
- ``loss(flow, model, x, context) -> (loss, value)``: the differentiable loss of the batch and
  the scalar reported in ``History.step_nll`` / ``train_nll`` (the NLL for maximum likelihood,
  the regression loss for flow matching);
- ``uses_model_forward``: whether the loss runs through ``model(x, context)`` (the DDP-wrapped
  flow); an objective that does not gets its gradients averaged across processes by ``fit``;
- ``default_ema``, ``default_lr``, ``default_warmup``: the weight-averaging decay, the peak
  learning rate and the warm-up steps ``fit`` uses when ``ema`` / ``lr`` / ``warmup`` are not
  given; ``learning_rate(flow)`` may adapt the peak rate to the flow (maximum likelihood does);
- ``batch_size(flow)``: the batch size ``fit`` uses when none is given (``default_batch_size``,
  256; flow matching takes its path's ``batch_size`` when the path states one).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from pushforward.continuous.paths import stratified_uniform
from pushforward.core import Flow
from pushforward.training._tree import attribute, submodules

__all__ = ["Objective", "MaximumLikelihood", "FlowMatching", "make_objective", "OBJECTIVES",
           "COUPLINGS", "ot_pairing"]

OBJECTIVES = ("mle", "flow-matching")
COUPLINGS = ("ot", "independent")


def regularization(flow: nn.Module) -> Tensor | None:
    """Sum of ``m.regularization()`` over the modules of ``flow`` that define it.

    Args:
        flow: the model; its own ``regularization`` (if any) is not counted, only its submodules'.

    Returns:
        The summed penalty (a differentiable scalar), or None when no submodule defines one.
    """
    total = None
    for module in submodules(flow):
        method = attribute(module, "regularization")
        if module is not flow and callable(method):
            value = method()
            if value is None:
                continue
            value = torch.as_tensor(value)
            total = value if total is None else total + value
    return total


class Objective:
    """Base class of the training objectives (see the module docstring for the protocol)."""

    name = "objective"
    uses_model_forward = True
    default_ema = 0.0
    default_lr = 1e-3
    default_warmup = 0
    default_batch_size = 256

    def learning_rate(self, flow: nn.Module) -> float:
        """The peak learning rate ``fit`` uses for ``flow`` when none is given (``default_lr``)."""
        return self.default_lr

    def batch_size(self, flow: nn.Module) -> int:
        """The batch size ``fit`` uses for ``flow`` when none is given (``default_batch_size``)."""
        return self.default_batch_size

    def check(self, flow: nn.Module) -> None:
        """Raise ``ValueError`` if ``flow`` cannot be trained with this objective."""

    def prepare(self, flow: nn.Module, data: Tensor | None) -> None:
        """See the training tensor (None: a Dataset) once, before the first step."""

    def parameters(self) -> list[nn.Parameter]:
        """Parameters the objective itself trains beside the flow's (e.g. a dequantiser's)."""
        return []

    def loss(
        self, flow: nn.Module, model: nn.Module, x: Tensor, context: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """``(loss, value)`` of one batch: the scalar to minimise and the one to report."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class MaximumLikelihood(Objective):
    """Negative log-likelihood ``−mean log p(x | c)`` plus the flow's regularisers.

    The regularisers are ``regularization()`` of every module that defines one (a CNF's RNODE
    penalty of the solve just made). The reported value is the NLL without them.

    ``fit``'s defaults for it (see ``learning_rate``): a peak learning rate of
    ``5·10⁻³ · min(1, √(8/D))`` for ``D`` data dimensions, reached by a linear warm-up over the
    first ``min(100, steps/10)`` steps, then the cosine decay. Chosen by time to quality
    (``benchmarks/time_to_quality.py``: steps to a plain Adam(1e-3) loop's 2,000-step test NLL):
    the larger rate halves the steps on 2-D data, while on 64-D digits rates ≥ 5·10⁻³ overfit.
    """

    name = "mle"
    default_lr = 5e-3
    default_warmup = 100

    def learning_rate(self, flow: nn.Module) -> float:
        """``default_lr · min(1, √(8/D))``, ``D`` the number of data dimensions of ``flow``.

        Args:
            flow: the model (its ``event_shape`` gives ``D``; 1 when it declares none).

        Returns:
            The peak learning rate: ``5e-3`` up to ``D = 8``, ``1.77e-3`` at ``D = 64``.

        Example:
            >>> import pushforward as pf
            >>> round(MaximumLikelihood().learning_rate(pf.flows.MAF(64, transforms=1)), 5)
            0.00177
        """
        event = getattr(flow, "event_shape", None) or ()
        features = math.prod(int(s) for s in event) if event else 1
        return self.default_lr * min(1.0, math.sqrt(8.0 / max(features, 1)))

    def loss(
        self, flow: nn.Module, model: nn.Module, x: Tensor, context: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """``(NLL + regularisers, NLL)`` of the batch."""
        nll = -model(x, context).mean()
        extra = regularization(flow)
        return (nll if extra is None else nll + extra), nll


def ot_pairing(cost: Tensor) -> Tensor:
    """The permutation ``σ`` minimising ``Σ_i cost[σ(i), i]``.

    Base point ``σ(i)`` goes with data point ``i`` (an exact assignment: SciPy's Jonker–Volgenant,
    or POT's network simplex when POT is installed).

    Args:
        cost: ``(B, B)`` costs ``c(z_i, x_j)``, rows base points, columns data points.

    Returns:
        ``(B,)`` long tensor ``σ`` on ``cost``'s device (``z[σ]`` is paired with ``x``).

    Example:
        >>> import torch
        >>> ot_pairing(torch.tensor([[0.0, 1.0], [1.0, 0.0]])).tolist()
        [0, 1]
        >>> ot_pairing(torch.tensor([[5.0, 0.0], [0.0, 5.0]])).tolist()
        [1, 0]
    """
    if cost.dim() != 2 or cost.shape[0] != cost.shape[1]:
        raise ValueError(f"ot_pairing: cost must be square (B, B), got {tuple(cost.shape)}")
    matrix = cost.detach().to("cpu", torch.float64).numpy()
    if not math.isfinite(float(matrix.sum())):
        raise ValueError("ot_pairing: the cost matrix has NaN or infinite entries")
    rows, cols = _assignment(matrix)
    sigma = torch.empty(len(cols), dtype=torch.long)
    sigma[torch.as_tensor(cols)] = torch.as_tensor(rows)
    return sigma.to(cost.device)


def _assignment(matrix: Any) -> tuple[Any, Any]:
    """An optimal assignment.

    POT's network simplex when POT is installed (faster on CPU; its vertex solution of the uniform
    problem is a permutation), else SciPy's Jonker–Volgenant.
    """
    n = matrix.shape[0]
    try:
        import numpy as np
        import ot  # POT, optional

        weights = np.full(n, 1.0 / n)
        plan = ot.emd(weights, weights, matrix)
        cols = plan.argmax(axis=1)
        if np.array_equal(np.sort(cols), np.arange(n)) and np.allclose(
                plan[np.arange(n), cols], 1.0 / n):
            return np.arange(n), cols
    except ImportError:
        pass
    from scipy.optimize import linear_sum_assignment

    return linear_sum_assignment(matrix)


def _velocity_transform(flow: nn.Module) -> Any:
    transform = getattr(flow, "transform", None)
    if transform is None or not callable(getattr(transform, "velocity", None)) or not hasattr(
            transform, "path"):
        kind = type(transform).__name__ if transform is not None else type(flow).__name__
        raise ValueError(
            f"flow matching needs a flow whose transform is one continuous flow with "
            f"velocity(t, x, context) and a path (a CNF or SphereCNF); got {kind}. A chain of "
            "several CNF blocks or a discrete flow cannot be trained this way: use "
            "objective='mle' or build the CNF with transforms=1"
        )
    if int(getattr(transform, "augment", 0) or 0) or hasattr(flow, "augment"):
        raise ValueError(
            "flow matching cannot train an augmented CNF (its extra dimensions have no data); "
            "use objective='mle' or augment=0"
        )
    if getattr(flow, "data_transform", None) is not None:
        raise ValueError("flow matching cannot train through a data_transform; standardise the "
                         "data instead")
    return transform


class FlowMatching(Objective):
    """Conditional flow matching: regress the CNF's field on a conditional path's velocity.

    With ``z ~ p_0`` (``flow.base``), ``x`` a data batch, ``t ~ U[0, 1]`` stratified over the
    batch (``stratified_uniform``; or ``path.sample_time(batch, dtype=, device=)`` when the
    path defines one) and
    ``(x_t, u_t) = path.sample(z, x, t)``, the loss is

        L(θ) = E ‖v_θ(t, x_t, c) − u_t(x_t | z, x)‖²,

    whose gradient equals that of the regression on the (unknown) marginal field, so its
    minimiser transports ``p_0`` to the data (Lipman et al. 2022). No ODE is solved: a step
    costs one field evaluation. ``coupling="ot"`` pairs noise and data within each batch by
    the exact optimal assignment for ``path.cost`` (Tong et al. 2023): straighter paths, a
    lower-variance target, fewer solver steps after training. With a context, OT pairing
    across different contexts would bias the conditional model, so ``"auto"`` picks ``"ot"``
    only for unconditional flows.

    The flow must expose ``flow.transform.velocity(t, x, context)`` and
    ``flow.transform.path`` (``pushforward.continuous.CNF``, ``SphereCNF``); ``flow.base``
    supplies ``z``. The reported value is the flow-matching loss, not an NLL; ``fit``'s
    validation still measures the exact validation NLL.

    Args:
        coupling: ``"ot"``, ``"independent"`` or ``"auto"`` (independent with a context;
            otherwise the path's own ``coupling`` attribute when it has one, e.g. the sphere's
            geodesic path, else OT).
        path: a path overriding the transform's own (None: ``flow.transform.path``).
        ema: the default decay of ``fit``'s weight average under this objective.
        lr: the default peak learning rate of ``fit`` under this objective; None: the path's
            ``lr`` when it states one (the sphere's: 6e-3), else 3e-3.
        pairs: the least number of ``(z, t, x)`` triples regressed per step: a smaller data
            batch is repeated, each copy with its own ``z`` and ``t``; None: the path's
            ``pairs`` when it states one (the sphere's: 8192), else no repeats.
        smoothing: regress on data points moved by ``path.smooth(x, scale, repeats)`` (a
            kernel smoothing whose bandwidth is ``scale`` × each point's distance to its
            second-nearest neighbour in the training set — tabulated once by ``prepare`` via
            ``path.neighbours(train)`` when the path has it — exact repeats kept, so the field
            cannot memorise the training set): a number is the scale; ``"auto"`` lets
            ``prepare`` pick it from the training set by ``path.smoothing_scale(train)`` (on the
            sphere: the scale whose kernel estimate has the highest 10-fold cross-validated
            likelihood; from the first batch when the data is a Dataset); 0: the bare points;
            None: the path's ``smoothing`` when it states one (the sphere's: ``"auto"``), else
            0. Measured on the sphere (10,000 steps, test NLL, fixed 0.7 → the chosen scale):
            flood 0.46/0.58 → 0.43/0.55 (seeds 0/1, α = 1.0), fire −2.00 → −2.04 (seed 0,
            α = 0.5); Earth guide.

    After ``prepare`` (which ``fit`` calls), ``neighbours`` holds that table (None when the
    data, the path or ``smoothing = 0`` give none) and ``scale`` the smoothing scale in use.

    The target's variance sets how fast the field is learned: on the sphere (flood, 4×256
    field, 3,000 steps) test NLL 1.08 nats with batch 256, 0.68 with 256 data points × 16
    draws, 0.62 with batch 4096, hence the geodesic path's ``batch_size`` and ``pairs``
    (8192: flood's 3,900 training points are each drawn three times per step, not twice).

    Defaults (measured, 3,000 steps, test NLL of the exact density; checkerboard, 8 Gaussians,
    pinwheel mean): lr 3e-3 → 3.045 nats against 3.130 at 1e-3; OT pairing against
    independent 3.260; batch 512 3.107 (256 kept: half the time); EMA 0.999 3.131 (no change
    on the toys, where the cosine schedule already anneals; 0.995 is what won on the sphere,
    with lr 3e-3).

    Raises:
        ValueError: an unknown coupling; ``"ot"`` with a conditional flow; a bad ``pairs``.

    References:
        Flow matching for generative modeling. Y. Lipman, R. T. Q. Chen, H. Ben-Hamu,
        M. Nickel, M. Le, 2022. arXiv:2210.02747.
        Improving and generalizing flow-based generative models with minibatch optimal
        transport. A. Tong, K. Fatras, N. Malkin, G. Huguet, Y. Zhang, J. Rector-Brooks,
        G. Wolf, Y. Bengio, 2023. arXiv:2302.00482.

    Example:
        >>> import torch, pushforward as pf
        >>> flow = pf.flows.build("cnf", features=2, hidden=(16, 16))
        >>> objective = FlowMatching()
        >>> loss, value = objective.loss(flow, flow, torch.randn(8, 2), None)
        >>> loss.shape, bool(loss > 0)
        (torch.Size([]), True)
    """

    name = "flow-matching"
    uses_model_forward = False
    default_lr = 3e-3

    def __init__(
        self, coupling: str = "auto", path: Any = None, ema: float = 0.995,
        lr: float | None = None, pairs: int | None = None,
        smoothing: float | str | None = None,
    ) -> None:
        if coupling not in (*COUPLINGS, "auto"):
            raise ValueError(
                f"FlowMatching: unknown coupling {coupling!r}; choose one of "
                f"{', '.join(COUPLINGS)} or 'auto'"
            )
        if path is not None and not (callable(getattr(path, "sample", None))
                                     and callable(getattr(path, "cost", None))):
            raise ValueError("FlowMatching: path must have sample(z, x, t) and cost(z, x)")
        self.coupling = coupling
        self.path = path
        self.default_ema = _decay(ema)
        if lr is not None:
            lr = float(lr)
            if not (lr > 0 and math.isfinite(lr)):
                raise ValueError(f"FlowMatching: lr must be a positive number, got {lr}")
        self.lr = lr
        if pairs is not None and not (isinstance(pairs, int) and pairs >= 1):
            raise ValueError(f"FlowMatching: pairs must be a positive integer or None, got "
                             f"{pairs!r}")
        self.pairs = pairs
        if smoothing is not None and smoothing != "auto":
            if isinstance(smoothing, str):
                raise ValueError(f"FlowMatching: smoothing must be a finite number >= 0, "
                                 f"'auto' or None, got {smoothing!r}")
            smoothing = float(smoothing)
            if not (smoothing >= 0 and math.isfinite(smoothing)):
                raise ValueError(f"FlowMatching: smoothing must be a finite number >= 0, "
                                 f"'auto' or None, got {smoothing}")
        self.smoothing = smoothing
        self.neighbours: Any = None  # the smoothing distances' table (prepare)
        self.scale: float | None = None  # the smoothing scale chosen for "auto" (prepare)

    def prepare(self, flow: nn.Module, data: Tensor | None) -> None:
        """Choose the smoothing scale (``"auto"``) and tabulate the smoothing distances."""
        path = self._path(_velocity_transform(flow))
        self.scale = None
        if data is not None and self._setting(path) == "auto":
            self.scale = float(path.smoothing_scale(data))
        table = getattr(path, "neighbours", None)
        ready = data is not None and self._smoothing(path, data) > 0 and callable(table)
        self.neighbours = table(data) if ready else None

    def check(self, flow: nn.Module) -> None:
        """Raise ``ValueError`` unless ``flow`` has one velocity-field transform and a base."""
        if not isinstance(flow, Flow):
            raise ValueError(f"flow matching needs a pushforward Flow, got {type(flow).__name__}")
        path = self._path(_velocity_transform(flow))
        setting = self._setting(path)
        if setting and not callable(getattr(path, "smooth", None)):
            raise ValueError(f"FlowMatching: smoothing={setting!r} needs a path with "
                             f"smooth(x, scale, repeats); {type(path).__name__} has none")
        if setting == "auto" and not callable(getattr(path, "smoothing_scale", None)):
            raise ValueError(f"FlowMatching: smoothing='auto' needs a path with "
                             f"smoothing_scale(x); {type(path).__name__} has none")
        if self.coupling == "ot" and flow.context_features:
            raise ValueError(
                "FlowMatching: coupling='ot' pairs noise with data across contexts, which "
                "biases a conditional flow; use coupling='independent' (or 'auto')"
            )

    def _path(self, transform: Any) -> Any:
        """The path regressed on: the one given, else the (velocity) transform's own."""
        return self.path if self.path is not None else transform.path

    def _setting(self, path: Any) -> float | str:
        """``smoothing`` when given, else the path's (the sphere's: ``"auto"``), else 0."""
        if self.smoothing is not None:
            return self.smoothing
        setting = getattr(path, "smoothing", 0.0)
        return setting if setting == "auto" else float(setting)

    def _smoothing(self, path: Any, x: Tensor) -> float:
        """The scale in use: the number set, or for ``"auto"`` prepare's choice (or x's)."""
        setting = self._setting(path)
        if setting != "auto":
            return float(setting)
        if self.scale is None:
            self.scale = float(path.smoothing_scale(x))
        return self.scale

    def learning_rate(self, flow: nn.Module) -> float:
        """``lr`` when given, else the path's ``lr`` (the sphere's: 6e-3), else 3e-3."""
        if self.lr is not None:
            return self.lr
        return float(getattr(self._path(_velocity_transform(flow)), "lr", self.default_lr))

    def batch_size(self, flow: nn.Module) -> int:
        """The path's ``batch_size`` when it states one (the sphere's: 4096), else 256."""
        path = self._path(_velocity_transform(flow))
        return int(getattr(path, "batch_size", self.default_batch_size))

    def _coupling(self, flow: Flow, path: Any) -> str:
        if self.coupling == "auto":
            if flow.context_features:
                return "independent"
            preferred = getattr(path, "coupling", None)  # a path may state its own default
            return preferred if preferred in COUPLINGS else "ot"
        return self.coupling

    def loss(
        self, flow: nn.Module, model: nn.Module, x: Tensor, context: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """``(L, L)``: the flow-matching loss of the batch (reported as is)."""
        transform = _velocity_transform(flow)
        path = self._path(transform)
        ctx = flow.embed_context(context, x.shape[0])
        pairs = self.pairs if self.pairs is not None else getattr(path, "pairs", None)
        repeats = -(-int(pairs) // x.shape[0]) if pairs else 1
        if repeats > 1 and ctx is not None:  # outside no_grad: an embedding net trains
            ctx = ctx.repeat(repeats, *([1] * (ctx.dim() - 1)))
        with torch.no_grad():
            smoothing = self._smoothing(path, x)
            if smoothing > 0:  # every copy perturbed afresh
                table = {} if self.neighbours is None else {"neighbours": self.neighbours}
                x = path.smooth(x, smoothing, repeats, **table)
            elif repeats > 1:  # every data point with several (z, t) draws
                x = x.repeat(repeats, *([1] * (x.dim() - 1)))
            batch = x.shape[0]
            if getattr(flow.base, "context_features", 0):
                z = flow.base.sample(batch, ctx)
            else:
                z = flow.base.sample(batch)
            z = z.to(dtype=x.dtype, device=x.device)
            if self._coupling(flow, path) == "ot" and batch > 1:
                z = z[ot_pairing(path.cost(z, x))]
            sample_time = getattr(path, "sample_time", None)
            if callable(sample_time):
                t = sample_time(batch, dtype=x.dtype, device=x.device)
            else:
                t = stratified_uniform(batch, dtype=x.dtype, device=x.device)
            x_t, u_t = path.sample(z, x, t)
        v = transform.velocity(t, x_t, ctx)
        loss = (v - u_t).pow(2).reshape(batch, -1).sum(-1).mean()
        return loss, loss.detach()

    def __repr__(self) -> str:
        return (f"FlowMatching(coupling={self.coupling!r}, ema={self.default_ema}, "
                f"lr={self.lr!r}, smoothing={self.smoothing!r})")


def _decay(value: float) -> float:
    value = float(value)
    if not (0.0 <= value < 1.0):
        raise ValueError(f"ema must be a decay in [0, 1), got {value}")
    return value


def make_objective(objective: str | Objective, coupling: str | None = None) -> Objective:
    """An objective from its name or an instance (returned as is).

    Args:
        objective: ``"mle"`` (also ``"maximum-likelihood"``), ``"flow-matching"`` (also
            ``"fm"``) or an ``Objective``.
        coupling: flow matching's coupling (``"ot"``, ``"independent"``, ``"auto"``); None:
            the objective's default. Refused with maximum likelihood.

    Raises:
        ValueError: an unknown name or coupling, or a coupling given with maximum likelihood
            or with an objective instance.
    """
    if isinstance(objective, Objective):
        if coupling is not None:
            raise ValueError("fit: give coupling= to FlowMatching(...) itself, not beside it")
        return objective
    if objective in ("mle", "maximum-likelihood"):
        if coupling is not None:
            raise ValueError("fit: coupling= only applies to objective='flow-matching'")
        return MaximumLikelihood()
    if objective in ("flow-matching", "fm"):
        return FlowMatching(coupling=coupling or "auto")
    raise ValueError(f"fit: unknown objective {objective!r}; choose one of "
                     f"{', '.join(OBJECTIVES)} or pass an Objective")

