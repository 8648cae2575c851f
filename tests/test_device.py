"""Device cleanliness on a CPU-only machine (issue 21, item 4): nothing inside a forward, inverse,
``log_prob``, ``sample`` or backward creates a tensor on a device other than its inputs'.

Two complementary runs, for every transform case of the kit (``tests/cases_*.py``) and every
preset (``pf.flows.names()``):

* **on ``meta``** — modules and inputs on the ``meta`` device (shapes, no data): an operation
  mixing a CPU tensor with a ``meta`` one fails, and a recorder lists every tensor an operation
  creates on the CPU from no CPU input (``torch.tensor(...)``, ``torch.zeros(...)`` without
  ``device=``, numpy round trips). Output shapes must come out right. Value checks (validation)
  skip ``meta`` inputs, as they skip ``torch.func`` transforms.
* **default device ``meta``** — modules and inputs on the CPU, real data, but the default device
  switched to ``meta``: a factory call without ``device=`` then lands on ``meta`` and is recorded.
  This run also covers what cannot run on ``meta`` (data-dependent control flow: bisection,
  fixed-point iterations, adaptive ODE steps, data-dependent initialisation), listed in
  ``META_EXCEPTIONS`` with the reason.

A user moving a model to CUDA sees the same failures these runs raise; ``PUSHFORWARD_TEST_DEVICE``
(``benchmarks/gpu.sh``) runs the real thing on a GPU.
"""

from __future__ import annotations

import contextlib
import os
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import torchdiffeq  # noqa: F401 - imported here, not first inside a `torch.device("meta")` block
from contract import all_cases
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import pushforward as pf

PACKAGE = str(Path(pf.__file__).resolve().parent)
DEVICE = os.environ.get("PUSHFORWARD_TEST_DEVICE", "")

# What cannot run on ``meta``: it reads values to decide what to compute. Each entry names where
# it stops (file, function) and why; the default-device run below still covers it, with data.
_ORDER = ("pushforward/nn.py", "_order", "sequential pass in the MADE degree order (argsort of "
          "the degrees buffer, read once and cached as a Python list)")
_ACTNORM = ("pushforward/transforms/normalization.py", "_inverse",
            "ActNorm's data-dependent initialisation reads its `initialized` flag")
_ODE = ("pushforward/continuous/solvers.py", "_integrate",
        "adaptive ODE step-size control (torchdiffeq) reads the error norm")
