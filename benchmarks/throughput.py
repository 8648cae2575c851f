"""Throughput of MAF, RealNVP and NSF beside zuko, nflows and normflows at equal sizes.

One command, one process::

    nice -n 10 python benchmarks/throughput.py            # prints a Markdown table
    python benchmarks/throughput.py --dims 2 16 --repeats 3 --out results.json
    python benchmarks/throughput.py --profile maf:64      # torch.profiler of one training step

For every flow and dimension it builds ours and each installed peer with the same layers, hidden
widths and bins, then times three operations on a batch of standard normal data: ``log_prob``
without gradients, a training step (``-log_prob(x).mean()``, backward, Adam step) and sampling.
Implementations alternate inside every repeat (ours, zuko, nflows, normflows, ours, ...), each
measurement runs the operation long enough to last ``--min-time`` seconds, and the table reports
the median throughput (samples/s) over repeats with its spread (min–max) and our/peer ratios
(> 1: ours is faster). A peer that is not installed is skipped. The JSON file (next to this
script unless ``--out``) keeps every raw time.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pushforward as pf  # noqa: E402

FLOWS = ("maf", "realnvp", "nsf")
PEERS = ("zuko", "nflows", "normflows")
OPS = ("log_prob", "train_step", "sample")


class Model:
    """A uniform handle on one implementation: its module, log_prob and sample."""

    def __init__(self, impl: str, module: nn.Module, log_prob: Callable[[Tensor], Tensor],
                 sample: Callable[[int], Tensor]) -> None:
        self.impl, self.module, self.log_prob, self.sample = impl, module, log_prob, sample
        self.params = sum(p.numel() for p in module.parameters() if p.requires_grad)


# -- builders -------------------------------------------------------------------------------------


def build_ours(flow: str, d: int, cfg: argparse.Namespace) -> Model:
    hidden = [cfg.hidden] * cfg.layers
    if flow == "maf":
        model = pf.flows.build("maf", features=d, transforms=cfg.transforms, hidden=hidden)
    elif flow == "nsf":
        model = pf.flows.build("nsf", features=d, transforms=cfg.transforms, hidden=hidden,
                               bins=cfg.bins, bound=cfg.bound)
    else:
        model = pf.flows.build("realnvp", features=d, transforms=cfg.transforms, hidden=hidden)
    return Model("pushforward", model, model.log_prob, model.sample)


def build_zuko(flow: str, d: int, cfg: argparse.Namespace) -> Model:
    import zuko

    hidden = [cfg.hidden] * cfg.layers
    if flow == "maf":
        model = zuko.flows.MAF(d, transforms=cfg.transforms, hidden_features=hidden)
    elif flow == "nsf":
        model = zuko.flows.NSF(d, transforms=cfg.transforms, hidden_features=hidden,
                               bins=cfg.bins)
    else:
        model = zuko.flows.RealNVP(d, transforms=cfg.transforms, hidden_features=hidden)
    return Model("zuko", model, lambda x: model().log_prob(x),
                 lambda n: model().sample((n,)))


class _ContextFree(nn.Module):
    """nflows couplings call ``net(x, context)``; its MLP takes ``x`` only."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self.net(x)


def build_nflows(flow: str, d: int, cfg: argparse.Namespace) -> Model:
    from nflows.distributions import StandardNormal
    from nflows.flows import Flow
    from nflows.nn.nets import MLP
    from nflows.transforms import (
        AffineCouplingTransform,
        CompositeTransform,
        MaskedAffineAutoregressiveTransform,
        MaskedPiecewiseRationalQuadraticAutoregressiveTransform,
        ReversePermutation,
    )

    layers = []
    for i in range(cfg.transforms):
        if i and flow != "realnvp":
            layers.append(ReversePermutation(d))
        if flow == "maf":
            layers.append(MaskedAffineAutoregressiveTransform(
                d, cfg.hidden, num_blocks=cfg.layers - 1, use_residual_blocks=False))
        elif flow == "nsf":
            layers.append(MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
                d, cfg.hidden, num_bins=cfg.bins, tails="linear", tail_bound=cfg.bound,
                num_blocks=cfg.layers - 1, use_residual_blocks=False))
        else:
            mask = torch.ones(d)
            mask[i % 2 :: 2] = -1

            def net(n_in: int, n_out: int) -> nn.Module:
                return _ContextFree(MLP((n_in,), (n_out,), [cfg.hidden] * cfg.layers))

            layers.append(AffineCouplingTransform(mask, net))
    model = Flow(CompositeTransform(layers), StandardNormal([d]))
    return Model("nflows", model, model.log_prob, model.sample)


