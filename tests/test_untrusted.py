"""Untrusted files beyond tests/test_checkpoint.py and tests/test_data.py: pickle payloads in
data files, forged-but-self-consistent checkpoints, and malformed tables through the CLI.

Every refusal is a one-line ``ValueError`` (the CLI: one ``pushforward: error:`` line, exit 1);
nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch

import pushforward as pf
from pushforward.training import checkpoint as ckpt


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _one_line(error_info) -> None:
    assert "\n" not in str(error_info.value).strip()


def test_npy_with_a_pickle_payload_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    f = tmp_path / "evil.npy"
    np.save(f, np.array([_Evil(str(marker)), 1.0], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError) as info:
        pf.load_dataset(str(f), seed=0)
    _one_line(info)
    raw = tmp_path / "raw.npy"
    raw.write_bytes(pickle.dumps(_Evil(str(marker))))  # a bare pickle named .npy
    with pytest.raises(ValueError) as info:
        pf.load_dataset(str(raw), seed=0)
    _one_line(info)
    assert not marker.exists()


@pytest.mark.parametrize("name, content", [
    ("huge.csv", "1e308,1\n-1e308,2\n" * 20),         # finite, but its variance overflows
    ("ragged.csv", "1,2\n3\n4,5,6\n" * 5),
    ("inf.csv", "1,2\ninf,3\n" * 10),
    ("binary.csv", bytes(range(256)) * 8),
    ("latin1.csv", "é,1\n".encode("latin-1") * 10),
    ("empty.csv", ""),
    ("onerow.csv", "1,2\n"),
    ("truncated.npy", None),
    ("complex.npy", np.ones((20, 2), complex)),
    ("empty.npy", np.zeros((0, 2))),
    ("inf.npy", np.full((20, 2), np.inf)),
    ("strings.npy", np.array([["a", "b"]] * 20)),
])
def test_malformed_tables_are_refused_in_one_line(tmp_path, name, content):
    f = tmp_path / name
    if content is None:
        np.save(f, np.ones((50, 3)))
        f.write_bytes(f.read_bytes()[:90])
    elif isinstance(content, np.ndarray):
        np.save(f, content)
    elif isinstance(content, bytes):
        f.write_bytes(content)
    else:
        f.write_text(content)
    with pytest.raises(ValueError) as info:
        pf.load_dataset(str(f), seed=0)
    _one_line(info)


def _forge(folder, edit):
    """Rewrite a checkpoint with an edited config and a recomputed checksum (a forgery that
    passes the integrity check), so only the semantic checks can refuse it."""
    tensors, config = ckpt.read_tensors(folder / ckpt.MODEL_FILE)
    edit(config, tensors)
    ckpt.write_tensors(folder / ckpt.MODEL_FILE, tensors, config)
    (folder / ckpt.CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))


@pytest.mark.parametrize("edit, match", [
    (lambda c, t: c.update(flow="os.system"), "unknown|cannot rebuild"),
    (lambda c, t: c["options"].update(features=-3), "cannot rebuild"),
    (lambda c, t: c["options"].update(features=5), "shape|match"),
    (lambda c, t: c["options"].update(__class__="x"), "cannot rebuild"),
    (lambda c, t: c.update(dtype="complex64"), "dtype"),
    (lambda c, t: c.update(options=[1, 2]), "options"),
    (lambda c, t: t.update({k: t[k] * math_nan()
                            for k in [k for k in t if t[k].is_floating_point()][:1]}), "NaN|nan"),
    (lambda c, t: t.update({next(iter(t)): torch.zeros(7, 7)}), "shape"),
    (lambda c, t: t.pop(next(iter(t))), "missing"),
])
def test_forged_checkpoints_are_refused(tmp_path, edit, match):
    torch.manual_seed(0)
    flow = pf.flows.build("maf", features=2, transforms=1, hidden=[8])
    pf.save(flow, tmp_path)
    _forge(tmp_path, edit)
    with pytest.raises(ValueError, match=match) as info:
        pf.load(tmp_path)
    _one_line(info)


def math_nan():
    return float("nan")


def test_cli_reports_forged_checkpoint_in_one_line(tmp_path, capsys):
    from pushforward.cli import main

    torch.manual_seed(0)
    pf.save(pf.flows.build("maf", features=2, transforms=1, hidden=[8]), tmp_path)
    _forge(tmp_path, lambda c, t: c["options"].update(features=4))
    assert main(["sample", "--checkpoint", str(tmp_path), "-n", "3",
                 "--out", str(tmp_path / "s.npy")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pushforward: error:")
    assert not (tmp_path / "s.npy").exists()
    assert os.listdir(tmp_path)
