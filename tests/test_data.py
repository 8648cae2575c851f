"""Datasets: toy generators, splits, digits and IDX images, CSV/NPY, pre-processing, bits/dim."""

import gzip
import math

import numpy as np
import pytest
import torch

import pushforward as pf
from pushforward import data as D
from pushforward.data import images as I
from pushforward.data.preprocess import from_spec, unwrap_spec, wrap
from pushforward.transforms import Affine, LogitPreprocessing, Standardization


@pytest.mark.parametrize("name", D.toy_names())
def test_toy_generators_seeded(name):
    a = D.toy(name, 500, seed=3)
    b = D.toy(name, 500, seed=3)
    c = D.toy(name, 500, seed=4)
    assert a.shape == (500, 2) and a.dtype == np.float64
    assert np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.abs(a).max() < 8


def test_toy_shapes_are_right():
    x = D.toy("moons", 20000, seed=0)
    # sklearn's make_moons: mean (0.5, 0.25); both moons equally weighted
    np.testing.assert_allclose(x.mean(0), [0.5, 0.25], atol=0.02)
    x = D.toy("checkerboard", 5000, seed=0)
    cells = (np.floor(x[:, 0] / 2) + np.floor(x[:, 1] / 2)) % 2
    assert len(np.unique(cells)) == 1  # every point on squares of one colour
    x = D.toy("8gaussians", 8000, seed=0) * math.sqrt(2)
    radius = np.linalg.norm(x, axis=1)
    assert abs(np.median(radius) - 4) < 0.2
    x = D.toy("circles", 4000, seed=0)
    r = np.linalg.norm(x, axis=1)
    assert ((np.abs(r - 1) < 0.3) | (np.abs(r - 0.5) < 0.3)).mean() > 0.99
    x = D.toy("rings", 4000, seed=0) * 4 / 3
    r = np.linalg.norm(x, axis=1)
    assert (np.abs(r - np.round(r)) < 0.35).mean() > 0.99


def test_toy_errors():
    with pytest.raises(ValueError, match="unknown toy"):
        D.toy("nope", 10)
    with pytest.raises(ValueError, match="n must be"):
        D.toy("moons", -1)


def test_split_indices_partition_by_seed():
    parts = D.split_indices(1000, seed=1)
    allidx = torch.cat(parts)
    assert sorted(allidx.tolist()) == list(range(1000))
    assert [len(p) for p in parts] == [800, 100, 100]
    again = D.split_indices(1000, seed=1)
    other = D.split_indices(1000, seed=2)
    assert all(torch.equal(a, b) for a, b in zip(parts, again))
    assert not torch.equal(parts[2], other[2])


def test_datasets_listing():
    names = D.datasets()
    for name in [*D.toy_names(), "digits", "fashion-mnist", "mnist"]:
        assert name in names


def test_load_dataset_toy_standardised_in_user_units():
    bundle = D.load_dataset("moons", seed=0, size=2000)
    assert bundle.kind == "vector" and bundle.event_shape == (2,)
    assert len(bundle.train) + len(bundle.val) + len(bundle.test) == 2000
    (layer,) = bundle.preprocess
    torch.testing.assert_close(layer.loc, bundle.train.mean(0))
    torch.testing.assert_close(layer.scale, bundle.train.std(0))
    # An identity flow on standardised data: log p(x) = log N((x - mu)/s) - sum log s.
    flow = pf.Flow(Affine(2), pf.StandardNormal(2))
    flow.config = {"flow": "test", "options": {}}
    wrapped = wrap(flow, bundle.preprocess)
    x = bundle.test[:5]
    y = (x - layer.loc) / layer.scale
    expected = pf.StandardNormal(2).log_prob(y) - torch.log(layer.scale).sum()
    torch.testing.assert_close(wrapped.log_prob(x), expected)
    samples = wrapped.sample(20000)
    torch.testing.assert_close(samples.mean(0), layer.loc, atol=0.05, rtol=0)
    assert wrapped.config["preprocess"][0]["type"] == "standardization"
    rebuilt = unwrap_spec(wrapped.config)[0]
    torch.testing.assert_close(rebuilt.loc, layer.loc)


def test_load_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        D.load_dataset("nope")
    with pytest.raises(FileNotFoundError):
        D.load_dataset(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="unsupported"):
        (tmp_path / "x.json").write_text("{}")
        D.load_dataset(tmp_path / "x.json")
    with pytest.raises(ValueError, match="manifold"):
        D.load_dataset("moons", manifold="torus")