META_EXCEPTIONS: dict[tuple[str, str], tuple[str, str, str]] = {
    ("MaskedAutoregressive*", "forward"): _ORDER,
    ("InverseAutoregressive*", "inverse"): _ORDER,
    ("NeuralAutoregressive*", "forward"): _ORDER,
    ("ActNorm*", "inverse"): _ACTNORM,
    ("Chain", "inverse"): _ACTNORM,  # the chain case starts with an ActNorm
    ("Sylvester*", "inverse"): ("pushforward/transforms/_roots.py", "solve_increasing",
                                "numerical inverse: bisection with a data-dependent stop"),
    ("ResidualBlock*", "forward"): ("pushforward/transforms/residual.py", "_solve",
                                    "numerical inverse: fixed-point iteration to a tolerance"),
    ("Planar*", "inverse"): ("pushforward/transforms/planar.py", "_planar_root",
                             "numerical inverse: safeguarded Newton, data-dependent stop"),
    ("CNF*", "forward"): _ODE,
    ("CNF*", "inverse"): _ODE,
    ("SphereCNF*", "forward"): _ODE,
    ("SphereCNF*", "inverse"): _ODE,
}
META_PRESET_EXCEPTIONS: dict[tuple[str, str], tuple[str, str, str]] = {
    ("cnf", "log_prob"): _ODE,
    ("cnf", "sample"): _ODE,
    ("sphere-cnf", "log_prob"): _ODE,
    ("sphere-cnf", "sample"): _ODE,
    ("glow", "log_prob"): _ACTNORM,
    ("video-glow", "log_prob"): _ACTNORM,
    ("residualflow", "log_prob"): _ACTNORM,
    ("residualflow", "sample"): META_EXCEPTIONS[("ResidualBlock*", "forward")],
    ("iaf", "log_prob"): _ORDER,
    ("maf", "sample"): _ORDER,
    ("naf", "sample"): _ORDER,
    ("nsf", "sample"): _ORDER,
    ("planar", "log_prob"): META_EXCEPTIONS[("Planar*", "inverse")],
    ("sylvester", "log_prob"): META_EXCEPTIONS[("Sylvester*", "inverse")],
}
# Host-side values made on the CPU on purpose (no device synchronisation):
# (file, function, operation prefix).
HOST_SIDE: dict[tuple[str, str, str], str] = {
    ("pushforward/transforms/residual.py", "_series", "aten."): "Russian-roulette number of "
    "series terms, a host-side random count (torch.distributions.Geometric on the CPU, then int)",
}
class _Created(TorchDispatchMode):
    """Records operations that create a tensor on ``stray`` from inputs none of which is there."""

    def __init__(self, stray: str) -> None:
        super().__init__()
        self.stray = stray
        self.events: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        ins = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        # torch.tensor(data) builds its tensor before dispatch; lift_fresh then sees it as input
        fresh = func in (torch.ops.aten.lift_fresh.default, torch.ops.aten.lift_fresh_copy.default)
        if (any(t.device.type == self.stray for t in outs)
                and (fresh or not any(t.device.type == self.stray for t in ins))):
            where = _where()
            if not any(where.startswith(f) and where.endswith(f" in {fn}")
                       and str(func).startswith(op) for f, fn, op in HOST_SIDE):
                self.events.append(f"{func} at {where}")
        return out


def _where() -> str:
    """The innermost frame inside the package (where the stray tensor was asked for)."""
    for frame in reversed(traceback.extract_stack()):
        if frame.filename.startswith(PACKAGE):
            path = Path(frame.filename).relative_to(Path(PACKAGE).parent)
            return f"{path}:{frame.lineno} in {frame.name}"
    return "outside the package"


@contextlib.contextmanager
def _reported(recorder: _Created) -> Iterator[None]:
    """Name the recorded stray tensors when a later operation fails on them."""
    try:
        yield
    except Exception as err:
        if recorder.events:
            raise AssertionError("tensors created on the wrong device:\n"
                                 + "\n".join(recorder.events)) from err
        raise


def _meta(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else torch.empty_like(x, device="meta")


def _excepted(name: str, direction: str) -> tuple[str, str, str] | None:
    """The listed exception (``"Family*"`` matches the family's cases, other keys one case)."""
    for (key, which), entry in META_EXCEPTIONS.items():
        family = key.endswith("*") and name.split("-")[0] == key[:-1]
        if (family or name == key) and which == direction:
            return entry
    return None


def _stopped_where(err: BaseException) -> tuple[str, str]:
    """(file, function) of the innermost package frame of a traceback."""
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if f.filename.startswith(PACKAGE)]
    if not frames:
        return ("", "")
    return (str(Path(frames[-1].filename).relative_to(Path(PACKAGE).parent)), frames[-1].name)


def _expect_listed(err: BaseException, entry: tuple[str, str, str] | None, what: str) -> None:
    """Re-raise ``err`` unless ``entry`` lists exactly where it stopped."""
    if entry is None or _stopped_where(err) != entry[:2]:
        raise AssertionError(f"{what} failed on meta at {_stopped_where(err)} (not a listed "
                             f"exception): {err}") from err


# ODE solves take thousands of recorded operations: over 2 s each, in the slow suite.
SLOW = {"CNF", "SphereCNF", "cnf", "sphere-cnf"}


def _kit_params(slow: bool = False) -> list:
    return [pytest.param(case, width, id=f"{case.name}-ctx{width}",
                         marks=[pytest.mark.slow] if slow and case.name.split("-")[0] in SLOW
                         else [])
            for case in all_cases() for width in case.contexts]


def _preset_params(slow: bool = False) -> list:
    return [pytest.param(name, marks=[pytest.mark.slow] if slow and name in SLOW else [])
            for name in pf.flows.names()]


