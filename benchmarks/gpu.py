"""Throughput on an accelerator: pushforward beside zuko and nflows, eager, compiled, CUDA graphs.

Run by ``benchmarks/gpu.sh`` (which also runs the test kit on the device)::

    python benchmarks/gpu.py --device cuda               # Markdown + JSON next to this script
    python benchmarks/gpu.py --device cpu --quick        # dry run of the Python on a CPU

The models are ``benchmarks/throughput.py``'s (same layers, hidden widths and bins for every
library; parameter counts printed). For MAF, RealNVP and NSF at d ∈ {2, 16, 64}, batch 1024, it
times ``log_prob`` without gradients, a training step (``−log_prob(x).mean()``, backward, plain
``torch.optim.Adam``) and sampling, three ways:

* ``eager``: every library as it is;
* ``compile``: ``torch.compile`` of the loss and of ``log_prob`` (warm-up seconds reported);
* ``graph``: the whole training step and ``log_prob`` captured once in a CUDA graph and replayed
  (``Adam(capturable=True)``, validation off: a capture cannot read values). Only for small
  flows (d ≤ ``--graph-max-d``), where launch overhead dominates; CUDA only.

A mode that fails for a library (e.g. a graph capture that meets a host synchronisation) is
recorded with its error, not hidden. Times are medians over ``--repeats`` measurements with
``torch.cuda.synchronize`` around each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import throughput as tp  # noqa: E402

import pushforward as pf  # noqa: E402

MODES = ("eager", "compile", "graph")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], object], device: torch.device, repeats: int, iters: int) -> float:
    """Median seconds per call."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        _sync(device)
        times.append((time.perf_counter() - start) / iters)
    return statistics.median(times)


def _eager(model: tp.Model, x: torch.Tensor) -> dict[str, Callable[[], object]]:
    return tp.operations(model, x)


def _compiled(model: tp.Model, x: torch.Tensor) -> dict[str, Callable[[], object]]:
    log_prob = torch.compile(model.log_prob)
    optimizer = torch.optim.Adam(model.module.parameters(), lr=1e-4)

    @torch.compile
    def loss_fn(batch: torch.Tensor) -> torch.Tensor:
        return -model.log_prob(batch).mean()

    def train_step() -> object:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(x)
        loss.backward()
        optimizer.step()
        return loss

    def lp() -> object:
        with torch.no_grad():
            return log_prob(x)

    return {"log_prob": lp, "train_step": train_step}


def _graphed(model: tp.Model, x: torch.Tensor) -> dict[str, Callable[[], object]]:
    """The training step and log_prob captured in CUDA graphs (static input ``x``)."""
    optimizer = torch.optim.Adam(model.module.parameters(), lr=1e-4, capturable=True)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm-up on a side stream (Adam state, cuBLAS handles)
            optimizer.zero_grad(set_to_none=True)
            (-model.log_prob(x).mean()).backward()
            optimizer.step()
    torch.cuda.current_stream().wait_stream(stream)
    step_graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)
    with torch.cuda.graph(step_graph):
        loss = -model.log_prob(x).mean()
        loss.backward()
        optimizer.step()
    lp_graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(lp_graph):
        model.log_prob(x)
    return {"log_prob": lp_graph.replay, "train_step": step_graph.replay}


