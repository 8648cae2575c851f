"""MADE, MAF/IAF and the autoregressive presets (MAF, IAF, NSF)."""

import itertools

import pytest
import torch

import pushforward as pf
from pushforward.nn import MADE, MaskedLinear
from pushforward.transforms import InverseAutoregressive, MaskedAutoregressive

# -- MADE ---------------------------------------------------------------------------------------


def _made_jacobian(made, x, context=None):
    """``J[i, k, j] = ∂ params[i, k] / ∂ x_j`` at one point."""

    def f(v):
        ctx = None if context is None else context[None]
        return made(v[None], ctx)[0]

    return torch.autograd.functional.jacobian(f, x)


ORDERINGS = ["natural", "reversed", "random", [2, 0, 4, 1, 3]]


@pytest.mark.parametrize(
    ("ordering", "residual", "context"),
    list(itertools.product(ORDERINGS, [False, True], [0, 2])),
)
def test_made_is_autoregressive_in_its_ordering(ordering, residual, context):
    d, p = 5, 3
    torch.manual_seed(0)
    made = MADE(d, p, hidden=(20, 20, 20), context_features=context, ordering=ordering, seed=7,
                residual=residual, activation="tanh").double()
    x = torch.randn(d, dtype=torch.float64)
    ctx = torch.randn(context, dtype=torch.float64) if context else None
    jac = _made_jacobian(made, x, ctx).abs().amax(dim=1)  # (d outputs, d inputs)
    degrees = made.degrees
    allowed = degrees[None, :] < degrees[:, None]  # input j strictly before output i
    # in the ordering the Jacobian is strictly lower triangular ...
    order = torch.argsort(degrees)
    permuted = jac[order][:, order]
    assert torch.equal(permuted, torch.tril(permuted, -1))
    assert float(jac[~allowed].max()) == 0.0
    # ... and every allowed connection is actually used (hidden width >= d, tanh never flat)
    assert float(jac[allowed].min()) > 0.0
    if ordering == "random":
        assert not torch.equal(degrees, torch.arange(1, d + 1))
    if context:
        def g(c):
            return made(x[None], c[None])[0]

        jc = torch.autograd.functional.jacobian(g, ctx).abs().amax(dim=(1, 2))
        assert float(jc.min()) > 0.0, "every feature, the first included, must see the context"


def test_made_without_hidden_layers_and_narrow_hidden_layers():
    for hidden in [(), (3,)]:
        made = MADE(6, 2, hidden=hidden, ordering="random", seed=1).double()
        jac = _made_jacobian(made, torch.randn(6, dtype=torch.float64)).abs().amax(dim=1)
        degrees = made.degrees
        assert float(jac[~(degrees[None, :] < degrees[:, None])].max()) == 0.0


def test_masked_linear_ignores_masked_weights():
    mask = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    layer = MaskedLinear(mask)
    with torch.no_grad():
        layer.weight.fill_(3.0)
    y = layer(torch.tensor([[1.0, 100.0]]))
    torch.testing.assert_close(y - layer.bias, torch.tensor([[3.0, 303.0]]))
    y.sum().backward()
    assert layer.weight.grad[0, 1] == 0


def test_made_sequential_matches_the_parallel_pass():
    torch.manual_seed(0)
    made = MADE(4, 2, hidden=(16, 16), context_features=3, ordering="random", seed=2,
                residual=True).double()
    target = torch.randn(7, 4, dtype=torch.float64)
    ctx = torch.randn(7, 3, dtype=torch.float64)

    # fixed point u_i = target_i + params_i(u)[0]: the sequential solve must satisfy it exactly
    def step(i, params):
        return target[:, i] + params[:, 0], params[:, 1]

    u, extra = made.sequential(step, target, ctx)
    params = made(u, ctx)
    torch.testing.assert_close(u, target + params[..., 0], atol=1e-12, rtol=0)
    torch.testing.assert_close(extra, params[..., 1], atol=1e-12, rtol=0)


def test_made_bad_arguments():
    with pytest.raises(ValueError, match="ordering"):
        MADE(3, ordering="sideways")
    with pytest.raises(ValueError, match="permutation"):
        MADE(3, ordering=[0, 0, 1])
    with pytest.raises(ValueError, match="residual"):
        MADE(3, hidden=(8, 16), residual=True)
    with pytest.raises(ValueError, match="features"):
        MADE(0)
    made = MADE(3, context_features=2)
    with pytest.raises(ValueError, match="context"):
        made(torch.randn(4, 3))


# -- MAF / IAF ----------------------------------------------------------------------------------


def _count_calls(module):
    calls = []
    module.register_forward_hook(lambda *args: calls.append(1))
    return calls


@pytest.mark.parametrize("transformer", ["affine", "spline"])
def test_maf_density_is_one_made_pass(transformer):
    maf = MaskedAutoregressive(6, 2, transformer=transformer, hidden=(16,))
    calls = _count_calls(maf.made)
    x, ctx = torch.randn(10, 6), torch.randn(10, 2)
    maf.inverse(x, ctx)
    assert len(calls) == 1
    flow = pf.flows.MAF(6, transforms=3, hidden=(16,))
    counters = [_count_calls(t.made) for t in flow.transform]
    flow.log_prob(torch.randn(10, 6))
    assert [len(c) for c in counters] == [1, 1, 1]


def test_iaf_sampling_is_one_made_pass():
    flow = pf.flows.IAF(5, transforms=2, hidden=(16,))
    counters = [_count_calls(t.made) for t in flow.transform]
    flow.sample(10)
    assert [len(c) for c in counters] == [1, 1]