def build_normflows(flow: str, d: int, cfg: argparse.Namespace) -> Model:
    import normflows as nf
    from normflows.flows.neural_spline.autoregressive import (
        MaskedPiecewiseRationalQuadraticAutoregressive,
    )

    layers: list[nn.Module] = []
    for i in range(cfg.transforms):
        if i:
            layers.append(nf.flows.Permute(d, mode="swap"))
        if flow == "maf":
            layers.append(nf.flows.MaskedAffineAutoregressive(
                d, cfg.hidden, num_blocks=cfg.layers - 1, use_residual_blocks=False))
        elif flow == "nsf":
            spline = nf.flows.AutoregressiveRationalQuadraticSpline(
                d, cfg.layers - 1, cfg.hidden, num_bins=cfg.bins, tail_bound=cfg.bound)
            # same MADE as the others: plain (non-residual) masked layers
            spline.mprqat = MaskedPiecewiseRationalQuadraticAutoregressive(
                features=d, hidden_features=cfg.hidden, num_bins=cfg.bins, tails="linear",
                tail_bound=cfg.bound, num_blocks=cfg.layers - 1, use_residual_blocks=False,
                init_identity=True)
            layers.append(spline)
        else:
            half = d // 2
            net = nf.nets.MLP([half, *[cfg.hidden] * cfg.layers, 2 * (d - half)],
                              init_zeros=True)
            layers.append(nf.flows.AffineCouplingBlock(net, split_mode="channel"))
    model = nf.NormalizingFlow(nf.distributions.DiagGaussian(d, trainable=False), layers)
    return Model("normflows", model, model.log_prob, lambda n: model.sample(n)[0])


BUILDERS = {"zuko": build_zuko, "nflows": build_nflows, "normflows": build_normflows}


def available_peers(wanted: list[str]) -> list[str]:
    found = []
    for name in wanted:
        try:
            __import__(name)
        except ImportError:
            print(f"[skip] {name} is not installed", file=sys.stderr)
            continue
        found.append(name)
    return found


# -- timing ---------------------------------------------------------------------------------------


def operations(model: Model, x: Tensor) -> dict[str, Callable[[], object]]:
    optimizer = torch.optim.Adam(model.module.parameters(), lr=1e-4)

    def log_prob() -> object:
        with torch.no_grad():
            return model.log_prob(x)

    def train_step() -> object:
        optimizer.zero_grad(set_to_none=True)
        loss = -model.log_prob(x).mean()
        loss.backward()
        optimizer.step()
        return loss

    def sample() -> object:
        with torch.no_grad():
            return model.sample(x.shape[0])

    return {"log_prob": log_prob, "train_step": train_step, "sample": sample}


