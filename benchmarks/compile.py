"""Eager vs ``torch.compile`` (Inductor) for ``log_prob`` and the training step.

    nice -n 10 python benchmarks/compile.py                   # MAF and RealNVP, d = 8, batch 512
    python benchmarks/compile.py --flows maf --dims 2 16 --batch 256 --repeats 5

For each flow it builds two identical copies, compiles one with
``pushforward.training.compile_log_prob`` / ``compile_train_step``, reports the one-off compile
time, checks that both give the same log-density (max |difference|), then times ``log_prob``
(no gradients) and a training step (loss, backward, Adam) alternately for both, printing the
median time per call over ``--repeats`` rounds (each round runs the operation for at least
``--min-time`` seconds) and the speed-up (eager time / compiled time, > 1: compiled is faster).
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pushforward as pf  # noqa: E402
from pushforward.training import compile_log_prob, compile_train_step  # noqa: E402


def _time(fn: Callable[[], object], min_time: float) -> float:
    """Seconds per call, running ``fn`` for at least ``min_time`` seconds."""
    fn()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return elapsed / calls


def bench(name: str, dims: int, batch: int, repeats: int, min_time: float) -> dict[str, float]:
    torch.manual_seed(0)
    eager = pf.flows.build(name, features=dims)
    compiled = copy.deepcopy(eager)
    x = torch.randn(batch, dims)
    start = time.perf_counter()
    log_prob = compile_log_prob(compiled)
    with torch.no_grad():
        got = log_prob(x)
    compile_lp = time.perf_counter() - start
    with torch.no_grad():
        diff = float((got - eager.log_prob(x)).abs().max())
    opt_e = torch.optim.Adam(eager.parameters(), lr=1e-4)
    opt_c = torch.optim.Adam(compiled.parameters(), lr=1e-4)
    step_c = compile_train_step(compiled, opt_c)
    start = time.perf_counter()
    step_c(x)
    compile_step = time.perf_counter() - start

    def step_e() -> None:
        opt_e.zero_grad()
        loss = -eager.log_prob(x).mean()
        loss.backward()
        opt_e.step()

    def lp_e() -> None:
        with torch.no_grad():
            eager.log_prob(x)

    def lp_c() -> None:
        with torch.no_grad():
            log_prob(x)

    times: dict[str, list[float]] = {k: [] for k in ("lp_e", "lp_c", "step_e", "step_c")}
    for _ in range(repeats):
        times["lp_e"].append(_time(lp_e, min_time))
        times["lp_c"].append(_time(lp_c, min_time))
        times["step_e"].append(_time(step_e, min_time))
        times["step_c"].append(_time(lambda: step_c(x), min_time))
    out = {k: statistics.median(v) for k, v in times.items()}
    out.update(compile_lp=compile_lp, compile_step=compile_step, diff=diff)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", nargs="+", default=["maf", "realnvp"])
    parser.add_argument("--dims", nargs="+", type=int, default=[8])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-time", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{args.threads} thread(s), batch {args.batch}, median of {args.repeats}")
    print("| flow | d | compile log_prob (s) | compile step (s) | max abs diff | "
          "log_prob eager (ms) | compiled (ms) | speed-up | step eager (ms) | compiled (ms) | "
          "speed-up |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.flows:
        for d in args.dims:
            r = bench(name, d, args.batch, args.repeats, args.min_time)
            print(f"| {name} | {d} | {r['compile_lp']:.1f} | {r['compile_step']:.1f} | "
                  f"{r['diff']:.1e} | {1e3 * r['lp_e']:.2f} | {1e3 * r['lp_c']:.2f} | "
                  f"{r['lp_e'] / r['lp_c']:.2f}x | {1e3 * r['step_e']:.2f} | "
                  f"{1e3 * r['step_c']:.2f} | {r['step_e'] / r['step_c']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
