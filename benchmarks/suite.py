"""Performance suite: pushforward beside zuko, nflows and normflows, all in one process.

One command::

    nice -n 10 python benchmarks/suite.py                  # full suite: Markdown + JSON
    python benchmarks/suite.py --parts speed --dims 16      # a part, a subset
    python benchmarks/suite.py --compile maf:16 nsf:16     # + torch.compile column (slow to build)

Three parts, each comparing the same architecture (layers, hidden widths, bins; the parameter
counts are printed and must agree) with ``torch.set_num_threads`` fixed (``--threads``, default 1):

* ``speed``: ``log_prob`` without gradients, a training step (``-log_prob(x).mean()``, backward,
  Adam step) and sampling, for MAF, RealNVP-style affine coupling and autoregressive NSF at
  d ∈ {2, 16, 64}, batch 1024. The measurement loop of ``benchmarks/throughput.py`` is reused:
  implementations alternate inside every repeat (order reversed on odd repeats), each measurement
  lasts ``--min-time`` seconds, and the table reports the median with its min–max spread over
  ``--repeats`` repeats, plus our speed over the FASTEST peer (> 1: ours is faster). A
  ``matmuls`` row times the conditioners' dense products alone (``matmul_bound``), in the same
  alternation; fastest-peer time over that time is the bound on our ratio that removing every
  other cost could reach, and a third table gives our ratio beside it and as a fraction of it.
* ``memory``: peak memory of one training step (after a warm-up step, so the Adam state exists
  before and after and is not counted). ``tracemalloc`` does not see torch's CPU allocations, so
  the step runs under ``torch.profiler`` with ``profile_memory=True``; every operator records the
  bytes it allocated and freed itself (``self_cpu_memory_usage``, frees are negative), and the
  peak is the running maximum of their cumulative sum in start-time order. It counts tensors
  only (activations kept for backward, gradients, temporaries), not the Python heap or allocator
  caching, and is deterministic for a given model, so one run suffices.
* ``nll``: test NLL after the same number of Adam steps (same learning rate, batch size, seed and
  data order) on two 2-D toys (moons, 8 Gaussians) and on the 8×8 digits in bits/dim. Digits
  are dequantised, ``u = (k + ε)/17``, and mapped to ``y = logit(α + (1 − 2α)u)`` outside the flow
  for every implementation alike; bits/dim adds the exact log-Jacobian of that map and
  ``D log 17`` (``pushforward.data.bits_per_dim``). One run per seed (``--seeds``, default 0 1 2:
  seed of the weights, the data split and the batches); the table gives the mean and min–max.

normflows' ``MaskedAffineAutoregressive`` is (like nflows') parallel in its ``forward``, which
normflows uses for sampling, so as built by ``throughput.py`` it is an IAF (sequential density);
the suite wraps it in ``normflows.flows.Reverse`` so that every "MAF" has a one-pass density and a
sequential sampler, as in the paper.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import throughput as tp  # noqa: E402

import pushforward as pf  # noqa: E402

PARTS = ("speed", "memory", "nll")
TOYS = ("moons", "8gaussians")


# -- models ---------------------------------------------------------------------------------------


def build(impl: str, flow: str, d: int, cfg: argparse.Namespace) -> tp.Model:
    """Our flow or a peer's, from ``throughput.py``'s builders (normflows' MAF made a MAF)."""
    if impl == "pushforward":
        return tp.build_ours(flow, d, cfg)
    model = tp.BUILDERS[impl](flow, d, cfg)
    if impl == "normflows" and flow == "maf":
        import normflows as nf

        layers = model.module.flows
        for i, layer in enumerate(layers):
            if isinstance(layer, nf.flows.MaskedAffineAutoregressive):
                layers[i] = nf.flows.Reverse(layer)
        model = tp.Model("normflows", model.module, model.log_prob, model.sample)
    return model


def compiled(model: tp.Model, x: Tensor) -> dict[str, object]:
    """Our flow's operations through ``pushforward.training.compiled`` (Inductor)."""
    from pushforward.training.compiled import compile_log_prob, compile_train_step

    flow = model.module
    log_prob = compile_log_prob(flow)
    step = compile_train_step(flow, torch.optim.Adam(flow.parameters(), lr=1e-4))

    def lp() -> object:
        with torch.no_grad():
            return log_prob(x)

    return {"log_prob": lp, "train_step": lambda: step(x)}


# -- the matmuls-only bound ----------------------------------------------------------------------


def conditioner_shapes(module: torch.nn.Module) -> list[list[tuple[int, int]]]:
    """``(out, in)`` of every dense layer of every conditioner of our flow, per conditioner."""
    shapes = []
    for sub in module.modules():
        plan = getattr(sub, "_plan", None)
        if plan is not None:
            layers = [tuple(shape) for _, shape, _, _ in plan.slots]
            if plan.context_slot is not None:
                layers[0] = (layers[0][0], layers[0][1] + plan.context_slot[1][1])
            shapes.append(layers)
    return shapes


def matmul_bound(model: tp.Model, batch: int) -> dict[str, object]:
    """The dense products of the conditioners and nothing else: the forward ``addmm`` of every
    layer (log_prob); plus, for a training step, every weight gradient ``gᵀh`` and every input
    gradient ``g W`` (but the first layer's of the first conditioner, whose input is the data).
    Shapes are our conditioners', equal to the peers' (the parameter counts agree). Every
    library performs at least these products, so fastest-peer time / this time bounds the
    speed-up that overhead removal can give."""
    torch.manual_seed(0)
    stacks = []
    for layers in conditioner_shapes(model.module):
        stacks.append([(torch.randn(batch, i), torch.randn(o, i), torch.randn(o),
                        torch.randn(batch, o)) for o, i in layers])

    def log_prob() -> object:
        for stack in stacks:
            for h, w, b, _ in stack:
                torch.addmm(b, h, w.t())
        return None

    def train_step() -> object:
        for n, stack in enumerate(stacks):
            for k, (h, w, b, g) in enumerate(stack):
                torch.addmm(b, h, w.t())
                torch.mm(g.t(), h)
                if n or k:
                    torch.mm(g, w)
        return None

    return {"log_prob": log_prob, "train_step": train_step}


# -- speed ----------------------------------------------------------------------------------------


def speed_case(flow: str, d: int, impls: list[str], cfg: argparse.Namespace) -> list[dict]:
    torch.manual_seed(0)
    x = torch.randn(cfg.batch, d)
    models = []
    for impl in impls:
        try:
            models.append(build(impl, flow, d, cfg))
        except Exception as err:  # a peer's API changed: report and go on
            print(f"[skip] {impl} {flow} d={d}: {type(err).__name__}: {err}", file=sys.stderr)
    fns = {m.impl: tp.operations(m, x) for m in models}
    params = {m.impl: m.params for m in models}
    if cfg.bound_rows and models and models[0].impl == "pushforward":
        fns["matmuls"] = matmul_bound(models[0], cfg.batch)
        params["matmuls"] = models[0].params
    if f"{flow}:{d}" in cfg.compile:
        start = time.perf_counter()
        twin = build("pushforward", flow, d, cfg)
        twin.module.load_state_dict(models[0].module.state_dict())
        fns["pushforward+compile"] = compiled(twin, x)
        params["pushforward+compile"] = twin.params
        for fn in fns["pushforward+compile"].values():
            fn()
        print(f"  compiled {flow} d={d} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    records = []
    for op in tp.OPS:
        names = [n for n in fns if op in fns[n]]
        times, iterations = tp.time_alternating([fns[n][op] for n in names], cfg)
        for name, t, n in zip(names, times, iterations):
            med = statistics.median(t)
            records.append({
                "flow": flow, "d": d, "impl": name, "op": op, "params": params[name],
                "batch": cfg.batch, "iterations": n, "seconds": t, "median_s": med,
                "throughput": cfg.batch / med, "throughput_min": cfg.batch / max(t),
                "throughput_max": cfg.batch / min(t),
            })
        print(f"  {flow} d={d} {op}: " + ", ".join(
            f"{r['impl']} {r['throughput'] / 1e3:.1f}k/s" for r in records[-len(names):]),
            file=sys.stderr, flush=True)
    return records


# -- memory ---------------------------------------------------------------------------------------


def peak_train_memory(model: tp.Model, d: int, batch: int) -> int:
    """Peak bytes held by tensors during one training step (see the module docstring)."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    step = tp.operations(model, torch.randn(batch, d))["train_step"]
    step()  # Adam state and lazy buffers exist before the measured step
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    total = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        total += event.self_cpu_memory_usage
        peak = max(peak, total)
    return peak


def memory_case(flow: str, d: int, impls: list[str], cfg: argparse.Namespace) -> list[dict]:
    records = []
    for impl in impls:
        torch.manual_seed(0)
        model = build(impl, flow, d, cfg)
        peak = peak_train_memory(model, d, cfg.batch)
        records.append({"flow": flow, "d": d, "impl": impl, "params": model.params,
                        "batch": cfg.batch, "peak_bytes": peak})
    print(f"  memory {flow} d={d}: " + ", ".join(
        f"{r['impl']} {r['peak_bytes'] / 2**20:.2f} MiB" for r in records), file=sys.stderr)
    return records


# -- NLL at equal budget --------------------------------------------------------------------------

_ALPHA = 0.05


def nll_data(name: str, seed: int) -> tuple[Tensor, Tensor, float]:
    """Train and test sets (float32) and the per-sample term that turns an NLL into the target
    unit: 0 for the toys (nats), ``D log 17 - log|det dy/du|`` handled per sample for digits."""
    if name in TOYS:
        train = torch.as_tensor(pf.data.toy(name, 20000, seed=seed), dtype=torch.float32)
        test = torch.as_tensor(pf.data.toy(name, 5000, seed=seed + 1), dtype=torch.float32)
        return train, test, 0.0
    images, _, levels = pf.data.images.digits()
    k = torch.as_tensor(images, dtype=torch.float32).flatten(1)
    order = torch.randperm(len(k), generator=torch.Generator().manual_seed(seed))
    return k[order[:1497]], k[order[1497:]], float(levels)


def _logit(k: Tensor, levels: float, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Dequantise and logit-map pixel levels; returns ``y`` and ``log|det dy/du|`` per image."""
    u = (k + torch.rand(k.shape, generator=generator)) / levels
    p = _ALPHA + (1 - 2 * _ALPHA) * u
    y = torch.log(p) - torch.log1p(-p)
    log_det = (math.log(1 - 2 * _ALPHA) - torch.log(p) - torch.log1p(-p)).sum(-1)
    return y, log_det


def nll_case(flow: str, name: str, impls: list[str], cfg: argparse.Namespace,
             seed: int) -> list[dict]:
    """Every implementation trained from ``seed`` (weights, data split, batches) and tested."""
    train, test, levels = nll_data(name, seed)
    d = train.shape[1]
    if levels:
        test_y, test_log_det = _logit(test, levels, torch.Generator().manual_seed(seed))
    records = []
    for impl in impls:
        torch.manual_seed(seed)
        model = build(impl, flow, d, cfg)
        optimizer = torch.optim.Adam(model.module.parameters(), lr=cfg.lr)
        batches = torch.Generator().manual_seed(seed)
        start = time.perf_counter()
        for _ in range(cfg.steps):
            x = train[torch.randint(len(train), (cfg.nll_batch,), generator=batches)]
            if levels:
                x, _ = _logit(x, levels, batches)
            optimizer.zero_grad(set_to_none=True)
            loss = -model.log_prob(x).mean()
            loss.backward()
            optimizer.step()
        seconds = time.perf_counter() - start
        with torch.no_grad():
            if levels:
                log_pu = model.log_prob(test_y) + test_log_det
                value = float(pf.data.bits_per_dim(-log_pu.mean(), d, int(levels)))
            else:
                value = float(-model.log_prob(test).mean())
        records.append({"flow": flow, "data": name, "impl": impl, "params": model.params,
                        "seed": seed, "steps": cfg.steps, "batch": cfg.nll_batch, "lr": cfg.lr,
                        "value": value, "unit": "bits/dim" if levels else "nats",
                        "train_seconds": seconds})
    print(f"  nll {flow} {name} seed {seed}: " + ", ".join(
        f"{r['impl']} {r['value']:.4f}" for r in records), file=sys.stderr, flush=True)
    return records


# -- report ---------------------------------------------------------------------------------------


def _fmt(v: float) -> str:
    return f"{v / 1e3:.1f}k" if v >= 1e3 else f"{v:.0f}"


def speed_table(records: list[dict], peers: list[str]) -> str:
    index = {(r["flow"], r["d"], r["impl"], r["op"]): r for r in records}
    keys = sorted({(r["flow"], r["d"]) for r in records},
                  key=lambda k: (tp.FLOWS.index(k[0]), k[1]))
    impls = ["pushforward", "pushforward+compile", *peers, "matmuls"]
    lines = ["| flow | d | impl | params | log_prob /s | train step /s | sample /s |",
             "|---|---|---|---|---|---|---|"]
    bound_lines = ["| flow | d | log_prob: ours / fastest | matmuls-only bound | fraction "
                   "| train step: ours / fastest | matmuls-only bound | fraction |",
                   "|---|---|---|---|---|---|---|---|"]
    ratio_lines = ["| flow | d | fastest peer: log_prob | train step | sample "
                   "| ours / fastest: log_prob | train step | sample |",
                   "|---|---|---|---|---|---|---|---|"]
    for flow, d in keys:
        for impl in impls:
            if not any((flow, d, impl, op) in index for op in tp.OPS):
                continue
            cells = [flow, str(d), impl, str(next(
                index[(flow, d, impl, op)]["params"] for op in tp.OPS
                if (flow, d, impl, op) in index))]
            for op in tp.OPS:
                r = index.get((flow, d, impl, op))
                cells.append("—" if r is None else f"{_fmt(r['throughput'])} "
                             f"({_fmt(r['throughput_min'])}–{_fmt(r['throughput_max'])})")
            lines.append("| " + " | ".join(cells) + " |")
        best, ratio = [], []
        for op in tp.OPS:
            found = [index[(flow, d, p, op)] for p in peers if (flow, d, p, op) in index]
            if not found or (flow, d, "pushforward", op) not in index:
                best.append("—")
                ratio.append("—")
                continue
            top = max(found, key=lambda r: r["throughput"])
            ours = index[(flow, d, "pushforward", op)]["throughput"]
            best.append(top["impl"])
            ratio.append(f"{ours / top['throughput']:.2f}×")
        ratio_lines.append(f"| {flow} | {d} | " + " | ".join(best + ratio) + " |")
        bound_line = bound_row(index, flow, d, peers)
        if bound_line:
            bound_lines.append(bound_line)
    out = "\n".join(lines) + "\n\n" + "\n".join(ratio_lines)
    if len(bound_lines) > 2:
        out += "\n\n" + "\n".join(bound_lines)
    return out


def bound_row(index: dict, flow: str, d: int, peers: list[str]) -> str | None:
    """Fastest peer / matmuls-only (the bound) and our ratio as a fraction of it."""
    cells = []
    for op in ("log_prob", "train_step"):
        bound = index.get((flow, d, "matmuls", op))
        ours = index.get((flow, d, "pushforward", op))
        found = [index[(flow, d, p, op)] for p in peers if (flow, d, p, op) in index]
        if bound is None or ours is None or not found:
            return None
        top = max(r["throughput"] for r in found)
        ratio, limit = ours["throughput"] / top, bound["throughput"] / top
        cells += [f"{ratio:.2f}×", f"{limit:.2f}×", f"{ratio / limit:.2f}"]
    return f"| {flow} | {d} | " + " | ".join(cells) + " |"


def memory_table(records: list[dict], peers: list[str]) -> str:
    index = {(r["flow"], r["d"], r["impl"]): r for r in records}
    keys = sorted({(r["flow"], r["d"]) for r in records},
                  key=lambda k: (tp.FLOWS.index(k[0]), k[1]))
    impls = ["pushforward", *peers]
    lines = ["| flow | d | params | " + " | ".join(f"{i} MiB" for i in impls)
             + " | ours / smallest peer |", "|---|---|---|" + "---|" * (len(impls) + 1)]
    for flow, d in keys:
        row = [index.get((flow, d, i)) for i in impls]
        cells = ["—" if r is None else f"{r['peak_bytes'] / 2**20:.2f}" for r in row]
        peer_peaks = [r["peak_bytes"] for r in row[1:] if r is not None]
        ratio = (f"{row[0]['peak_bytes'] / min(peer_peaks):.2f}"
                 if row[0] is not None and peer_peaks else "—")
        lines.append(f"| {flow} | {d} | {row[0]['params'] if row[0] else '—'} | "
                     + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)


def nll_table(records: list[dict], peers: list[str]) -> str:
    """Mean over seeds (min–max) per implementation, and ours minus the best peer's mean."""
    values: dict[tuple[str, str, str], list[float]] = {}
    units = {}
    for r in records:
        values.setdefault((r["flow"], r["data"], r["impl"]), []).append(r["value"])
        units[(r["flow"], r["data"])] = r["unit"]
    keys = sorted(units, key=lambda k: (tp.FLOWS.index(k[0]), k[1]))
    impls = ["pushforward", *peers]
    lines = ["| flow | data | unit | " + " | ".join(impls) + " | ours − best peer |",
             "|---|---|---|" + "---|" * (len(impls) + 1)]
    for flow, data in keys:
        runs = [values.get((flow, data, i)) for i in impls]
        means = [None if v is None else statistics.fmean(v) for v in runs]
        cells = ["—" if v is None else
                 (f"{m:.4f}" if len(v) == 1 else f"{m:.4f} ({min(v):.3f}–{max(v):.3f})")
                 for v, m in zip(runs, means)]
        peer_means = [m for m in means[1:] if m is not None]
        gap = f"{means[0] - min(peer_means):+.4f}" if means[0] is not None and peer_means else "—"
        lines.append(f"| {flow} | {data} | {units[(flow, data)]} | " + " | ".join(cells)
                     + f" | {gap} |")
    return "\n".join(lines)


def machine() -> dict:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    return {"cpu": model, "nproc": os.cpu_count(), "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(), "python": platform.python_version(),
            "load_average": [round(v, 2) for v in load]}


def _every_case(case, impls: list[str], cfg: argparse.Namespace) -> list[dict]:  # noqa: ANN001
    """``case(flow, d, impls, cfg)``'s records for every flow and dimension asked for."""
    return [r for flow in cfg.flows for d in cfg.dims for r in case(flow, d, impls, cfg)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    tp.add_comparison_arguments(parser)
    parser.add_argument("--compile", nargs="*", default=[], metavar="FLOW:D",
                        help="also time our torch.compile'd log_prob and training step there")
    parser.add_argument("--no-bound", dest="bound_rows", action="store_false",
                        help="skip the matmuls-only bound rows of the speed part")
    parser.add_argument("--steps", type=int, default=1000, help="NLL: Adam steps")
    parser.add_argument("--nll-batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2],
                        help="NLL: one run per seed; the table gives the mean and min–max")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("suite.json"))
    cfg = parser.parse_args(argv)
    if cfg.out.is_dir():  # a folder: the JSON goes inside it (found out before the run, not after)
        cfg.out = cfg.out / "suite.json"
    torch.set_num_threads(cfg.threads)
    peers = tp.available_peers(cfg.peers)
    impls = ["pushforward", *peers]
    versions = {"pushforward": pf.__version__}
    for peer in peers:
        try:
            versions[peer] = importlib.metadata.version(peer)
        except importlib.metadata.PackageNotFoundError:
            versions[peer] = getattr(__import__(peer), "__version__", "?")
    info = machine()
    print(f"# machine {info}; versions {versions}", file=sys.stderr)
    result: dict = {"meta": {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": info, "versions": versions,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(cfg).items()},
    }}
    out = []
    head = (f"torch {torch.__version__}, torch.set_num_threads({cfg.threads}), {info['cpu']} "
            f"(nproc {info['nproc']}), load average at start {info['load_average']}; "
            f"{cfg.transforms} transforms, hidden {[cfg.hidden] * cfg.layers}, bins {cfg.bins}.")
    out.append(head)
    if "speed" in cfg.parts:
        records = _every_case(speed_case, impls, cfg)
        result["speed"] = records
        out.append(f"\n### Throughput (samples/s, batch {cfg.batch}, median (min–max) of "
                   f"{cfg.repeats} alternating repeats, {cfg.clock} clock)\n")
        out.append(speed_table(records, peers))
    if "memory" in cfg.parts:
        records = _every_case(memory_case, impls, cfg)
        result["memory"] = records
        out.append(f"\n### Peak tensor memory of one training step (batch {cfg.batch}, "
                   "torch.profiler)\n")
        out.append(memory_table(records, peers))
    if "nll" in cfg.parts:
        records = []
        for flow in cfg.flows:
            for name in (*TOYS, "digits"):
                for seed in cfg.seeds:
                    records.extend(nll_case(flow, name, impls, cfg, seed))
        result["nll"] = records
        out.append(f"\n### Test NLL after {cfg.steps} Adam steps (lr {cfg.lr}, batch "
                   f"{cfg.nll_batch}; mean (min–max) over seeds {cfg.seeds}; toys in nats, "
                   "digits in bits/dim; lower is better)\n")
        out.append(nll_table(records, peers))
    result["meta"]["load_average_end"] = machine()["load_average"]
    cfg.out.write_text(json.dumps(result, indent=1))
    print("\n".join(out))
    print(f"\nload average at end {result['meta']['load_average_end']}; raw data: {cfg.out}")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
