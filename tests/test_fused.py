"""The fused conditioner path (pushforward.fused): same math as the general path, exact gradients
(first and second order), flat parameters that keep the old state_dict keys."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

import pushforward as pf
from pushforward import fused
from pushforward.fused import fast_path
from pushforward.nn import MADE, MLP

FIXTURES = Path(__file__).parent / "fixtures" / "pre_fused"

FLOWS = [
    ("maf", {"features": 3, "transforms": 2, "hidden": [8, 8]}),
    ("maf", {"features": 4, "context": 2, "transforms": 2, "hidden": [8, 8]}),
    ("iaf", {"features": 3, "context": 2, "transforms": 2, "hidden": [8, 8]}),
    ("nsf", {"features": 3, "transforms": 2, "hidden": [8, 8], "bins": 4}),
    ("realnvp", {"features": 5, "transforms": 2, "hidden": [8, 8]}),
    ("realnvp", {"features": 4, "context": 2, "transforms": 2, "hidden": [8]}),
]


def _inputs(kw: dict, n: int = 9) -> tuple[torch.Tensor, torch.Tensor | None]:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, kw["features"], generator=g, dtype=torch.float64)
    c = torch.randn(n, kw["context"], generator=g, dtype=torch.float64) if kw.get("context") \
        else None
    return x, c


def _count_fused(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    calls = {"forward": 0}
    original = fused._run

    def counted(*args: object) -> object:
        calls["forward"] += 1
        return original(*args)

    monkeypatch.setattr(fused, "_run", counted)
    return calls


@pytest.mark.parametrize(("name", "kw"), FLOWS)
def test_fast_path_equals_general_path(name: str, kw: dict,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    flow = pf.flows.build(name, **kw).double()
    x, c = _inputs(kw)
    x.requires_grad_(True)
    params = [x, *flow.parameters()]
    calls = _count_fused(monkeypatch)

    def both() -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        # the density and the forward map: one of them is the one-pass direction
        log_prob = flow.log_prob(x, context=c)
        y, ladj = flow.transform(x, context=c)
        total = log_prob.sum() + y.square().sum() + ladj.sum()
        return torch.cat([log_prob, y.flatten(), ladj]), torch.autograd.grad(total, params)

    log_prob, grads = both()
    assert calls["forward"] > 0, "the fused path did not run"
    with fast_path(False):
        seen = calls["forward"]
        reference, expected = both()
        assert calls["forward"] == seen, "fast_path(False) still ran the fused path"
    torch.testing.assert_close(log_prob, reference, rtol=0, atol=1e-10)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    # sampling (sequential for MAF) and no-grad density agree too
    with torch.no_grad():
        torch.manual_seed(1)
        sample = flow.sample(4, context=c)
        fast = flow.log_prob(x, context=c)
        with fast_path(False):
            torch.manual_seed(1)
            torch.testing.assert_close(sample, flow.sample(4, context=c), rtol=0, atol=1e-10)
            torch.testing.assert_close(fast, flow.log_prob(x, context=c), rtol=0, atol=1e-10)


@pytest.mark.parametrize("context", [0, 2])
def test_made_gradcheck_and_double_backward(context: int) -> None:
    torch.manual_seed(0)
    made = MADE(3, params=2, hidden=(5, 6), context_features=context).double()
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    c = torch.randn(4, context, dtype=torch.float64, requires_grad=True) if context else None
    flat = made.flat.detach().clone().requires_grad_(True)

    def f(x: torch.Tensor, flat: torch.Tensor, *c: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(made, {"flat": flat}, (x, *c))

    inputs = (x, flat, *((c,) if c is not None else ()))
    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


def test_mlp_gradcheck_and_double_backward() -> None:
    torch.manual_seed(0)
    mlp = MLP(3, 4, hidden=(5, 6), fused=True).double()
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    flat = mlp.flat.detach().clone().requires_grad_(True)

    def f(x: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(mlp, {"flat": flat}, (x,))

    assert torch.autograd.gradcheck(f, (x, flat))
    assert torch.autograd.gradgradcheck(f, (x, flat))


def test_gradient_penalty_create_graph_matches_general_path() -> None:
    torch.manual_seed(0)
    flow = pf.flows.build("maf", features=3, transforms=2, hidden=[8, 8]).double()
    x = torch.randn(6, 3, dtype=torch.float64)
    params = list(flow.parameters())

    def penalty() -> list[torch.Tensor]:
        xi = x.clone().requires_grad_(True)
        (score,) = torch.autograd.grad(flow.log_prob(xi).sum(), xi, create_graph=True)
        return list(torch.autograd.grad(score.square().sum(), params))

    fast = penalty()
    with fast_path(False):
        general = penalty()
    for got, want in zip(fast, general):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_masked_entries_get_no_gradient_and_adam_keeps_them() -> None:
    torch.manual_seed(0)
    made = MADE(4, params=2, hidden=(8, 8))
    masked = torch.cat([
        torch.cat([(layer.mask == 0).flatten(), torch.zeros_like(layer.bias, dtype=torch.bool)])
        for layer in made.layers])
    before = made.flat.detach().clone()
    optimizer = torch.optim.Adam(made.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad(set_to_none=True)
        made(torch.randn(16, 4)).square().mean().backward()
        assert made.flat.grad is not None
        assert torch.all(made.flat.grad[masked] == 0)
        optimizer.step()
    assert torch.equal(made.flat.detach()[masked], before[masked])
    assert not torch.equal(made.flat.detach()[~masked], before[~masked])


@pytest.mark.parametrize("options", [{}, {"foreach": True}, {"fused": True}],
                         ids=["single", "foreach", "fused"])
def test_no_grad_cache_follows_parameter_updates(options: dict) -> None:
    # fused Adam writes the parameters without moving their version counters: the cache must
    # still see the step (torch.optim's global post-step hook)
    torch.manual_seed(0)
    flow = pf.flows.build("maf", features=3, transforms=2, hidden=[8, 8])
    x = torch.randn(5, 3)
    optimizer = torch.optim.Adam(flow.parameters(), lr=0.1, **options)
    with torch.no_grad():
        first = flow.log_prob(x)
    optimizer.zero_grad()
    (-flow.log_prob(x).mean()).backward()
    optimizer.step()
    with torch.no_grad():
        after = flow.log_prob(x)
        with fast_path(False):
            reference = flow.log_prob(x)
    assert not torch.allclose(first, after)
    torch.testing.assert_close(after, reference)


def test_flat_parameters_survive_copy_dtype_and_views() -> None:
    torch.manual_seed(0)
    flow = pf.flows.build("realnvp", features=4, transforms=2, hidden=[8, 8])
    x = torch.randn(5, 4)
    twin = copy.deepcopy(flow)
    torch.testing.assert_close(twin.log_prob(x), flow.log_prob(x))
    with torch.no_grad():
        twin.transform.transforms[0].conditioner[0].weight.add_(1.0)  # a view of flat
    assert not torch.allclose(twin.log_prob(x), flow.log_prob(x))
    wide = copy.deepcopy(flow).double()
    assert wide.transform.transforms[0].conditioner[0].weight.dtype == torch.float64
    torch.testing.assert_close(wide.log_prob(x.double()).float(), flow.log_prob(x))


@pytest.mark.parametrize("key", ["maf", "maf_context", "iaf", "realnvp", "nsf"])
def test_checkpoints_saved_before_the_change_load(key: str) -> None:
    """Fixtures written by the per-layer-parameter code load and give the same log_prob."""
    saved = json.loads((FIXTURES / "log_prob.json").read_text())
    flow = pf.load(FIXTURES / key)
    config = json.loads((FIXTURES / key / "config.json").read_text())["options"]
    x = torch.tensor(saved["x"])[:, : config["features"]]
    c = torch.tensor(saved["context"]) if config.get("context") else None
    with torch.no_grad():
        got = flow.log_prob(x, context=c)
    torch.testing.assert_close(got, torch.tensor(saved["log_prob"][key]), rtol=1e-5, atol=1e-5)
    from safetensors.torch import load_file

    old_keys = set(load_file(FIXTURES / key / "model.safetensors"))
    assert set(flow.state_dict()) == old_keys


def test_state_dict_round_trip_and_bad_shapes() -> None:
    torch.manual_seed(0)
    made = MADE(3, params=2, hidden=(8,), context_features=2)
    state = made.state_dict()
    assert "flat" not in state and "layers.0.weight" in state and "context.weight" in state
    other = MADE(3, params=2, hidden=(8,), context_features=2)
    other.load_state_dict(state)
    torch.testing.assert_close(other.flat, made.flat)
    state["layers.0.weight"] = torch.zeros(3, 3)
    with pytest.raises(RuntimeError):
        other.load_state_dict(state)


def test_refresh_after_editing_data_behind_autograd() -> None:
    torch.manual_seed(0)
    flow = pf.flows.build("maf", features=3, transforms=1, hidden=[8])
    x = torch.randn(5, 3)
    with torch.no_grad():
        flow.log_prob(x)  # fills the cache
        flow.transform.transforms[0].made.flat.data.mul_(0.5)  # the version does not move
        fused.refresh(flow)
        with fast_path(False):
            reference = flow.log_prob(x)
        torch.testing.assert_close(flow.log_prob(x), reference)


@pytest.mark.parametrize(("bound", "context"), [(3.0, 0), (None, 2)])
def test_fused_maf_layer_gradcheck(bound: float | None, context: int) -> None:
    """The MADE + affine map node of a MAF layer's density direction."""
    from pushforward.transforms.autoregressive import MaskedAutoregressive

    torch.manual_seed(0)
    layer = MaskedAutoregressive(3, context, hidden=(5, 6), bound=bound).double()
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    c = torch.randn(4, context, dtype=torch.float64, requires_grad=True) if context else None
    flat = layer.made.flat.detach().clone().requires_grad_(True)

    def f(x: torch.Tensor, flat: torch.Tensor, *c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return torch.func.functional_call(layer.inv, {"transform.made.flat": flat}, (x,),
                                          {"context": c[0] if c else None})

    inputs = (x, flat, *((c,) if c is not None else ()))
    assert layer.made.affine_inverse(x, c, bound) is not None  # the fused node applies
    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


@pytest.mark.parametrize(("name", "kw"), [
    ("maf", {"features": 3, "transforms": 2, "hidden": [5, 6]}),
    ("maf", {"features": 3, "context": 2, "transforms": 2, "hidden": [5]}),
    ("maf", {"features": 3, "context": 2, "transforms": 2, "hidden": []}),
    ("realnvp", {"features": 5, "transforms": 3, "hidden": [6, 5]}),
])
def test_whole_flow_density_is_one_node_with_exact_derivatives(name: str, kw: dict) -> None:
    """A chain of affine layers on N(0, I): log p(x) is one autograd node (pushforward.
    fused_affine), gradcheck and gradgradcheck in x, the context and every parameter."""
    torch.manual_seed(0)
    flow = pf.flows.build(name, **kw).double()
    x, c = _inputs(kw, n=4)
    x.requires_grad_(True)
    if c is not None:
        c.requires_grad_(True)
    assert type(flow.log_prob(x, context=c).grad_fn).__name__ == "_AffineChainBackward"
    inputs = (x, *((c,) if c is not None else ()), *flow.parameters())

    def log_prob(x: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        return flow.log_prob(x, context=rest[0] if c is not None else None)

    assert torch.autograd.gradcheck(log_prob, inputs)
    assert torch.autograd.gradgradcheck(log_prob, inputs)


def test_whole_flow_node_steps_aside_for_hooks_and_other_bases() -> None:
    torch.manual_seed(0)
    flow = pf.flows.build("maf", features=3, transforms=2, hidden=[5])
    x = torch.randn(4, 3)
    seen = []
    made = flow.transform.transforms[0].made
    handle = made.register_forward_hook(lambda *args: seen.append(1))
    assert type(flow.log_prob(x).grad_fn).__name__ != "_AffineChainBackward"
    assert seen, "a hook on a MADE must see its call"
    handle.remove()
    flow.base = pf.DiagonalNormal(3)
    assert type(flow.log_prob(x).grad_fn).__name__ != "_AffineChainBackward"


@pytest.mark.parametrize("kinds", [("half", "half"), ("half", "alternating")])
def test_whole_flow_node_on_mixed_coupling_masks(kinds: tuple[str, str]) -> None:
    """Couplings whose parts are column blocks (half masks) or strided (a mixed chain): the
    node agrees with the general path and passes gradcheck."""
    from pushforward.transforms.coupling import AffineCoupling, coupling_mask

    torch.manual_seed(0)
    layers = [AffineCoupling(coupling_mask(5, kind, flip=i == 1), hidden=(6,))
              for i, kind in enumerate(kinds)]
    flow = pf.Flow(layers, pf.StandardNormal(5)).double()
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    fast = flow.log_prob(x)
    assert type(fast.grad_fn).__name__ == "_AffineChainBackward"
    with fast_path(False):
        torch.testing.assert_close(fast, flow.log_prob(x), rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x, *p: flow.log_prob(x), (x, *flow.parameters()))