def _build(case, width: int) -> tuple[pf.Transform, torch.Tensor, torch.Tensor | None]:  # noqa: ANN001
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    t = case.make(width).double()
    x = case.inputs(3, generator)
    context = torch.randn(3, width, generator=generator, dtype=torch.float64) if width else None
    return t, x, context


@pytest.mark.parametrize(("case", "width"), _kit_params())
def test_transform_runs_on_meta(case, width: int) -> None:  # noqa: ANN001
    t, x, context = _build(case, width)
    with torch.no_grad():
        z = t.inverse(x, context)[0]  # a valid base-side point, for the forward direction
    t = t.to("meta")
    recorder = _Created("cpu")
    for direction, value in (("inverse", x), ("forward", z)):
        listed = _excepted(case.name, direction)
        call: Callable = t.inverse if direction == "inverse" else t
        with recorder:
            try:
                out, ladj = call(_meta(value), _meta(context))
            except (RuntimeError, NotImplementedError) as err:
                _expect_listed(err, listed, f"{case.name} {direction}")
                continue  # listed in META_EXCEPTIONS: reads values
        assert listed is None, f"{case.name} {direction} ran on meta: drop its exception"
        assert out.device.type == "meta" and ladj.device.type == "meta"
        assert ladj.shape == (value.shape[0],)
        expected = z.shape if direction == "inverse" else x.shape
        assert out.shape == expected, f"{direction}: {tuple(out.shape)} != {tuple(expected)}"
    assert not recorder.events, "tensors created on the CPU:\n" + "\n".join(recorder.events)


@pytest.mark.parametrize(("case", "width"), _kit_params(slow=True))
def test_transform_creates_nothing_on_the_default_device(case, width: int) -> None:  # noqa: ANN001
    t, x, context = _build(case, width)
    x.requires_grad_()
    recorder = _Created("meta")
    with _reported(recorder), torch.device("meta"), recorder:
        z, ladj = t.inverse(x, context)
        back, ladj_back = t(z, context)
        (ladj.sum() + ladj_back.sum() + back.sum()).backward()
    assert not recorder.events, (
        "factory calls without device= (they land on the default device, not the input's):\n"
        + "\n".join(recorder.events))


# -- presets ---------------------------------------------------------------------------------
def _preset(name: str) -> tuple[pf.Flow, torch.Tensor | None]:
    from test_preset_kit import SMALL, _sized  # the preset kit's sizes and inputs

    accepted = pf.flows.accepts(name)
    size = _sized(name)
    if "context" in accepted:
        size["context"] = 2
    torch.manual_seed(0)
    flow = pf.flows.build(name, **size, **SMALL.get(name, {})).double()
    width = flow.context_features
    context = torch.randn(3, width, dtype=torch.float64) if width else None
    return flow, context


@pytest.mark.parametrize("name", pf.flows.names())
def test_preset_runs_on_meta(name: str) -> None:
    flow, context = _preset(name)
    with torch.no_grad():
        x = flow.sample(1, context)[0] if context is not None else flow.sample(3)
    flow = flow.to("meta")
    recorder = _Created("cpu")
    lead = (4,) if context is None else (4, context.shape[0])
    calls = {"log_prob": (lambda: flow.log_prob(_meta(x), _meta(context)), x.shape[:1]),
             "sample": (lambda: flow.sample(4, _meta(context)), (*lead, *flow.event_shape))}
    for what, (call, shape) in calls.items():
        listed = META_PRESET_EXCEPTIONS.get((name, what))
        with recorder, torch.no_grad():
            try:
                out = call()
            except (RuntimeError, NotImplementedError) as err:
                _expect_listed(err, listed, f"{name} {what}")
                continue  # listed in META_PRESET_EXCEPTIONS: reads values
        assert listed is None, f"{name} {what} ran on meta: drop its exception"
        assert out.device.type == "meta" and out.shape == shape, (what, out.shape, shape)
    assert not recorder.events, "tensors created on the CPU:\n" + "\n".join(recorder.events)


