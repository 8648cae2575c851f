"""Integer discrete flows and lossless compression: exact integer bijections, exact discrete
probabilities, bit-exact streams, refused corruption."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pushforward as pf
from pushforward.diagnostics import check_transform
from pushforward.discretized import (
    DiscretizedLogistic,
    discretized_mixture_log_prob,
    discretized_mixture_sample,
)
from pushforward.transforms import IntegerCoupling, coupling_mask

pytest.importorskip("constriction")


def _perturb(module: torch.nn.Module, std: float, seed: int = 0) -> None:
    """Random parameters (a fresh IDF is the identity with zero-initialised last layers)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn(p.shape, generator=generator, dtype=p.dtype))


@pytest.fixture(scope="module")
def trained() -> tuple[pf.Flow, torch.Tensor]:
    """A small IDF on 4×4 crops of the digits (0..16), trained for a few steps."""
    images = pf.data.images.digits()[0]
    crops = torch.as_tensor(images[:, :, 2:6, 2:6]).to(torch.uint8)
    torch.manual_seed(0)
    flow = pf.flows.build("idf", shape=(1, 4, 4), hidden=16, transforms=2, components=3,
                          pixel_levels=17)
    pf.fit(flow, crops[:1200], steps=60, batch_size=128, lr=5e-3, progress=False)
    return flow.eval(), crops[1200:]


# -- IntegerCoupling ----------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), low=st.integers(-300, 0), span=st.integers(1, 600),
       flip=st.booleans(), image=st.booleans())
def test_integer_coupling_is_exactly_invertible_on_integers(seed, low, span, flip, image):
    torch.manual_seed(seed)
    shape = (2, 4, 4) if image else (5,)
    kind = "channel" if image else "alternating"
    layer = IntegerCoupling(coupling_mask(shape, kind, flip), hidden=8 if image else (8,))
    _perturb(layer, 0.5, seed)
    x = torch.randint(low, low + span + 1, (7, *shape)).to(torch.float32)
    z, ladj = layer.inverse(x)
    assert torch.equal(z, torch.round(z)), "the latent of an integer image is integer"
    assert torch.equal(layer(z)[0], x) and torch.equal(ladj, torch.zeros(7))
    x_from_z, _ = layer(x)  # and the other direction, from integer latents
    assert torch.equal(layer.inverse(x_from_z)[0], x)


def test_integer_coupling_passes_the_generic_kit():
    # Integer-valued inputs; the kit compares the ladj (0) with the autograd Jacobian, which the
    # straight-through rounding makes triangular with a unit diagonal.
    torch.manual_seed(0)
    for shape, kind, hidden in (((2, 2, 2), "channel", 4), ((1, 2, 4), "checkerboard", 4),
                                ((6,), "alternating", (8,))):
        layer = IntegerCoupling(coupling_mask(shape, kind), hidden=hidden)
        _perturb(layer, 0.3)
        x = torch.randint(0, 256, (2, *shape)).double()
        errors = check_transform(layer, x)
        assert errors["forward(inverse(x))"] == 0.0 and errors["jacobian"] < 1e-9


def test_round_ste_passes_gradients_straight_through():
    t = torch.tensor([0.2, 1.7], requires_grad=True)
    y = pf.transforms.integer.round_ste(t)
    y.sum().backward()
    assert y.tolist() == [0.0, 2.0] and t.grad.tolist() == [1.0, 1.0]


# -- the discretized logistic -------------------------------------------------------------------
def test_discretized_logistic_mixture_is_a_probability_mass_function():
    torch.manual_seed(0)
    k = torch.arange(-400, 401, dtype=torch.float64)[:, None]
    logits, loc = torch.randn(1, 3, dtype=torch.float64), 20 * torch.randn(1, 3).double()
    log_scale = torch.tensor([[-4.0, 0.5, 3.0]], dtype=torch.float64)
    lp = discretized_mixture_log_prob(k[:, 0], *(p.expand(len(k), 3)
                                               for p in (logits, loc, log_scale)))
    assert abs(float(lp.exp().sum()) - 1.0) < 1e-9
    # far tails stay finite (no difference of two nearly equal CDFs is formed)
    tail = discretized_mixture_log_prob(torch.tensor([1e4], dtype=torch.float64),
                                        *(p for p in (logits, loc, log_scale)))
    assert torch.isfinite(tail).all() and float(tail) < -100


