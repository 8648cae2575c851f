"""Roofline of a MAF training step: achieved FLOP/s against what this machine's matmuls reach.

    nice -n 10 python benchmarks/roofline.py              # docs/roofline.png + roofline.json

For MAF (3 layers, hidden 64×2, batch 1024) at d ∈ {2, 16, 64} it

1. counts the FLOPs of one training step (forward + backward) with
   ``torch.utils.flop_counter.FlopCounterMode`` (matmuls only: elementwise work and Adam are not
   counted, so the achieved rate is a lower bound on the work done) and records the shape of
   every matmul the step runs (a ``TorchDispatchMode``);
2. times the step for pushforward, zuko and nflows (alternating, median of repeats, CPU clock)
   and divides: achieved GFLOP/s;
3. times exactly those matmul shapes back to back with ``torch.mm`` on preallocated operands:
   the rate the hardware and BLAS reach on the same work with zero framework overhead (the
   realistic ceiling), and a large square matmul (the machine's dense peak);
4. measures the memory bandwidth (a large copy) and draws the roofline
   ``min(peak, bandwidth × arithmetic intensity)`` with every point at its arithmetic intensity
   (matmul FLOPs / bytes the matmuls read and write).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import suite  # noqa: E402
import throughput as tp  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
_MATMULS = {"aten.mm.default", "aten.addmm.default", "aten.bmm.default"}


class _Shapes(TorchDispatchMode):
    """Records ``(m, k, n)`` of every 2-D matmul."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, int, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        name = str(func)
        if name == "aten.mm.default":
            a, b = args[0], args[1]
            self.shapes.append((a.shape[0], a.shape[1], b.shape[1]))
        elif name == "aten.addmm.default":
            a, b = args[1], args[2]
            self.shapes.append((a.shape[0], a.shape[1], b.shape[1]))
        return func(*args, **(kwargs or {}))


def _time(fn, repeats: int, number: int) -> float:  # noqa: ANN001
    fn()
    samples = []
    for _ in range(repeats):
        start = time.process_time()
        for _ in range(number):
            fn()
        samples.append((time.process_time() - start) / number)
    return statistics.median(samples)


def matmul_rate(shapes: list[tuple[int, int, int]], repeats: int) -> tuple[float, float]:
    """Seconds and FLOP/s of running ``shapes`` back to back with preallocated operands."""
    operands = [(torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)) for m, k, n in shapes]

    def run() -> None:
        for a, b, c in operands:
            torch.mm(a, b, out=c)

    seconds = _time(run, repeats, 10)
    flops = sum(2 * m * k * n for m, k, n in shapes)
    return seconds, flops / seconds


def matmul_bytes(shapes: list[tuple[int, int, int]]) -> int:
    return sum(4 * (m * k + k * n + m * n) for m, k, n in shapes)


def peak_rate(size: int, repeats: int) -> float:
    a, b, c = torch.randn(size, size), torch.randn(size, size), torch.empty(size, size)
    seconds = _time(lambda: torch.mm(a, b, out=c), repeats, 3)
    return 2 * size**3 / seconds


