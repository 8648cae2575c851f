"""Manifold flows: time per training step of deep chains of small layers (issue 21, item 5).

The chains: 24 ``NormalizedAffine(3)`` on the 2-sphere (uniform base), 24
``GeneralizedCalibration(4)`` and 24 ``Calibration(4)`` on the simplex (Dirichlet base); batch
512, float64, one thread. A training step is ``zero_grad``, ``−log_prob(x).mean()``,
``backward`` and a plain ``torch.optim.Adam`` step; also ``log_prob`` without gradients and
``sample``. Each measurement runs in a fresh subprocess; the script alternates rounds between the
code under test and, with ``--baseline PATH`` (a checkout of an older commit, e.g. ``git worktree
add /tmp/old 388e773``), the same chains on that code, so both see the same machine load. Medians
over repeats and rounds; wall-clock and thread CPU time (less sensitive to a shared machine) are
both reported, with the load average before and after.

    python benchmarks/manifolds.py                       # current code only
    python benchmarks/manifolds.py --baseline /tmp/old   # before/after, alternating

Writes ``benchmarks/manifolds.md`` and ``benchmarks/manifolds.json``; an earlier baseline kept in
the JSON (``baseline``) is carried over when no ``--baseline`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CHAINS = ("sphere-affine", "simplex-generalized", "simplex-calibration")
OPS = ("train_step", "train_step_no_validation", "log_prob_no_grad", "sample",
       "ops_per_train_step")


def _build(chain: str, depth: int) -> tuple[object, object]:
    """The flow and a batch of 512 points on its manifold (float64, fixed seed)."""
    import torch

    import pushforward as pf
    from pushforward import manifolds as pm

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    f64 = torch.float64
    if chain == "sphere-affine":
        layers = [pm.NormalizedAffine(3, matrix=torch.eye(3, dtype=f64)
                                      + 0.1 * torch.randn(3, 3, generator=g, dtype=f64))
                  for _ in range(depth)]
        flow = pf.Flow(layers, pm.UniformSphere(3)).double()
        x = torch.nn.functional.normalize(torch.randn(512, 3, generator=g, dtype=f64), dim=-1)
    else:
        if chain == "simplex-generalized":
            layers = [pm.GeneralizedCalibration(4, matrix=torch.eye(4, dtype=f64))
                      for _ in range(depth)]
        else:
            layers = [pm.Calibration(4, scale=torch.tensor(1.0, dtype=f64))
                      for _ in range(depth)]
        flow = pf.Flow(layers, pm.Dirichlet(4, concentration=torch.tensor(2.0, dtype=f64)))
        flow = flow.double()
        x = torch.softmax(torch.randn(512, 4, generator=g, dtype=f64), dim=-1)
    return flow, x


def _median_ms(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median wall and thread-CPU milliseconds of ``fn`` after a warm-up."""
    for _ in range(max(3, repeats // 5)):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.thread_time()
        fn()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.thread_time() - c0)
    return 1e3 * statistics.median(wall), 1e3 * statistics.median(cpu)


def worker(chain: str, depth: int, repeats: int) -> dict[str, list[float]]:
    """Measure one chain in this process (one thread); ``{op: [wall_ms, cpu_ms]}``."""
    import torch

    import pushforward as pf

    torch.set_num_threads(1)
    flow, x = _build(chain, depth)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-3)

    def step() -> None:
        opt.zero_grad()
        loss = -flow.log_prob(x).mean()
        loss.backward()
        opt.step()

    def log_prob() -> None:
        with torch.no_grad():
            flow.log_prob(x)

    def sample() -> None:
        with torch.no_grad():
            flow.sample(512)

    out = {"train_step": _median_ms(step, repeats)}
    pf.set_validation(False)
    out["train_step_no_validation"] = _median_ms(step, repeats)
    pf.set_validation(True)
    out["log_prob_no_grad"] = _median_ms(log_prob, repeats)
    out["sample"] = _median_ms(sample, repeats)
    result = {k: list(v) for k, v in out.items()}
    result["ops_per_train_step"] = [float(_count_ops(step))] * 2
    return result


