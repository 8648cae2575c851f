"""Choosing the soft clamp of affine log-scales: NaN / divergent runs and final NLL over seeds.

    nice -n 10 python benchmarks/safety.py              # both tasks, 5 seeds, 500 / 300 steps
    python benchmarks/safety.py --tasks toy --bounds 2 3 none --seeds 3 --steps 500

For every clamp ``B`` (``AffineMap(bound=B)``, ``s = B tanh(ŝ/B)``; ``none``: the raw log-scale)
and seed it trains an affine-coupling RealNVP by plain Adam — deliberately without gradient
clipping or step skipping, so the clamp alone decides stability — on

* ``toy``: the 2-D checkerboard (sharp edges push the scales), 6 couplings, 64×64 MLPs;
* ``digits``: scikit-learn's 8×8 digits, uniformly dequantised, logit pre-processing, a 64-D
  vector RealNVP with 6 couplings and 128×128 MLPs (bits/dim reported).

A run *diverges* when a training loss is not finite (the run stops there). The table gives the
number of divergent runs, and the median / worst final test NLL of the others (nats; bits/dim
for digits). The README's numerical-safety section quotes its output.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pushforward as pf  # noqa: E402
from pushforward.data import bits_per_dim, load_dataset, toy  # noqa: E402
from pushforward.data.preprocess import wrap  # noqa: E402
from pushforward.transforms import Reshape  # noqa: E402


def _toy_task(seed: int, bound: float | None, steps: int, lr: float) -> float:
    data = torch.as_tensor(toy("checkerboard", 12000, seed=1234), dtype=torch.float32)
    train, test = data[:10000], data[10000:]
    torch.manual_seed(seed)
    flow = pf.flows.RealNVP(2, transforms=6, hidden=[64, 64], bound=bound)
    return _train(flow, lambda g: train[torch.randint(len(train), (256,), generator=g)],
                  test, seed, steps, lr)


_DIGITS: dict[str, object] = {}


def _digits_task(seed: int, bound: float | None, steps: int, lr: float) -> float:
    if "bundle" not in _DIGITS:
        _DIGITS["bundle"] = load_dataset("digits", seed=0)
    bundle = _DIGITS["bundle"]
    torch.manual_seed(10_000)
    test = bundle.test[torch.arange(len(bundle.test))]  # one fixed dequantisation
    torch.manual_seed(seed)
    inner = pf.flows.RealNVP(64, transforms=6, hidden=[128, 128], bound=bound)
    flow = wrap(inner, [Reshape(bundle.event_shape, (bundle.dims,)), *bundle.preprocess])
    train = bundle.train
    nll = _train(flow, lambda g: train[torch.randint(len(train), (128,), generator=g)],
                 test, seed, steps, lr)
    return bits_per_dim(nll, bundle.dims, bundle.levels) if math.isfinite(nll) else nll


def _train(flow, batch, test, seed: int, steps: int, lr: float) -> float:
    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(flow.parameters(), lr=lr)
    with pf.validation(False):
        for _ in range(steps):
            loss = -flow.log_prob(batch(generator)).mean()
            if not torch.isfinite(loss):
                return math.nan
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            nll = float(-flow.log_prob(test).mean())
    return nll if math.isfinite(nll) else math.nan


TASKS = {"toy": (_toy_task, "nats"), "digits": (_digits_task, "bits/dim")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["toy", "digits"], choices=list(TASKS))
    parser.add_argument("--bounds", nargs="+", default=["2", "3", "5", "8", "none"])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, nargs="+", default=[500, 300],
                        help="training steps per task (one number, or one per task)")
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps = dict(zip(args.tasks, args.steps * len(args.tasks) if len(args.steps) == 1
                     else args.steps))
    print(f"{args.seeds} seeds, Adam at lr {args.lr} for {steps} steps, no clipping")
    print("| task | bound | divergent runs | median final NLL | worst final NLL | seconds |")
    print("|---|---|---|---|---|---|")
    for task in args.tasks:
        run, unit = TASKS[task]
        for text in args.bounds:
            bound = None if text == "none" else float(text)
            start = time.time()
            results = [run(seed, bound, steps[task], args.lr) for seed in range(args.seeds)]
            finite = [r for r in results if math.isfinite(r)]
            bad = len(results) - len(finite)
            median = f"{statistics.median(finite):.3f}" if finite else "—"
            worst = f"{max(finite):.3f}" if finite else "—"
            print(f"| {task} | {text} | {bad}/{len(results)} | {median} {unit} | {worst} {unit} "
                  f"| {time.time() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
