"""Fuzzing the public API: every call returns finite, correctly shaped results or refuses.

Each ``@given`` test draws random shapes, dtypes, batch sizes (0 and 1 included), NaN/inf,
huge and tiny values, off-manifold points, out-of-domain parameters and mismatched contexts, and
sends them through one public entry point. Each drawn input is classified before the call:

* **valid** (in the domain, right shape/dtype/context): the call must succeed with the documented
  shape and finite entries (a log-density may be ``-inf``: it underflows the dtype, see
  RELIABILITY.md); a refusal fails the test (so a spurious ``ValueError`` cannot hide);
* **invalid** (NaN/inf, wrong shape, rank, dtype, type, context, count...): the call must raise
  ``ValueError`` / ``TypeError`` whose message names the problem (a regular expression per kind);
* **extreme** (finite but huge or tiny values, points pushed off a bounded domain): either a
  finite result or a ``ValueError`` (overflow in the dtype, outside the domain), never a
  ``TypeError``, another exception or a silent NaN.

Anything else (another exception, a NaN, a wrong shape, a call running past ``_TIMEOUT`` seconds)
fails the test. ``COUNTS`` records how many cases each area tried; with
``PUSHFORWARD_FUZZ_REPORT=path`` the totals are written there as JSON at the end of the module.
The default suite runs a few hundred cases; the ``slow`` variants run thousands more
(``PUSHFORWARD_FUZZ_FRESH=1``: from fresh seeds).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import inspect
import json
import math
import os
import re
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from contract import all_cases
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import pushforward as pf
import pushforward.distributions as dist
import pushforward.manifolds as mf
from pushforward import _registry

COUNTS: collections.Counter = collections.Counter()
_TIMEOUT = 60  # seconds one call may take before it counts as a hang
CASES = all_cases()
DTYPES = (torch.float32, torch.float64)
_FAST = dict(deadline=None, derandomize=True, database=None,
             suppress_health_check=list(HealthCheck))
# The slow variants draw thousands of cases from their own fixed seeds, so CI is reproducible;
# PUSHFORWARD_FUZZ_FRESH=1 draws fresh ones (exploration). No shrinking: a failure reports the
# drawn case as found (its labelled draws), which keeps a failing run inside CI's budget.
_SLOW = dict(deadline=None, database=None, suppress_health_check=list(HealthCheck),
             derandomize=not os.environ.get("PUSHFORWARD_FUZZ_FRESH"),
             phases=(Phase.explicit, Phase.reuse, Phase.generate))


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    path = os.environ.get("PUSHFORWARD_FUZZ_REPORT")
    if path:
        previous = {}
        if Path(path).exists():
            previous = json.loads(Path(path).read_text())
        for key, value in COUNTS.items():
            previous[key] = previous.get(key, 0) + value
        Path(path).write_text(json.dumps(previous, indent=1, sort_keys=True))


@contextlib.contextmanager
def _deadline(seconds: int = _TIMEOUT):
    def hang(*_):
        raise TimeoutError(f"call ran for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@dataclasses.dataclass(frozen=True)
class Expect:
    """What a call must do with a classified input.

    Attributes:
        outcome: ``"ok"`` (must succeed), ``"refuse"`` (must raise naming the problem) or
            ``"either"`` (an extreme input: a result or a ``ValueError``).
        match: for refusals, a regular expression the message must match (case-insensitive).
        errors: the exception types a refusal may have.
    """

    outcome: str = "ok"
    match: str | None = None
    errors: tuple = (ValueError, TypeError)

    def __and__(self, other: Expect) -> Expect:
        """Combine two independent aspects of one call (input and context, say)."""
        order = {"refuse": 0, "either": 1, "ok": 2}
        first, second = sorted((self, other), key=lambda e: order[e.outcome])
        if first.outcome == "refuse" and second.outcome == "refuse":
            match = f"(?:{first.match or '.'})|(?:{second.match or '.'})"
            return Expect("refuse", match, first.errors + second.errors)
        if first.outcome == "either" and second.outcome == "either":
            return Expect("either", None, first.errors + second.errors)
        if first.outcome == "refuse" and second.outcome == "either":
            # The extreme aspect may be refused first (e.g. an overflow before a bad context).
            match = f"(?:{first.match or '.'})|(?:{second.match or '.'})"
            return Expect("refuse", match, first.errors + second.errors)
        return first


OK = Expect("ok")
EXTREME = Expect("either", None, (ValueError,))
DAMAGED = Expect("either")  # a damaged file: refused (ValueError/TypeError) or harmless


def refuse(match: str, *errors: type) -> Expect:
    """An invalid input: a ``ValueError``/``TypeError`` (or ``errors``) matching ``match``."""
    return Expect("refuse", match, errors or (ValueError, TypeError))


def attempt(area: str, fn, expect: Expect = EXTREME):
    """Run ``fn`` under the expectation; return its result, or None after a due refusal."""
    COUNTS[area] += 1
    COUNTS[f"{area}:{expect.outcome}"] += 1
    with _deadline(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out = fn()
        except (ValueError, TypeError) as error:
            message = str(error).strip()
            assert message, f"{type(error).__name__} without a message"
            if expect.outcome == "ok":
                raise AssertionError(
                    f"{area}: a valid input was refused: {type(error).__name__}: {message}"
                ) from error
            assert isinstance(error, expect.errors), (
                f"{area}: refused with {type(error).__name__} ({message}); expected one of "
                f"{[e.__name__ for e in expect.errors]}")
            if expect.match is not None:
                assert re.search(expect.match, message, re.IGNORECASE | re.DOTALL), (
                    f"{area}: the refusal does not name the problem (/{expect.match}/): "
                    f"{message}")
            return None
    assert expect.outcome != "refuse", (
        f"{area}: an invalid input was accepted (expected a refusal matching /{expect.match}/)")
    return out


def assert_finite(value: torch.Tensor, shape, what: str, allow_neg_inf: bool = False) -> None:
    assert tuple(value.shape) == tuple(shape), f"{what}: shape {tuple(value.shape)} != {shape}"
    bad = torch.isnan(value) | (value == math.inf)
    if not allow_neg_inf:
        bad = bad | (value == -math.inf)
    assert not bool(bad.any()), f"{what}: {int(bad.sum())} non-finite entries (silent NaN/inf)"


# -- input corruption -------------------------------------------------------------------------
SPECIAL = st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e-320, 1e-40, 1e30,
                           -1e30, 3.4e38, 1e300, -1e300, 1e6])
VALUES = st.one_of(SPECIAL, st.floats(allow_nan=True, allow_infinity=True, width=64))
CORRUPTION = st.one_of(
    st.just(("none",)),
    st.tuples(st.just("value"), VALUES, st.integers(0, 10**6)),
    st.tuples(st.just("scale"), st.integers(-320, 320)),
    st.tuples(st.just("shape"), st.sampled_from(["wider", "rank-", "rank+", "scalar"])),
    st.tuples(st.just("dtype"), st.sampled_from([torch.int64, torch.bool, torch.float16,
                                                 torch.bfloat16, "other", "numpy", "list"])),
)
CONTEXT = st.sampled_from(["ok", "ok", "none", "width", "batch", "nan", "huge", "int", "1d",
                           "extra"])


def corrupt(x: torch.Tensor, how: tuple) -> object:
    kind = how[0]
    if kind == "none":
        return x
    if kind == "value":
        if x.numel() == 0:
            return x
        x = x.clone().contiguous()
        # Through float64: a value beyond float32's range becomes ±inf, as a cast would make it.
        x.view(-1)[how[2] % x.numel()] = torch.tensor(how[1], dtype=torch.float64).to(x.dtype)
        return x
    if kind == "scale":
        return x * 10.0 ** how[1] if abs(how[1]) < 308 else x * math.inf
    if kind == "shape":
        if how[1] == "wider":
            return torch.cat([x, x[:, :1]], dim=1) if x.dim() > 1 else x[:, None]
        if how[1] == "rank-":
            return x.reshape(-1)
        if how[1] == "rank+":
            # A trailing axis wider than the last one: (batch, d, 1) or (batch, d, d) can be
            # the valid (sample, batch, *event) form (Flow.log_prob broadcasts leading axes).
            return x[..., None].expand(*x.shape, x.shape[-1] + 1) if x.dim() else x[None]
        return x.new_tensor(1.0)
    if how[1] == "other":
        return x.to(torch.float64 if x.dtype == torch.float32 else torch.float32)
    if how[1] == "numpy":
        return x.numpy()
    if how[1] == "list":
        return x.tolist()
    return x.to(how[1])


def make_context(kind: str, batch: int, width: int, dtype) -> object:
    if width == 0:
        return torch.randn(batch, 2, dtype=dtype) if kind == "extra" else None
    c = torch.randn(batch, width, dtype=dtype)
    if kind == "none":
        return None
    if kind == "width":
        return torch.randn(batch, width + 1, dtype=dtype)
    if kind == "batch":
        return torch.randn(batch + 1, width, dtype=dtype)
    if kind == "nan" and batch:
        c[0, 0] = math.nan
    if kind == "huge" and batch:
        c[-1, -1] = 1e30
    if kind == "int":
        return c.long()
    if kind == "1d":
        return c[:, 0]
    return c


# -- classifying inputs -----------------------------------------------------------------------
NAN_INF = r"NaN|infinite"
SHAPE = r"shape|rank|batch dimension|scalar"
CONTEXT_PROBLEM = r"context"


def classify_input(how: tuple, corrupted: object, shape_free: bool, dtype_free: bool) -> Expect:
    """The expectation for a (possibly corrupted) input tensor.

    Args:
        how: the corruption drawn from ``CORRUPTION``.
        corrupted: the value after ``corrupt``.
        shape_free: the callee declares no input shape (elementwise layers built without one).
        dtype_free: the callee has no floating parameter or buffer (any float dtype is fine).
    """
    kind = how[0]
    if kind == "dtype":
        target = how[1]
        if target in (torch.int64, torch.bool):
            return refuse(r"floating", TypeError)
        if target in (torch.float16, torch.bfloat16):
            return refuse(r"float32 or float64", TypeError)
        if target == "other":
            return OK if dtype_free else refuse(r"dtype", TypeError)
        return refuse(r"torch\.Tensor", TypeError)  # numpy array or list
    if kind == "shape":
        if how[1] == "scalar":
            return refuse(SHAPE, ValueError)
        return OK if shape_free else refuse(SHAPE, ValueError)
    assert isinstance(corrupted, torch.Tensor)
    if corrupted.numel() and not bool(torch.isfinite(corrupted).all()):
        return refuse(NAN_INF, ValueError)
    if kind == "none" or corrupted.numel() == 0 or (kind == "scale" and how[1] == 0):
        return OK
    return EXTREME  # finite but possibly huge, tiny, or pushed off a bounded domain


def classify_context(kind: str, batch: int, width: int) -> Expect:
    """The expectation for a context drawn by ``make_context`` (width 0: always ignored)."""
    if width == 0 or kind in ("ok", "extra"):
        return OK
    if kind == "nan":
        return refuse(NAN_INF, ValueError) if batch else OK
    if kind == "huge":
        return EXTREME if batch else OK
    if kind == "int":
        return refuse(r"floating|dtype", TypeError)
    return refuse(CONTEXT_PROBLEM, ValueError)  # none, width, batch, 1d


def _has_floating_tensors(module: torch.nn.Module) -> bool:
    return any(t.is_floating_point() for t in (*module.parameters(), *module.buffers()))


# -- transforms -------------------------------------------------------------------------------
def _transform_case(data, area: str) -> None:
    case = data.draw(st.sampled_from(CASES), label="case")
    width = data.draw(st.sampled_from(list(case.contexts)), label="context_features")
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    batch = data.draw(st.sampled_from([0, 1, 1, 2, 3, 7]), label="batch")
    torch.manual_seed(data.draw(st.integers(0, 3), label="seed"))
    t = case.make(width).to(dtype)
    inverted = data.draw(st.booleans(), label="use .inv")
    if inverted:
        t = t.inv  # t.forward is the case's inverse: its input is on the data side
        direction = "forward"
    else:
        direction = data.draw(st.sampled_from(["inverse", "forward"]), label="direction")
    if data.draw(st.booleans(), label="eval"):
        t.eval()
    x = case.inputs(max(batch, 1), torch.Generator().manual_seed(batch)).to(dtype)[:batch]
    ckind = data.draw(CONTEXT, label="context")
    c = make_context(ckind, batch, width, dtype)
    if direction == "forward" and not inverted:
        # A valid base-side point: the inverse of a valid data point (must not be refused).
        valid_c = make_context("ok", batch, width, dtype)
        with torch.no_grad():
            out = attempt(area, lambda: t.inverse(x, valid_c), OK)
        value = out[0].detach()
    else:
        value = x
    how = data.draw(CORRUPTION, label="corruption")
    value = corrupt(value, how)
    call = t if direction == "forward" else t.inverse
    declared_in = t.latent_shape if direction == "forward" else t.event_shape
    expect = classify_input(how, value, declared_in is None, not _has_floating_tensors(t))
    expect = expect & classify_context(ckind, batch, width)
    out = attempt(area, lambda: call(value, c), expect)
    if out is None:
        return
    y, ladj = out
    assert isinstance(value, torch.Tensor)
    declared = t.event_shape if direction == "forward" else t.latent_shape
    shape = (value.shape[0], *declared) if declared is not None else tuple(value.shape)
    assert_finite(y, shape, f"{case.name} {direction} output")
    assert_finite(ladj, (value.shape[0],), f"{case.name} {direction} ladj")


@settings(max_examples=1500, **_FAST)
@given(st.data())
def test_fuzz_transforms(data):
    _transform_case(data, "transforms")


@pytest.mark.slow
@settings(max_examples=6000, **_SLOW)
@given(st.data())
def test_fuzz_transforms_long(data):
    _transform_case(data, "transforms")


# -- presets and Flow methods -----------------------------------------------------------------
_FLOWS: dict = {}
PRESETS = [
    (name, {"shape": (1, 4, 4)} if {"images", "context"} <= pf.flows.accepts(name) else {})
    for name in pf.flows.names()
] + [(name, {}) for name in pf.flows.names()  # their vector form too (declared, not listed)
     if {"images", "vectors", "context"} <= pf.flows.accepts(name)]


def _flow(name: str, options: dict, features: int, context: int, dtype):
    key = (name, json.dumps(options, sort_keys=True), features, context, dtype)
    if key not in _FLOWS:
        torch.manual_seed(0)
        opts = dict(options)
        if "shape" in opts:
            features = math.prod(opts["shape"])
        _FLOWS[key] = pf.flows.build(name, features=features, context=context,
                                     **opts).to(dtype)
    return _FLOWS[key]


def _flow_context(kind: str, batch: int | None, width: int, distribution: bool,
                  x_batch: int | None = None) -> Expect:
    """The expectation for a context given to a flow (an unconditional flow refuses one)."""
    if width == 0:
        return refuse(r"unconditional", ValueError) if kind == "extra" else OK
    if kind == "batch" and batch is None:
        return OK  # sampling: any number of context rows is fine
    if kind == "batch" and distribution:
        # The distribution's batch shape is the context's: x must broadcast against it.
        rows = x_batch + 1
        return OK if x_batch in (1, rows) or rows == 1 else refuse(r"broadcast", ValueError)
    return classify_context(kind, 2 if batch is None else batch, width)


def _count(n: object, distribution: bool) -> Expect:
    """The expectation for a sample count."""
    if isinstance(n, bool):
        return OK if distribution else refuse(r"integer", TypeError)  # torch.Size((True,))
    if isinstance(n, (int, np.integer)) or (isinstance(n, torch.Tensor) and n.dim() == 0):
        return OK if int(n) >= 0 else refuse(r">= 0|non-negative", ValueError)
    return refuse(r"integer", TypeError)


def _temperature(value: float, gaussian_base: bool) -> Expect:
    if value == 1.0:
        return OK
    if not gaussian_base:
        return refuse(r"temperature", ValueError, TypeError)
    return OK if value > 0 and math.isfinite(value) else refuse(r"temperature", ValueError)


def _distribution_value(x: object, event: tuple, batch_shape: tuple) -> Expect:
    """torch.distributions rules: ``value`` ends with the event shape and broadcasts its leading
    dimensions against the batch shape."""
    if not isinstance(x, torch.Tensor) or x.dim() < len(event) or tuple(
            x.shape[x.dim() - len(event):]) != event:
        return refuse(SHAPE, ValueError)
    try:
        torch.broadcast_shapes(x.shape[: x.dim() - len(event)], batch_shape)
    except RuntimeError:
        return refuse(r"broadcast", ValueError)
    return OK


_SAMPLES: dict = {}


def _valid_points(flow, key: tuple, batch: int, width: int, dtype) -> torch.Tensor:
    """``batch`` points in the flow's domain (drawn from the flow itself, so manifold and
    integer presets get points on their domain), cached per flow."""
    if key not in _SAMPLES:
        torch.manual_seed(1)
        context = torch.randn(5, width, dtype=dtype) if width else None
        was_training = flow.training
        flow.eval()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x = flow.sample(5) if context is None else flow.sample(1, context)[0]
        flow.train(was_training)
        _SAMPLES[key] = x
    return _SAMPLES[key][:batch].clone()


def _flow_case(data, area: str) -> None:
    name, options = data.draw(st.sampled_from(PRESETS), label="preset")
    features = 3 if name == "sphere" else data.draw(st.sampled_from([1, 2, 3]), label="d")
    width = data.draw(st.sampled_from([0, 2]), label="context")
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    try:
        flow = _flow(name, options, features, width, dtype)
    except (ValueError, TypeError):
        return  # the preset refuses this combination (e.g. 1 feature): a build error
    if data.draw(st.booleans(), label="eval"):
        flow.eval()
    else:
        flow.train()
    event = flow.event_shape
    method = data.draw(st.sampled_from(["log_prob", "log_prob", "sample", "sample_and_log_prob",
                                        "rsample", "distribution.log_prob",
                                        "distribution.sample"]), label="method")
    ckind = data.draw(CONTEXT, label="context kind")
    if "log_prob" in method and "sample" not in method:
        batch = data.draw(st.sampled_from([0, 1, 2, 5]), label="batch")
        key = (name, json.dumps(options, sort_keys=True), features, width, dtype)
        x = _valid_points(flow, key, batch, width, dtype)
        how = data.draw(CORRUPTION, label="corruption")
        x = corrupt(x, how)
        c = make_context(ckind, batch, width, dtype)
        expect = classify_input(how, x, False, False)
        if method == "log_prob":
            expect = expect & _flow_context(ckind, batch, width, False)
            out = attempt(area, lambda: flow.log_prob(x, c), expect)
        else:
            if expect.outcome == "ok" or how[0] == "shape":
                rows = () if not isinstance(c, torch.Tensor) or c.dim() != 2 else (c.shape[0],)
                expect = _distribution_value(x, tuple(event), rows)
            expect = expect & _flow_context(ckind, batch, width, True, batch)
            out = attempt(area, lambda: flow.distribution(c).log_prob(x), expect)
        if out is not None:
            assert isinstance(x, torch.Tensor)
            assert_finite(out, out.shape, f"{name} {method}", allow_neg_inf=True)
            if method == "log_prob":
                assert tuple(out.shape) == (x.shape[0],)
        return
    n = data.draw(st.one_of(st.sampled_from([0, 1, 3]), st.sampled_from(
        [-1, 2.5, "3", None, True, np.int64(2), torch.tensor(2)])), label="n")
    temperature = data.draw(st.sampled_from([1.0, 1.0, 0.5, 0.0, -1.0, math.nan, math.inf]),
                            label="temperature")
    c = make_context(ckind, 2, width, dtype)
    distribution = method == "distribution.sample"
    gaussian = isinstance(flow.base, (dist.StandardNormal, dist.DiagonalNormal,
                                      dist.ConditionalDiagonalNormal))
    expect = _count(n, distribution) & _flow_context(ckind, None, width, distribution)
    if distribution:
        out = attempt(area, lambda: flow.distribution(c).sample((n,)), expect)
    else:
        expect = expect & _temperature(temperature, gaussian)
        out = attempt(area, lambda: getattr(flow, method)(n, c, temperature=temperature),
                      expect)
    if out is None:
        return
    count = int(n)
    lead = (count,) if c is None else (count, c.shape[0])
    x = out[0] if isinstance(out, tuple) else out
    assert_finite(x, (*lead, *event), f"{name} {method}")
    if isinstance(out, tuple):
        assert_finite(out[1], lead, f"{name} {method} log_prob", allow_neg_inf=True)


@settings(max_examples=600, **_FAST)
@given(st.data())
def test_fuzz_flows(data):
    _flow_case(data, "flows")


@pytest.mark.slow
@settings(max_examples=3000, **_SLOW)
@given(st.data())
def test_fuzz_flows_long(data):
    _flow_case(data, "flows")


OPTION = st.one_of(st.integers(-2, 5), st.sampled_from([None, True, 2.5, "3", [2], math.nan]))


def _is_count(value: object, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _preset_expect(name: str, features: object, context: object, extra: dict) -> Expect:
    """Unknown names, non-integer or negative sizes and bad options must be refused; a plain
    configuration (features >= 2, context >= 0, no extra option) must build. The rest (one
    feature, an int ``hidden``, a ``shape`` beside ``features``) depends on the preset."""
    if name.lower() not in pf.flows.names():
        return refuse(r"unknown flow", ValueError)
    expect = OK
    if features is not None and not _is_count(features, 1):
        expect = expect & refuse(r"features|shape", ValueError, TypeError)
    if not _is_count(context, 0):
        expect = expect & refuse(r"context", ValueError, TypeError)
    if "bogus" in extra:
        expect = expect & refuse(r"bogus|unexpected", TypeError)
    accepted = inspect.signature(_registry._REGISTRY[name.lower()]).parameters
    if "shape" in extra and "shape" not in accepted and not any(
            p.kind is p.VAR_KEYWORD for p in accepted.values()):
        expect = expect & refuse(r"shape|unexpected", TypeError)
    if extra.get("transforms", 1) < 1:
        expect = expect & refuse(r"transforms", ValueError)
    if extra.get("hidden") in (0, [4, -1]):
        expect = expect & refuse(r"hidden", ValueError, TypeError)
    if expect.outcome == "ok" and (features in (None, 1) or "shape" in extra
                                   or extra.get("hidden") == 4):
        expect = Expect("either", None, (ValueError, TypeError))
    return expect


@settings(max_examples=80, **_FAST)
@given(name=st.sampled_from(pf.flows.names() + ["nope", "", "MAF"]),
       features=OPTION, context=OPTION, extra=st.sampled_from(
           [{}, {"transforms": 0}, {"transforms": -1}, {"hidden": 0}, {"hidden": [4, -1]},
            {"bogus": 1}, {"transforms": 1, "hidden": 4}, {"shape": (1, 3, 3)}]))
def test_fuzz_preset_options(name, features, context, extra):
    flow = attempt("presets", lambda: pf.flows.build(name, features=features, context=context,
                                                     **extra), _preset_expect(name, features,
                                                                              context, extra))
    if flow is not None:
        assert isinstance(flow, pf.Flow)
        x = flow.sample(2, torch.randn(1, flow.context_features) if flow.context_features
                        else None)
        assert torch.isfinite(x).all()


@settings(max_examples=30, **_FAST)
@given(name=st.sampled_from([n for n in pf.flows.names()  # plain vectors: read the declaration
                             if "vectors" in pf.flows.accepts(n)]), features=st.integers(2, 4),
       context=st.integers(0, 3), transforms=st.integers(1, 2),
       hidden=st.sampled_from([(4,), (8, 8)]))
def test_fuzz_preset_options_valid(name, features, context, transforms, hidden):
    """Plain configurations of every preset must build, sample and evaluate."""
    accepted = inspect.signature(_registry._REGISTRY[name]).parameters
    options = {k: v for k, v in (("transforms", transforms), ("hidden", hidden))
               if k in accepted}
    if name in ("glow", "realnvp", "nice") or "shape" in accepted and "features" not in accepted:
        options.pop("hidden", None)  # image-capable presets read hidden as channels
    torch.manual_seed(0)
    flow = attempt("presets", lambda: pf.flows.build(name, features=features, context=context,
                                                     **options), OK)
    c = torch.randn(2, context) if context else None
    with torch.no_grad():
        x = attempt("presets", lambda: flow.sample(1, c)[0] if c is not None else flow.sample(2),
                    OK)
        log_p = attempt("presets", lambda: flow.log_prob(x, c), OK)
    assert_finite(x, (2, *flow.event_shape), f"{name} sample")
    assert_finite(log_p, (2,), f"{name} log_prob", allow_neg_inf=True)


# -- bases (Euclidean, sphere, simplex) -------------------------------------------------------
def _base(kind: str, n: int, bad: object):
    if kind == "StandardNormal":
        return dist.StandardNormal(n)
    if kind == "DiagonalNormal":
        return dist.DiagonalNormal(n)
    if kind == "ConditionalDiagonalNormal":
        return dist.ConditionalDiagonalNormal(n, 2, hidden=(4,))
    if kind == "UniformSphere":
        return mf.UniformSphere(n)
    if kind == "VonMisesFisher":
        return mf.VonMisesFisher(n, concentration=bad)
    if kind == "VonMisesFisherMixture":
        return mf.VonMisesFisherMixture(n, components=2, concentration=bad)
    if kind == "Dirichlet":
        return mf.Dirichlet(n, concentration=bad)
    return mf.UniformSimplex(n)


BASES = ["StandardNormal", "DiagonalNormal", "ConditionalDiagonalNormal", "UniformSphere",
         "VonMisesFisher", "VonMisesFisherMixture", "Dirichlet", "UniformSimplex"]


SPHERE_BASES = ("UniformSphere", "VonMisesFisher", "VonMisesFisherMixture")
SIMPLEX_BASES = ("Dirichlet", "UniformSimplex")


def _base_build(kind: str, n: int, param: object) -> Expect:
    """The expectation for building a base: manifolds need ``n >= 2``; concentrations must be
    positive finite numbers (the mixture's has no None default)."""
    if kind in SPHERE_BASES + SIMPLEX_BASES and n < 2:
        return refuse(r"n must|dimension|>= ?2|at least", ValueError)
    if kind not in ("VonMisesFisher", "VonMisesFisherMixture", "Dirichlet"):
        return OK
    if param is None:
        return refuse(r"concentration|NoneType|float", TypeError, ValueError) if (
            kind == "VonMisesFisherMixture") else OK
    if isinstance(param, str):
        return refuse(r"concentration|could not convert|str|float", TypeError, ValueError)
    if not (math.isfinite(param) and param > 0):
        return refuse(r"concentration", ValueError)
    return OK


def _base_case(data, area: str) -> None:
    kind = data.draw(st.sampled_from(BASES), label="base")
    n = data.draw(st.sampled_from([1, 2, 3, 5]), label="n")
    param = data.draw(st.sampled_from([None, 1.0, 5.0, 0.0, -1.0, 1e-8, 1e4, math.nan,
                                       math.inf, "a"]), label="parameter")
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    base = attempt(area, lambda: _base(kind, n, param), _base_build(kind, n, param))
    if base is None:
        return
    base = base.to(dtype)
    event = tuple(base.event_shape)
    width = getattr(base, "context_features", 0)
    batch = data.draw(st.sampled_from([0, 1, 4]), label="batch")
    ckind = data.draw(CONTEXT, label="context kind")
    c = make_context(ckind, batch, width, dtype)
    if data.draw(st.booleans(), label="sample"):
        count = data.draw(st.sampled_from([0, 1, 4, -1, 2.5]), label="count")
        expect = _count(count, False)
        if width and isinstance(c, torch.Tensor) and c.dim() == 2 and isinstance(count, int):
            c = make_context("ok", max(count, 0), width, dtype)
            ckind, batch = "ok", max(count, 0)
        if width and isinstance(count, int) and count >= 0 and ckind in ("ok", "extra") and (
                batch != count):
            expect = expect & refuse(r"context|batch", ValueError)
        else:
            expect = expect & classify_context(ckind, batch, width)
        out = attempt(area, lambda: base.sample_and_log_prob(count, c), expect)
        if out is not None:
            z, lp = out
            assert_finite(z, (count, *event), f"{kind} sample")
            assert_finite(lp, (count,), f"{kind} sample log_prob", allow_neg_inf=True)
        return
    z = torch.randn(batch, *event, dtype=dtype)
    where = data.draw(st.sampled_from(["on", "off", "boundary"]), label="manifold")
    if kind in SPHERE_BASES and where != "off":
        z = torch.nn.functional.normalize(z, dim=-1)
    if kind in SIMPLEX_BASES and where != "off":
        z = torch.softmax(z, dim=-1)
        if where == "boundary" and batch:
            z[0] = 0
            z[0, 0] = 1
    how = data.draw(CORRUPTION, label="corruption")
    z = corrupt(z, how)
    other_dtype = how[0] == "dtype" and how[1] == "other"
    expect = OK if other_dtype else classify_input(how, z, False, False)
    if expect.outcome == "ok" and batch:
        if where == "off" and kind in SPHERE_BASES + SIMPLEX_BASES:
            expect = refuse(r"sphere|simplex|off|outside|domain|norm|sum", ValueError)
        elif where == "boundary" and kind in SIMPLEX_BASES:
            # A vertex (zero probabilities) lies outside the open simplex, the bases' domain.
            expect = refuse(r"simplex|outside", ValueError)
    if other_dtype:
        # Bases compute in the input's dtype (no parameters to disagree with) or refuse it.
        expect = expect & Expect("either", r"dtype", (TypeError,))
    expect = expect & classify_context(ckind, batch, width)
    out = attempt(area, lambda: base.log_prob(z, c), expect)
    if out is not None:
        assert_finite(out, (z.shape[0],), f"{kind} log_prob", allow_neg_inf=True)


@settings(max_examples=400, **_FAST)
@given(st.data())
def test_fuzz_bases(data):
    _base_case(data, "bases")


@pytest.mark.slow
@settings(max_examples=3000, **_SLOW)
@given(st.data())
def test_fuzz_bases_long(data):
    _base_case(data, "bases")


# -- fit --------------------------------------------------------------------------------------
def _tiny_flow(context: int = 0):
    torch.manual_seed(0)
    return pf.flows.build("maf", features=2, context=context, transforms=1, hidden=[8])


def _fit_data(how: tuple, x: object) -> Expect:
    """``fit`` takes tensors and array-likes (converted to the flow's dtype) shaped (N, 2)."""
    if how[0] == "dtype":
        if how[1] in (torch.int64, torch.bool):
            return refuse(r"floating", TypeError)
        return OK  # float16/bfloat16/float64 tensors, NumPy arrays and lists are converted
    if how[0] == "shape":
        return refuse(r"shape|\(N, \*event\)", ValueError)
    assert isinstance(x, torch.Tensor)
    if x.numel() and not bool(torch.isfinite(x).all()):
        return refuse(NAN_INF, ValueError)
    return OK if how[0] == "none" or (how[0] == "scale" and how[1] == 0) else EXTREME


def _fit_options(kwargs: dict) -> Expect:
    expect = OK
    for name in ("steps", "epochs", "batch_size"):
        value = kwargs.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value <= 0):
            expect = expect & refuse(rf"{name} must be a positive integer", ValueError)
    if kwargs.get("steps") is not None and kwargs.get("epochs") is not None:
        expect = expect & refuse(r"epochs or steps", ValueError)
    lr = kwargs.get("lr", 1e-3)
    if not (isinstance(lr, float) and math.isfinite(lr) and lr > 0):
        expect = expect & refuse(r"lr must be", ValueError)
    clip = kwargs.get("clip_grad", 5.0)
    if clip is not None and not (math.isfinite(clip) and clip > 0):
        expect = expect & refuse(r"clip_grad", ValueError)
    if kwargs.get("schedule", "cosine") not in (None, "cosine", "plateau"):
        expect = expect & refuse(r"schedule", ValueError)
    return expect


