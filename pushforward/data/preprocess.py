"""Fixed (not learned) pre-processing layers, kept inside the flow so densities are in data units.

A model trained on standardised data ``y = (x − μ)/σ`` is wrapped as ``x = μ + σ ⊙ f(z)``: the
standardisation is the last forward layer, ``log_prob`` is in the user's units and ``sample``
returns the user's units. The same goes for images, whose logit pre-processing is undone by
``LogitPreprocessing``. Each layer records itself as a JSON dict (``spec()``) and is rebuilt by
``from_spec``, so a checkpoint's ``config.json`` fully describes it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from pushforward import _validation as _v
from pushforward.core import Chain, Flow, Transform

__all__ = [
    "Standardization",
    "LogitPreprocessing",
    "Reshape",
    "from_spec",
    "wrap",
    "unwrap_spec",
]


class Standardization(Transform):
    """The fixed affine map ``x = μ + σ ⊙ y`` that undoes a standardisation ``y = (x − μ)/σ``.

    ``ladj = Σ log σ_i``; inverse ``y = (x − μ)/σ``. ``μ`` and ``σ`` are buffers, never trained.

    Args:
        loc: ``μ``, one entry per feature (or the event shape).
        scale: ``σ > 0``, same shape.
    """

    def __init__(self, loc: Sequence[float] | Tensor, scale: Sequence[float] | Tensor) -> None:
        loc_t = torch.as_tensor(loc, dtype=torch.float64)
        scale_t = torch.as_tensor(scale, dtype=torch.float64)
        if loc_t.dim() == 0 or loc_t.shape != scale_t.shape:
            raise ValueError(
                f"Standardization: loc {tuple(loc_t.shape)} and scale {tuple(scale_t.shape)} "
                "must have the same non-scalar shape"
            )
        if not (torch.isfinite(loc_t).all() and torch.isfinite(scale_t).all()):
            raise ValueError("Standardization: loc and scale must be finite")
        if not (scale_t > 0).all():
            raise ValueError("Standardization: every scale must be positive")
        super().__init__(tuple(loc_t.shape))
        self.register_buffer("loc", loc_t.to(torch.get_default_dtype()))
        self.register_buffer("scale", scale_t.to(torch.get_default_dtype()))
        self._loc_list = loc_t.tolist()
        self._scale_list = scale_t.tolist()

    def spec(self) -> dict[str, Any]:
        """The JSON record that rebuilds this layer."""
        return {"type": "standardization", "loc": self._loc_list, "scale": self._scale_list}

    def _ladj(self, like: Tensor) -> Tensor:
        return torch.log(self.scale).sum().to(like.dtype).expand(like.shape[0])

    def _forward(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self.loc + self.scale * z, self._ladj(z)

    def _inverse(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return (x - self.loc) / self.scale, -self._ladj(x)


class LogitPreprocessing(Transform):
    """Undo RealNVP's logit pre-processing of ``[0, 1]`` data: ``u = (σ(y) − α)/(1 − 2α)``.

    The data-side ``u`` lies in ``[0, 1]`` (dequantised pixels); the model sees
    ``y = logit(α + (1 − 2α) u)``. ``ladj = Σ [log σ(y) + log σ(−y) − log(1 − 2α)]``; the inverse
    is the logit map with ``ladj = Σ [log(1 − 2α) − log v − log(1 − v)]``, ``v = α + (1 − 2α)u``.

    Args:
        shape: event shape (``(C, H, W)`` or features).
        alpha: the margin ``0 ≤ α < 0.5`` that keeps the logit finite at 0 and 1.

    References:
        Density estimation using Real NVP, Dinh, Sohl-Dickstein & Bengio, 2017, arXiv:1605.08803.
    """

    def __init__(self, shape: int | Sequence[int], alpha: float = 0.05) -> None:
        alpha = float(alpha)
        if not 0 <= alpha < 0.5:
            raise ValueError(f"LogitPreprocessing: alpha must be in [0, 0.5), got {alpha}")
        super().__init__(shape)
        self.alpha = alpha

    def spec(self) -> dict[str, Any]:
        """The JSON record that rebuilds this layer."""
        return {"type": "logit", "shape": list(self.event_shape or ()), "alpha": self.alpha}

    def _forward(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        a = self.alpha
        u = (torch.sigmoid(z) - a) / (1 - 2 * a)
        ladj = F.logsigmoid(z) + F.logsigmoid(-z) - math.log(1 - 2 * a)
        return u, ladj.flatten(1).sum(-1)

    def _inverse(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        a = self.alpha
        eps = torch.finfo(x.dtype).eps
        v = (a + (1 - 2 * a) * x).clamp(eps, 1 - eps)
        y = torch.log(v) - torch.log1p(-v)
        ladj = math.log(1 - 2 * a) - torch.log(v) - torch.log1p(-v)
        return y, ladj.flatten(1).sum(-1)

    def _inside_x(self, x: Tensor) -> Tensor:
        return ((x >= 0) & (x <= 1)).reshape(x.shape[0], -1).all(1)

    def _check_x(self, x: Tensor) -> None:
        outside = (x < 0) | (x > 1)
        if outside.any():
            raise _v.InputOutsideDomain(
                f"LogitPreprocessing.inverse: {int(outside.sum())} value(s) lie outside [0, 1]"
            )


class Reshape(Transform):
    """Reshape one sample: ``x = z.reshape(shape)``, e.g. ``(64,)`` to ``(1, 8, 8)``.

    ``ladj = 0``; inverse ``z = x.reshape(latent)``. Lets a vector preset model images.

    Args:
        shape: the data-side event shape.
        latent: the base-side event shape (same number of elements).
    """

    def __init__(self, shape: Sequence[int], latent: Sequence[int]) -> None:
        super().__init__(tuple(shape), tuple(latent))
        assert self.event_shape is not None and self.latent_shape is not None
        if math.prod(self.event_shape) != math.prod(self.latent_shape):
            raise ValueError(f"Reshape: {self.latent_shape} and {self.event_shape} differ in "
                             "size")

    def spec(self) -> dict[str, Any]:
        """The JSON record that rebuilds this layer."""
        return {"type": "reshape", "shape": list(self.event_shape or ()),
                "latent": list(self.latent_shape or ())}

    def _forward(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        assert self.event_shape is not None
        return z.reshape(z.shape[0], *self.event_shape), z.new_zeros(z.shape[0])

    def _inverse(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        assert self.latent_shape is not None
        return x.reshape(x.shape[0], *self.latent_shape), x.new_zeros(x.shape[0])


def from_spec(spec: dict[str, Any]) -> Transform:
    """Rebuild a pre-processing layer from its ``spec()`` record.

    Raises:
        ValueError: unknown or malformed record.
    """
    if not isinstance(spec, dict) or "type" not in spec:
        raise ValueError(f"malformed pre-processing record {spec!r}")
    kind = spec["type"]
    try:
        if kind == "standardization":
            return Standardization(spec["loc"], spec["scale"])
        if kind == "logit":
            return LogitPreprocessing(tuple(spec["shape"]), spec["alpha"])
        if kind == "reshape":
            return Reshape(tuple(spec["shape"]), tuple(spec["latent"]))
        if kind == "sigmoid":
            from pushforward.transforms.elementwise import Sigmoid

            return Sigmoid(torch.tensor(spec["low"]), torch.tensor(spec["high"]),
                           tuple(spec["shape"]) or None)
    except (KeyError, TypeError) as error:
        raise ValueError(f"malformed {kind!r} pre-processing record: {error}") from None
    raise ValueError(f"unknown pre-processing layer {kind!r}")


def wrap(flow: Flow, layers: Sequence[Transform]) -> Flow:
    """A flow whose forward map is ``flow.transform`` followed by ``layers`` (data side last).

    The base, the context embedding and ``flow.config`` are kept; the wrapped flow's config
    gains a ``"preprocess"`` list so a checkpoint can rebuild the same structure.
    """
    if not layers:
        return flow
    if callable(getattr(flow, "wrap_data", None)):  # an augmented flow: layers act on x only
        wrapped = flow.wrap_data(list(layers))
    else:
        wrapped = Flow(
            Chain([flow.transform, *layers]),
            flow.base,
            embedding=flow.embedding,
            context_features=flow.context_features if flow.embedding is not None else None,
        )
    config = getattr(flow, "config", None)
    if isinstance(config, dict):
        wrapped.config = {**config, "preprocess": [layer.spec() for layer in layers]}
    return wrapped


def unwrap_spec(config: dict[str, Any]) -> list[Transform]:
    """The pre-processing layers recorded in a flow config (empty if none)."""
    records = config.get("preprocess", [])
    if not isinstance(records, list):
        raise ValueError("config 'preprocess' must be a list")
    return [from_spec(record) for record in records]