@pytest.mark.parametrize("name", _preset_params(slow=True))
def test_preset_creates_nothing_on_the_default_device(name: str) -> None:
    flow, context = _preset(name)
    with torch.no_grad():
        x = flow.sample(1, context)[0] if context is not None else flow.sample(3)
    recorder = _Created("meta")
    with _reported(recorder), torch.device("meta"), recorder:
        (-flow.log_prob(x, context).mean()).backward()
        with torch.no_grad():
            flow.sample(4, context)
            flow.sample_and_log_prob(2, context)
    assert not recorder.events, (
        "factory calls without device= (they land on the default device, not the input's):\n"
        + "\n".join(recorder.events))


@pytest.mark.skipif(not DEVICE, reason="set PUSHFORWARD_TEST_DEVICE=cuda (benchmarks/gpu.sh)")
@pytest.mark.parametrize(("case", "width"), _kit_params())
def test_kit_case_on_the_test_device(case, width: int) -> None:  # noqa: ANN001
    """The transform kit (``check_transform``, float64) with module and inputs on the device."""
    from pushforward.diagnostics import check_transform

    torch.manual_seed(1)
    t = case.make(width).double()
    with torch.no_grad():
        for p in t.parameters():
            p.add_(case.perturb * torch.randn_like(p))
    generator = torch.Generator().manual_seed(2)
    x = case.inputs(case.batch, generator)
    context = (torch.randn(case.batch, width, generator=generator, dtype=torch.float64)
               if width else None)
    t = t.to(DEVICE)
    context = None if context is None else context.to(DEVICE)
    check_transform(t, x.to(DEVICE), context, atol=case.atol,
                    ladj_reference=case.ladj_reference)


@pytest.mark.skipif(not DEVICE, reason="set PUSHFORWARD_TEST_DEVICE=cuda (benchmarks/gpu.sh)")
@pytest.mark.parametrize("name", pf.flows.names())
def test_preset_on_the_test_device(name: str) -> None:
    """On a real accelerator: log_prob, backward and sampling stay on the device."""
    flow, context = _preset(name)
    flow = flow.to(DEVICE)
    context = None if context is None else context.to(DEVICE)
    with torch.no_grad():
        x = flow.sample(1, context)[0] if context is not None else flow.sample(3)
    assert x.device.type == torch.device(DEVICE).type
    (-flow.log_prob(x, context).mean()).backward()
    assert all(p.grad is None or p.grad.device == p.device for p in flow.parameters())


class _Leaky(pf.Transform):
    """Adds a constant made without ``device=``: the leak both runs must catch."""

    def __init__(self) -> None:
        super().__init__((2,))

    def _forward(self, z: torch.Tensor, context: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        return z + torch.ones(2, dtype=z.dtype), z.new_zeros(z.shape[0])

    def _inverse(self, x: torch.Tensor, context: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        return x - torch.ones(2, dtype=x.dtype), x.new_zeros(x.shape[0])


def test_the_checks_catch_a_leak() -> None:
    x = torch.randn(3, 2)
    recorder = _Created("cpu")
    with pytest.raises(RuntimeError), recorder:
        _Leaky().to("meta").inverse(_meta(x))
    assert recorder.events and "aten.ones" in recorder.events[0]
    recorder = _Created("meta")
    with pytest.raises(AssertionError, match="wrong device"), _reported(recorder), \
            torch.device("meta"), recorder:
        _Leaky().inverse(x)


def test_fit_creates_nothing_on_the_default_device() -> None:
    """``pf.fit`` (batches, data order, validation, the step) with the default device elsewhere."""
    torch.manual_seed(0)
    flow = pf.flows.build("maf", features=2, transforms=2, hidden=[8])
    with torch.no_grad():
        x, val = flow.sample(48), flow.sample(16)
    recorder = _Created("meta")
    with _reported(recorder), torch.device("meta"), recorder:
        pf.fit(flow, x, val=val, steps=4, batch_size=16, progress=False)
    assert not recorder.events, "\n".join(recorder.events)