def test_discretized_logistic_base_samples_integers():
    base = DiscretizedLogistic((2, 3), components=2, scale=3.0)
    z = base.sample(50)
    assert z.shape == (50, 2, 3) and torch.equal(z, z.round())
    assert torch.isfinite(base.log_prob(z)).all()


# -- the IDF preset -----------------------------------------------------------------------------
def test_idf_log_prob_is_an_exact_pmf_on_a_tiny_image():
    # On 1×1×2 images with values 0..40 the masses of the whole grid must sum to ~1 once the
    # grid holds nearly all the mass (the flow is a bijection of Z², P sums to 1 over Z²).
    torch.manual_seed(0)
    flow = pf.flows.build("idf", shape=(2, 1, 1), transforms=2, hidden=4, components=2,
                          pixel_levels=64).double()
    _perturb(flow.transform, 0.05)
    with torch.no_grad():
        flow.base.top.raw_loc.fill_(0.6)
        flow.base.top.raw_log_scale.fill_(math.log(2.0))
    grid = torch.stack(torch.meshgrid(torch.arange(-60, 100), torch.arange(-60, 100),
                                      indexing="ij"), -1).reshape(-1, 2, 1, 1)
    with torch.no_grad():
        total = float(flow.log_prob(grid.double()).exp().sum())
    assert abs(total - 1.0) < 1e-6


def test_idf_refuses_non_integer_pixels_and_a_context():
    flow = pf.flows.build("idf", shape=(1, 4, 4), hidden=4, transforms=1)
    with pytest.raises(ValueError, match="integer"):
        flow.log_prob(torch.rand(2, 1, 4, 4))
    with pytest.raises(ValueError, match="unconditional"):
        flow.log_prob(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1))
    with pytest.raises(TypeError):
        pf.flows.build("idf", shape=(1, 4, 4), context=2)
    with pytest.raises(ValueError, match="shape"):
        pf.flows.build("idf")


def test_fit_trains_an_idf_on_raw_integers():
    images = torch.as_tensor(pf.data.images.digits()[0][:512]).to(torch.uint8)
    torch.manual_seed(0)
    flow = pf.flows.build("idf", shape=(1, 8, 8), hidden=8, transforms=1, components=2,
                          pixel_levels=17)
    history = pf.fit(flow, images, steps=25, batch_size=64, lr=1e-2, progress=False)
    first, last = np.mean(history.step_nll[:3]), np.mean(history.step_nll[-3:])
    assert last < first - 20, (first, last)  # nats per image


def test_idf_checkpoint_round_trip(tmp_path):
    flow = pf.flows.build("idf", shape=(1, 4, 4), hidden=4, transforms=1)
    _perturb(flow, 0.1)
    pf.save(flow, tmp_path / "m")
    loaded = pf.load(tmp_path / "m")
    x = torch.randint(0, 256, (4, 1, 4, 4))
    assert torch.equal(loaded.log_prob(x), flow.eval().log_prob(x))
    assert pf.compression.model_checksum(loaded) == pf.compression.model_checksum(flow)


# -- the stream ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["random", "black", "white", "one"])
def test_round_trip_is_bit_exact(trained, kind):
    flow, _ = trained
    generator = torch.Generator().manual_seed(1)
    images = {
        "random": torch.randint(0, 17, (40, 1, 4, 4), generator=generator),
        "black": torch.zeros(9, 1, 4, 4, dtype=torch.int64),
        "white": torch.full((9, 1, 4, 4), 16),
        "one": torch.randint(0, 17, (1, 1, 4, 4), generator=generator),
    }[kind]
    data = pf.compression.encode(flow, images, batch_size=16)
    decoded = pf.compression.decode(flow, data)
    assert decoded.dtype == images.dtype and torch.equal(decoded, images)