@settings(max_examples=40, **_FAST)
@given(
    batch=st.sampled_from([0, 1, 3, 16]),
    corruption=CORRUPTION,
    kwargs=st.fixed_dictionaries({}, optional={
        "steps": st.sampled_from([1, 2, 0, -1, 2.5, "2"]),
        "epochs": st.sampled_from([1, 0, None]),
        "batch_size": st.sampled_from([1, 4, 0, -3, 2.5]),
        "lr": st.sampled_from([1e-3, 0.0, -1.0, math.nan, math.inf, "x"]),
        "clip_grad": st.sampled_from([None, 1.0, 0.0, -1.0, math.nan]),
        "schedule": st.sampled_from([None, "cosine", "plateau", "bogus"]),
        "val": st.sampled_from([None, "same", "nan", "wide"]),
    }),
)
def test_fuzz_fit(tmp_path_factory, batch, corruption, kwargs):
    x = corrupt(torch.randn(batch, 2), corruption)
    if "steps" not in kwargs and "epochs" not in kwargs:
        kwargs["steps"] = 2
    expect = _fit_data(corruption, x) & _fit_options(kwargs)
    if batch == 0:
        expect = expect & refuse(r"empty|shape", ValueError)
    val = kwargs.pop("val", None)
    if val is not None:
        kwargs["val"] = {"same": torch.randn(8, 2), "wide": torch.randn(8, 3),
                         "nan": torch.full((8, 2), math.nan)}[val]
        if val == "wide":
            expect = expect & refuse(r"shape", ValueError)
        elif val == "nan":
            expect = expect & refuse(NAN_INF, ValueError)
    flow = _tiny_flow()
    history = attempt("fit", lambda: pf.fit(flow, x, progress=False, **kwargs), expect)
    if history is not None:
        assert all(math.isfinite(v) for v in history.step_nll)
        assert all(torch.isfinite(p).all() for p in flow.parameters())


