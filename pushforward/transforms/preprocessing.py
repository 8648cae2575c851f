"""Fixed pre-processing layers, kept inside a flow so densities are in data units.

Each is a transform of the package with its parameters frozen, not a re-implementation:
``Standardization`` is a non-trainable ``Affine``, ``LogitPreprocessing`` a ``Sigmoid`` on the
shifted box ``[−α/(1 − 2α), (1 − α)/(1 − 2α)]`` whose domain is ``[0, 1]``, ``Reshape`` a
``Flatten`` to any latent shape. ``flow.prepend(layers)`` puts them on the data side and records
them (``pushforward.specs``) so a checkpoint rebuilds them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from pushforward import _validation as _v
from pushforward.core import serializable
from pushforward.transforms.elementwise import Affine, Sigmoid
from pushforward.transforms.images import Flatten

__all__ = ["Standardization", "LogitPreprocessing", "Reshape"]


@serializable("standardization")
class Standardization(Affine):
    """The fixed affine map ``x = μ + σ ⊙ y`` that undoes a standardisation ``y = (x − μ)/σ``.

    ``ladj = Σ log σ_i``; inverse ``y = (x − μ)/σ``. An ``Affine`` with ``trainable=False``:
    ``μ`` and ``σ`` are buffers, never trained.

    Args:
        loc: ``μ``, one entry per feature (or the event shape).
        scale: ``σ > 0``, same shape.

    Raises:
        ValueError: shapes differ or are scalar, values not finite, or a scale ``≤ 0``.

    Example:
        >>> import torch
        >>> layer = Standardization([1.0, 2.0], [2.0, 4.0])
        >>> layer(torch.zeros(1, 2))[0]
        tensor([[1., 2.]])
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
        dtype = torch.get_default_dtype()
        super().__init__(tuple(loc_t.shape), scale_t.to(dtype), loc_t.to(dtype), trainable=False)
        self._loc_list = loc_t.tolist()
        self._scale_list = scale_t.tolist()

    @property
    def loc(self) -> Tensor:
        """``μ``."""
        return self.shift

    def spec(self) -> dict[str, Any]:
        """The JSON record that rebuilds this layer."""
        return {"type": "standardization", "loc": self._loc_list, "scale": self._scale_list}

    def _load_from_state_dict(self, state_dict: dict[str, Tensor], prefix: str,
                              *args: Any) -> None:
        # Checkpoints written before Standardization was an Affine hold ``loc`` and ``scale``.
        if prefix + "loc" in state_dict and prefix + "shift" not in state_dict:
            scale = state_dict.pop(prefix + "scale")
            state_dict[prefix + "shift"] = state_dict.pop(prefix + "loc")
            state_dict[prefix + "log_abs_scale"] = scale.abs().log()
            state_dict[prefix + "sign"] = torch.sign(scale)
        super()._load_from_state_dict(state_dict, prefix, *args)


@serializable("logit")
class LogitPreprocessing(Sigmoid):
    """Undo RealNVP's logit pre-processing of ``[0, 1]`` data: ``u = (σ(y) − α)/(1 − 2α)``.

    The data-side ``u`` lies in ``[0, 1]`` (dequantised pixels); the model sees
    ``y = logit(α + (1 − 2α) u)``. A ``Sigmoid`` onto ``[l, h] = [−α, 1 − α]/(1 − 2α)``:
    ``ladj = Σ [log σ(y) + log σ(−y) − log(1 − 2α)]``; inverse the logit map with
    ``ladj = Σ [log(1 − 2α) − log v − log(1 − v)]``, ``v = α + (1 − 2α)u``. Its domain is
    ``[0, 1]`` (``log_prob`` is ``−inf`` outside).

    Args:
        shape: event shape (``(C, H, W)`` or features).
        alpha: the margin ``0 ≤ α < 0.5`` that keeps the logit finite at 0 and 1.

    Raises:
        ValueError: ``alpha`` outside ``[0, 0.5)``.

    References:
        Density estimation using Real NVP, Dinh, Sohl-Dickstein & Bengio, 2017, arXiv:1605.08803.
    """

    def __init__(self, shape: int | Sequence[int], alpha: float = 0.05) -> None:
        alpha = float(alpha)
        if not 0 <= alpha < 0.5:
            raise ValueError(f"LogitPreprocessing: alpha must be in [0, 0.5), got {alpha}")
        width = 1 - 2 * alpha
        super().__init__(-alpha / width, (1 - alpha) / width, _v.as_shape(shape))
        # Fixed by alpha (the record rebuilds them), so not part of the state dict.
        for name in ("low", "high"):
            self.register_buffer(name, getattr(self, name), persistent=False)
        self.alpha = alpha

    def spec(self) -> dict[str, Any]:
        """The JSON record that rebuilds this layer."""
        return {"type": "logit", "shape": list(self.event_shape or ()), "alpha": self.alpha}

    @classmethod
    def from_spec(cls, record: dict[str, Any]) -> LogitPreprocessing:
        """Rebuild from ``spec()``."""
        return cls(tuple(record["shape"]), record["alpha"])

    def _inside_x(self, x: Tensor) -> Tensor:
        return ((x >= 0) & (x <= 1)).reshape(x.shape[0], -1).all(1)

    def _check_x(self, x: Tensor) -> None:
        outside = (x < 0) | (x > 1)
        if outside.any():
            raise _v.InputOutsideDomain(
                f"LogitPreprocessing.inverse: {int(outside.sum())} value(s) lie outside [0, 1]"
            )


@serializable("reshape")
class Reshape(Flatten):
    """Reshape one sample: ``x = z.reshape(shape)``, e.g. ``(64,)`` to ``(1, 8, 8)``.

    A ``Flatten`` with an explicit latent shape: ``ladj = 0``; inverse ``z = x.reshape(latent)``.

    Args:
        shape: the data-side event shape.
        latent: the base-side event shape (same number of elements).
    """

    def __init__(self, shape: Sequence[int], latent: Sequence[int]) -> None:
        super().__init__(shape, latent)
