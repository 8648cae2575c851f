"""Out-of-distribution detection with a flow: the typicality test, anomaly scores and AUROC.

A flow can give out-of-distribution data a *higher* likelihood than its own training data
(Nalisnick et al., 2019, "Do deep generative models know what they don't know?"; SPEC §5): in high
dimension the samples of a distribution do not sit at its mode but in its *typical set*, where
``−log p(x)`` is close to the entropy. The typicality test therefore flags a batch whose mean
negative log-likelihood is too far from the training one in either direction: too unlikely, but
also too likely.

References:
    Detecting out-of-distribution inputs to deep generative models using typicality.
    Nalisnick, Matsukawa, Teh, Lakshminarayanan, 2019. arXiv:1906.02994.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from pushforward import _validation as _v
from pushforward.core import Flow
from pushforward.evaluation import eval_mode, negative_log_likelihood

__all__ = [
    "typicality_test",
    "typicality_test_from_nll",
    "TypicalityResult",
    "anomaly_scores",
    "AnomalyScores",
    "negative_log_likelihood",
    "auroc",
]


def _check_flow(flow: object, owner: str) -> Flow:
    if not isinstance(flow, Flow):
        raise TypeError(f"{owner}: expected a pushforward Flow, got {type(flow).__name__}")
    return flow


# -- typicality test --------------------------------------------------------------------------
@dataclass
class TypicalityResult:
    """The result of a typicality test; ``str(result)`` is a readable summary.

    Attributes:
        statistic: the batch's mean NLL (nats), NLLs clipped to the reference quantiles.
        entropy: the reference mean NLL ``Ĥ`` (mean clipped NLL of the training data).
        distance: ``|statistic − Ĥ|``.
        epsilon: the ``1 − alpha`` quantile of ``|bootstrap mean − Ĥ|``.
        interval: ``(Ĥ − ε, Ĥ + ε)``: the batch is typical when its mean NLL lies inside.
        p_value: ``(1 + #{b: |mean_b − Ĥ| ≥ distance}) / (1 + n_bootstrap)`` (two-sided).
        is_ood: ``p_value < alpha``.
        direction: ``"too likely"`` (mean NLL below the interval), ``"too unlikely"`` (above), or
            ``""`` when typical.
        alpha: the test level.
        batch_size: the number of points in the tested batch.
        n_bootstrap: the number of bootstrap batches.
        mean_nll: the batch's plain (unclipped) mean NLL.
        clip_range: the NLL range ``(low, high)`` values were clipped to (None: no clipping).
    """

    statistic: float
    entropy: float
    distance: float
    epsilon: float
    interval: tuple[float, float]
    p_value: float
    is_ood: bool
    direction: str
    alpha: float
    batch_size: int
    n_bootstrap: int
    mean_nll: float = math.nan
    clip_range: tuple[float, float] | None = None

    def __str__(self) -> str:
        lo, hi = self.interval
        verdict = f"OUT OF DISTRIBUTION ({self.direction})" if self.is_ood else "typical"
        return (
            f"typicality test on a batch of {self.batch_size}: mean NLL {self.statistic:.4f} "
            f"vs training {self.entropy:.4f}, {1 - self.alpha:.0%} bootstrap interval "
            f"[{lo:.4f}, {hi:.4f}], p = {self.p_value:.4g} -> {verdict}"
        )


def _as_1d_float64(values: object, name: str) -> Tensor:
    if isinstance(values, AnomalyScores):
        values = values.nll
    if isinstance(values, Tensor):
        t = values.detach().to("cpu", torch.float64).reshape(-1)
    else:
        try:
            t = torch.as_tensor(np.asarray(values, dtype=np.float64)).reshape(-1)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name} must be a tensor or an array of numbers") from err
    if t.numel() == 0:
        raise ValueError(f"{name} is empty")
    if torch.isnan(t).any():
        raise ValueError(f"{name} contains {int(torch.isnan(t).sum())} NaN value(s)")
    return t


def typicality_test_from_nll(
    train_nll: Tensor | Sequence[float],
    batch_nll: Tensor | Sequence[float],
    alpha: float = 0.01,
    n_bootstrap: int = 2000,
    seed: int = 0,
    clip: float | None = 0.995,
) -> TypicalityResult:
    """The typicality test on precomputed negative log-likelihoods (see ``typicality_test``).

    Args:
        train_nll: NLLs of the reference (training or held-out) data, ``(N,)``.
        batch_nll: NLLs of the batch under test, ``(M,)``.
        alpha: level of the test, in (0, 1).
        n_bootstrap: number of batches of size ``M`` resampled from ``train_nll``.
        seed: seed of the bootstrap.
        clip: NLLs (reference and batch alike) are clipped to the ``[1 − clip, clip]``
            quantiles of the reference before averaging; None uses the plain mean.

    Returns:
        A ``TypicalityResult``.

    Example:
        >>> import torch
        >>> reference = torch.randn(5000) + 10.0
        >>> typicality_test_from_nll(reference, torch.full((50,), 8.0)).is_ood
        True
        >>> typicality_test_from_nll(reference, reference[:50]).is_ood
        False
    """
    train = _as_1d_float64(train_nll, "typicality_test: train NLL")
    batch = _as_1d_float64(batch_nll, "typicality_test: batch NLL")
    alpha = float(alpha)
    if not 0 < alpha < 1:
        raise ValueError(f"typicality_test: alpha must be in (0, 1), got {alpha}")
    n_bootstrap = int(n_bootstrap)
    if n_bootstrap < 1:
        raise ValueError(f"typicality_test: n_bootstrap must be >= 1, got {n_bootstrap}")
    if not torch.isfinite(train).all():
        raise ValueError("typicality_test: the training NLLs must be finite")
    mean_nll = float(batch.mean())
    clip_range = None
    if clip is not None:
        clip = float(clip)
        if not 0.5 < clip <= 1:
            raise ValueError(f"typicality_test: clip must be in (0.5, 1] or None, got {clip}")
        low, high = torch.quantile(train, torch.tensor([1 - clip, clip], dtype=torch.float64))
        clip_range = (float(low), float(high))
        train, batch = train.clamp(low, high), batch.clamp(low, high)
    m = batch.numel()
    entropy = float(train.mean())
    generator = torch.Generator().manual_seed(int(seed))
    means = torch.empty(n_bootstrap, dtype=torch.float64)
    chunk = max(1, 2_000_000 // m)
    for start in range(0, n_bootstrap, chunk):
        k = min(chunk, n_bootstrap - start)
        idx = torch.randint(0, train.numel(), (k, m), generator=generator)
        means[start : start + k] = train[idx].mean(dim=1)
    spread = (means - entropy).abs()
    statistic = float(batch.mean())
    distance = abs(statistic - entropy) if math.isfinite(statistic) else math.inf
    epsilon = float(torch.quantile(spread, 1 - alpha))
    p_value = (1 + int((spread >= distance).sum())) / (1 + n_bootstrap)
    is_ood = p_value < alpha
    direction = ""
    if is_ood:
        direction = "too likely" if statistic < entropy else "too unlikely"
    return TypicalityResult(
        statistic=statistic,
        entropy=entropy,
        distance=distance,
        epsilon=epsilon,
        interval=(entropy - epsilon, entropy + epsilon),
        p_value=p_value,
        is_ood=is_ood,
        direction=direction,
        alpha=alpha,
        batch_size=m,
        n_bootstrap=n_bootstrap,
        mean_nll=mean_nll,
        clip_range=clip_range,
    )


def typicality_test(
    flow: Flow,
    train_x: Tensor,
    batch_x: Tensor,
    alpha: float = 0.01,
    n_bootstrap: int = 2000,
    seed: int = 0,
    *,
    clip: float | None = 0.995,
    train_context: Tensor | None = None,
    batch_context: Tensor | None = None,
    batch_size: int = 1024,
) -> TypicalityResult:
    """Test whether ``batch_x`` is a typical batch of the training distribution.

    The typicality test of Nalisnick et al. (2019).

    The reference entropy is ``Ĥ = mean(−log p(train_x))``. The bootstrap draws ``n_bootstrap``
    batches of ``len(batch_x)`` points with replacement from ``train_x``'s NLLs; their spread
    ``|mean_b − Ĥ|`` gives the null distribution of the statistic ``|mean(−log p(batch)) − Ĥ|``.
    The test is two-sided: a batch that is *more* likely than training batches (e.g. all at the
    mode, or a simpler dataset) is out of distribution as well as a less likely one.

    Robustness to the tail (``clip``, default 0.995): a few thousand reference points say little
    about the far tail of the NLL, and one in-distribution point in a low-density gap the
    model never saw can carry an NLL of hundreds of nats that alone drags a batch mean out of
    the interval. Every NLL — reference and batch — is therefore clipped to the ``[0.5 %,
    99.5 %]`` quantiles of the reference before averaging (a winsorised mean). The bootstrap
    applies the same clipping, so the level stays ``alpha``; a batch far away still sits at the
    upper clip, far above ``Ĥ``. ``clip=None`` gives the plain mean of Nalisnick et al.

    Pass held-out in-distribution data as ``train_x`` when the model may have overfit: the
    training NLLs of an overfit model are lower than on fresh data, and fresh in-distribution
    batches would then look "too unlikely".

    Args:
        flow: a trained ``Flow``.
        train_x: reference in-distribution data ``(N, *event)``.
        batch_x: the batch under test ``(M, *event)``.
        alpha: level of the test (false-alarm rate on in-distribution batches).
        n_bootstrap: number of bootstrap batches.
        seed: seed of the bootstrap.
        clip: quantile level of the clipping (see above); None: no clipping.
        train_context: context rows for ``train_x`` (conditional flows).
        batch_context: context rows for ``batch_x``.
        batch_size: chunk size when computing log-likelihoods.

    Returns:
        A ``TypicalityResult`` with ``.p_value``, ``.is_ood``, ``.statistic``, ``.interval``.

    References:
        Detecting out-of-distribution inputs to deep generative models using typicality.
        Nalisnick, Matsukawa, Teh, Lakshminarayanan, 2019. arXiv:1906.02994.
    """
    flow = _check_flow(flow, "typicality_test")
    train_nll = negative_log_likelihood(flow, train_x, train_context, batch_size)
    batch_nll = negative_log_likelihood(flow, batch_x, batch_context, batch_size)
    return typicality_test_from_nll(train_nll, batch_nll, alpha, n_bootstrap, seed, clip)


# -- per-sample scores ------------------------------------------------------------------------
class AnomalyScores:
    """Per-sample anomaly scores (higher = more anomalous); unpacks as ``nll, typicality``.

    Attributes:
        nll: ``−log p(x)``, ``(N,)``.
        typicality: ``|−log p(x) − Ĥ|``, ``(N,)``.
        reference_entropy: ``Ĥ``, the reference mean NLL.
        reference: how ``Ĥ`` was estimated (``"data"`` or ``"model samples"``).
    """

    def __init__(self, nll: Tensor, typicality: Tensor, reference_entropy: float,
                 reference: str) -> None:
        self.nll = nll
        self.typicality = typicality
        self.reference_entropy = reference_entropy
        self.reference = reference

    def __iter__(self) -> Iterator[Tensor]:
        return iter((self.nll, self.typicality))

    def __len__(self) -> int:
        return 2

    _KEYS = {"nll": "nll", "neg_log_prob": "nll", "negative_log_likelihood": "nll",
             "typicality": "typicality"}

    @property
    def neg_log_prob(self) -> Tensor:
        """Alias of ``nll``."""
        return self.nll

    def __getitem__(self, key: int | str) -> Tensor:
        if isinstance(key, str):
            if key not in self._KEYS:
                raise KeyError(f"AnomalyScores has 'nll' and 'typicality', not {key!r}")
            return getattr(self, self._KEYS[key])
        return (self.nll, self.typicality)[key]

    def keys(self) -> tuple[str, str]:
        """``("nll", "typicality")``."""
        return ("nll", "typicality")

    def __repr__(self) -> str:
        return (f"AnomalyScores(n={self.nll.shape[0]}, reference_entropy="
                f"{self.reference_entropy:.4f} from {self.reference})")


def anomaly_scores(
    flow: Flow,
    x: Tensor,
    reference_x: Tensor | None = None,
    context: Tensor | None = None,
    *,
    reference_context: Tensor | None = None,
    n_samples: int = 4096,
    batch_size: int = 1024,
    seed: int = 0,
) -> AnomalyScores:
    """Per-sample anomaly scores from a flow: the NLL and a typicality score.

    ``nll = −log p(x)``. ``typicality = |−log p(x) − Ĥ|`` with ``Ĥ ≈ E[−log p]`` over the data
    distribution: a point is anomalous when its likelihood is atypical in either direction (the
    per-sample version of the typicality test). ``Ĥ`` is the mean NLL of ``reference_x``
    (training or held-out data: the cross-entropy the model was trained to reach) when given;
    otherwise the Monte Carlo entropy of the model, the mean of ``−log p`` over ``n_samples``
    samples drawn from the flow itself (``E_{x∼p}[−log p(x)]``, equal to the data cross-entropy
    when the model fits). Unconditional flows only in that case.

    Args:
        flow: a trained ``Flow``.
        x: points to score ``(N, *event)``.
        reference_x: in-distribution data for ``Ĥ`` (recommended), or None.
        context: context rows for ``x``.
        reference_context: context rows for ``reference_x``.
        n_samples: model samples used for ``Ĥ`` when ``reference_x`` is None.
        batch_size: chunk size of the log-likelihood evaluations.
        seed: seed of the model samples.

    Returns:
        ``AnomalyScores`` (``.nll``, ``.typicality``; ``nll, typ = anomaly_scores(...)``).

    Example:
        >>> import torch, pushforward as pf
        >>> flow = pf.Flow(pf.transforms.Affine(2), pf.StandardNormal(2))
        >>> inliers, outliers = torch.randn(200, 2), torch.randn(200, 2) + 6.0
        >>> s_in, s_out = anomaly_scores(flow, inliers), anomaly_scores(flow, outliers)
        >>> auroc(s_in.nll, s_out.nll) > 0.99
        True
    """
    flow = _check_flow(flow, "anomaly_scores")
    nll = negative_log_likelihood(flow, x, context, batch_size)
    if reference_x is not None:
        ref = negative_log_likelihood(flow, reference_x, reference_context, batch_size)
        source = "data"
    else:
        if flow.context_features:
            raise ValueError(
                "anomaly_scores: a conditional flow needs reference_x (and reference_context) "
                "to estimate the reference entropy"
            )
        if int(n_samples) < 2:
            raise ValueError(f"anomaly_scores: n_samples must be >= 2, got {n_samples}")
        state = torch.random.get_rng_state()
        torch.manual_seed(int(seed))
        try:
            parts = []
            with eval_mode(flow), torch.no_grad(), _v.validation(False):
                for start in range(0, int(n_samples), int(batch_size)):
                    k = min(int(batch_size), int(n_samples) - start)
                    parts.append(-flow.sample_and_log_prob(k)[1])
        finally:
            torch.random.set_rng_state(state)
        ref = torch.cat(parts)
        source = "model samples"
    ref = ref[torch.isfinite(ref)]
    if ref.numel() == 0:
        raise ValueError("anomaly_scores: no finite reference NLL to estimate the entropy")
    entropy = float(ref.double().mean())
    return AnomalyScores(nll, (nll - entropy).abs(), entropy, source)


# -- AUROC ------------------------------------------------------------------------------------
def _average_ranks(values: Tensor) -> Tensor:
    """Ranks 1..n of ``values``; tied values share the average of their ranks."""
    order = torch.argsort(values, stable=True)
    sorted_values = values[order]
    _, counts = torch.unique_consecutive(sorted_values, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    average = ends - (counts.double() - 1) / 2  # mean of ranks end-count+1 … end
    ranks = torch.empty_like(values, dtype=torch.float64)
    ranks[order] = torch.repeat_interleave(average, counts)
    return ranks


def auroc(scores_in: object, scores_out: object) -> float:
    """Area under the ROC curve for separating ``scores_out`` (positives) from ``scores_in``.

    Higher scores mean "more anomalous". Computed exactly as the Mann–Whitney statistic:
    ``AUROC = P(s_out > s_in) + ½ P(s_out = s_in)`` over all pairs, from average ranks (ties
    count one half), in ``O(n log n)``. 0.5 is chance; below 0.5 the score ranks the outliers
    as *more* normal than the inliers. ``+inf`` is allowed (e.g. an NLL of a point outside the
    support); NaN is refused. ``AnomalyScores`` are accepted and use their ``nll``.

    Args:
        scores_in: scores of in-distribution points (tensor, array or list).
        scores_out: scores of out-of-distribution points.

    Returns:
        The AUROC, a float in [0, 1].

    Example:
        >>> auroc([0.1, 0.2, 0.3], [0.25, 0.4])
        0.8333333333333334
    """
    s_in = _as_1d_float64(scores_in, "auroc: scores_in")
    s_out = _as_1d_float64(scores_out, "auroc: scores_out")
    ranks = _average_ranks(torch.cat([s_in, s_out]))
    n_in, n_out = s_in.numel(), s_out.numel()
    u = float(ranks[n_in:].sum()) - n_out * (n_out + 1) / 2
    return u / (n_in * n_out)
