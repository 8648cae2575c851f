"""Time to quality: wall-clock until ``pf.fit`` reaches the peer's test NLL, beside a zuko loop.

One command::

    nice -n 10 python benchmarks/time_to_quality.py              # Markdown + JSON + PNG
    python benchmarks/time_to_quality.py --clock cpu --seeds 0    # on a loaded machine
    python benchmarks/time_to_quality.py --data moons --flows maf --steps 300   # a quick look

For every dataset (moons, 8 Gaussians, checkerboard: 2-D, nats; the 8×8 digits: 64-D, bits/dim)
and flow (MAF, RealNVP, NSF at the same architecture on both sides: ``--transforms`` layers,
``--layers`` hidden layers of ``--hidden`` units, ``--bins`` bins), from the same seed:

* **peer**: zuko's flow trained by a plain loop, ``torch.optim.Adam(lr=1e-3)``, ``--steps``
  steps of ``--batch`` random samples (``-log_prob(x).mean()``, backward, step);
* **ours**: ``pushforward.fit(flow, train, steps=--fit-steps, batch_size=--batch)`` with its
  defaults (whatever ``fit`` does by default: its learning rate, schedule, clipping, optimiser);
  ``--fit-steps`` defaults to ``--steps`` (fit anneals its learning rate over the steps it is
  given, so a shorter run is a different, legitimate recipe).

Both record the test NLL every ``--eval-every`` steps. The clock (``--clock``: wall time, or the
process's CPU time, which a shared machine's load inflates far less) runs during training only:
each evaluation is timed and subtracted, so the curves are NLL against training seconds (fit's own
set-up is inside the clock). The target is the peer's test NLL after its last step; the table
gives, per run, the seconds the peer took, the seconds ours took to first reach that NLL, their
ratio (the goal: ≤ 0.5) and both final NLLs. Median over ``--seeds``. Digits are dequantised
once with a fixed noise draw (``--copies`` draws per training image, the same tensor for both
sides) and logit-mapped outside the flows, as in ``benchmarks/suite.py``. The machine is shared:
the load average is recorded at the start and end; implementations alternate per seed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import throughput as tp  # noqa: E402

import pushforward as pf  # noqa: E402

DATASETS = ("moons", "8gaussians", "checkerboard", "digits")
_ALPHA = 0.05


def dataset(name: str, seed: int, copies: int) -> tuple[Tensor, Tensor, Callable[[Tensor], float]]:
    """Train/test tensors and the function turning a batch of log-densities into the unit."""
    if name != "digits":
        train = torch.as_tensor(pf.data.toy(name, 20000, seed=seed), dtype=torch.float32)
        test = torch.as_tensor(pf.data.toy(name, 5000, seed=seed + 1), dtype=torch.float32)
        return train, test, lambda log_prob: float(-log_prob.mean())
    images, _, levels = pf.data.images.digits()
    k = torch.as_tensor(images, dtype=torch.float32).flatten(1)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(k), generator=generator)
    train_k, test_k = k[order[:1497]], k[order[1497:]]
    train, _ = _logit(train_k.repeat(copies, 1), float(levels), generator)
    test, log_det = _logit(test_k, float(levels), generator)
    d = k.shape[1]

    def bits(log_prob: Tensor) -> float:
        return float(pf.data.bits_per_dim(-(log_prob + log_det).mean(), d, int(levels)))

    return train, test, bits


def _logit(k: Tensor, levels: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    u = (k + torch.rand(k.shape, generator=generator)) / levels
    p = _ALPHA + (1 - 2 * _ALPHA) * u
    y = torch.log(p) - torch.log1p(-p)
    log_det = (math.log(1 - 2 * _ALPHA) - torch.log(p) - torch.log1p(-p)).sum(-1)
    return y, log_det


# ``--clock``: "wall" (perf_counter) or "cpu" (this process's CPU time, which a shared machine's
# load inflates far less; with one thread it is the wall time of a quiet machine, nearly)
_TIMER = {"wall": time.perf_counter, "cpu": time.process_time}
_now = time.perf_counter


class Clock:
    """Training seconds: clock time (``--clock``) minus the time spent in evaluations."""

    def __init__(self) -> None:
        self.start = _now()
        self.paused = 0.0

    def elapsed(self) -> float:
        return _now() - self.start - self.paused


def evaluate(model: tp.Model, test: Tensor, unit: Callable[[Tensor], float], clock: Clock,
             curve: list[tuple[int, float, float]], step: int) -> None:
    seconds = clock.elapsed()
    begin = _now()
    with torch.no_grad():
        value = unit(model.log_prob(test))
    curve.append((step, seconds, value))
    clock.paused += _now() - begin


def run_peer(model: tp.Model, train: Tensor, test: Tensor, unit: Callable[[Tensor], float],
             cfg: argparse.Namespace, seed: int) -> list[tuple[int, float, float]]:
    optimizer = torch.optim.Adam(model.module.parameters(), lr=1e-3)
    batches = torch.Generator().manual_seed(seed)
    curve: list[tuple[int, float, float]] = []
    clock = Clock()
    for step in range(1, cfg.steps + 1):
        x = train[torch.randint(len(train), (cfg.batch,), generator=batches)]
        optimizer.zero_grad(set_to_none=True)
        loss = -model.log_prob(x).mean()
        loss.backward()
        optimizer.step()
        if step % cfg.eval_every == 0 or step == cfg.steps:
            evaluate(model, test, unit, clock, curve, step)
    return curve


def run_ours(model: tp.Model, train: Tensor, test: Tensor, unit: Callable[[Tensor], float],
             cfg: argparse.Namespace, seed: int) -> list[tuple[int, float, float]]:
    curve: list[tuple[int, float, float]] = []
    steps = cfg.fit_steps or cfg.steps
    taken = [0]
    clock = Clock()

    def callback(_step: int, _nll: float) -> None:
        taken[0] += 1  # steps taken so far (fit's own counter starts at 0)
        if taken[0] % cfg.eval_every == 0 or taken[0] == steps:
            evaluate(model, test, unit, clock, curve, taken[0])

    options: dict[str, float] = {} if cfg.fit_lr is None else {"lr": cfg.fit_lr}
    if cfg.fit_warmup is not None:
        options["warmup"] = cfg.fit_warmup
    pf.fit(model.module, train, steps=steps, batch_size=cfg.batch, seed=seed,
           progress=False, handle_signals=False, callback=callback, **options)
    model.module.eval()
    return curve


def first_reach(curve: list[tuple[int, float, float]], target: float) -> float | None:
    """Training seconds at the first evaluation at or below ``target`` (None: never)."""
    for _, seconds, value in curve:
        if value <= target:
            return seconds
    return None


def case(name: str, flow: str, seed: int, cfg: argparse.Namespace) -> dict:
    train, test, unit = dataset(name, seed, cfg.copies)
    d = train.shape[1]
    curves = {}
    order = ["zuko", "pushforward"] if seed % 2 == 0 else ["pushforward", "zuko"]
    params = {}
    for impl in order:
        torch.manual_seed(seed)
        build = tp.build_ours if impl == "pushforward" else tp.build_zuko
        model = build(flow, d, cfg)
        params[impl] = model.params
        runner = run_ours if impl == "pushforward" else run_peer
        curves[impl] = runner(model, train, test, unit, cfg, seed)
    target = curves["zuko"][-1][2]
    peer_seconds = curves["zuko"][-1][1]
    ours_seconds = first_reach(curves["pushforward"], target)
    record = {
        "data": name, "flow": flow, "seed": seed, "d": d, "params": params,
        "unit": "bits/dim" if name == "digits" else "nats", "target": target,
        "peer_seconds": peer_seconds, "ours_seconds_to_target": ours_seconds,
        "ratio": None if ours_seconds is None else ours_seconds / peer_seconds,
        "ours_final": curves["pushforward"][-1][2],
        "ours_seconds_total": curves["pushforward"][-1][1],
        "curves": {k: [list(p) for p in v] for k, v in curves.items()},
    }
    print(f"  {flow} {name} seed {seed}: zuko {target:.4f} in {peer_seconds:.1f} s; ours "
          f"final {record['ours_final']:.4f} in {record['ours_seconds_total']:.1f} s, target at "
          f"{'never' if ours_seconds is None else f'{ours_seconds:.1f} s'}",
          file=sys.stderr, flush=True)
    return record


def table(records: list[dict]) -> str:
    lines = ["| flow | data | unit | zuko NLL (2,000 steps) | zuko s | ours final NLL | "
             "ours s to zuko's NLL | ratio (≤ 0.5 wanted) | ours s (all steps) |",
             "|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["flow"], r["data"]) for r in records},
                  key=lambda k: (tp.FLOWS.index(k[0]), DATASETS.index(k[1])))
    for flow, data in keys:
        rows = [r for r in records if (r["flow"], r["data"]) == (flow, data)]
        med = statistics.median
        reached = [r["ratio"] for r in rows if r["ratio"] is not None]
        ratio = (f"{med(reached):.2f}" if len(reached) == len(rows)
                 else f"{len(rows) - len(reached)}/{len(rows)} never"
                 + (f"; others {med(reached):.2f}" if reached else ""))
        to_target = [r["ours_seconds_to_target"] for r in rows
                     if r["ours_seconds_to_target"] is not None]
        lines.append(
            f"| {flow} | {data} | {rows[0]['unit']} | {med([r['target'] for r in rows]):.4f} | "
            f"{med([r['peer_seconds'] for r in rows]):.1f} | "
            f"{med([r['ours_final'] for r in rows]):.4f} | "
            + (f"{med(to_target):.1f}" if to_target else "—")
            + f" | {ratio} | {med([r['ours_seconds_total'] for r in rows]):.1f} |")
    return "\n".join(lines)


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({(r["flow"], r["data"]) for r in records},
                  key=lambda k: (tp.FLOWS.index(k[0]), DATASETS.index(k[1])))
    flows = sorted({k[0] for k in keys}, key=tp.FLOWS.index)
    datas = sorted({k[1] for k in keys}, key=DATASETS.index)
    fig, axes = plt.subplots(len(flows), len(datas), figsize=(3.6 * len(datas), 2.9 * len(flows)),
                             squeeze=False)
    for i, flow in enumerate(flows):
        for j, data in enumerate(datas):
            ax = axes[i][j]
            rows = [r for r in records if (r["flow"], r["data"]) == (flow, data)]
            for r in rows:
                for impl, color in (("zuko", "tab:orange"), ("pushforward", "tab:blue")):
                    curve = r["curves"][impl]
                    ax.plot([p[1] for p in curve], [p[2] for p in curve], color=color,
                            alpha=0.8, lw=1, label=impl if r is rows[0] else None)
                ax.axhline(r["target"], color="tab:orange", ls=":", lw=0.8)
            if rows:
                values = [p[2] for r in rows for c in r["curves"].values() for p in c]
                low = min(values)
                ax.set_ylim(low - 0.05 * abs(low) - 0.02,
                            sorted(values)[int(0.8 * (len(values) - 1))] + 0.1)
                ax.set_title(f"{flow}, {data}", fontsize=9)
                ax.set_xlabel("training seconds", fontsize=8)
                ax.set_ylabel(f"test NLL ({rows[0]['unit']})", fontsize=8)
                ax.tick_params(labelsize=7)
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--flows", nargs="+", default=["maf", "realnvp", "nsf"],
                        choices=tp.FLOWS)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--fit-steps", type=int, default=None,
                        help="steps given to pf.fit (default: --steps); fit anneals its "
                             "learning rate over them")
    parser.add_argument("--fit-lr", type=float, default=None,
                        help="learning rate given to pf.fit (default: fit's own)")
    parser.add_argument("--fit-warmup", type=int, default=None,
                        help="linear warm-up steps given to pf.fit (default: fit's own)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--copies", type=int, default=10,
                        help="digits: dequantisation draws per training image")
    parser.add_argument("--transforms", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--bins", type=int, default=8)
    parser.add_argument("--bound", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=sorted(_TIMER), default="wall",
                        help="wall: perf_counter; cpu: process CPU time (for a loaded machine)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("time_to_quality"))
    parser.add_argument("--png", type=Path,
                        default=Path(__file__).resolve().parents[1] / "docs" / "results"
                        / "time_to_quality.png")
    cfg = parser.parse_args(argv)
    torch.set_num_threads(cfg.threads)
    global _now
    _now = _TIMER[cfg.clock]
    load_start = os.getloadavg()
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    records = [case(name, flow, seed, cfg) for flow in cfg.flows for name in cfg.data
               for seed in cfg.seeds]
    load_end = os.getloadavg()
    head = (f"{started}, torch {torch.__version__}, {cfg.threads} thread(s), {cfg.clock} clock, "
            "load average "
            f"{[round(v, 2) for v in load_start]} at start, {[round(v, 2) for v in load_end]} at "
            f"end; {cfg.transforms} transforms, hidden {[cfg.hidden] * cfg.layers}, batch "
            f"{cfg.batch}, zuko {cfg.steps} steps, pf.fit {cfg.fit_steps or cfg.steps} steps"
            + (f" at lr {cfg.fit_lr}" if cfg.fit_lr else " (fit's default lr)")
            + (f", warm-up {cfg.fit_warmup}" if cfg.fit_warmup is not None else "")
            + f", seeds {cfg.seeds} (medians).")
    text = head + "\n\n" + table(records)
    meta = {"date": started, "load_average_start": load_start, "load_average_end": load_end,
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(cfg).items()}}
    cfg.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "runs": records}))
    cfg.out.with_suffix(".md").write_text(text + "\n")
    plot(records, cfg.png)
    print(text)
    print(f"\nraw data {cfg.out.with_suffix('.json')}; curves {cfg.png}")


if __name__ == "__main__":
    main()