def test_sequential_direction_depends_on_every_earlier_feature():
    torch.manual_seed(0)
    maf = MaskedAutoregressive(5, hidden=(16, 16), ordering="reversed").double()
    with torch.no_grad():
        for p in maf.parameters():
            p.add_(0.3 * torch.randn_like(p))
    z = torch.randn(5, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: maf(v[None])[0][0], z)
    order = torch.argsort(maf.made.degrees)
    permuted = jac[order][:, order]
    assert torch.equal(permuted, torch.tril(permuted))  # lower triangular in the ordering
    below = torch.ones(5, 5, dtype=torch.bool).tril(-1)
    assert float(permuted[below].abs().min()) > 0  # x_i depends on every z_j before it


def test_autoregressive_arguments():
    with pytest.raises(ValueError, match="unknown elementwise map"):
        MaskedAutoregressive(3, transformer="cubic")
    with pytest.raises(TypeError, match="only apply to a map given by name"):
        InverseAutoregressive(3, transformer=pf.transforms.RationalQuadraticMap(), bins=4)
    with pytest.raises(ValueError, match="features"):
        MaskedAutoregressive(0)
    t = MaskedAutoregressive(3, transformer="spline", bins=4, identity_init=True)
    assert t.map.params == 11
    x = torch.randn(4, 3)
    z, ladj = t.inverse(x)  # zero-initialised conditioner: the identity
    torch.testing.assert_close(z, x, atol=1e-6, rtol=0)
    z, _ = MaskedAutoregressive(3, transformer="spline", bins=4).inverse(x)  # random start
    assert not torch.allclose(z, x, atol=1e-3)
    with pytest.raises(ValueError, match="context"):
        MaskedAutoregressive(3, 2).inverse(x)


# -- presets ------------------------------------------------------------------------------------


def _coupling_available():
    try:
        import pushforward.transforms.coupling  # noqa: F401
    except ImportError:
        return False
    return True


# The change of variables and sample shapes of these presets (with and without a context, and
# the residual/random-permutation MAF and coupling NSF variants): tests/test_preset_kit.py.


def _moons(n, seed):
    from sklearn.datasets import make_moons

    x, _ = make_moons(n, noise=0.08, random_state=seed)
    x = torch.as_tensor(x, dtype=torch.float32)
    return (x - torch.tensor([0.5, 0.25])) / torch.tensor([0.87, 0.5])


LEARN = [
    ("maf", {"transforms": 5, "hidden": [64, 64]}),
    ("iaf", {"transforms": 5, "hidden": [64, 64]}),
    ("nsf", {"transforms": 3, "hidden": [32, 32]}),
]
if _coupling_available():
    LEARN.append(("nsf", {"transforms": 4, "hidden": [32, 32], "coupling": True}))


@pytest.mark.parametrize(("name", "options"), LEARN)
def test_preset_learns_two_moons(name, options):
    torch.manual_seed(0)
    train, test = _moons(2048, 0), _moons(1024, 1)
    flow = pf.flows.build(name, features=2, **options)
    optimizer = torch.optim.Adam(flow.parameters(), lr=5e-3)
    with torch.no_grad():
        before = -flow.log_prob(test).mean().item()
    generator = torch.Generator().manual_seed(0)
    with pf.validation(False):
        for _ in range(300):
            batch = train[torch.randint(0, len(train), (256,), generator=generator)]
            loss = -flow.log_prob(batch).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        after = -flow.log_prob(test).mean().item()
    # N(0, I) on the standardised moons is ~2.83 nats (a fresh preset is near it);
    # fitted affine MAF/IAF reach ~1.8, splines ~1.7 in these 300 steps.
    assert before > 2.7
    assert after < before - 0.7, (before, after)


def test_preset_config_rebuilds_the_same_flow():
    flow = pf.flows.NSF(3, 2, transforms=2, hidden=(8,), bins=3, permutation="random", seed=5)
    config = pf.flows.config_of(flow)
    assert config["flow"] == "nsf"
    again = pf.flows.build(config["flow"], **config["options"])
    again.load_state_dict(flow.state_dict())
    x, ctx = torch.randn(4, 3), torch.randn(4, 2)
    torch.testing.assert_close(again.log_prob(x, ctx), flow.log_prob(x, ctx))


def test_preset_arguments():
    with pytest.raises(ValueError, match="permutation"):
        pf.flows.MAF(3, permutation="shuffle")
    with pytest.raises(ValueError, match="transforms"):
        pf.flows.IAF(3, transforms=0)
    with pytest.raises(ValueError, match="features"):
        pf.flows.NSF(0)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["maf", "nsf"])
def test_preset_defaults_learn_digits(name):
    """8×8 digits (64-D): the default preset lowers the test NLL well below the identity's."""
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    digits = torch.tensor(load_digits().images, dtype=torch.float32).reshape(-1, 64)
    perm = torch.randperm(len(digits))
    train, test = digits[perm[:1500]], digits[perm[1500:]]
    generator = torch.Generator().manual_seed(1)

    def dequantise(batch):
        return (batch + torch.rand(batch.shape, generator=generator)) / 17

    reference = dequantise(train)
    mean, std = reference.mean(0), reference.std(0)
    test_x = (dequantise(test) - mean) / std
    flow = pf.flows.build(name, features=64)
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-3)
    with torch.no_grad():
        before = -flow.log_prob(test_x).mean().item()
    with pf.validation(False):
        for _ in range(300):
            batch = (dequantise(train[torch.randint(0, 1500, (64,), generator=generator)]) - mean)
            loss = -flow.log_prob(batch / std).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        after = -flow.log_prob(test_x).mean().item()
    # identity ~92.7 nats; these 300 steps reach ~59.5 (MAF) and ~40.0 (NSF)
    assert after < before - 25, (before, after)