@settings(max_examples=15, **_FAST)
@given(batch=st.integers(1, 40), scale=st.sampled_from([1e-3, 1.0, 10.0]),
       kwargs=st.fixed_dictionaries({}, optional={
           "batch_size": st.sampled_from([1, 4, 64]),
           "lr": st.sampled_from([1e-4, 1e-3]),
           "clip_grad": st.sampled_from([None, 1.0]),
           "schedule": st.sampled_from([None, "cosine", "plateau"]),
           "val": st.booleans(),
           "numpy": st.booleans(),
       }))
def test_fuzz_fit_valid(batch, scale, kwargs):
    """Valid data and options: fit must run to the end with finite losses and parameters."""
    x = scale * torch.randn(batch, 2)
    if kwargs.pop("val", False):
        kwargs["val"] = torch.randn(8, 2)
    if kwargs.pop("numpy", False):
        x = x.numpy()
    flow = _tiny_flow()
    history = attempt("fit", lambda: pf.fit(flow, x, steps=3, progress=False, **kwargs), OK)
    assert history.steps == 3
    assert all(math.isfinite(v) for v in history.step_nll)
    assert all(torch.isfinite(p).all() for p in flow.parameters())


# -- save / load of damaged files -------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    flow = _tiny_flow()
    pf.fit(flow, torch.randn(64, 2), steps=3, progress=False, checkpoint_dir=folder)
    return folder


