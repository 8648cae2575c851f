"""FFJORD against RNODE on a 2-D toy: test NLL, function evaluations per solve, time.

One command, one process::

    nice -n 10 python benchmarks/cnf.py                        # Markdown table + cnf.json
    python benchmarks/cnf.py --dataset pinwheel --steps 500 --seeds 0 1 --out results.json

Both runs train ``pf.flows.CNF(2)`` (gated time-conditioned MLP field, exact trace, dopri5 at
rtol = atol = 1e-5, float32) with ``pf.fit`` for the same number of Adam steps from the same
initialisation and data order; they differ only in RNODE's weights (``--kinetic``,
``--jacobian``; FFJORD: both 0). ``fit`` adds the penalty to the loss and logs the NFE of every
step. Reported per run: test NLL (nats, exact trace, same tolerances), NFE per solve (mean
over training steps, and of one solve over the whole test set), the learned field's kinetic
energy ``mean ∫‖f‖² dt`` on the test set, training wall-clock and CPU time. One thread.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pushforward as pf  # noqa: E402
from pushforward.continuous import CNF  # noqa: E402


def run(name: str, kinetic: float, jacobian: float, train: torch.Tensor, test: torch.Tensor,
        args: argparse.Namespace, seed: int) -> dict:
    torch.manual_seed(seed)
    flow = pf.flows.CNF(2, hidden=tuple(args.hidden), kinetic=kinetic, jacobian=jacobian,
                        rtol=args.tol, atol=args.tol)
    wall, cpu = time.perf_counter(), time.process_time()
    history = pf.fit(flow, train, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                     seed=seed, progress=False, handle_signals=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    probe = CNF(flow.transform.field, 2, kinetic=1.0, rtol=args.tol, atol=args.tol)
    with torch.no_grad():
        nll = float(-flow.log_prob(test).mean())
        test_nfe = flow.transform.nfe
        probe.inverse(test)
        energy = float(probe.kinetic_energy().mean())
    return {
        "model": name, "seed": seed, "kinetic": kinetic, "jacobian": jacobian,
        "test_nll": nll, "train_nfe_per_solve": history.extra["nfe_forward_mean"],
        "test_nfe": test_nfe, "kinetic_energy": energy, "train_wall_s": wall,
        "train_cpu_s": cpu, "final_train_nll": history.step_nll[-1],
    }


def table(results: list[dict]) -> str:
    rows = ["| model | λ_K, λ_J | test NLL (nats) | NFE/solve (train) | NFE (test solve) "
            "| kinetic energy | train wall (s) | train CPU (s) |",
            "|---|---|---|---|---|---|---|---|"]
    for model in dict.fromkeys(r["model"] for r in results):
        runs = [r for r in results if r["model"] == model]

        def cell(key: str, fmt: str, runs: list[dict] = runs) -> str:
            values = [r[key] for r in runs]
            text = format(statistics.mean(values), fmt)
            if len(values) > 1:
                text += f" ± {format(statistics.stdev(values), fmt)}"
            return text

        rows.append(
            f"| {model} | {runs[0]['kinetic']:g}, {runs[0]['jacobian']:g} "
            f"| {cell('test_nll', '.3f')} | {cell('train_nfe_per_solve', '.1f')} "
            f"| {cell('test_nfe', '.0f')} | {cell('kinetic_energy', '.2f')} "
            f"| {cell('train_wall_s', '.0f')} | {cell('train_cpu_s', '.0f')} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="8gaussians", choices=pf.data.toy_names())
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    parser.add_argument("--tol", type=float, default=1e-5)
    parser.add_argument("--kinetic", type=float, default=0.05)
    parser.add_argument("--jacobian", type=float, default=0.05)
    parser.add_argument("--n-train", type=int, default=10000)
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("cnf.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    results = []
    for seed in args.seeds:
        data = pf.data.toy(args.dataset, args.n_train + args.n_test, seed=seed)
        data = torch.as_tensor(data, dtype=torch.float32)
        train, test = data[: args.n_train], data[args.n_train:]
        for name, kinetic, jacobian in (("FFJORD", 0.0, 0.0),
                                        ("RNODE", args.kinetic, args.jacobian)):
            result = run(name, kinetic, jacobian, train, test, args, seed)
            print(json.dumps(result), flush=True)
            results.append(result)

    text = table(results)
    print()
    print(f"{args.dataset}, {args.steps} Adam steps (lr {args.lr:g}, batch {args.batch_size}), "
          f"hidden {args.hidden}, dopri5 rtol=atol={args.tol:g}, seeds {args.seeds}")
    print(text)
    record = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.platform(), "torch": torch.__version__,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "results": results, "table": text,
    }
    args.out.write_text(json.dumps(record, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