def test_preprocess_specs():
    with pytest.raises(ValueError):
        Standardization([0.0, 1.0], [1.0, 0.0])
    with pytest.raises(ValueError):
        LogitPreprocessing(2, alpha=0.5)
    with pytest.raises(ValueError, match="unknown"):
        from_spec({"type": "magic"})
    with pytest.raises(ValueError, match="malformed"):
        from_spec({"type": "standardization"})
    layer = LogitPreprocessing((1, 2, 2), 0.1)
    assert from_spec(layer.spec()).spec() == layer.spec()
    with pytest.raises(ValueError, match="outside"):
        layer.inverse(torch.full((1, 1, 2, 2), 1.5))


# -- images -------------------------------------------------------------------------------------
def test_digits_dataset():
    images, labels, levels = D.digits()
    assert images.shape == (1797, 1, 8, 8) and levels == 17
    assert images.min() == 0 and images.max() == 16
    bundle = D.load_dataset("digits", seed=0)
    assert bundle.kind == "image" and bundle.event_shape == (1, 8, 8) and bundle.levels == 17
    assert len(bundle.train) + len(bundle.val) + len(bundle.test) == 1797
    batch = bundle.train[torch.arange(10)]
    assert batch.shape == (10, 1, 8, 8)
    assert isinstance(bundle.preprocess[0], LogitPreprocessing)


def test_dequantisation_is_uniform_within_the_bin():
    k = torch.randint(0, 17, (2000, 1, 2, 2))
    ds = D.DequantizedImages(k, 17)
    u = ds[torch.arange(2000)]
    assert ((u >= 0) & (u < 1)).all()
    assert torch.equal(torch.floor(u * 17).long(), k)
    noise = (u * 17 - k).flatten()
    # U[0, 1): mean 1/2, sd 1/sqrt(12); within 4 standard errors
    assert abs(noise.mean().item() - 0.5) < 4 * (1 / math.sqrt(12)) / math.sqrt(noise.numel())
    with pytest.raises(ValueError, match="pixel values"):
        D.DequantizedImages(torch.full((1, 1, 2, 2), 17), 17)
    with pytest.raises(ValueError, match="N, C, H, W"):
        D.DequantizedImages(torch.zeros(3, 4), 17)


def test_bits_per_dim_formula_is_exact():
    # A density uniform on [0, 1]^D has NLL 0 and gives P(k) = K^-D exactly: log2 K bits/dim.
    assert D.bits_per_dim(0.0, 64, 256) == pytest.approx(8.0, abs=1e-12)
    assert D.bits_per_dim(0.0, 64, 17) == pytest.approx(math.log2(17), abs=1e-12)
    # The pre-processing correction: NLL measured in logit space plus log|det dy/du| gives the
    # same bits/dim as the NLL of the wrapped flow in [0, 1] space.
    torch.manual_seed(0)
    shape = (1, 2, 2)
    inner = pf.Flow(Affine(shape, scale=1.3, shift=0.2), pf.StandardNormal(shape)).double()
    inner.config = {"flow": "test", "options": {}}
    layer = LogitPreprocessing(shape, alpha=0.05).double()
    wrapped = wrap(inner, [layer])
    u = torch.rand(7, *shape, dtype=torch.float64)
    nll_u = -wrapped.log_prob(u)
    y, log_det_inv = layer.inverse(u)  # log|det dy/du|
    nll_y = -inner.log_prob(y)
    a = 0.05
    v = a + (1 - 2 * a) * u
    by_hand = (math.log(1 - 2 * a) - torch.log(v) - torch.log1p(-v)).flatten(1).sum(1)
    torch.testing.assert_close(log_det_inv, by_hand)
    torch.testing.assert_close(
        D.bits_per_dim(nll_y, 4, 256, log_det_preprocessing=log_det_inv),
        D.bits_per_dim(nll_u, 4, 256),
    )
    expected = (nll_u + 4 * math.log(256)) / (4 * math.log(2))
    torch.testing.assert_close(D.bits_per_dim(nll_u, 4, 256), expected)
    with pytest.raises(ValueError):
        D.bits_per_dim(1.0, 0)


def _write_idx(path, array, compress):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(s).to_bytes(4, "big") for s in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


@pytest.mark.parametrize("compress", [False, True])
def test_load_idx_roundtrip(tmp_path, compress):
    array = np.random.default_rng(0).integers(0, 256, (5, 4, 3)).astype(np.uint8)
    path = tmp_path / "x-images-idx3-ubyte"
    _write_idx(path, array, compress)
    np.testing.assert_array_equal(D.load_idx(path), array)
    train, test = D.idx_dataset(path)
    assert train.shape == (5, 1, 4, 3) and test is None


