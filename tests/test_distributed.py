"""DDP under torchrun: two CPU processes (gloo) end with identical parameters and a lower loss."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from processes import child_env

from pushforward.training import checkpoint as ckpt
from pushforward.training import distributed as ddp

WORKER = textwrap.dedent("""
    import json, sys
    import torch
    import pushforward as pf
    from pushforward.training import distributed as ddp, fit
    from pushforward.training.checkpoint import write_tensors
    from pushforward.transforms import ActNorm, LULinear

    torch.set_num_threads(1)
    assert ddp.init() and ddp.world_size() == 2
    out = sys.argv[1]
    torch.manual_seed(100 + ddp.rank())  # different initial weights: DDP must sync them
    flow = pf.flows.build("maf", features=2, transforms=2, hidden=[16, 16])
    flow = pf.Flow([ActNorm(2), LULinear(2), flow.transform], flow.base)
    flow.config = {"flow": "maf", "options": {}}
    x = torch.as_tensor(pf.data.toy("moons", 4096, seed=0), dtype=torch.float32) * 3 + 5
    history = fit(flow, x, x[:512], steps=60, batch_size=64, lr=1e-2, progress=False,
                  checkpoint_dir=out + "/ckpt")
    params = {k: v for k, v in flow.state_dict().items()}
    write_tensors(f"{out}/rank{ddp.rank()}.safetensors", params, history.to_dict())
    ddp.barrier()
    ddp.shutdown()
""")


def _torchrun(*args):
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         *args], capture_output=True, text=True, env=child_env(), timeout=600)


def test_helpers_without_a_process_group():
    assert not ddp.is_active() and ddp.rank() == 0 and ddp.world_size() == 1
    assert ddp.is_main() and ddp.device() == torch.device("cpu")
    t = torch.tensor([1.0, 2.0])
    assert ddp.all_reduce_sum(t) is t
    assert ddp.broadcast_float(3.5) == 3.5
    assert not ddp.init()  # not launched by torchrun: no-op


def test_two_processes_train_identically(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    result = _torchrun(str(script), str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    a, history_a = ckpt.read_tensors(tmp_path / "rank0.safetensors")
    b, history_b = ckpt.read_tensors(tmp_path / "rank1.safetensors")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert history_a["step_nll"] == history_b["step_nll"]
    losses = history_a["step_nll"]
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.1
    assert history_a["val_nll"][-1] < history_a["val_nll"][0]
    # rank 0 alone wrote the checkpoint folder
    assert (tmp_path / "ckpt" / ckpt.STATE_FILE).is_file()


@pytest.mark.slow
def test_torchrun_cli(tmp_path):
    out = tmp_path / "run"
    result = _torchrun("-m", "pushforward", "train", "--dataset", "moons", "--flow", "maf",
                       "--steps", "80", "--out", str(out), "--no-progress",
                       "--option", "transforms=2", "--option", "hidden=[32,32]")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "on 2 processes" in result.stdout
    assert result.stdout.count("test NLL") == 1  # rank 0 prints
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_nll"] < metrics["baseline_nll"] - 0.5
    for name in ("loss.png", "samples.png", "density.png", "model.safetensors"):
        assert (out / name).is_file()