def calibrate(fn: Callable[[], object], min_time: float) -> tuple[int, float]:
    """Iterations per measurement so that one measurement lasts about ``min_time``, and the
    duration of one call (the warm-up call is timed too, so a slow operation runs only twice)."""
    start = time.perf_counter()
    fn()  # warm-up (lazy init, allocator)
    once = time.perf_counter() - start
    if once < min_time:
        start = time.perf_counter()
        fn()
        once = time.perf_counter() - start
    once = max(once, 1e-6)
    return max(1, int(min_time / once)), once


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def time_alternating(
    fns: list[Callable[[], object]], cfg: argparse.Namespace
) -> tuple[list[list[float]], list[int]]:
    """Time each call ``cfg.repeats`` times, alternating between them within every repeat (the
    order reversed on odd repeats, so none always runs right after another). Returns the
    per-repeat seconds and the iterations per measurement of each call."""
    calibrated = [calibrate(fn, cfg.min_time) for fn in fns]
    iterations = [n for n, _ in calibrated]
    # very slow operations (sequential sampling of peers at d = 64 takes seconds) get at most
    # 3 repeats so that the whole run stays within minutes
    slow = max(once for _, once in calibrated) > cfg.slow
    repeats = min(cfg.repeats, 3) if slow else cfg.repeats
    times: list[list[float]] = [[] for _ in fns]
    for r in range(repeats):
        order = list(range(len(fns)))
        if r % 2:
            order.reverse()
        for i in order:
            times[i].append(measure(fns[i], iterations[i], cfg.clock))
    return times, iterations


def measure(fn: Callable[[], object], iterations: int, clock: str = "wall") -> float:
    now = CLOCKS[clock]
    start = now()
    for _ in range(iterations):
        fn()
    return (now() - start) / iterations


def bench_case(flow: str, d: int, peers: list[str], cfg: argparse.Namespace) -> list[dict]:
    torch.manual_seed(0)
    x = torch.randn(cfg.batch, d)
    models = [build_ours(flow, d, cfg)]
    for peer in peers:
        try:
            models.append(BUILDERS[peer](flow, d, cfg))
        except Exception as err:  # a peer's API changed: report and go on
            print(f"[skip] {peer} {flow} d={d}: {type(err).__name__}: {err}", file=sys.stderr)
    records = []
    for op in OPS:
        fns = [operations(m, x)[op] for m in models]
        times, iterations = time_alternating(fns, cfg)
        for m, t, n in zip(models, times, iterations):
            records.append({
                "flow": flow, "d": d, "impl": m.impl, "op": op, "params": m.params,
                "batch": cfg.batch, "iterations": n, "seconds": t,
                "median_s": statistics.median(t),
                "throughput": cfg.batch / statistics.median(t),
                "throughput_min": cfg.batch / max(t), "throughput_max": cfg.batch / min(t),
            })
        print(f"  {flow} d={d} {op}: " + ", ".join(
            f"{r['impl']} {r['throughput'] / 1e3:.1f}k/s" for r in records[-len(models):]),
            file=sys.stderr, flush=True)
    return records


# -- report ---------------------------------------------------------------------------------------


def _fmt(value: float) -> str:
    return f"{value / 1e3:.1f}k" if value >= 1e3 else f"{value:.0f}"


def table(records: list[dict]) -> str:
    """Markdown: one row per flow, d and implementation; throughput in samples/s."""
    index = {(r["flow"], r["d"], r["impl"], r["op"]): r for r in records}
    keys = sorted({(r["flow"], r["d"]) for r in records}, key=lambda k: (FLOWS.index(k[0]), k[1]))
    impls = ["pushforward", *PEERS]
    head = ("| flow | d | impl | params | log_prob /s | train step /s | sample /s "
            "| ours/peer log_prob | ours/peer train | ours/peer sample |")
    lines = [head, "|" + "---|" * 10]
    for flow, d in keys:
        for impl in impls:
            if (flow, d, impl, "log_prob") not in index:
                continue
            cells = [flow, str(d), impl, str(index[(flow, d, impl, "log_prob")]["params"])]
            for op in OPS:
                r = index[(flow, d, impl, op)]
                cells.append(f"{_fmt(r['throughput'])} "
                             f"({_fmt(r['throughput_min'])}–{_fmt(r['throughput_max'])})")
            for op in OPS:
                if impl == "pushforward":
                    cells.append("")
                else:
                    ours = index[(flow, d, "pushforward", op)]["throughput"]
                    cells.append(f"{ours / index[(flow, d, impl, op)]['throughput']:.2f}×")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def profile(spec: str, cfg: argparse.Namespace) -> None:
    """Print torch.profiler's top operators for one training step of our flow."""
    flow, _, d = spec.partition(":")
    d = int(d or 64)
    model = build_ours(flow, d, cfg)
    step = operations(model, torch.randn(cfg.batch, d))["train_step"]
    for _ in range(3):
        step()
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(5):
            step()
    print(f"## profile: {flow} d={d}, batch {cfg.batch}, 5 training steps, "
          f"{torch.get_num_threads()} thread(s)\n")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=cfg.profile_rows))