DAMAGE = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**7), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10**7)),
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("replace"), st.binary(max_size=256)),
    st.tuples(st.just("delete")),
)


def _damage(blob: bytes, how: tuple) -> bytes | None:
    if how[0] == "flip":
        if not blob:
            return blob
        i = how[1] % len(blob)
        return blob[:i] + bytes([blob[i] ^ how[2]]) + blob[i + 1:]
    if how[0] == "truncate":
        return blob[: how[1] % max(len(blob), 1)]
    if how[0] == "append":
        return blob + how[1]
    if how[0] == "replace":
        return how[1]
    return None


@settings(max_examples=150, **_FAST)
@given(which=st.sampled_from(["model.safetensors", "config.json",
                              "training_state.safetensors"]), how=DAMAGE,
       loader=st.sampled_from(["load", "resume", "cli-eval"]))
def test_fuzz_damaged_checkpoints(saved, tmp_path_factory, which, how, loader):
    source = saved
    files = {p.name: p.read_bytes() for p in source.iterdir()}
    folder = tmp_path_factory.mktemp("damaged")
    for name, blob in files.items():
        if name == which:
            blob = _damage(blob, how)
            if blob is None:
                continue
        (folder / name).write_bytes(blob)
    if loader == "load":
        if how[0] == "delete" and which != "training_state.safetensors":
            with pytest.raises(FileNotFoundError):  # a missing file: the OS error, documented
                pf.load(folder)
            return
        # A damaged file is refused, or the damage was harmless and it loads the same model.
        flow = attempt("checkpoints", lambda: pf.load(folder), DAMAGED)
        if flow is not None:  # the damage left the file equivalent: it must load the same model
            reference = pf.load(source)
            for a, b in zip(flow.state_dict().values(), reference.state_dict().values(),
                            strict=True):
                assert torch.equal(a, b)
    elif loader == "resume":
        attempt("checkpoints", lambda: pf.fit(_tiny_flow(), torch.randn(64, 2), steps=4,
                                              progress=False, checkpoint_dir=folder,
                                              resume=True), DAMAGED)
    else:
        COUNTS["checkpoints"] += 1
        code = _cli(["eval", "--checkpoint", str(folder)])
        assert code in (0, 1)


