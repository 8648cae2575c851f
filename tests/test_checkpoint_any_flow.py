"""Checkpoints of flows built by hand: ``pf.load(pf.save(flow))`` for any composition of the
public transforms, bases, conditioner networks and vector fields (``pushforward.specs``).

Every contract case (``tests/cases_*.py``) is wrapped in a ``Flow`` and round-tripped in float64:
same state dict (bit for bit), same ``log_prob`` on the case's inputs. Classes that only appear
as constructor arguments (bases, networks, fields, elementwise maps) have their own examples, and
every registered class must be covered by one or the other. A module the registry cannot
rebuild is refused when the flow is SAVED, with its class and the fix in the message.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch
from contract import all_cases

import pushforward as pf
from pushforward import specs
from pushforward.continuous import CNF, AugmentedFlow, ConcatSquash, TimeMLP
from pushforward.discretized import DiscretizedLogistic
from pushforward.manifolds import (
    Calibration,
    Dirichlet,
    NormalizedAffine,
    SphereCNF,
    SphereField,
    UniformSimplex,
    UniformSphere,
    VonMisesFisher,
    VonMisesFisherMixture,
)
from pushforward.nn import MADE, MLP, ConvNet, MaskedLinear
from pushforward.transforms import (
    AffineCoupling,
    Coupling,
    IntegerCoupling,
    MaskedAutoregressive,
    RationalQuadraticMap,
    Reverse,
    coupling_mask,
)
from pushforward.transforms.maps import AdditiveMap, AffineMap
from pushforward.transforms.naf import DeepSigmoidalMap

T = pf.transforms


def _registered_tree(module: torch.nn.Module) -> bool:
    return all(type(m) in specs._NAMES for m in module.modules()
               if isinstance(m, pf.Transform))


def _cases():
    params = []
    for case in all_cases():
        for c in case.contexts:
            t = case.make(c)
            if _registered_tree(t):  # GraphAffineCoupling (molecules) is preset-only
                params.append(pytest.param(case, c, id=f"{case.name}-ctx{c}"))
    return params


CASES = _cases()


def _round_trip(flow, folder):
    pf.save(flow, folder)
    return pf.load(folder)


def _assert_same(flow, again, x, context=None):
    assert type(again) is type(flow)
    state, loaded = flow.state_dict(), again.state_dict()
    assert list(loaded) == list(state)
    for key, value in state.items():
        assert loaded[key].dtype == value.dtype, key
        assert torch.equal(loaded[key], value), key
    flow.eval()
    torch.manual_seed(7)  # stochastic estimators (Hutchinson, roulette) draw the same noise
    expected = flow.log_prob(x, context)
    torch.manual_seed(7)
    torch.testing.assert_close(again.log_prob(x, context), expected)


@pytest.mark.parametrize(("case", "c"), CASES)
def test_every_transform_case_round_trips_as_a_hand_built_flow(case, c, tmp_path):
    torch.manual_seed(1)
    t = case.make(c).double()
    with torch.no_grad():
        for p in t.parameters():
            p.add_(case.perturb * torch.randn_like(p))
    generator = torch.Generator().manual_seed(2)
    x = case.inputs(case.batch, generator)
    context = None if c == 0 else torch.randn(case.batch, c, dtype=torch.float64)
    flow = pf.Flow(t, pf.StandardNormal(t.latent_shape or tuple(case.shape))).double()
    again = _round_trip(flow, tmp_path / "flow")
    assert json.loads((tmp_path / "flow" / "config.json").read_text())["dtype"] == "float64"
    _assert_same(flow, again, x, context)


def _sphere(n):
    g = torch.randn(6, n)
    return g / g.norm(dim=-1, keepdim=True)


def _simplex(n):
    e = torch.rand(6, n) + 0.05
    return e / e.sum(-1, keepdim=True)


# Flows whose classes appear as arguments: bases, conditioner networks, fields, maps.
EXAMPLES = {
    "bases-gaussian": (lambda: pf.Flow(T.Affine(3), pf.DiagonalNormal(3)),
                       lambda: (torch.randn(6, 3), None)),
    "base-conditional": (lambda: pf.Flow(MaskedAutoregressive(2, 3, hidden=(8,)),
                                         pf.ConditionalDiagonalNormal(2, 3, hidden=(8,))),
                         lambda: (torch.randn(6, 2), torch.randn(6, 3))),
    "base-uniform-sphere": (lambda: pf.Flow(NormalizedAffine(3), UniformSphere(3)),
                            lambda: (_sphere(3), None)),
    "base-vmf": (lambda: pf.Flow(NormalizedAffine(3), VonMisesFisher(3, concentration=2.0)),
                 lambda: (_sphere(3), None)),
    "base-vmf-mixture": (lambda: pf.Flow(NormalizedAffine(3),
                                         VonMisesFisherMixture(3, components=2)),
                         lambda: (_sphere(3), None)),
    "base-dirichlet": (lambda: pf.Flow(Calibration(3), Dirichlet(3, torch.tensor([1., 2., 3.]))),
                       lambda: (_simplex(3), None)),
    "base-uniform-simplex": (lambda: pf.Flow(Calibration(3), UniformSimplex(3)),
                             lambda: (_simplex(3), None)),
    "base-discretized-logistic": (
        lambda: pf.Flow(IntegerCoupling(coupling_mask(4, "half"), hidden=(8,)),
                        DiscretizedLogistic(4, components=2)),
        lambda: (torch.randint(0, 9, (6, 4)).float(), None)),
    "conditioner-mlp": (lambda: pf.Flow(Coupling(coupling_mask(4, "half"), conditioner=MLP(
        2, 4, hidden=(8,))), pf.StandardNormal(4)), lambda: (torch.randn(6, 4), None)),
    "conditioner-convnet": (lambda: pf.Flow(AffineCoupling(
        coupling_mask((2, 4, 4), "channel"), conditioner=ConvNet(2, 4, hidden=4)),
        pf.StandardNormal((2, 4, 4))), lambda: (torch.randn(6, 2, 4, 4), None)),
    "maps": (lambda: pf.Flow(pf.Chain([
        MaskedAutoregressive(3, transformer=RationalQuadraticMap(bins=4, bound=3.0), hidden=(8,)),
        MaskedAutoregressive(3, transformer=AffineMap(bound=2.0), hidden=(8,)),
        Coupling(coupling_mask(3, "half"), AdditiveMap(), hidden=(8,)),
        MaskedAutoregressive(3, transformer=DeepSigmoidalMap(3), hidden=(8,)), Reverse(3),
        T.LULinear(3).inv]),
        pf.StandardNormal(3)), lambda: (torch.randn(6, 3), None)),
    "field-time-mlp": (lambda: pf.Flow(CNF(TimeMLP(2, (8,), time="concat"), 2, rtol=1e-6,
                                           atol=1e-6), pf.StandardNormal(2)),
                       lambda: (torch.randn(6, 2), None)),
    "augmented-cnf": (lambda: AugmentedFlow(CNF(TimeMLP(3, (8,)), 2, augment=1, rtol=1e-6,
                                                atol=1e-6), pf.StandardNormal(3), q="learned"),
                      lambda: (torch.randn(6, 2), None)),
    "field-sphere": (lambda: pf.Flow(SphereCNF(3, field=SphereField(3, hidden=(8,)), rtol=1e-5,
                                               atol=1e-5), UniformSphere(3)),
                     lambda: (_sphere(3), None)),
}

# Registered classes that no flow takes as an argument today, rebuilt on their own.
PARTS = {
    "made": lambda: MADE(3, params=2, hidden=(8,)),
    "masked-linear": lambda: MaskedLinear(torch.tensor([[1.0, 0.0], [1.0, 1.0]])),
    "concat-squash": lambda: ConcatSquash(2, 3, 1),
}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_flows_with_bases_networks_fields_and_maps_round_trip(name, tmp_path):
    make, inputs = EXAMPLES[name]
    torch.manual_seed(0)
    flow = make()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, context = inputs()
    _assert_same(flow, _round_trip(flow, tmp_path / name), x, context)


@pytest.mark.parametrize("name", sorted(PARTS))
def test_parts_rebuild_from_their_records(name):
    torch.manual_seed(0)
    part = PARTS[name]()
    again = specs.from_spec(json.loads(json.dumps(specs.to_spec(part))))
    assert list(again.state_dict()) == list(part.state_dict())
    assert [tuple(v.shape) for v in again.state_dict().values()] == [
        tuple(v.shape) for v in part.state_dict().values()]


def test_every_registered_class_is_covered():
    covered = set()
    for case in all_cases():
        for c in case.contexts:
            covered |= {type(m) for m in case.make(c).modules()}
    for make, _ in EXAMPLES.values():
        flow = make()
        stack = [specs.to_spec(flow)]
        while stack:  # every record type written, maps (not modules) included
            record = stack.pop()
            if isinstance(record, dict):
                if "type" in record and isinstance(record["type"], str):
                    covered.add(specs._CLASSES[record["type"]])
                stack.extend(record.values())
            elif isinstance(record, list):
                stack.extend(record)
    covered |= {type(make()) for make in PARTS.values()}
    names = {specs.spec_name(cls) for cls in covered if cls in specs._NAMES}
    def defined_in_pushforward(cls: type) -> bool:  # not a class of a test or a doctest
        module = sys.modules.get(cls.__module__)
        return cls.__module__.startswith("pushforward") and getattr(
            module, cls.__qualname__, None) is cls

    pushforward_names = {n for n in specs.spec_names()
                         if defined_in_pushforward(specs._CLASSES[n])}
    # The pre-processing layers' records (an older format) are tested in test_specs.py.
    missing = sorted(pushforward_names - names - {"logit", "standardization", "reshape"})
    assert not missing, f"registered classes without a round-trip example: {missing}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_is_kept_whether_built_in_it_or_converted(dtype, tmp_path):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        torch.manual_seed(0)
        built = pf.Flow(pf.Chain([T.LULinear(3), T.Sigmoid(-2.0, 2.0, shape=3)]),
                        pf.DiagonalNormal(3))
    finally:
        torch.set_default_dtype(previous)
    converted = pf.Flow(pf.Chain([T.LULinear(3), T.Sigmoid(-2.0, 2.0, shape=3)]),
                        pf.DiagonalNormal(3)).to(dtype)
    x = (torch.rand(5, 3) * 3.8 - 1.9).to(dtype)
    for i, flow in enumerate((built, converted)):
        again = _round_trip(flow, tmp_path / str(i))
        assert next(again.parameters()).dtype == dtype
        assert torch.get_default_dtype() == previous  # restored after loading
        _assert_same(flow, again, x)


class _Net(torch.nn.Module):
    """A user's network: its architecture is code, which a record cannot hold."""

    def __init__(self, width: int = 2) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(width, 4)

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.linear(args[-1] if len(args) > 1 else args[0])


