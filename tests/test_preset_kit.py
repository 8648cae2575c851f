"""The preset kit: every name in ``pf.flows.names()`` through the same checks.

What a preset accepts is read from its registration (``pf.flows.accepts(name)``), never guessed.
For each declared input kind (vectors ``(3,)``; images ``(1, 4, 4)`` and ``(2, 4, 4)``; points on
the sphere ``S²``; integer vectors) and with and without a context when it declares one:

* the log-density in float64 equals a brute-force change of variables at perturbed
  parameters: ``log p₀(z) − log|det ∂f/∂z|`` with the autograd Jacobian of the forward map at
  ``z = f⁻¹(x)`` (on the sphere ``− log R_f(z)``, the autograd volume ratio; for integer flows the
  mass of the ``x`` is the base mass of ``z = f⁻¹(x)``, a bijection of the integer lattice,
  and the masses of a box of lattice points sum to at most one);
* ``sample`` has shape ``(n, *event)``, ``(n, B, *event)`` with a context;
* the gradient of the NLL reaches every parameter;
* ``pf.save`` / ``pf.load`` round-trips the density;
* with a context, changing the context changes the density.

A new preset is covered as soon as it registers; ``SMALL`` only shrinks its sizes.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import pushforward as pf

# Small sizes so that the whole kit stays fast (options a preset does not take are dropped).
SMALL: dict[str, dict] = {
    "planar": {"transforms": 3},
    "radial": {"transforms": 3},
    "nice": {"transforms": 3, "hidden": [16, 16]},
    "realnvp": {"transforms": 3, "hidden": [16, 16]},
    "glow": {"transforms": 2, "hidden": [16, 16]},
    "maf": {"transforms": 3, "hidden": [16, 16]},
    "iaf": {"transforms": 3, "hidden": [16, 16]},
    "nsf": {"transforms": 3, "hidden": [16, 16], "bins": 4, "bound": 3.0},
    "naf": {"transforms": 2, "components": 4, "hidden": [16, 16]},
    "sylvester": {"transforms": 3},
    "residualflow": {"transforms": 2, "hidden": [16, 16], "logdet": "exact"},
    "cnf": {"hidden": [16, 16], "rtol": 1e-9, "atol": 1e-9},
    "sphere": {"transforms": 3, "hidden": [16]},
    "sphere-cnf": {"hidden": [16, 16], "frequencies": 2, "rtol": 1e-8, "atol": 1e-8},
    "idf": {"hidden": 8, "pixel_levels": 8},
    "vocoder": {"hop": 16, "group": 4, "n_fft": 32, "n_mels": 4, "hidden": 4, "layers": 2,
                "transforms": 2, "cond_channels": 3},
}
IMAGE_SMALL: dict[str, dict] = {
    "realnvp": {"hidden": 8, "transforms": 2},
    "glow": {"hidden": 8, "transforms": 2},
    "idf": {"hidden": 8, "pixel_levels": 8, "levels": 1},
}
# Variants the families' own tests used to brute-force (option paths the defaults miss).
VARIANTS: list[tuple[str, dict]] = [
    ("maf", {"residual": True, "permutation": "random", "transforms": 3, "hidden": [16, 16]}),
    ("nsf", {"coupling": True, "bins": 4, "bound": 3.0, "transforms": 3, "hidden": [16, 16]}),
    ("sylvester", {"transforms": 2, "variant": "householder", "columns": 2}),
    ("sylvester", {"transforms": 2, "variant": "triangular"}),
]
SLOW = {"sphere-cnf"}  # an adaptive ODE solve per Jacobian column


def _param(name: str, options: dict, **marks: object) -> object:
    kw = {"marks": pytest.mark.slow} if name in SLOW else {}
    label = name + ("" if options is SMALL.get(name) else "-" + "-".join(map(str, options)))
    return pytest.param(name, options, id=label, **kw)


def _cases(kind: str) -> list:
    cases = [_param(n, SMALL.get(n, {})) for n in pf.flows.names()
             if kind in pf.flows.accepts(n)]
    if kind == "vectors":
        cases += [_param(n, o) for n, o in VARIANTS if n in pf.flows.names()]
    return cases


def _build(name: str, options: dict, context: int = 0, **size: object) -> pf.Flow:
    torch.manual_seed(0)
    if context:
        size["context"] = context
    return pf.flows.build(name, **size, **options)


def _perturb(flow: pf.Flow, scale: float = 0.1) -> pf.Flow:
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in flow.parameters():
            if p.is_floating_point():
                p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return flow


def _base_log_prob(flow: pf.Flow, z: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
    if getattr(flow.base, "context_features", 0):
        return flow.base.log_prob(z, context)
    return flow.base.log_prob(z)


def _brute_force(flow: pf.Flow, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
    """``log p₀(z) − log|det ∂f/∂z|`` at ``z = f⁻¹(x)``, one autograd Jacobian per row."""
    z = flow.transform.inverse(x, context)[0].detach()
    out = []
    for i in range(x.shape[0]):
        ctx = None if context is None else context[i : i + 1]

        def f(zi: torch.Tensor, ctx: torch.Tensor | None = ctx) -> torch.Tensor:
            return flow.transform(zi.unsqueeze(0), ctx)[0].reshape(-1)

        jac = torch.autograd.functional.jacobian(f, z[i])
        jac = jac.reshape(jac.shape[0], -1)
        assert jac.shape[0] == jac.shape[1]
        out.append(_base_log_prob(flow, z[i : i + 1], ctx)[0] - torch.linalg.slogdet(jac)[1])
    return torch.stack(out)


def _sphere_brute_force(flow: pf.Flow, x: torch.Tensor,
                        context: torch.Tensor | None) -> torch.Tensor:
    """``log p₀(z) − log R_f(z)`` with the generic autograd volume ratio of the sphere."""
    sphere = pf.manifolds.Sphere(x.shape[-1])
    z = flow.transform.inverse(x, context)[0].detach()
    ratio = pf.manifolds.log_volume_ratio(lambda v: flow.transform(v, context)[0],
                                          sphere.project, z, x.shape[-1] - 1)
    return _base_log_prob(flow, z, context) - ratio


def _context(width: int, batch: int) -> torch.Tensor | None:
    generator = torch.Generator().manual_seed(2)
    return torch.randn(batch, width, generator=generator, dtype=torch.float64) if width else None


def _contexts(name: str) -> list[int]:
    return [0, 2] if "context" in pf.flows.accepts(name) else [0]


# -- the log-density against a brute-force change of variables, float64 ------------------------
@pytest.mark.parametrize("context", [0, 2])
@pytest.mark.parametrize(("name", "options"), _cases("vectors"))
def test_vector_log_prob_is_the_change_of_variables(name, options, context):
    if "integers" in pf.flows.accepts(name):
        pytest.skip("integer flows: test_integer_mass_is_the_base_mass")
    if context not in _contexts(name):
        pytest.skip(f"{name} declares no context")
    flow = _perturb(_build(name, options, context, features=3).double())
    x = 1.5 * torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ctx = _context(context, 4)
    flow.log_prob(x, ctx)  # training mode: data-dependent initialisations (ActNorm) run here
    flow.eval()
    torch.testing.assert_close(flow.log_prob(x, ctx), _brute_force(flow, x, ctx),
                               atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("shape", [(1, 4, 4), (2, 4, 4)])
@pytest.mark.parametrize(("name", "options"), _cases("images"))
def test_image_log_prob_is_the_change_of_variables(name, options, shape):
    if "integers" in pf.flows.accepts(name):
        pytest.skip("integer flows: test_integer_mass_is_the_base_mass")
    context = 2 if "context" in pf.flows.accepts(name) else 0
    flow = _perturb(_build(name, IMAGE_SMALL.get(name, {}), context, shape=shape).double())
    x = torch.rand(3, *shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ctx = _context(context, 3)
    flow.log_prob(x, ctx)
    flow.eval()
    log_p = flow.log_prob(x, ctx)
    torch.testing.assert_close(log_p, _brute_force(flow, x, ctx), atol=1e-6, rtol=1e-6)
    if ctx is not None:
        assert not torch.allclose(flow.log_prob(x, ctx + 1), log_p)


@pytest.mark.parametrize("context", [0, 2])
@pytest.mark.parametrize(("name", "options"), _cases("sphere"))
def test_sphere_log_prob_is_the_change_of_variables(name, options, context):
    if context not in _contexts(name):
        pytest.skip(f"{name} declares no context")
    flow = _perturb(_build(name, options, context, features=3).double(), scale=0.05).eval()
    ctx = _context(context, 4)
    with torch.no_grad():
        x = flow.sample(1, ctx)[0] if ctx is not None else flow.sample(4)
    torch.testing.assert_close(flow.log_prob(x, ctx), _sphere_brute_force(flow, x, ctx),
                               atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(("name", "options"), _cases("integers"))
def test_integer_mass_is_the_base_mass(name, options):
    flow = _build(name, options, features=2).double().eval()
    levels = int(pf.flows.config_of(flow)["options"]["pixel_levels"])
    x = torch.tensor(list(itertools.product(range(levels), repeat=2)), dtype=torch.float64)
    with torch.no_grad():
        log_p = flow.log_prob(x)
        z, ladj = flow.transform.inverse(x)
    assert torch.equal(z, z.round()), "an integer flow maps lattice points to lattice points"
    assert torch.all(ladj == 0)
    torch.testing.assert_close(log_p, _base_log_prob(flow, z, None))
    assert 0 < float(log_p.exp().sum()) <= 1 + 1e-9


# -- shapes, gradients, save/load, context --------------------------------------------------------
def _data(name: str, flow: pf.Flow, batch: int, ctx: torch.Tensor | None) -> torch.Tensor:
    """Points in the preset's domain, drawn from the flow itself."""
    with torch.no_grad():
        flow.eval()
        x = flow.sample(1, ctx)[0] if ctx is not None else flow.sample(batch)
        flow.train()
    return x