def test_round_trip_keeps_container_dtype_and_rank():
    flow = pf.flows.build("idf", shape=(1, 4, 4), hidden=4, transforms=1)
    _perturb(flow, 0.2)
    rng = np.random.default_rng(0)
    for images in (rng.integers(0, 256, (5, 4, 4)).astype(np.uint8),
                   rng.integers(0, 256, (5, 1, 4, 4)).astype(np.float32),
                   torch.randint(0, 256, (5, 1, 4, 4), dtype=torch.int32)):
        decoded = pf.compression.decode(flow, pf.compression.encode(flow, images))
        assert type(decoded) is type(images) and decoded.dtype == images.dtype
        assert decoded.shape == images.shape and (decoded == images).all()


def test_escaped_values_round_trip():
    # an untrained model with tiny scales: most latents fall outside their coding windows
    flow = pf.flows.build("idf", shape=(1, 4, 4), hidden=4, transforms=1, components=1)
    with torch.no_grad():
        flow.base.top.raw_log_scale.fill_(-5.0)
        for net in flow.base.nets:
            net.head[1].bias.fill_(-20.0)
    images = torch.randint(0, 256, (6, 1, 4, 4), dtype=torch.uint8)
    assert torch.equal(pf.compression.decode(flow, pf.compression.encode(flow, images)), images)


def test_code_length_is_within_one_percent_of_the_information_content(trained):
    flow, test = trained
    data = pf.compression.encode(flow, test)
    bits = pf.compression.information_content(flow, test)
    with torch.no_grad():
        nats = -float(flow.log_prob(test).double().sum())
    assert abs(bits - nats / math.log(2)) < 1e-4 * bits  # float32 model vs the coder's float64
    assert abs(8 * len(data) / bits - 1) < 0.01, (8 * len(data), bits)