@pytest.mark.parametrize("make", [
    lambda: pf.Flow(Coupling(coupling_mask(4, "half"), conditioner=_Net()), pf.StandardNormal(4)),
    lambda: pf.Flow(pf.Chain([Reverse(2), CNF(_Net(), 2)]), pf.StandardNormal(2)),
    lambda: pf.Flow(T.Affine(2), _Net()),
], ids=["conditioner", "vector-field", "base"])
def test_an_unregistered_module_is_refused_at_save_time(make, tmp_path):
    flow = make()
    with pytest.raises(ValueError, match=r"_Net.*@pushforward\.specs\.serializable") as info:
        pf.save(flow, tmp_path / "out")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_a_callable_argument_and_a_changed_structure_are_refused_at_save_time(tmp_path):
    flow = pf.Flow(T.Planar(2, activation=torch.nn.Tanh), pf.StandardNormal(2))
    with pytest.raises(ValueError, match="Tanh.*by its name"):
        pf.save(flow, tmp_path / "a")
    flow = pf.Flow(pf.Chain([T.Affine(2), T.Reverse(2)]), pf.StandardNormal(2))
    flow.transform.transforms.append(T.Affine(2))  # changed after construction
    with pytest.raises(ValueError, match="changed after"):
        pf.save(flow, tmp_path / "b")