def add_comparison_arguments(parser: argparse.ArgumentParser) -> None:
    """The options shared with ``suite.py``: what is compared, at which size, how it is timed."""
    parser.add_argument("--flows", nargs="+", default=list(FLOWS), choices=FLOWS)
    parser.add_argument("--dims", nargs="+", type=int, default=[2, 16, 64])
    parser.add_argument("--peers", nargs="+", default=list(PEERS), choices=PEERS)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--transforms", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=64, help="width of every hidden layer")
    parser.add_argument("--layers", type=int, default=2, help="hidden layers per conditioner")
    parser.add_argument("--bins", type=int, default=8)
    parser.add_argument("--bound", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=0.05,
                        help="seconds per measurement (operations are repeated to last this)")
    parser.add_argument("--slow", type=float, default=1.0,
                        help="an operation whose single call takes longer than this (seconds) "
                             "gets at most 3 repeats")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall: elapsed time; cpu: process CPU time (steadier on a shared "
                             "machine, equal to wall time on an idle one with --threads 1)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_comparison_arguments(parser)
    parser.add_argument("--no-validation", action="store_true",
                        help="turn pushforward's input checks off (they are on by default)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    parser.add_argument("--profile", metavar="FLOW:D", help="profile one of our training steps")
    parser.add_argument("--profile-rows", type=int, default=15)
    cfg = parser.parse_args(argv)
    if cfg.layers < 1:
        parser.error("--layers must be >= 1")
    torch.set_num_threads(cfg.threads)
    pf.set_validation(not cfg.no_validation)
    if cfg.profile:
        profile(cfg.profile, cfg)
        return
    peers = available_peers(cfg.peers)
    versions = {"torch": torch.__version__, "pushforward": pf.__version__}
    for peer in peers:
        try:
            versions[peer] = importlib.metadata.version(peer)
        except importlib.metadata.PackageNotFoundError:
            versions[peer] = getattr(__import__(peer), "__version__", "?")
    print(f"torch.set_num_threads({cfg.threads}); batch {cfg.batch}; {cfg.transforms} transforms; "
          f"hidden {[cfg.hidden] * cfg.layers}; bins {cfg.bins}; repeats {cfg.repeats}; "
          f"versions {versions}", file=sys.stderr)
    records = []
    for flow in cfg.flows:
        for d in cfg.dims:
            records.extend(bench_case(flow, d, peers, cfg))
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.machine(), "processor": platform.processor() or platform.platform(),
        "python": platform.python_version(), "threads": torch.get_num_threads(),
        "versions": versions, "validation": not cfg.no_validation, "clock": cfg.clock,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(cfg).items()},
    }
    cfg.out.write_text(json.dumps({"meta": meta, "records": records}, indent=1))
    print(f"torch.set_num_threads({cfg.threads}), batch {cfg.batch}, {cfg.transforms} transforms, "
          f"hidden {[cfg.hidden] * cfg.layers}, bins {cfg.bins}; throughput in samples/s "
          f"({cfg.clock} clock), median (min–max) of {cfg.repeats} repeats (3 for operations "
          f"slower than {cfg.slow:g} s per call); ratios > 1: ours is faster.\n")
    print(table(records))
    print(f"\nraw times: {cfg.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
