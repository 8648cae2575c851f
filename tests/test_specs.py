"""The one serialisation mechanism of transforms (``pushforward.specs``) and ``Flow.prepend``."""

import json
import math

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


def test_the_explicit_record_formats_are_registered():
    """These classes write their own records (the format of older checkpoints); every other
    registered class records its constructor's arguments (test_checkpoint_any_flow.py)."""
    assert set(EXAMPLES) <= set(specs.spec_names())
    for name in EXAMPLES:
        assert callable(getattr(specs._CLASSES[name], "spec", None)), name


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
    with pytest.raises(ValueError, match="unknown record type"):
        specs.from_spec({"type": "magic"})
    with pytest.raises(ValueError, match="malformed"):
        specs.from_spec({"loc": [0.0]})
    with pytest.raises(ValueError, match="malformed 'standardization'"):
        specs.from_spec({"type": "standardization", "loc": [0.0]})

    class Scaled(pf.transforms.Affine):  # a subclass of a registered class is not registered
        pass

    with pytest.raises(ValueError, match="Scaled cannot be written.*serializable"):
        specs.to_spec(Scaled(2))


def test_arguments_are_recorded_by_the_outermost_constructor_and_copied():
    scale = torch.tensor([2.0, 3.0])
    layer = pf.transforms.Affine(2, scale=scale)
    scale.fill_(-1.0)  # the caller's tensor changes; the record keeps the value it was built with
    record = specs.to_spec(layer)
    assert record["type"] == "affine" and record["shape"] == 2 and record["trainable"] is True
    assert record["scale"] == {"__tensor__": {"dtype": "float32", "shape": [2],
                                              "values": [2.0, 3.0]}}
    again = specs.from_spec(json.loads(json.dumps(record)))
    torch.testing.assert_close(again.scale, torch.tensor([2.0, 3.0]))
    logit = pf.transforms.Logit(-1.0, 2.0, shape=3)  # an Inverse subclass: its own record
    assert specs.to_spec(logit) == {"type": "box-logit", "low": -1.0, "high": 2.0, "shape": 3}
    chain = pf.Chain(iter([pf.transforms.Reverse(2)]))  # an iterator is kept as a list
    assert specs.to_spec(chain)["transforms"][0]["__object__"]["type"] == "reverse"


def test_values_outside_json_are_tagged_and_restored():
    record = specs.to_spec(pf.transforms.Sigmoid(torch.tensor([-1.0, 0.0]), 1.0, shape=2))
    assert record["type"] == "sigmoid"  # its explicit record format

    @specs.serializable("tests-values")
    class Values(torch.nn.Module):
        def __init__(self, limit: float, table: torch.Tensor, dtype: torch.dtype,
                     options: dict) -> None:
            super().__init__()
            self.limit, self.table, self.dtype, self.options = limit, table, dtype, options

    made = Values(-math.inf, torch.tensor([[math.nan, 1]], dtype=torch.float64), torch.int64,
                  {"steps": (1, 2)})
    record = json.loads(json.dumps(specs.to_spec(made), allow_nan=False))
    assert record["limit"] == {"__float__": "-inf"}
    assert record["table"]["__tensor__"]["values"] == ["nan", 1.0]
    again = specs.from_spec(record)
    assert again.limit == -math.inf and again.dtype is torch.int64
    assert again.table.dtype == torch.float64 and again.table.shape == (1, 2)
    assert math.isnan(again.table[0, 0]) and again.options == {"steps": [1, 2]}
    with pytest.raises(ValueError, match="shared by two places"):
        affine = pf.transforms.Affine(2)
        specs.to_spec(pf.Chain([affine, affine]))


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