def _every(kind: str) -> list:
    return [_param(n, SMALL.get(n, {})) for n in pf.flows.names()
            if kind in pf.flows.accepts(n)]


def _sized(name: str) -> dict:
    accepted = pf.flows.accepts(name)
    if "audio" in accepted:
        return {"features": 32}  # waveform segments; the context is their mel spectrogram
    if "vectors" in accepted or "sphere" in accepted or "simplex" in accepted:
        return {"features": 3 if "integers" not in accepted else 2}
    return {"shape": (1, 4, 4)}


@pytest.mark.parametrize(("name", "options"), [_param(n, SMALL.get(n, {}))
                                                for n in pf.flows.names()])
def test_sample_shapes_gradients_and_save_load(name, options, tmp_path):
    context = 2 if "context" in pf.flows.accepts(name) else 0
    flow = _build(name, options, context, **_sized(name))
    if "audio" in pf.flows.accepts(name):
        context = flow.context_features  # always conditional: the flattened mel spectrogram
    if "integers" not in pf.flows.accepts(name):
        _perturb(flow)  # off the identity initialisations, so that the context matters
    event = flow.event_shape
    ctx = _context(context, 3)
    ctx = None if ctx is None else ctx.float()
    x = _data(name, flow, 3, ctx)
    assert x.shape == (3, *event)
    if ctx is not None:
        with torch.no_grad():
            assert flow.sample(4, ctx).shape == (4, 3, *event)
    with torch.no_grad():
        samples, log_p = flow.sample_and_log_prob(4, ctx) if ctx is not None else \
            flow.sample_and_log_prob(4)
    assert log_p.shape == samples.shape[: samples.dim() - len(event)]

    loss = -flow.log_prob(x, ctx).mean()
    loss.backward()
    missing = [n for n, p in flow.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"{name}: no gradient reaches {missing}"

    flow.eval()
    pf.save(flow, tmp_path / "model")
    clone = pf.load(tmp_path / "model").eval()
    with torch.no_grad():
        torch.testing.assert_close(clone.log_prob(x, ctx), flow.log_prob(x, ctx))
        if ctx is not None:
            assert not torch.allclose(flow.log_prob(x, ctx + 1), flow.log_prob(x, ctx)), \
                f"{name}: the context does not change the density"


def test_every_preset_declares_what_it_accepts():
    for name in pf.flows.names():
        accepted = pf.flows.accepts(name)
        assert accepted and accepted <= pf.flows.CAPABILITIES, name
        assert accepted & {"vectors", "images", "sphere", "simplex", "audio"}, name
    with pytest.raises(ValueError, match="unknown flow"):
        pf.flows.accepts("nope")
    with pytest.raises(ValueError, match="accepts"):
        pf.flows.register("kit-bad", accepts=("spectra",))


def test_small_sizes_name_only_registered_presets():
    stale = (set(SMALL) | set(IMAGE_SMALL) | {n for n, _ in VARIANTS}) - set(pf.flows.names())
    assert not stale, f"small sizes for presets that are no longer registered: {stale}"
