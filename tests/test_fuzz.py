"""Fuzzing the public API: every call returns finite, correctly shaped results or refuses.

Each ``@given`` test draws random shapes, dtypes, batch sizes (0 and 1 included), NaN/inf,
huge and tiny values, off-manifold points, out-of-domain parameters and mismatched contexts, and
sends them through one public entry point. The only accepted outcomes are

* a result with the documented shape whose entries are finite (a log-density may be ``-inf``:
  it underflows the dtype, see RELIABILITY.md), or
* a ``ValueError`` / ``TypeError`` with a non-empty message.

Anything else (another exception, a NaN, a wrong shape, a call running past ``_TIMEOUT`` seconds)
fails the test. ``COUNTS`` records how many cases each area tried; with
``PUSHFORWARD_FUZZ_REPORT=path`` the totals are written there as JSON at the end of the module.
The default suite runs a few hundred cases; the ``slow`` variants run thousands with fresh seeds.
"""

from __future__ import annotations

import collections
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from contract import all_cases
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pushforward as pf
import pushforward.distributions as dist
import pushforward.manifolds as mf

COUNTS: collections.Counter = collections.Counter()
_TIMEOUT = 60  # seconds one call may take before it counts as a hang
CASES = all_cases()
DTYPES = (torch.float32, torch.float64)
_FAST = dict(deadline=None, derandomize=True, database=None,
             suppress_health_check=list(HealthCheck))
_SLOW = dict(deadline=None, database=None, suppress_health_check=list(HealthCheck))


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


def attempt(area: str, fn):
    """Run ``fn``; return its result, or None when it refused with a ValueError/TypeError."""
    COUNTS[area] += 1
    with _deadline(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return fn()
        except (ValueError, TypeError) as error:
            assert str(error).strip(), f"{type(error).__name__} without a message"
            return None


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
            return x[..., None]
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


# -- transforms -------------------------------------------------------------------------------
def _transform_case(data, area: str) -> None:
    case = data.draw(st.sampled_from(CASES), label="case")
    width = data.draw(st.sampled_from(list(case.contexts)), label="context_features")
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    batch = data.draw(st.sampled_from([0, 1, 1, 2, 3, 7]), label="batch")
    torch.manual_seed(data.draw(st.integers(0, 3), label="seed"))
    t = case.make(width).to(dtype)
    if data.draw(st.booleans(), label="use .inv"):
        t = t.inv
        direction = "forward"
    else:
        direction = data.draw(st.sampled_from(["inverse", "forward"]), label="direction")
    if data.draw(st.booleans(), label="eval"):
        t.eval()
    x = case.inputs(max(batch, 1), torch.Generator().manual_seed(batch)).to(dtype)[:batch]
    if t.inv is not t and isinstance(t, pf.core.Inverse):
        forward_input = x  # t.forward is the case's inverse: its input is data-side
    else:
        forward_input = None
    c = make_context(data.draw(CONTEXT, label="context"), batch, width, dtype)
    if direction == "forward" and forward_input is None:
        with torch.no_grad():
            try:
                base = t.inverse(x, c if isinstance(c, torch.Tensor) else None)[0]
            except (ValueError, TypeError):
                return
        value = base.detach()
    else:
        value = x
    value = corrupt(value, data.draw(CORRUPTION, label="corruption"))
    call = t if direction == "forward" else t.inverse
    out = attempt(area, lambda: call(value, c))
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
    (name, {"shape": (1, 4, 4)} if name in ("glow", "realnvp", "nice") else {})
    for name in pf.flows.names()
] + [("realnvp", {}), ("nice", {})]


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
        x = torch.randn(batch, *event, dtype=dtype)
        if name == "sphere":
            x = torch.nn.functional.normalize(x, dim=-1)
        x = corrupt(x, data.draw(CORRUPTION, label="corruption"))
        c = make_context(ckind, batch, width, dtype)
        if method == "log_prob":
            out = attempt(area, lambda: flow.log_prob(x, c))
        else:
            out = attempt(area, lambda: flow.distribution(c).log_prob(x))
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
    if method == "distribution.sample":
        out = attempt(area, lambda: flow.distribution(c).sample((n,)))
    else:
        out = attempt(area, lambda: getattr(flow, method)(n, c, temperature=temperature))
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


