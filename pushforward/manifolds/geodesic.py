"""Geodesic conditional paths on the sphere, the training targets of Riemannian flow matching.

Between a base point ``z`` and a data point ``x`` on ``𝕊ⁿ⁻¹`` the path is the great-circle arc
(spherical linear interpolation)

    x_t = exp_z(t · log_z(x)) = cos(tθ) z + sin(tθ) v/θ,   v = log_z(x),   θ = ‖v‖ = d(z, x),

and its velocity, the regression target of flow matching, is

    u_t = d x_t/dt = −θ sin(tθ) z + cos(tθ) v = log_{x_t}(x) / (1 − t),

written without the division so it stays finite as ``t → 1``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pushforward.continuous.paths import stratified_uniform
from pushforward.manifolds.bandwidth import cross_validated_scale, seeded_permutation
from pushforward.manifolds.neighbours import NeighbourDistances, angle, smoothing_distances
from pushforward.manifolds.spaces import Sphere

__all__ = ["GeodesicPath"]


class GeodesicPath:
    """Great-circle conditional paths ``z → x`` on the sphere ``𝕊ⁿ⁻¹`` (Chen & Lipman 2024).

    ``sample(z, x, t)`` returns the point ``x_t`` at time ``t`` on the arc from the base point
    ``z`` (``t = 0``) to the data point ``x`` (``t = 1``) and the arc's velocity ``u_t`` there;
    ``cost(z, x)`` the squared geodesic distances between every ``z`` and every ``x``, for
    minibatch optimal-transport pairing. Identical points give ``x_t = z``, ``u_t = 0``; for
    antipodal points, where every great circle is a geodesic, one of them is chosen
    deterministically (so the result is always finite).

    ``sample_time(n)`` draws the training times ``t = 1 − (1 − u)^p``, ``u ~ U[0, 1]``
    stratified over the batch (``stratified_uniform``): with
    ``time_power`` ``p > 1`` more of them fall near the data end ``t = 1``, where the marginal
    field of a sharp (or clustered) data set varies on the finest scale; ``p = 1`` is uniform.

    Args:
        n: ambient dimension (3 for ``S²``).
        time_power: the exponent ``p ≥ 1`` of the training-time distribution.

    References:
        Flow Matching on General Geometries. R. T. Q. Chen, Y. Lipman, 2024. arXiv:2302.03660.

    Example:
        >>> import torch
        >>> path = GeodesicPath(3)
        >>> z = torch.tensor([[1.0, 0.0, 0.0]]); x = torch.tensor([[0.0, 1.0, 0.0]])
        >>> x_t, u_t = path.sample(z, x, torch.tensor([0.5]))
        >>> [round(v, 4) for v in x_t[0].tolist()], round(float(u_t.norm()), 4)  # |u| = π/2
        ([0.7071, 0.7071, 0.0], 1.5708)
    """

    #: the noise-data pairing flow matching should use by default: minibatch OT pairing was
    #: measured to hurt on the sphere (volcano validation NLL −1.5 with OT, −2.6 without).
    coupling = "independent"
    #: flow matching's default batch size and least number of (noise, time, data) triples per
    #: step (repeating a smaller batch): the target's variance is what limits learning here
    #: (flood, 3,000 steps: test NLL 1.08 nats at batch 256, 0.62 at 4096; with the time
    #: features, seeds 0/1, pairs 4096 → 8192: 0.67/0.67 → 0.48/0.60, validation 0.64/0.67 →
    #: 0.60/0.64, for 1.3–1.4× the training time).
    batch_size = 4096
    pairs = 8192
    #: flow matching's default peak learning rate here: at batch 4096 a larger step pays
    #: (seed 0, 3,000 steps, test NLL at 3e-3 → 6e-3: volcano −5.63 → −8.65, fire −0.92 →
    #: −1.07 (1.2e-2: −1.09, worse validation), earthquake 0.10 → 0.01; flood 0.71 → 0.78,
    #: where it overfits sooner: validation 0.73 → 0.70).
    lr = 6e-3
    #: flow matching's default data smoothing here (``smooth``'s scale): ``"auto"``, the scale
    #: ``smoothing_scale(train)`` picks by cross-validation (``bandwidth``). A fixed 0.7 was
    #: the earlier default (seeds 0/1, 3,000 steps, test NLL at 0 → 0.7: flood 0.78/0.83 →
    #: 0.54/0.65, volcano −8.65/−7.49 → −8.06/−7.84); at 10,000 steps the data sets want
    #: different scales (flood 0.46/0.58 → 0.43/0.55 at 1.0, fire −2.00 → −2.04 at 0.5, Earth
    #: guide), which the cross-validated choice follows.
    smoothing = "auto"

    def __init__(self, n: int, time_power: float = 3.0) -> None:
        self.sphere = Sphere(n)
        self.n = self.sphere.n
        self.time_power = float(time_power)
        if not self.time_power >= 1 or self.time_power == float("inf"):
            raise ValueError(f"GeodesicPath: time_power must be a finite number >= 1, got "
                             f"{time_power!r}")

    def sample_time(self, n: int, dtype: torch.dtype | None = None,
                    device: torch.device | None = None) -> Tensor:
        """Training times ``t = 1 − (1 − u)^p``, ``u`` stratified uniform, shape ``(n,)``.

        Args:
            n: how many.
            dtype: their dtype (default: torch's default).
            device: their device.
        """
        u = stratified_uniform(n, dtype=dtype, device=device)
        return 1 - (1 - u) ** self.time_power

    def log(self, z: Tensor, x: Tensor) -> Tensor:
        """``log_z(x)``: the tangent vector at ``z`` of length ``d(z, x)`` pointing to ``x``.

        Args:
            z: base points ``(batch, n)`` on the sphere.
            x: end points ``(batch, n)`` on the sphere.

        Returns:
            ``(batch, n)``, orthogonal to ``z``.
        """
        theta = angle(z, x).unsqueeze(-1)
        w = self.sphere.to_tangent(z, x)  # ‖w‖ = sin θ
        norm = torch.linalg.vector_norm(w, dim=-1, keepdim=True)
        tiny = torch.finfo(z.dtype).eps
        # Antipodal points: w vanishes while θ = π; take a fixed tangent direction at z.
        fallback = self.sphere.tangent_basis(z)[..., 0]
        direction = torch.where(norm > tiny, w / norm.clamp(min=tiny), fallback)
        near = theta < 1e-4  # θ/sin θ = 1 + θ²/6: w itself is exact enough
        return torch.where(near, w * (1 + theta.square() / 6), theta * direction)

    def sample(self, z: Tensor, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(x_t, u_t)`` on the geodesics from ``z`` to ``x`` at times ``t``.

        ``x_t = cos(tθ) z + sin(tθ) v/θ`` and ``u_t = −θ sin(tθ) z + cos(tθ) v`` with
        ``v = log_z(x)``, ``θ = ‖v‖``: ``x_t`` on the sphere, ``u_t`` tangent at ``x_t``, equal
        to ``d x_t/dt`` and to ``log_{x_t}(x)/(1 − t)``.

        Args:
            z: base points ``(batch, n)`` on the sphere.
            x: data points ``(batch, n)`` on the sphere.
            t: times ``(batch,)`` in ``[0, 1]`` (or a scalar).

        Returns:
            ``x_t`` and ``u_t``, each ``(batch, n)``.

        Raises:
            ValueError: shapes that do not match.
        """
        if z.shape != x.shape or z.dim() != 2 or z.shape[1] != self.n:
            raise ValueError(f"GeodesicPath.sample: z and x must both be (batch, {self.n}), got "
                             f"{tuple(z.shape)} and {tuple(x.shape)}")
        t = torch.as_tensor(t, dtype=z.dtype, device=z.device)
        if t.dim() == 0:
            t = t.expand(z.shape[0])
        if t.shape != z.shape[:1]:
            raise ValueError(f"GeodesicPath.sample: t must be ({z.shape[0]},), got "
                             f"{tuple(t.shape)}")
        v = self.log(z, x)
        theta = torch.linalg.vector_norm(v, dim=-1, keepdim=True)
        angle = t.unsqueeze(-1) * theta
        x_t = self.sphere.exp(z, t.unsqueeze(-1) * v)
        u_t = -theta * torch.sin(angle) * z + torch.cos(angle) * v
        return x_t, u_t

    def neighbours(self, x: Tensor) -> NeighbourDistances | None:
        """The table of ``smooth``'s distances over a training set (None above its ``limit``)."""
        if x.dim() != 2 or x.shape[1] != self.n or x.shape[0] > NeighbourDistances.limit:
            return None
        return NeighbourDistances(x)

    def smoothing_scale(self, x: Tensor) -> float:
        """The smoothing scale for the training set ``x``: ``cross_validated_scale(x)``.

        The ``α`` of ``0.25 · 2^{k/4}`` whose adaptive kernel estimate (bandwidth ``α · d₂``)
        has the highest 10-fold held-out likelihood. Above ``NeighbourDistances.limit`` points
        it is chosen on a seeded subset of that many (an approximation: ``smooth`` then measures
        ``d₂`` within each batch).
        """
        if x.dim() != 2 or x.shape[1] != self.n:
            raise ValueError(f"GeodesicPath.smoothing_scale: x must be (N, {self.n}), got "
                             f"{tuple(x.shape)}")
        if x.shape[0] > NeighbourDistances.limit:
            keep = seeded_permutation(x.shape[0])[:NeighbourDistances.limit]
            x = x[keep.to(x.device)]
        return cross_validated_scale(x)

    def smooth(self, x: Tensor, scale: float, repeats: int = 1,
               neighbours: NeighbourDistances | None = None) -> Tensor:
        """``repeats`` copies of the batch, a point moved to ``exp_x(scale · d₂(x) · ξ)`` or kept.

        ``d₂(x)`` is the geodesic distance from ``x`` to its second-nearest other point of the
        training set (``neighbours``; of the batch without it) and ``ξ ~ N(0, I)`` in the
        tangent space at ``x``, drawn afresh for every copy: a kernel smoothing of the batch
        whose bandwidth adapts to the local spacing of the data (wide where points are
        sparse), which flow matching regresses on instead of the bare points so that the field
        does not memorise them. A point that repeats exactly is never moved, and any other copy
        only with probability ``N₁/N``, the fraction of the data's points whose location occurs
        once — Good and Turing's estimate of the chance that a new point falls where none was
        seen: data made of repeated sites (volcano eruptions) stay
        sharp, continuous data (``N₁ = N``) are smoothed throughout. (The second neighbour,
        not the first: the adaptive kernel estimate of ``benchmarks/earth_kde.py`` picks it on
        validation, and a near-duplicate pair then does not set its own bandwidth to ~0.)

        Args:
            x: data points ``(batch, n)`` on the sphere.
            scale: the bandwidth as a multiple of ``d₂``, ``≥ 0``.
            repeats: how many independently perturbed copies, stacked along the batch.
            neighbours: the training set's distances (``neighbours(train)``): ``d₂`` and
                ``N₁/N`` over the whole set, not the batch (None, or rows not in it: the
                batch's).

        Returns:
            ``(repeats · batch, n)`` points on the sphere.
        """
        if x.dim() != 2 or x.shape[1] != self.n:
            raise ValueError(f"GeodesicPath.smooth: x must be (batch, {self.n}), got "
                             f"{tuple(x.shape)}")
        found = None if neighbours is None else neighbours.lookup(x)
        nearest, second, unseen = smoothing_distances(x) if found is None else found
        single = nearest > 0
        bandwidth = (scale * second * single).repeat(repeats)
        bandwidth = bandwidth * (torch.rand_like(bandwidth) < unseen)
        x = x.repeat(repeats, 1)
        xi = self.sphere.to_tangent(x, torch.randn_like(x))
        return self.sphere.project(self.sphere.exp(x, bandwidth.unsqueeze(-1) * xi))

    def cost(self, z: Tensor, x: Tensor) -> Tensor:
        """Squared geodesic distances ``d(z_i, x_j)²``, shape ``(batch_z, batch_x)``.

        Args:
            z: points ``(batch_z, n)`` on the sphere.
            x: points ``(batch_x, n)`` on the sphere.
        """
        return (2 * torch.atan2(torch.cdist(z, x), torch.cdist(z, -x))).square()

    def __repr__(self) -> str:
        return f"GeodesicPath(n={self.n}, time_power={self.time_power:g})"
