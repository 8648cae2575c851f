"""pushforward flows as density estimators for sbi (simulation-based inference).

``build(preset, **options)`` returns the builder that sbi's trainers take as
``density_estimator=``: called with the training ``(θ, x)``, it builds a conditional preset
``q(θ | x)`` and returns it as sbi's ``ConditionalDensityEstimator``::

    from sbi.inference import NPE
    import pushforward as pf

    npe = NPE(prior, density_estimator=pf.integrations.sbi.build("nsf", transforms=5))
    npe.append_simulations(theta, x).train()
    posterior = npe.build_posterior()

What the builder does, as sbi's own builders do:

- **z-scoring** of ``θ`` and ``x`` from the batch it is given (sbi passes the training set): ``θ``
  through a fixed ``Standardization`` layer on the flow's data side (so ``log_prob`` stays in
  ``θ`` units and a checkpoint records it), ``x`` through a ``ContextStandardization``;
- an optional **embedding net** for ``x`` (after the standardisation), trained with the flow;
  an ``x`` with more than one event dimension and no embedding is flattened;
- the **shapes** of sbi's estimators: ``log_prob(input (sample, batch, *event) or (batch,
  *event), condition (batch, ...) or (sample, batch, ...)) -> (sample, batch)`` with the batch
  dimensions broadcast, ``sample(sample_shape, condition (batch, ...)) -> (*sample_shape, batch,
  *event)``, ``loss(input, condition) -> (batch,)``.

``save(estimator, dir)`` / ``load(dir)`` go through pushforward's checkpoints. sbi is an optional
extra: ``pip install pushforward[sbi]``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

try:
    from sbi.neural_nets.estimators.base import ConditionalDensityEstimator
except ImportError as error:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "pushforward.integrations.sbi needs the sbi package: pip install pushforward[sbi]"
    ) from error

from pushforward._registry import accepts, names
from pushforward._registry import build as build_preset
from pushforward.context import ContextStandardization
from pushforward.core import Flow
from pushforward.evaluation import eval_mode
from pushforward.training.checkpoint import load_checkpoint, read_tensors, write_tensors
from pushforward.training.checkpoint import save as save_flow
from pushforward.transforms import Standardization

__all__ = ["build", "estimator", "FlowEstimator", "XEmbedding", "save", "load"]

_Z_SCORE = ("independent", "structured", "none")
EMBEDDING_FILE = "embedding.safetensors"


class FlowEstimator(ConditionalDensityEstimator):
    """A conditional pushforward ``Flow`` ``q(θ | x)`` as sbi's ``ConditionalDensityEstimator``.

    Args:
        flow: a conditional flow on ``θ`` (event ``input_shape``) whose context is ``x`` (its
            ``embedding``, if any, takes ``x`` of shape ``(batch, *condition_shape)``).
        input_shape: the event shape of ``θ``.
        condition_shape: the event shape of ``x``.

    Example:
        >>> import torch
        >>> import pushforward as pf
        >>> theta, x = torch.randn(100, 2), torch.randn(100, 3)
        >>> estimator = pf.integrations.sbi.build("maf", transforms=2, hidden=(16,))(theta, x)
        >>> estimator.log_prob(torch.randn(7, 4, 2), x[:4]).shape
        torch.Size([7, 4])
        >>> estimator.sample((5,), x[:4]).shape
        torch.Size([5, 4, 2])
    """

    def __init__(self, flow: Flow, input_shape: Sequence[int],
                 condition_shape: Sequence[int]) -> None:
        if not isinstance(flow, Flow) or not flow.context_features:
            raise ValueError("FlowEstimator: flow must be a conditional pushforward Flow")
        if tuple(flow.event_shape) != tuple(input_shape):
            raise ValueError(f"FlowEstimator: the flow's event shape {tuple(flow.event_shape)} "
                             f"differs from input_shape {tuple(input_shape)}")
        super().__init__(flow, torch.Size(input_shape), torch.Size(condition_shape))

    @property
    def flow(self) -> Flow:
        """The pushforward flow ``q(θ | x)`` (``log_prob`` in ``θ`` units)."""
        return self.net  # type: ignore[return-value]

    @property
    def embedding_net(self) -> nn.Module | None:
        """The network applied to ``x`` (z-scoring, then the user's embedding), or None."""
        return self.flow.embedding

    def _batched_condition(self, condition: Tensor) -> Tensor:
        self._check_condition_shape(condition)
        if condition.dim() == len(self.condition_shape):
            condition = condition.unsqueeze(0)
        return condition

    def log_prob(self, input: Tensor, condition: Tensor, **kwargs: Any) -> Tensor:
        """``log q(θ | x)`` with sbi's shapes.

        Args:
            input: ``θ``, ``(sample, batch, *event)`` or ``(batch, *event)``.
            condition: ``x``, ``(batch, *condition)`` or ``(sample, batch, *condition)``; the
                batch sizes of ``input`` and ``condition`` broadcast (equal, or one of them 1).
            **kwargs: sbi's extra keywords (ignored).

        Returns:
            ``(sample, batch)``.
        """
        self._check_input_shape(input)
        condition = self._batched_condition(condition)
        events, condition_dims = len(self.input_shape), len(self.condition_shape)
        if input.dim() == events:  # one θ
            input = input.unsqueeze(0)
        if input.dim() == events + 1:
            input = input.unsqueeze(0)
        if input.dim() != events + 2:
            raise ValueError(f"FlowEstimator.log_prob: input must be (sample, batch, "
                             f"*{tuple(self.input_shape)}), got {tuple(input.shape)}")
        samples = input.shape[0]
        if condition.dim() > condition_dims + 1:  # a condition per (sample, batch) pair
            batch = torch.broadcast_shapes(input.shape[:2], condition.shape[:2])
            input = input.expand(*batch, *self.input_shape).reshape(-1, *self.input_shape)
            condition = condition.expand(*batch, *self.condition_shape)
            condition = condition.reshape(-1, *self.condition_shape)
            return self.flow.log_prob(input, condition).reshape(batch)
        try:
            batch = torch.broadcast_shapes((input.shape[1],), (condition.shape[0],))[0]
        except RuntimeError:
            raise ValueError(
                f"FlowEstimator.log_prob: input batch {input.shape[1]} and condition batch "
                f"{condition.shape[0]} do not broadcast (equal, or one of them 1)"
            ) from None
        condition = condition.expand(batch, *self.condition_shape)
        input = input.expand(samples, batch, *self.input_shape)
        return self.flow.log_prob(input, condition)

    def loss(self, input: Tensor, condition: Tensor, **kwargs: Any) -> Tensor:
        """The negative log-likelihood ``−log q(θ | x)`` per pair: ``(batch,)``.

        Args:
            input: ``θ``, ``(batch, *event)``.
            condition: ``x``, ``(batch, *condition)``.
            **kwargs: sbi's extra keywords (ignored).

        Returns:
            ``(batch,)``.
        """
        return -self.flow.log_prob(input, condition)

    def sample(self, sample_shape: Sequence[int], condition: Tensor, **kwargs: Any) -> Tensor:
        """``θ ~ q(θ | x)``: ``(*sample_shape, batch, *event)`` for ``x`` ``(batch, ...)``."""
        return self.flow.sample(tuple(sample_shape), self._batched_condition(condition))

    def sample_and_log_prob(self, sample_shape: Sequence[int], condition: Tensor,
                            **kwargs: Any) -> tuple[Tensor, Tensor]:
        """Samples and their ``log q`` from one pass.

        ``(*sample_shape, batch, *event)`` and ``(*sample_shape, batch)`` (reparametrised:
        gradients reach the flow).
        """
        return self.flow.rsample_and_log_prob(tuple(sample_shape),
                                              self._batched_condition(condition))


def _check_z_score(name: str, value: str | None) -> str:
    value = "none" if value is None else value
    if value not in _Z_SCORE:
        raise ValueError(f"pushforward.integrations.sbi: {name} must be one of {_Z_SCORE}, "
                         f"got {value!r}")
    return value


def _theta_standardization(theta: Tensor, how: str) -> Standardization:
    """The fixed layer ``θ = μ + σ ⊙ y`` from the training ``θ`` (NaN/inf rows ignored)."""
    finite = theta[torch.isfinite(theta).all(1)].double()
    if how == "structured":
        loc = finite.mean().expand(theta.shape[1])
        scale = finite.std().expand(theta.shape[1])
    else:
        loc = finite.mean(0)
        scale = finite.std(0) if finite.shape[0] > 1 else torch.ones_like(loc)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return Standardization(loc, scale)


class XEmbedding(nn.Module):
    """What the flow's conditioner sees of ``x``: ``net(standardize(x))``.

    Args:
        standardize: the fixed z-scoring of ``x`` (None: none).
        net: the user's embedding net; None flattens ``x`` to ``(batch, prod(shape))``.
    """

    def __init__(self, standardize: ContextStandardization | None, net: nn.Module | None) -> None:
        super().__init__()
        self.standardize = standardize
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        """``(batch, *condition_shape)`` to ``(batch, k)``."""
        if self.standardize is not None:
            x = self.standardize(x)
        return x.flatten(1) if self.net is None else self.net(x)

    def describe(self) -> dict[str, Any]:
        """The JSON record ``load`` rebuilds this module from (the user's net aside)."""
        shape = None if self.standardize is None else list(self.standardize.loc.shape)
        return {"standardize": shape, "net": self.net is not None}


def _embedding(z_score_x: str, batch_x: Tensor, embedding_net: nn.Module | None) -> XEmbedding:
    standardize = None
    if z_score_x != "none":
        standardize = ContextStandardization.from_data(batch_x, z_score_x == "structured")
    return XEmbedding(standardize, embedding_net)


def _width(embedding: nn.Module, batch_x: Tensor) -> int:
    """The width the flow's conditioner reads: the embedding's output width."""
    with eval_mode(embedding), torch.no_grad():
        out = embedding(batch_x[:2])
    if out.dim() != 2 or out.shape[0] != batch_x[:2].shape[0]:
        raise ValueError(
            "pushforward.integrations.sbi: the embedding net must map x (batch, "
            f"{', '.join(map(str, batch_x.shape[1:]))}) to (batch, features), got "
            f"{tuple(out.shape)} for a batch of {batch_x[:2].shape[0]}"
        )
    return out.shape[1]


def estimator(preset: str, batch_theta: Tensor, batch_x: Tensor,
              z_score_theta: str | None = "independent", z_score_x: str | None = "independent",
              embedding_net: nn.Module | None = None, **options: Any) -> FlowEstimator:
    """Build the estimator ``q(θ | x)`` for training data ``(θ, x)``.

    This is what ``build``'s builder does when sbi calls it.

    Args:
        preset: a registered conditional preset (``"nsf"``, ``"maf"``, ``"realnvp"``, ...).
        batch_theta: ``θ``, ``(N, d)``: the event size and the z-scoring statistics.
        batch_x: ``x``, ``(N, *condition_shape)``.
        z_score_theta: ``"independent"`` (per dimension), ``"structured"`` (one scale) or
            ``"none"``.
        z_score_x: the same for ``x``.
        embedding_net: an ``nn.Module`` mapping ``x`` to ``(batch, k)``, trained with the flow.
        **options: the preset's options (``transforms=``, ``hidden=``, ...).

    Returns:
        The ``FlowEstimator``.

    Raises:
        ValueError: an unknown or unconditional preset, ``θ`` not ``(N, d)``, a bad z-score
            option, or an embedding whose output is not ``(batch, k)``.
    """
    z_theta = _check_z_score("z_score_theta", z_score_theta)
    z_x = _check_z_score("z_score_x", z_score_x)
    if not isinstance(batch_theta, Tensor) or batch_theta.dim() != 2:
        raise ValueError("pushforward.integrations.sbi: θ must be a tensor (N, d) (the presets "
                         "model vectors)")
    if not isinstance(batch_x, Tensor) or batch_x.dim() < 2 or batch_x.shape[0] < 1:
        raise ValueError("pushforward.integrations.sbi: x must be a tensor (N, *shape)")
    for key in ("features", "context", "shape"):
        if key in options:
            raise ValueError(f"pushforward.integrations.sbi: {key}= is set from the data; "
                             "do not pass it")
    input_shape, condition_shape = batch_theta.shape[1:], batch_x.shape[1:]
    embedding = _embedding(z_x, batch_x, embedding_net)
    width = _width(embedding, batch_x)
    flow = build_preset(preset, features=batch_theta.shape[1], context=width,
                        embedding=embedding, **options)
    if z_theta != "none":
        flow = flow.prepend([_theta_standardization(batch_theta, z_theta)])
    flow = flow.to(batch_theta.dtype)
    return FlowEstimator(flow, input_shape, condition_shape)


def build(preset: str = "nsf", *, z_score_theta: str | None = "independent",
          z_score_x: str | None = "independent", embedding_net: nn.Module | None = None,
          **options: Any) -> Callable[[Tensor, Tensor], FlowEstimator]:
    """The builder sbi's ``NPE(prior, density_estimator=...)`` accepts.

    Args:
        preset: the pushforward preset (``"nsf"``, ``"maf"``, ``"realnvp"``, ``"naf"``,
            ``"cnf"``, ...; any preset that accepts a context).
        z_score_theta: z-scoring of ``θ`` from the training set: ``"independent"``,
            ``"structured"`` or ``"none"``.
        z_score_x: z-scoring of ``x``, same choices.
        embedding_net: optional ``nn.Module`` mapping ``x`` to ``(batch, k)`` (trained with the
            flow). Give a new module per builder: the estimator owns it.
        **options: the preset's options (``transforms=``, ``hidden=``, ...).

    Returns:
        ``builder(batch_theta, batch_x) -> FlowEstimator``.

    Raises:
        ValueError: an unknown preset, one that takes no context, or a bad z-score option
            (checked here, before any simulation is spent).

    Example:
        >>> import pushforward as pf
        >>> builder = pf.integrations.sbi.build("nsf", transforms=3)
        >>> callable(builder)
        True
    """
    if not isinstance(preset, str) or preset.lower() not in names():
        raise ValueError(f"unknown flow {preset!r}; choose one of {', '.join(names())}")
    if "context" not in accepts(preset):
        raise ValueError(f"pushforward.integrations.sbi: the {preset!r} preset takes no "
                         "context, so it cannot be a conditional density estimator")
    _check_z_score("z_score_theta", z_score_theta)
    _check_z_score("z_score_x", z_score_x)

    def builder(batch_theta: Tensor, batch_x: Tensor) -> FlowEstimator:
        return estimator(preset, batch_theta, batch_x, z_score_theta, z_score_x, embedding_net,
                         **options)

    builder.__name__ = builder.__qualname__ = f"build_{preset.lower()}"
    return builder


def save(estimator: FlowEstimator, path: str | os.PathLike) -> Path:
    """Save a trained estimator as a pushforward checkpoint folder.

    The flow (with its ``θ`` standardisation) is a regular checkpoint (``model.safetensors`` +
    ``config.json``; ``pf.load`` reads it alone, without the ``x`` side); the ``x`` side
    (z-scoring and embedding weights) goes to ``embedding.safetensors``, and the shapes to the
    config's ``"sbi"`` key.

    Args:
        estimator: the ``FlowEstimator`` (e.g. ``posterior.posterior_estimator``).
        path: the folder (created if needed).

    Returns:
        The folder's path.

    Raises:
        TypeError: ``estimator`` is not a ``FlowEstimator`` built by this module.
    """
    if not isinstance(estimator, FlowEstimator) or not isinstance(estimator.embedding_net,
                                                                    XEmbedding):
        raise TypeError(f"save: expected a FlowEstimator built by "
                        f"pushforward.integrations.sbi, got {type(estimator).__name__}")
    flow = estimator.flow
    embedding = estimator.embedding_net
    core = Flow(flow.transform, flow.base)
    core.config = flow.config  # type: ignore[attr-defined]
    record = {"input_shape": list(estimator.input_shape),
              "condition_shape": list(estimator.condition_shape),
              "embedding": embedding.describe()}
    folder = save_flow(core, path, extra={"sbi": record})
    write_tensors(folder / EMBEDDING_FILE, dict(embedding.state_dict()), record)
    return folder


def load(path: str | os.PathLike, embedding_net: nn.Module | None = None) -> FlowEstimator:
    """Load an estimator written by ``save``.

    Args:
        path: the checkpoint folder.
        embedding_net: a module of the same architecture as the one trained (its weights are
            loaded from the checkpoint); needed only if the estimator had an embedding net.

    Returns:
        The ``FlowEstimator``, in eval mode, with the saved weights.

    Raises:
        ValueError: the folder is not an sbi estimator checkpoint, or an ``embedding_net`` is
            missing or does not match the saved weights.
    """
    flow, config = load_checkpoint(path)
    record = config.get("sbi")
    if not isinstance(record, dict) or not isinstance(record.get("embedding"), dict):
        raise ValueError(f"{path}: not an sbi estimator checkpoint (no 'sbi' record)")
    shape = record["embedding"].get("standardize")
    standardize = None if shape is None else ContextStandardization(torch.zeros(shape),
                                                                    torch.ones(shape))
    if record["embedding"].get("net") and embedding_net is None:
        raise ValueError(f"{path}: the estimator was trained with an embedding net; pass "
                         "embedding_net= (same architecture) to load it")
    embedding = XEmbedding(standardize, embedding_net if record["embedding"].get("net") else None)
    tensors, _ = read_tensors(Path(path) / EMBEDDING_FILE)
    try:
        embedding.load_state_dict(tensors)
    except RuntimeError as error:
        raise ValueError(f"{path}: the embedding weights do not fit: "
                         f"{str(error).splitlines()[0]}") from None
    embedding.to(_dtype(flow))
    full = Flow(flow.transform, flow.base, embedding=embedding)
    full.config = flow.config  # type: ignore[attr-defined]
    return FlowEstimator(full, record["input_shape"], record["condition_shape"]).eval()


def _dtype(flow: Flow) -> torch.dtype:
    for tensor in (*flow.parameters(), *flow.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.get_default_dtype()