def _count_ops(fn: Callable[[], object]) -> int:
    """Top-level ATen operations of one call (forward, backward, optimiser): load-independent."""
    from torch.profiler import profile

    with profile() as prof:
        fn()
    return sum(1 for e in prof.events() if e.name.startswith("aten::")
               and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")))


def _load() -> float:
    return os.getloadavg()[0]


def _run(tree: Path, chain: str, depth: int, repeats: int) -> dict[str, list[float]]:
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", chain,
           "--depth", str(depth), "--repeats", str(repeats)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, cwd=tree)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _commit(tree: Path) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _summary(rounds: list[dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    return {op: {"wall_ms": statistics.median(r[op][0] for r in rounds),
                 "cpu_ms": statistics.median(r[op][1] for r in rounds)} for op in OPS}


def _markdown(record: dict) -> str:
    lines = [
        "# Manifold flows: deep chains of small layers",
        "",
        f"Batch 512, float64, one thread, {record['depth']} layers, plain Adam; medians of "
        f"{record['repeats']} repeats × {record['rounds']} alternating rounds (fresh process "
        f"each); load average {record['load_before']:.2f} before, {record['load_after']:.2f} "
        "after (2 shared cores). Milliseconds: wall (thread CPU); on a loaded machine the thread "
        "CPU time is the meaningful column (wall includes waiting for a core). "
        "`ops_per_train_step`: top-level ATen operations of one training step (a count).",
        "",
    ]
    base = record.get("baseline")
    head = "| chain | operation | this code (" + record["commit"] + ") |"
    rule = "|---|---|---|"
    if base:
        head += f" before ({base['commit']}) | speed-up |"
        rule += "---|---|"
    lines += [head, rule]
    for chain in CHAINS:
        for op in OPS:
            now = record["results"][chain][op]
            count = op == "ops_per_train_step"
            row = (f"| {chain} | {op} | {now['wall_ms']:.0f} |" if count else
                   f"| {chain} | {op} | {now['wall_ms']:.2f} ({now['cpu_ms']:.2f}) |")
            if base and chain in base["results"] and op in base["results"][chain]:
                old = base["results"][chain][op]
                row += (f" {old['wall_ms']:.0f} | {old['wall_ms'] / now['wall_ms']:.2f}× |"
                        if count else f" {old['wall_ms']:.2f} ({old['cpu_ms']:.2f}) |"
                        f" {old['wall_ms'] / now['wall_ms']:.2f}× (CPU "
                        f"{old['cpu_ms'] / now['cpu_ms']:.2f}×) |")
            lines.append(row)
    if base and base.get("note"):
        lines += ["", base["note"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=CHAINS, help=argparse.SUPPRESS)
    parser.add_argument("--depth", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", type=Path, default=None,
                        help="checkout of an older commit to time alternately")
    parser.add_argument("--baseline-label", default=None,
                        help="name of the baseline (default: its git commit)")
    parser.add_argument("--label", default=None, help="name of this code (default: git commit)")
    parser.add_argument("--out", type=Path, default=HERE / "manifolds")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.depth, args.repeats)))
        return
    trees = {"current": ROOT}
    if args.baseline is not None:
        trees["baseline"] = args.baseline.resolve()
    load_before = _load()
    rounds: dict[str, dict[str, list]] = {k: {c: [] for c in CHAINS} for k in trees}
    for r in range(args.rounds):
        for chain in CHAINS:
            for name, tree in (trees.items() if r % 2 == 0 else reversed(trees.items())):
                rounds[name][chain].append(_run(tree, chain, args.depth, args.repeats))
                print(f"round {r + 1}/{args.rounds} {chain:20s} {name:8s} train step "
                      f"{rounds[name][chain][-1]['train_step'][0]:.2f} ms", flush=True)
    record = {
        "commit": args.label or _commit(ROOT), "depth": args.depth, "repeats": args.repeats,
        "rounds": args.rounds, "batch": 512, "dtype": "float64", "threads": 1,
        "load_before": load_before, "load_after": _load(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "results": {c: _summary(rounds["current"][c]) for c in CHAINS},
    }
    json_path = args.out.with_suffix(".json")
    if "baseline" in trees:
        record["baseline"] = {
            "commit": args.baseline_label or _commit(trees["baseline"]),
            "note": "Before: the same chains on the older commit, timed in the same run "
                    "(alternating rounds).",
            "results": {c: _summary(rounds["baseline"][c]) for c in CHAINS},
        }
    elif json_path.exists():
        previous = json.loads(json_path.read_text()).get("baseline")
        if previous:
            previous["note"] = ("Before: kept from an earlier run of this script "
                                f"({previous.get('commit')}); not timed in this run.")
            record["baseline"] = previous
    json_path.write_text(json.dumps(record, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(_markdown(record))
    print(_markdown(record))


if __name__ == "__main__":
    main()