def test_empty_and_invalid_input_is_refused(trained):
    flow, _ = trained
    with pytest.raises(ValueError, match="no images"):
        pf.compression.encode(flow, torch.zeros(0, 1, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[0, 16\]"):
        pf.compression.encode(flow, torch.full((1, 1, 4, 4), 17))
    with pytest.raises(ValueError, match="integer"):
        pf.compression.encode(flow, torch.rand(1, 1, 4, 4))
    with pytest.raises(ValueError, match="shape|must be"):
        pf.compression.encode(flow, torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="empty"):
        pf.compression.decode(flow, b"")
    with pytest.raises(ValueError, match="integer discrete flow"):
        pf.compression.encode(pf.flows.build("realnvp", shape=(1, 4, 4)),
                              torch.zeros(1, 1, 4, 4))


def test_corrupted_or_truncated_streams_are_refused(trained):
    flow, test = trained
    data = pf.compression.encode(flow, test[:50])
    for cut in (1, 10, 59, 60, len(data) - 4, len(data) - 1):
        with pytest.raises(ValueError, match="truncated|magic"):
            pf.compression.decode(flow, data[:cut])
    with pytest.raises(ValueError, match="unexpected bytes"):
        pf.compression.decode(flow, data + b"\0")
    rng = np.random.default_rng(0)
    for position in [0, 5, 30, 61, 64, len(data) // 2, len(data) - 1,
                     *rng.integers(0, len(data), 30)]:
        corrupted = bytearray(data)
        corrupted[position] ^= 1 << int(rng.integers(8))
        with pytest.raises(ValueError, match="corrupted|magic|version|different model"):
            pf.compression.decode(flow, bytes(corrupted))


def test_a_stream_is_refused_by_another_model(trained):
    flow, test = trained
    data = pf.compression.encode(flow, test[:10])
    other = pf.flows.build("idf", shape=(1, 4, 4), hidden=16, transforms=2, components=3,
                           pixel_levels=17)
    with pytest.raises(ValueError, match="different model"):
        pf.compression.decode(other, data)


# -- the CLI ------------------------------------------------------------------------------------
def test_cli_compress_and_decompress_png_folder_and_idx(trained, tmp_path, capsys):
    from PIL import Image

    from pushforward.cli import main

    flow, test = trained
    pf.save(flow, tmp_path / "model")
    folder = tmp_path / "png"
    folder.mkdir()
    images = test[:12].numpy()
    for i, image in enumerate(images):
        Image.fromarray(image[0]).save(folder / f"img{i:02d}.png")
    idx = tmp_path / "images.idx"
    idx.write_bytes(b"\0\0\x08\x03" + np.array([12, 4, 4], ">u4").tobytes()
                    + images[:, 0].tobytes())
    for source, name in ((folder, "png"), (idx, "idx")):
        packed = tmp_path / f"{name}.pfc"
        assert main(["compress", "--checkpoint", str(tmp_path / "model"), "--input",
                     str(source), "--out", str(packed)]) == 0
        out = tmp_path / f"out-{name}"
        assert main(["decompress", "--checkpoint", str(tmp_path / "model"), "--input",
                     str(packed), "--out", str(out)]) == 0
        for i, image in enumerate(images):
            file = out / (f"img{i:02d}.png" if name == "png" else f"{i:05d}.png")
            assert np.array_equal(np.asarray(Image.open(file)), image[0])
    assert (tmp_path / "out-idx" / "images-idx3-ubyte").read_bytes() == idx.read_bytes()
    data = (tmp_path / "idx.pfc").read_bytes()
    (tmp_path / "bad.pfc").write_bytes(data[:-3])
    assert main(["decompress", "--checkpoint", str(tmp_path / "model"), "--input",
                 str(tmp_path / "bad.pfc"), "--out", str(tmp_path / "bad")]) == 1
    assert "truncated" in capsys.readouterr().err


# -- lossy --------------------------------------------------------------------------------------
def test_lossy_rate_falls_and_distortion_rises_with_the_step(trained):
    from pushforward.compression import lossy

    flow, test = trained
    images = test[:100]
    results = []
    for step in (1, 2, 4):
        for prior in (None, lossy.fit_prior(flow, test[100:300], step, steps=40)):
            data = lossy.encode_lossy(flow, prior, images, step)
            decoded = lossy.decode_lossy(flow, prior, data)
            expected = lossy.reconstruct(flow, lossy.quantize(flow, images, step), step)
            assert np.array_equal(decoded.numpy(), expected)  # what the encoder predicted
            mse = float(((decoded.double() - images.double()) ** 2).mean())
            results.append((step, prior is None, len(data), mse))
    conditional = [r for r in results if r[1]]
    assert conditional[0][3] == 0.0  # step 1 is lossless
    assert [r[2] for r in conditional] == sorted((r[2] for r in conditional), reverse=True)
    assert conditional[1][3] < conditional[2][3]
    data = lossy.encode_lossy(flow, None, images, 2)
    with pytest.raises(ValueError):
        lossy.decode_lossy(flow, None, data[:-2])
    with pytest.raises(ValueError, match="positive"):
        lossy.encode_lossy(flow, None, images, 0.0)


# -- the example scripts (slow: they train) -----------------------------------------------------
@pytest.mark.slow
def test_compression_examples_quick(tmp_path):
    import importlib.util
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "examples"
    modules = {}
    for name in ("compression", "lossy_compression"):
        spec = importlib.util.spec_from_file_location(f"example_{name}", folder / f"{name}.py")
        modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(modules[name])
    results = modules["compression"].main(["--quick", "--out", str(tmp_path),
                                           "--datasets", "digits"])
    assert results[0]["round_trip_exact"] and abs(results[0]["overhead_percent"]) < 5
    assert (tmp_path / "compression.png").stat().st_size > 1000
    lossy_results = modules["lossy_compression"].main(["--quick", "--out", str(tmp_path),
                                                       "--datasets", "digits"])
    assert len(lossy_results[0]["flow"]) == 4 and (tmp_path / "lossy.png").is_file()


def test_mixture_sample_draws_components_by_their_weights():
    torch.manual_seed(0)
    weights = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    shape = (20000, 3)
    logits = weights.log().expand(shape)
    loc = torch.tensor([0.0, 100.0, 200.0], dtype=torch.float64).expand(shape)
    x = discretized_mixture_sample(logits, loc, torch.full(shape, -3.0, dtype=torch.float64))
    frequencies = torch.stack([(x - m).abs().lt(20).double().mean() for m in (0, 100, 200)])
    torch.testing.assert_close(frequencies, weights, atol=0.015, rtol=0)
    assert torch.equal(x, x.round())