@settings(max_examples=80, **_FAST)
@given(name=st.sampled_from(pf.flows.names() + ["nope", "", "MAF"]),
       features=OPTION, context=OPTION, extra=st.sampled_from(
           [{}, {"transforms": 0}, {"transforms": -1}, {"hidden": 0}, {"hidden": [4, -1]},
            {"bogus": 1}, {"transforms": 1, "hidden": 4}, {"shape": (1, 3, 3)}]))
def test_fuzz_preset_options(name, features, context, extra):
    flow = attempt("presets", lambda: pf.flows.build(name, features=features, context=context,
                                                     **extra))
    if flow is not None:
        assert isinstance(flow, pf.Flow)
        x = flow.sample(2, torch.randn(1, flow.context_features) if flow.context_features
                        else None)
        assert torch.isfinite(x).all()


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


def _base_case(data, area: str) -> None:
    kind = data.draw(st.sampled_from(BASES), label="base")
    n = data.draw(st.sampled_from([1, 2, 3, 5]), label="n")
    param = data.draw(st.sampled_from([None, 1.0, 5.0, 0.0, -1.0, 1e-8, 1e4, math.nan,
                                       math.inf, "a"]), label="parameter")
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    base = attempt(area, lambda: _base(kind, n, param))
    if base is None:
        return
    base = base.to(dtype)
    event = tuple(base.event_shape)
    width = getattr(base, "context_features", 0)
    batch = data.draw(st.sampled_from([0, 1, 4]), label="batch")
    c = make_context(data.draw(CONTEXT, label="context kind"), batch, width, dtype)
    if data.draw(st.booleans(), label="sample"):
        count = data.draw(st.sampled_from([0, 1, 4, -1, 2.5]), label="count")
        if width and isinstance(c, torch.Tensor) and c.dim() == 2 and isinstance(count, int):
            c = make_context("ok", max(count, 0), width, dtype)
        out = attempt(area, lambda: base.sample_and_log_prob(count, c))
        if out is not None:
            z, lp = out
            assert_finite(z, (count, *event), f"{kind} sample")
            assert_finite(lp, (count,), f"{kind} sample log_prob", allow_neg_inf=True)
        return
    z = torch.randn(batch, *event, dtype=dtype)
    where = data.draw(st.sampled_from(["on", "off", "boundary"]), label="manifold")
    if kind in ("UniformSphere", "VonMisesFisher", "VonMisesFisherMixture") and where != "off":
        z = torch.nn.functional.normalize(z, dim=-1)
    if kind in ("Dirichlet", "UniformSimplex") and where != "off":
        z = torch.softmax(z, dim=-1)
        if where == "boundary" and batch:
            z[0] = 0
            z[0, 0] = 1
    z = corrupt(z, data.draw(CORRUPTION, label="corruption"))
    out = attempt(area, lambda: base.log_prob(z, c))
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
        "val_data": st.sampled_from([None, "same", "nan", "wide"]),
    }),
)
def test_fuzz_fit(tmp_path_factory, batch, corruption, kwargs):
    x = corrupt(torch.randn(batch, 2), corruption)
    if "steps" not in kwargs and "epochs" not in kwargs:
        kwargs["steps"] = 2
    val = kwargs.pop("val_data", None)
    if val is not None:
        kwargs["val_data"] = {"same": torch.randn(8, 2), "wide": torch.randn(8, 3),
                              "nan": torch.full((8, 2), math.nan)}[val]
    flow = _tiny_flow()
    history = attempt("fit", lambda: pf.fit(flow, x, progress=False, **kwargs))
    if history is not None:
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
        flow = attempt("checkpoints", lambda: pf.load(folder))
        if flow is not None:  # the damage left the file equivalent: it must load the same model
            reference = pf.load(source)
            for a, b in zip(flow.state_dict().values(), reference.state_dict().values(),
                            strict=True):
                assert torch.equal(a, b)
    elif loader == "resume":
        attempt("checkpoints", lambda: pf.fit(_tiny_flow(), torch.randn(64, 2), steps=4,
                                              progress=False, checkpoint_dir=folder,
                                              resume=True))
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
    history = attempt("fit", lambda: pf.fit_reverse_kl(flow, log_density, steps=steps,
                                                      batch_size=batch_size, progress=False))
    if history is not None:
        assert all(torch.isfinite(p).all() for p in flow.parameters())