def test_registering_the_class_makes_it_saveable(tmp_path):
    @specs.serializable("tests-net")
    class Net(_Net):
        pass

    flow = pf.Flow(Coupling(coupling_mask(4, "half"), conditioner=Net(width=2)),
                   pf.StandardNormal(4))
    _assert_same(flow, _round_trip(flow, tmp_path / "net"), torch.randn(5, 4))


def test_embedding_follows_the_preset_rule(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(5, 3))
    flow = pf.Flow(MaskedAutoregressive(2, 3, hidden=(8,)), pf.StandardNormal(2), embedding=net,
                   context_features=5)
    folder = pf.save(flow, tmp_path / "e")
    with pytest.raises(ValueError, match="embedding network"):
        pf.load(folder)
    again = pf.load(folder, embedding=torch.nn.Sequential(torch.nn.Linear(5, 3)))
    _assert_same(flow, again, torch.randn(4, 2), torch.randn(4, 5))
    registered = pf.Flow(MaskedAutoregressive(2, 3, hidden=(8,)), pf.StandardNormal(2),
                         embedding=MLP(5, 3, hidden=(4,)), context_features=5)
    _assert_same(registered, _round_trip(registered, tmp_path / "r"), torch.randn(4, 2),
                 torch.randn(4, 5))