def bench(flow: str, d: int, impls: list[str], modes: list[str], cfg: argparse.Namespace,
          device: torch.device) -> list[dict]:
    records = []
    for impl in impls:
        build = tp.build_ours if impl == "pushforward" else tp.BUILDERS[impl]
        for mode in modes:
            record = {"flow": flow, "d": d, "impl": impl, "mode": mode}
            if mode == "graph" and (device.type != "cuda" or d > cfg.graph_max_d):
                continue
            torch.manual_seed(0)
            model = build(flow, d, cfg)
            model.module.to(device)
            record["params"] = model.params
            x = torch.randn(cfg.batch, d, device=device)
            # Value checks read tensors (a graph break for compile, illegal in a capture).
            checks = mode == "eager" and not cfg.no_validation
            try:
                previous = pf.is_validating()
                pf.set_validation(checks)
                start = time.perf_counter()
                ops = {"eager": _eager, "compile": _compiled, "graph": _graphed}[mode](model, x)
                for fn in ops.values():
                    fn()  # the first call builds (compile) or checks (graph)
                    _sync(device)
                record["warmup_s"] = time.perf_counter() - start
                for name, fn in ops.items():
                    seconds = _time(fn, device, cfg.repeats, cfg.iters)
                    record[name] = cfg.batch / seconds  # samples per second
            except Exception as err:  # noqa: BLE001 - recorded in the results, not hidden
                record["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
            finally:
                pf.set_validation(previous)
            record["validation"] = checks
            print(json.dumps(record), flush=True)
            records.append(record)
    return records


def markdown(records: list[dict], meta: dict) -> str:
    lines = [
        "# GPU throughput (samples/s, higher is better)",
        "",
        f"{meta['device_name']}, torch {meta['torch']}, batch {meta['batch']}, "
        f"{meta['transforms']} transforms, hidden {meta['hidden']}×{meta['layers']}; "
        f"medians of {meta['repeats']} × {meta['iters']} calls. pushforward's validation is "
        f"{'off' if meta['no_validation'] else 'on'} in eager mode, off when compiled or "
        "captured (its value checks read tensors).",
        "",
        "| flow | d | library | mode | params | log_prob | train step | sample | warm-up (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(r: dict, key: str) -> str:
        return f"{r[key]:,.0f}" if key in r else "—"

    for r in records:
        if "error" in r:
            lines.append(f"| {r['flow']} | {r['d']} | {r['impl']} | {r['mode']} | "
                         f"{r.get('params', '')} | failed: {r['error']} | | | |")
            continue
        lines.append(f"| {r['flow']} | {r['d']} | {r['impl']} | {r['mode']} | {r['params']} | "
                     f"{cell(r, 'log_prob')} | {cell(r, 'train_step')} | {cell(r, 'sample')} | "
                     f"{r['warmup_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--flows", nargs="+", default=list(tp.FLOWS), choices=tp.FLOWS)
    parser.add_argument("--dims", nargs="+", type=int, default=[2, 16, 64])
    parser.add_argument("--peers", nargs="+", default=["zuko", "nflows"], choices=tp.PEERS)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--transforms", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--bins", type=int, default=8)
    parser.add_argument("--bound", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20, help="calls per measurement")
    parser.add_argument("--graph-max-d", type=int, default=16)
    parser.add_argument("--no-validation", action="store_true")
    parser.add_argument("--quick", action="store_true",
                        help="dry run: d=2, MAF only, eager, one short repeat")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("gpu"))
    cfg = parser.parse_args(argv)
    if cfg.quick:
        cfg.flows, cfg.dims, cfg.modes, cfg.repeats, cfg.iters = ["maf"], [2], ["eager"], 1, 2
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu.py: --device cuda but torch.cuda.is_available() is False")
    impls = ["pushforward", *tp.available_peers(cfg.peers)]
    records = []
    for flow in cfg.flows:
        for d in cfg.dims:
            records += bench(flow, d, impls, cfg.modes, cfg, device)
    meta = {
        "device": str(device), "torch": torch.__version__,
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                        else f"{device.type} (dry run, not a GPU measurement)"),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        **{k: getattr(cfg, k) for k in ("batch", "transforms", "hidden", "layers", "bins",
                                        "repeats", "iters", "no_validation")},
    }
    cfg.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "records": records},
                                                       indent=2) + "\n")
    cfg.out.with_suffix(".md").write_text(markdown(records, meta))
    print(markdown(records, meta))


if __name__ == "__main__":
    main()