def test_load_idx_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="magic"):
        D.load_idx(bad)
    array = np.zeros((4, 2, 2), dtype=np.uint8)
    path = tmp_path / "t"
    _write_idx(path, array, False)
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ValueError, match="bytes"):
        D.load_idx(path)


def test_fashion_mnist_missing_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(I, "idx_search_dirs", lambda name: [tmp_path / name])
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        D.load_dataset("fashion-mnist")


def test_idx_folder_with_official_split(tmp_path, monkeypatch):
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    _write_idx(folder / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (50, 4, 4)), True)
    _write_idx(folder / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (20, 4, 4)), True)
    monkeypatch.setattr(I, "idx_search_dirs", lambda name: [tmp_path / name])
    bundle = D.load_dataset("fashion-mnist")
    assert bundle.levels == 256 and bundle.event_shape == (1, 4, 4)
    assert len(bundle.test) == 20 and len(bundle.train) + len(bundle.val) == 50


# -- tables -------------------------------------------------------------------------------------
def test_csv_comments_header_and_delimiters(tmp_path):
    f = tmp_path / "a.csv"
    f.write_text("# source: somewhere\n# another comment\nlat,long\n1.5,2\n-3,4e1\n\n")
    np.testing.assert_array_equal(D.load_csv(f), [[1.5, 2.0], [-3.0, 40.0]])
    f.write_text("1;2;3\n4;5;6\n")
    assert D.load_csv(f).shape == (2, 3)
    f.write_text("1 2\n3 4\n")
    assert D.load_csv(f).shape == (2, 2)


@pytest.mark.parametrize(("text", "match"), [
    ("1,2\n3\n", "columns"),
    ("1,2\n3,abc\n", "not a number"),
    ("1,2\nnan,3\n", "non-finite"),
    ("# only comments\n", "no numeric"),
    ("a,b\nc,d\n", "not a number"),
])
def test_csv_malformed(tmp_path, text, match):
    f = tmp_path / "bad.csv"
    f.write_text(text)
    with pytest.raises(ValueError, match=match) as info:
        D.load_csv(f)
    assert "\n" not in str(info.value)


def test_npy_loading(tmp_path):
    f = tmp_path / "a.npy"
    np.save(f, np.arange(6.0).reshape(3, 2))
    assert D.load_npy(f).shape == (3, 2)
    np.save(f, np.arange(4))
    assert D.load_npy(f).shape == (4, 1)
    np.save(f, np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="NaN"):
        D.load_npy(f)
    np.save(f, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="numeric"):
        D.load_npy(f)
    f.write_bytes(b"not an npy file at all")
    with pytest.raises(ValueError):
        D.load_npy(f)
    bundle = D.load_dataset(_npy(tmp_path), seed=0)
    assert bundle.kind == "vector" and bundle.event_shape == (3,)


def _npy(tmp_path):
    f = tmp_path / "good.npy"
    np.save(f, np.random.default_rng(0).normal(size=(100, 3)) * 10 + 5)
    return f


def test_latlon_sphere_dataset(tmp_path):
    latlon = np.array([[0.0, 0.0], [90.0, 10.0], [-45.0, 135.0], [10.0, -170.0]])
    units = D.latlon_to_unit(latlon)
    np.testing.assert_allclose(np.linalg.norm(units, axis=1), 1.0)
    np.testing.assert_allclose(units[0], [1, 0, 0], atol=1e-12)
    back = D.unit_to_latlon(units)
    np.testing.assert_allclose(back[[0, 2, 3]], latlon[[0, 2, 3]], atol=1e-9)
    with pytest.raises(ValueError, match="latitudes"):
        D.latlon_to_unit(np.array([[91.0, 0.0]]))
    f = tmp_path / "quakes.csv"
    rng = np.random.default_rng(0)
    rows = np.stack([rng.uniform(-80, 80, 50), rng.uniform(-180, 180, 50)], axis=1)
    f.write_text("# comment\n" + "\n".join(f"{a},{b}" for a, b in rows))
    bundle = D.load_dataset(f, manifold="sphere")
    assert bundle.kind == "sphere" and bundle.event_shape == (3,) and bundle.preprocess == []
    torch.testing.assert_close(bundle.train.norm(dim=1), torch.ones(len(bundle.train)))
