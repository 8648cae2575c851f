"""The data helpers and ``fit`` compose: array-likes are converted to the flow's dtype."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pushforward as pf


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_fit_accepts_the_toy_arrays(dtype):
    train = pf.data.toy("moons", 256)
    assert isinstance(train, np.ndarray)
    torch.manual_seed(0)
    flow = pf.flows.MAF(2, transforms=1, hidden=(8,)).to(dtype)
    history = pf.fit(flow, train, val=train[:64].tolist(), steps=5, batch_size=64,
                     progress=False)
    assert history.steps == 5 and np.isfinite(history.val_nll).all()
    assert all(p.dtype == dtype for p in flow.parameters())


def test_fit_accepts_an_array_pair_with_context():
    rng = np.random.default_rng(0)
    x, context = rng.normal(size=(128, 2)), rng.normal(size=(128, 3)).astype(np.float32)
    flow = pf.flows.MAF(2, 3, transforms=1, hidden=(8,))
    history = pf.fit(flow, (x, context), steps=3, batch_size=32, progress=False)
    assert history.steps == 3


def test_fit_still_refuses_what_is_not_numbers():
    flow = pf.flows.MAF(2, transforms=1, hidden=(8,))
    with pytest.raises(TypeError, match="train must be"):
        pf.fit(flow, np.array(["a", "b"]), steps=1, progress=False)
    with pytest.raises(ValueError, match="NaN"):
        pf.fit(flow, np.full((4, 2), np.nan), steps=1, progress=False)