def bandwidth(repeats: int) -> float:
    src = torch.randn(64 * 2**20 // 4)
    dst = torch.empty_like(src)
    seconds = _time(lambda: dst.copy_(src), repeats, 3)
    return 2 * src.numel() * 4 / seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", nargs="+", type=int, default=[2, 16, 64])
    parser.add_argument("--peers", nargs="+", default=["zuko", "nflows"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "roofline.png")
    cfg = parser.parse_args(argv)
    torch.set_num_threads(cfg.threads)
    arch = argparse.Namespace(hidden=64, layers=2, transforms=3, bins=8, bound=5.0, batch=1024)
    peak = peak_rate(1024, cfg.repeats)
    bw = bandwidth(cfg.repeats)
    rows = []
    for d in cfg.dims:
        x = torch.randn(arch.batch, d)
        models = [suite.build(i, "maf", d, arch) for i in ["pushforward", *cfg.peers]]
        steps = [tp.operations(m, x)["train_step"] for m in models]
        steps[0]()
        with FlopCounterMode(display=False) as counter, _Shapes() as recorder:
            steps[0]()
        flops = counter.get_total_flops()
        shapes = recorder.shapes
        mm_seconds, mm_rate = matmul_rate(shapes, cfg.repeats)
        times: list[list[float]] = [[] for _ in models]
        for r in range(cfg.repeats):
            order = range(len(models)) if r % 2 == 0 else reversed(range(len(models)))
            for i in order:
                start = time.process_time()
                for _ in range(5):
                    steps[i]()
                times[i].append((time.process_time() - start) / 5)
        intensity = flops / matmul_bytes(shapes)
        row = {"d": d, "flops": flops, "matmuls": len(shapes), "intensity": intensity,
               "matmul_only_s": mm_seconds, "matmul_only_flops": mm_rate,
               "step_s": {m.impl: statistics.median(t) for m, t in zip(models, times)}}
        row["achieved_flops"] = {k: flops / v for k, v in row["step_s"].items()}
        rows.append(row)
        print(f"d={d}: {flops / 1e6:.1f} MFLOP in {len(shapes)} matmuls, intensity "
              f"{intensity:.1f} FLOP/B; same matmuls alone {mm_rate / 1e9:.1f} GFLOP/s; "
              + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in row["achieved_flops"].items()))
    print(f"dense peak (1024³ sgemm) {peak / 1e9:.1f} GFLOP/s; copy bandwidth {bw / 1e9:.1f} GB/s")
    result = {"threads": cfg.threads, "torch": torch.__version__, "peak_flops": peak,
              "bandwidth": bw, "rows": rows, "machine": suite.machine()}
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    cfg.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    plot(result, cfg.out)
    print(f"wrote {cfg.out}")


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peak, bw = result["peak_flops"], result["bandwidth"]
    fig, ax = plt.subplots(figsize=(7.5, 5.6))
    lo = min(min(r["intensity"] for r in result["rows"]) / 3, peak / bw / 8)
    hi = max(peak / bw * 4, max(r["intensity"] for r in result["rows"]) * 3)
    grid = torch.logspace(torch.log10(torch.tensor(lo)), torch.log10(torch.tensor(hi)), 200)
    ax.loglog(grid, torch.clamp(grid * bw, max=peak) / 1e9, "k-", lw=1.5,
              label=f"roofline: {peak / 1e9:.0f} GFLOP/s sgemm peak, {bw / 1e9:.0f} GB/s copy")
    markers = {"pushforward": ("o", "C0"), "zuko": ("s", "C1"), "nflows": ("^", "C2")}
    for r in result["rows"]:
        ai = r["intensity"]
        ax.scatter([ai], [r["matmul_only_flops"] / 1e9], marker="*", s=140, color="k", zorder=3)
        ax.annotate(f"d={r['d']}", (ai, r["matmul_only_flops"] / 1e9), textcoords="offset points",
                    xytext=(6, 4), fontsize=8)
        for impl, value in r["achieved_flops"].items():
            marker, color = markers.get(impl, ("x", "C3"))
            ax.scatter([ai], [value / 1e9], marker=marker, color=color, zorder=3)
    ax.scatter([], [], marker="*", s=140, color="k", label="same matmul shapes alone (torch.mm)")
    for impl, (marker, color) in markers.items():
        if any(impl in r["achieved_flops"] for r in result["rows"]):
            ax.scatter([], [], marker=marker, color=color, label=f"{impl}: MAF training step")
    ax.set_xlabel("arithmetic intensity of the step's matmuls (FLOP / byte)")
    ax.set_ylabel("GFLOP/s (matmul FLOPs of fwd + bwd)")
    ax.set_title(f"MAF training step, batch 1024, hidden 64×2, 3 layers, "
                 f"{result['threads']} thread(s)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