def test_prepend_and_save_again_after_loading(tmp_path):
    flow = pf.Flow(MaskedAutoregressive(2, hidden=(8,)), pf.StandardNormal(2)).prepend(
        [T.Standardization([1.0, -1.0], [2.0, 0.5])])
    again = _round_trip(flow, tmp_path / "a")
    _assert_same(flow, again, torch.randn(5, 2))
    twice = _round_trip(again, tmp_path / "b")
    _assert_same(flow, twice, torch.randn(5, 2))


def test_saving_does_not_move_the_random_state(tmp_path):
    flow = pf.Flow(pf.Chain([MaskedAutoregressive(3, hidden=(8,)), T.RandomPermutation(3)]),
                   pf.StandardNormal(3))
    before = torch.get_rng_state()
    pf.save(flow, tmp_path)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("edit, match", [
    (lambda s: s.update(type="os.system"), "unknown record type"),
    (lambda s: s["transform"]["__object__"].update(type="builtins.eval"), "unknown record type"),
    (lambda s: s["transform"]["__object__"].update(features={"__tensor__": {"dtype": "x"}}),
     "malformed"),
    (lambda s: s["transform"]["__object__"].update(features=-2), "malformed 'affine'|features"),
    (lambda s: s.update(base={"__object__": {"type": "standard-normal", "shape": 5}}), "shape"),
])
def test_forged_specs_are_refused_in_one_line(edit, match, tmp_path):
    from pushforward.training import checkpoint as ckpt

    pf.save(pf.Flow(T.Affine(2), pf.StandardNormal(2)), tmp_path)
    config = json.loads((tmp_path / ckpt.CONFIG_FILE).read_text())
    tensors, _ = ckpt.read_tensors(tmp_path / ckpt.MODEL_FILE)
    edit(config["spec"])
    ckpt.write_tensors(tmp_path / ckpt.MODEL_FILE, tensors, config)
    (tmp_path / ckpt.CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=match) as info:
        pf.load(tmp_path)
    assert "\n" not in str(info.value)


def _preset_params():
    from test_preset_kit import SLOW, SMALL

    return [pytest.param(n, SMALL.get(n, {}), id=n,
                         marks=[pytest.mark.slow] if n in SLOW else [])
            for n in pf.flows.names() if n != "idf"]  # idf's prior shares its flow's MultiScale


@pytest.mark.parametrize(("name", "options"), _preset_params())
def test_every_preset_flow_also_saves_as_a_hand_built_one(name, options, tmp_path):
    """Without its preset record (``flow.config``) a preset's flow is its constructors' record."""
    from test_preset_kit import _build, _context, _data, _perturb, _sized

    context = 2 if "context" in pf.flows.accepts(name) else 0
    flow = _perturb(_build(name, options, context, **_sized(name))).eval()
    if "audio" in pf.flows.accepts(name):
        context = flow.context_features
    del flow.config
    ctx = _context(context, 3)
    ctx = None if ctx is None else ctx.float()
    x = _data(name, flow, 3, ctx)
    again = _round_trip(flow, tmp_path / name)
    assert "spec" in json.loads((tmp_path / name / "config.json").read_text())
    _assert_same(flow, again, x, ctx)