# -- the command line -------------------------------------------------------------------------
def _cli(argv: list[str]) -> int:
    from pushforward.cli import main

    with _deadline(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(argv)
    assert isinstance(code, int)
    return code


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    good = rng.normal(size=(200, 2))
    np.savetxt(folder / "good.csv", good, delimiter=",")
    np.save(folder / "good.npy", good)
    (folder / "text.csv").write_text("a,b\n1,x\n2,3\n")
    (folder / "ragged.csv").write_text("1,2\n3\n4,5,6\n")
    (folder / "nan.csv").write_text("1,2\nnan,3\n4,5\n" * 10)
    (folder / "empty.csv").write_text("")
    (folder / "binary.csv").write_bytes(bytes(range(256)) * 4)
    np.save(folder / "object.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    np.save(folder / "strings.npy", np.array(["a", "b"]))
    np.save(folder / "inf.npy", np.full((20, 2), np.inf))
    np.save(folder / "scalar.npy", np.float64(3.0))
    (folder / "truncated.npy").write_bytes((folder / "good.npy").read_bytes()[:100])
    (folder / "garbage.npy").write_bytes(b"\x93NUMPY garbage")
    return folder


FILES = ["good.csv", "good.npy", "text.csv", "ragged.csv", "nan.csv", "empty.csv", "binary.csv",
         "object.npy", "strings.npy", "inf.npy", "scalar.npy", "truncated.npy", "garbage.npy",
         "missing.csv"]


@settings(max_examples=40, **_FAST)
@given(file=st.sampled_from(FILES), flags=st.lists(st.sampled_from(
    [["--steps", "-1"], ["--steps", "abc"], ["--flow", "nope"], ["--dtype", "float16"],
     ["--dtype", "float64"], ["--batch-size", "0"], ["--lr", "nan"], ["--seed", "x"],
     ["--bogus"], ["--option", "hidden=-4"], ["--option", "transforms=x"]]), max_size=2))
def test_fuzz_cli_train_inputs(data_files, tmp_path_factory, file, flags):
    out = tmp_path_factory.mktemp("run")
    argv = ["train", "--dataset", str(data_files / file), "--steps", "2", "--out", str(out)]
    for flag in flags:
        argv += flag
    COUNTS["cli"] += 1
    code = _cli(argv)
    assert code in (0, 1, 2)
    if file in ("good.csv", "good.npy") and not flags:
        assert code == 0


@settings(max_examples=25, **_FAST)
@given(argv=st.lists(st.sampled_from(
    ["sample", "eval", "plot", "datasets", "check", "train", "--n", "-5", "0", "3", "x",
     "--out", "/nonexistent/dir", "--checkpoint", "/nonexistent", "--split", "all", "bogus",
     "--help", "", "nan", "--steps"]),
    max_size=5))
def test_fuzz_cli_argv(tmp_path, argv):
    if argv[:1] == ["train"]:
        argv = ["train", "--steps", "1", "--out", str(tmp_path / "run"), *argv[1:]]
    COUNTS["cli"] += 1
    with contextlib.redirect_stdout(open(os.devnull, "w")):  # noqa: SIM115
        code = _cli(argv)
    assert code in (0, 1, 2)


def test_cli_subprocess_refuses_bad_data_with_one_line(data_files, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    for name in ("ragged.csv", "object.npy"):
        COUNTS["cli"] += 1
        proc = subprocess.run(
            [sys.executable, "-m", "pushforward", "train", "--dataset", str(data_files / name),
             "--steps", "1", "--out", str(tmp_path / name)],
            capture_output=True, text=True, timeout=300, env=env,
        )
        assert proc.returncode == 1, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("pushforward: error:"), proc.stderr
        assert "Traceback" not in proc.stderr


@settings(max_examples=30, **_FAST)
@given(kind=st.sampled_from(["ok", "nan", "inf", "shape", "list", "scalar", "raise", "int"]),
       steps=st.sampled_from([1, 2, 0, -1]), batch_size=st.sampled_from([1, 8, 0]))
def test_fuzz_fit_reverse_kl(kind, steps, batch_size):
    def log_density(x):
        value = -0.5 * (x**2).sum(-1)
        if kind == "nan":
            return value * math.nan
        if kind == "inf":
            return value + math.inf
        if kind == "shape":
            return value[:, None]
        if kind == "list":
            return value.tolist()
        if kind == "scalar":
            return value.sum()
        if kind == "raise":
            raise ValueError("log_density: refused")
        if kind == "int":
            return value.long()
        return value

    torch.manual_seed(0)
    flow = pf.Flow(pf.transforms.Affine(2), pf.StandardNormal(2))
    expect = OK
    if steps < 1:
        expect = expect & refuse(r"steps", ValueError)
    if batch_size < 1:
        expect = expect & refuse(r"batch_size", ValueError)
    if kind == "raise":
        expect = expect & refuse(r"refused", ValueError)
    elif kind in ("nan", "inf"):
        expect = expect & refuse(r"NaN|infinite|finite|diverge", ValueError)
    elif kind == "int":
        expect = expect & Expect("either")  # integer log-densities may be converted
    elif kind != "ok":
        expect = expect & refuse(r"log_density", ValueError, TypeError)
    history = attempt("fit", lambda: pf.fit_reverse_kl(flow, log_density, steps=steps,
                                                      batch_size=batch_size, progress=False),
                      expect)
    if history is not None:
        assert all(torch.isfinite(p).all() for p in flow.parameters())
