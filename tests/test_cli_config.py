"""``pushforward train --config FILE.json|yaml`` (issue 17): a run re-created from its own
``config.json`` is bit-identical; command-line flags override the file; bad keys and values are
refused with a message naming them."""

import json

import pytest
import torch
from safetensors.torch import load_file

from pushforward import cli
from pushforward.cli_config import ConfigError, parse_args, read_config_file

TINY = ["--dataset", "moons", "--size", "400", "--steps", "4", "--batch-size", "64",
        "--option", "transforms=1", "--option", "hidden=[8]", "--no-progress", "--threads", "1"]


def _parse(argv):
    return parse_args(cli._parser(), argv)


def test_a_run_recreated_from_its_config_is_bit_identical(tmp_path, capsys):
    first, again = tmp_path / "first", tmp_path / "again"
    assert cli.main(["train", *TINY, "--seed", "3", "--out", str(first)]) == 0
    assert cli.main(["train", "--config", str(first / "config.json"), "--out", str(again),
                     "--no-progress", "--threads", "1"]) == 0
    a, b = load_file(first / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((first / "config.json").read_text()) == json.loads(
        (again / "config.json").read_text())
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (first, again)]
    assert metrics[0]["test_nll"] == metrics[1]["test_nll"]
    assert json.loads((again / "config.json").read_text())["train"]["seed"] == 3


def test_command_line_flags_override_the_file(tmp_path):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"flow": "maf", "steps": 500, "lr": 0.01, "seed": 7,
                                  "option": {"transforms": 3, "hidden": [32, 32]},
                                  "no-progress": True, "schedule": "none"}))
    args = _parse(["train", "--config", str(config)])
    assert (args.flow, args.steps, args.epochs, args.lr, args.seed) == ("maf", 500, None, 0.01, 7)
    assert args.option == [("transforms", 3), ("hidden", [32, 32])]
    assert args.no_progress is True and args.schedule == "none"
    args = _parse(["train", "--config", str(config), "--lr", "0.002", "--flow", "nsf",
                   "--option", "bins=4"])
    assert (args.flow, args.lr, args.seed) == ("nsf", 0.002, 7)
    assert args.option[-1] == ("bins", 4)
    # --epochs on the command line replaces the file's --steps (mutually exclusive flags)
    args = _parse(["train", "--config", str(config), "--epochs", "2"])
    assert (args.steps, args.epochs) == (None, 2)
    args = _parse(["train", "--config", str(config), "--steps=9"])
    assert (args.steps, args.epochs) == (9, None)


def test_yaml_config(tmp_path):
    pytest.importorskip("yaml")
    config = tmp_path / "run.yaml"
    config.write_text("flow: realnvp\nbatch-size: 32\nsteps: 40\noption:\n  - transforms=2\n"
                      "resume: false\n")
    args = _parse(["train", "--config", str(config)])
    assert (args.flow, args.batch_size, args.steps) == ("realnvp", 32, 40)
    assert args.option == [("transforms", 2)] and args.resume is False


@pytest.mark.parametrize(("content", "message"), [
    ({"flow": "maf", "stpes": 5}, "unknown key 'stpes'"),
    ({"steps": "many"}, "steps"),
    ({"steps": 0}, "steps"),
    ({"steps": True}, "steps"),
    ({"schedule": "linear"}, "schedule must be one of"),
    ({"no_progress": "yes"}, "true or false"),
    ({"steps": 5, "epochs": 2}, "cannot both be set"),
    ({"lr": [0.1]}, "one value"),
    ([1, 2], "mapping"),
])
def test_bad_config_is_refused_by_name(tmp_path, content, message, capsys):
    config = tmp_path / "bad.json"
    config.write_text(json.dumps(content))
    with pytest.raises(ConfigError, match=message):
        _parse(["train", "--config", str(config)])
    assert cli.main(["train", "--config", str(config)]) == 1  # one line on stderr, exit 1
    assert "--config" in capsys.readouterr().err


def test_unreadable_files_and_other_commands(tmp_path, capsys):
    with pytest.raises(ConfigError, match="no such file"):
        read_config_file(tmp_path / "missing.json")
    (tmp_path / "run.toml").write_text("flow = 'maf'\n")
    with pytest.raises(ConfigError, match=r"\.json, \.yaml or \.yml"):
        read_config_file(tmp_path / "run.toml")
    (tmp_path / "broken.json").write_text("{flow: maf")
    with pytest.raises(ConfigError, match="invalid JSON"):
        read_config_file(tmp_path / "broken.json")
    (tmp_path / "ok.json").write_text("{}")
    assert cli.main(["datasets", "--config", str(tmp_path / "ok.json")]) == 2  # not a flag there
