"""Sampling a continuous flow: ``push`` (the ODE alone) against the solve with the trace.

One command, one process, one thread::

    nice -n 10 python benchmarks/cnf_sampling.py        # Markdown table + cnf_sampling.json
    python benchmarks/cnf_sampling.py --steps 50 --repeats 3 --out /tmp/s.json   # smoke test

Two models trained by flow matching for ``--steps`` steps: ``pf.flows.CNF(2)`` on moons and the
``sphere-cnf`` preset on the Earth fire data (``--earth``; skipped when the folder is absent).
For ``--n`` base draws ``z`` of each, timed in alternation, ``--repeats`` times (medians):

- ``forward``: ``transform(z)``, what ``Flow.sample`` ran before: the state and the trace
  (exact: one vector-Jacobian product per dimension and field evaluation; on the sphere the
  Riemannian divergence);
- ``push``: ``transform.push(z)``, what ``Flow.sample`` runs now: the state alone;
- ``odeint``: ``torchdiffeq.odeint`` of the same field called directly, the loop a user of a
  flow-matching package writes (no pushforward code in it): the floor of the solve.

Each with the transform's adaptive solver (dopri5) and with RK4 on 20 steps. Reported beside
the times: the largest distance of each result to a float64 reference (dopri5 at rtol 1e-10),
and the field evaluations of one solve.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchdiffeq
from sklearn.datasets import make_moons

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pushforward as pf  # noqa: E402
from pushforward.data.datasets import load_dataset  # noqa: E402
from pushforward.training.objectives import FlowMatching  # noqa: E402

EARTH = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "earth"
SOLVERS = {"dopri5": {}, "rk4 × 20": {"method": "rk4", "steps": 20}}


def models(steps: int, earth: Path) -> dict[str, pf.Flow]:
    """The two trained flows (moons CNF; fire sphere-cnf where the data is present)."""
    torch.manual_seed(0)
    moons = torch.tensor(make_moons(4096, noise=0.05, random_state=0)[0], dtype=torch.float32)
    cnf = pf.flows.CNF(2, hidden=(64, 64))
    pf.fit(cnf, moons, steps=steps, objective="flow-matching", progress=False,
           handle_signals=False)
    out = {"CNF, moons (d = 2)": cnf}
    if (earth / "fire.csv").exists():
        bundle = load_dataset(earth / "fire.csv", seed=0, manifold="sphere")
        sphere = pf.flows.build("sphere-cnf", features=3)
        pf.fit(sphere, bundle.train, steps=steps, objective=FlowMatching(coupling="independent"),
               progress=False, handle_signals=False)
        out["sphere-cnf, fire (S²)"] = sphere
    return out


def direct(transform: torch.nn.Module, method: str, steps: int | None, z: torch.Tensor
           ) -> Callable[[], torch.Tensor]:
    """``x`` from ``z`` by ``torchdiffeq.odeint`` of the field itself (the sphere's: tangent)."""
    sphere = isinstance(transform, pf.manifolds.SphereCNF)
    velocity = transform.velocity if sphere else None  # the projected (tangent) field
    field = transform.field  # a CNF's own network (its t1 is 1 here)
    options = {} if steps is None else {"step_size": 1.0 / steps}
    rtol, atol = transform.rtol or 1e-5, transform.atol or 1e-5

    def rhs(t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        t = t.expand(z.shape[0])
        return field(t, z) if velocity is None else velocity(t, z)

    def run() -> torch.Tensor:
        times = torch.tensor([0.0, 1.0], dtype=z.dtype)
        x = torchdiffeq.odeint(rhs, z, times, rtol=rtol, atol=atol, method=method,
                               options=options)[-1]
        return torch.nn.functional.normalize(x, dim=-1) if sphere else x

    return run


def measure(name: str, flow: pf.Flow, n: int, repeats: int) -> list[dict]:
    flow.eval()
    transform = flow.transform
    reference = copy.deepcopy(flow).double().transform
    z = flow.base.sample(n)
    rows = []
    with torch.no_grad():
        with reference.solver(rtol=1e-10, atol=1e-12):
            exact = reference.push(z.double())
        for solver, options in SOLVERS.items():
            scope = transform.solver(**options) if options else contextlib.nullcontext()
            with scope:
                calls = {"forward": lambda: transform(z)[0], "push": lambda: transform.push(z),
                         "odeint": direct(transform, transform.method, transform.steps, z)}
                row: dict = {"model": name, "solver": solver, "n": n}
                for key, call in calls.items():
                    x = call()
                    row[f"{key}_error"] = float((x.double() - exact).norm(dim=-1).max())
                    if key != "odeint":
                        row[f"{key}_nfe"] = transform.nfe
                seconds: dict[str, list[float]] = {key: [] for key in calls}
                for _ in range(repeats):
                    for key, call in calls.items():
                        start = time.process_time()
                        call()
                        seconds[key].append(time.process_time() - start)
                for key, values in seconds.items():
                    row[f"{key}_ms"] = 1e3 * statistics.median(values)
            row["speedup"] = row["forward_ms"] / row["push_ms"]
            row["push_over_odeint"] = row["push_ms"] / row["odeint_ms"]
            rows.append(row)
            print(table([row]).splitlines()[-1], flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | solver | forward ms (NFE) | push ms (NFE) | forward / push | odeint ms "
             "| push / odeint | max error: forward, push, odeint |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['solver']} | {r['forward_ms']:.1f} ({r['forward_nfe']}) "
            f"| {r['push_ms']:.1f} ({r['push_nfe']}) | {r['speedup']:.2f}× "
            f"| {r['odeint_ms']:.1f} | {r['push_over_odeint']:.2f} "
            f"| {r['forward_error']:.1e}, {r['push_error']:.1e}, {r['odeint_error']:.1e} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500, help="flow-matching training steps")
    parser.add_argument("--n", type=int, default=1024, help="samples per solve")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--earth", type=Path, default=EARTH)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("cnf_sampling.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    load = os.getloadavg()
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    rows = []
    for name, flow in models(args.steps, args.earth).items():
        rows.extend(measure(name, flow, args.n, args.repeats))
    head = (f"{started}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
            f"1 thread, process CPU time, load average {[round(v, 2) for v in load]} at start; "
            f"{args.steps} flow-matching steps, {args.n} samples, {args.repeats} repeats "
            "(medians); errors: largest distance to the float64 reference")
    text = f"{head}\n\n{table(rows)}\n"
    print()
    print(text)
    args.out.write_text(json.dumps({"meta": {"date": started, "load_average": load,
                                             "config": {k: str(v) for k, v in vars(args).items()}},
                                    "rows": rows}, indent=1))
    args.out.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
