"""The one serialisation mechanism of transforms (``pushforward.specs``) and ``Flow.prepend``."""

import json

import pytest
import torch

import pushforward as pf
from pushforward import specs
from pushforward.transforms import (
    Flatten,
    LogitPreprocessing,
    Reshape,
    Sigmoid,
    Standardization,
)

EXAMPLES = {
    "standardization": lambda: Standardization([1.0, -2.0, 0.5], [0.5, 2.0, 3.0]),
    "logit": lambda: LogitPreprocessing(3, alpha=0.05),
    "reshape": lambda: Reshape((1, 3), (3,)),
    "flatten": lambda: Flatten((3,)),
    "sigmoid": lambda: Sigmoid(torch.tensor([-1.0, 0.0, 2.0]), torch.tensor([1.0, 5.0, 3.0]), 3),
}


def test_every_registered_record_type_has_an_example():
    assert set(specs.spec_names()) <= set(EXAMPLES), set(specs.spec_names()) - set(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_record_round_trip_rebuilds_the_same_map(name):
    layer = EXAMPLES[name]()
    record = specs.to_spec(layer)
    assert record["type"] == name
    again = specs.from_spec(json.loads(json.dumps(record)))  # JSON all the way
    assert type(again) is type(layer)
    z = torch.rand(4, 3) * 0.8 + 0.1
    x, ladj = layer(z)
    x2, ladj2 = again(z)
    torch.testing.assert_close(x2, x)
    torch.testing.assert_close(ladj2, ladj)


def test_unknown_and_malformed_records_are_refused():
    with pytest.raises(ValueError, match="unknown pre-processing layer"):
        specs.from_spec({"type": "magic"})
    with pytest.raises(ValueError, match="malformed"):
        specs.from_spec({"loc": [0.0]})
    with pytest.raises(ValueError, match="malformed 'standardization'"):
        specs.from_spec({"type": "standardization", "loc": [0.0]})
    with pytest.raises(ValueError, match="not registered"):
        specs.to_spec(pf.transforms.Affine(2))


def test_standardization_is_a_frozen_affine():
    layer = Standardization([1.0, 2.0], [2.0, 4.0])
    assert isinstance(layer, pf.transforms.Affine)
    assert not list(layer.parameters())
    x, ladj = layer(torch.zeros(3, 2))
    torch.testing.assert_close(x, torch.tensor([[1.0, 2.0]]).expand(3, 2))
    torch.testing.assert_close(ladj, torch.full((3,), float(torch.log(torch.tensor(8.0)))))


def test_checkpoints_written_before_the_move_still_load():
    """A state dict of the former ``Standardization`` (buffers ``loc`` and ``scale``) loads."""
    layer = Standardization([0.0, 0.0], [1.0, 1.0])
    old = {"loc": torch.tensor([1.0, -1.0]), "scale": torch.tensor([2.0, 0.5])}
    layer.load_state_dict(old)
    torch.testing.assert_close(layer.loc, old["loc"])
    torch.testing.assert_close(layer.scale, old["scale"])
    logit = LogitPreprocessing((1, 2, 2), 0.1)
    logit.load_state_dict({})  # the former layer had no tensors: its bounds are not stored
    assert not logit.state_dict()


def test_prepend_records_the_layers_and_a_checkpoint_rebuilds_them(tmp_path):
    torch.manual_seed(0)
    flow = pf.flows.build("maf", features=3, transforms=1, hidden=[8])
    wrapped = flow.prepend([Standardization([1.0, -2.0, 0.5], [0.5, 2.0, 3.0])])
    assert flow.prepend([]) is flow
    assert [r["type"] for r in wrapped.config["preprocess"]] == ["standardization"]
    assert wrapped.base is flow.base
    pf.save(wrapped, tmp_path / "run")
    again = pf.load(tmp_path / "run")
    x = torch.randn(5, 3)
    torch.testing.assert_close(again.log_prob(x), wrapped.eval().log_prob(x))
