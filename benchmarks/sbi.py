"""pushforward estimators inside sbi's NPE against sbi's own (nflows MAF/NSF, zuko NSF).

One command, one process, one thread::

    nice -n 10 python benchmarks/sbi.py                 # Markdown table + benchmarks/sbi.json
    python benchmarks/sbi.py --quick                    # smoke test (a minute or two)
    python benchmarks/sbi.py --tasks two_moons --seeds 0 1 2 --simulations 3000

Every estimator is trained by the same ``NPE(prior, density_estimator=...)`` call with sbi's
default training (batch 200, lr 5e-4, early stopping after 20 epochs without validation
improvement), on the same simulations per seed; each keeps its library's default size
(pushforward's preset defaults via ``pf.integrations.sbi.build(name)``; sbi's ``"maf"``,
``"nsf"``, ``"zuko_nsf"`` strings). Reported per task and estimator (mean ± sd over seeds):
C2ST between 2,000 posterior samples and 2,000 reference samples at ``x_o`` (sbi's
``c2st``: random forest, 5 folds; 0.5 = indistinguishable), the training wall time, epochs,
milliseconds per epoch, and the parameter count.

Tasks and their reference posteriors:

- ``gaussian_linear`` (sbi's linear-Gaussian test set-up): ``θ ~ N(0, I₃)``,
  ``x | θ ~ N(θ − 1, 0.3 I₃)``, ``x_o = 0``. The posterior is Gaussian with a closed form
  (``sbi.simulators.linear_gaussian.true_posterior_linear_gaussian_mvn_prior``).
- ``two_moons`` (Greenberg et al. 2019; sbibm's simulator): ``θ ~ U(−1, 1)²``,
  ``a ~ U(−π/2, π/2)``, ``r ~ N(0.1, 0.01²)``, ``p = (r cos a + 0.25, r sin a)``,
  ``x = p + (−|θ₁ + θ₂|/√2, (θ₂ − θ₁)/√2)``, ``x_o = 0``. Reference by exact sampling: the
  map ``θ ↦ u(θ) = (−|θ₁ + θ₂|/√2, (θ₂ − θ₁)/√2)`` is orthogonal (|det| = 1) on each of its
  two branches, so ``p(θ | x_o) ∝ 1[θ ∈ box] · p_P(x_o − u(θ))``: drawing ``p ~ p_P``
  (exactly: ``a``, ``r``), solving ``u = x_o − p`` for ``θ`` on a branch chosen with
  probability 1/2, and keeping ``θ`` inside the prior box gives i.i.d. posterior samples
  (rejection sampling with the likelihood as proposal; no MCMC, no tolerance).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# This file is named like the package it benchmarks: drop its folder from the import path so
# ``import sbi`` finds the library, not this script.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

import pushforward as pf  # noqa: E402

try:
    import sbi
    from sbi.inference import NPE
    from sbi.simulators.linear_gaussian import (
        linear_gaussian,
        true_posterior_linear_gaussian_mvn_prior,
    )
    from sbi.utils import BoxUniform
    from sbi.utils.metrics import c2st
except ImportError:  # pragma: no cover
    sys.exit("benchmarks/sbi.py needs sbi: pip install pushforward[sbi]")

HERE = Path(__file__).resolve().parent
ESTIMATORS: dict[str, Callable[[], object]] = {
    "pushforward maf": lambda: pf.integrations.sbi.build("maf"),
    "pushforward nsf": lambda: pf.integrations.sbi.build("nsf"),
    # sbi's sizes: 5 layers of 50 hidden units (and 10 bins), for the CPU per epoch side by side
    "pushforward maf (50×2)": lambda: pf.integrations.sbi.build("maf", hidden=(50, 50)),
    "pushforward nsf (50×2, 10 bins)": lambda: pf.integrations.sbi.build(
        "nsf", hidden=(50, 50), bins=10),
    "sbi maf (nflows)": lambda: "maf",
    "sbi nsf (nflows)": lambda: "nsf",
    "sbi zuko_nsf": lambda: "zuko_nsf",
}


# -- tasks -------------------------------------------------------------------------------------
class GaussianLinear:
    """``θ ~ N(0, I)``, ``x = θ − 1 + N(0, 0.3 I)``; the posterior has a closed form."""

    name = "gaussian_linear"

    def __init__(self, dim: int = 3) -> None:
        self.dim = dim
        self.prior = torch.distributions.MultivariateNormal(torch.zeros(dim), torch.eye(dim))
        self.shift, self.cov = -torch.ones(dim), 0.3 * torch.eye(dim)
        self.x_o = torch.zeros(1, dim)

    def simulate(self, theta: Tensor) -> Tensor:
        return linear_gaussian(theta, self.shift, self.cov)

    def reference(self, n: int) -> Tensor:
        posterior = true_posterior_linear_gaussian_mvn_prior(
            self.x_o, self.shift, self.cov, torch.zeros(self.dim), torch.eye(self.dim))
        return posterior.sample((n,))


class TwoMoons:
    """sbibm's two moons at ``x_o = 0``, with an exact i.i.d. reference sampler."""

    name = "two_moons"

    def __init__(self) -> None:
        self.prior = BoxUniform(-torch.ones(2), torch.ones(2))
        self.x_o = torch.zeros(1, 2)

    @staticmethod
    def _p(n: int) -> Tensor:
        a = (torch.rand(n) - 0.5) * math.pi
        r = 0.1 + 0.01 * torch.randn(n)
        return torch.stack([r * torch.cos(a) + 0.25, r * torch.sin(a)], 1)

    def simulate(self, theta: Tensor) -> Tensor:
        u = torch.stack([-(theta[:, 0] + theta[:, 1]).abs() / math.sqrt(2),
                         (theta[:, 1] - theta[:, 0]) / math.sqrt(2)], 1)
        return self._p(theta.shape[0]) + u

    def reference(self, n: int) -> Tensor:
        kept: list[Tensor] = []
        total = 0
        while total < n:
            u = self.x_o - self._p(4 * n)
            u = u[u[:, 0] <= 0]  # u₁ = −|θ₁ + θ₂|/√2 ≤ 0, else no θ maps there
            s = -u[:, 0] * math.sqrt(2) * (torch.randint(0, 2, (u.shape[0],)) * 2 - 1)
            t = u[:, 1] * math.sqrt(2)
            theta = torch.stack([(s - t) / 2, (s + t) / 2], 1)
            theta = theta[(theta.abs() < 1).all(1)]
            kept.append(theta)
            total += theta.shape[0]
        return torch.cat(kept)[:n]


TASKS = {"gaussian_linear": GaussianLinear, "two_moons": TwoMoons}


# -- one run -----------------------------------------------------------------------------------
def run(task: GaussianLinear | TwoMoons, estimator: str, simulations: int, seed: int,
        samples: int, max_epochs: int) -> dict[str, float]:
    torch.manual_seed(seed)
    theta = task.prior.sample((simulations,))
    x = task.simulate(theta)
    torch.manual_seed(seed + 1000)
    npe = NPE(task.prior, density_estimator=ESTIMATORS[estimator](), show_progress_bars=False)
    npe.append_simulations(theta, x)
    start, cpu = time.perf_counter(), time.process_time()
    net = npe.train(max_num_epochs=max_epochs)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    epochs = int(npe._summary["epochs_trained"][-1])
    posterior = npe.build_posterior()
    with torch.no_grad():
        draws = posterior.sample((samples,), x=task.x_o, show_progress_bars=False)
    torch.manual_seed(seed + 2000)
    score = float(c2st(draws, task.reference(samples), seed=seed))
    return {"c2st": score, "seconds": seconds, "epochs": epochs, "cpu_seconds": cpu,
            "ms_per_epoch": 1000 * seconds / max(epochs, 1),
            "cpu_ms_per_epoch": 1000 * cpu / max(epochs, 1),
            "parameters": sum(p.numel() for p in net.parameters())}


def _cell(values: list[float], digits: int) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _cpu(runs: list[dict[str, float]]) -> str:
    values = [r["cpu_ms_per_epoch"] for r in runs if "cpu_ms_per_epoch" in r]
    return _cell(values, 0) if values else "n/a"


def table(results: dict[str, dict[str, list[dict[str, float]]]], command: str) -> str:
    lines = [
        "# pushforward inside sbi: NPE posterior accuracy and training time",
        "",
        f"Reproduce: `{command}` ({platform.processor() or platform.machine()}, 1 thread, "
        f"torch {torch.__version__}, sbi {sbi.__version__}).",
        "",
        "C2ST against the reference posterior at x_o (0.5 is best); mean ± sd over seeds. "
        "Wall times come from a shared machine (other jobs running), so they vary; CPU time "
        "per epoch (one thread, this process only) is the steadier measure of cost.",
        "",
        "<!-- --8<-- [start:table] -->",
        "| task | estimator | C2ST | train s (wall) | epochs | CPU ms / epoch | parameters |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, per in results.items():
        for name, runs in per.items():
            lines.append(
                f"| {task} | {name} | {_cell([r['c2st'] for r in runs], 3)} | "
                f"{_cell([r['seconds'] for r in runs], 1)} | "
                f"{_cell([r['epochs'] for r in runs], 0)} | "
                f"{_cpu(runs)} | "
                f"{int(runs[0]['parameters']):,} |")
    lines.append("<!-- --8<-- [end:table] -->")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--estimators", nargs="+", default=list(ESTIMATORS),
                        choices=list(ESTIMATORS))
    parser.add_argument("--simulations", type=int, default=None,
                        help="simulations per run (default: 2000 gaussian_linear, "
                             "3000 two_moons)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--samples", type=int, default=2000, help="posterior/reference samples")
    parser.add_argument("--max-epochs", type=int, default=2**31 - 1)
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny budgets")
    parser.add_argument("--resume", action="store_true",
                        help="keep the results already in STEM.json and run only the missing "
                             "(task, estimator) pairs")
    parser.add_argument("--render", action="store_true",
                        help="only rewrite STEM.md from the results in STEM.json")
    parser.add_argument("--out", default=str(HERE / "sbi"),
                        help="output stem: STEM.json and STEM.md")
    args = parser.parse_args(argv)
    args.out = str(Path(args.out).resolve())
    if args.render:
        record = json.loads(Path(args.out).with_suffix(".json").read_text())
        Path(args.out).with_suffix(".md").write_text(table(record["results"], record["command"]))
        return
    torch.set_num_threads(1)
    os.chdir(tempfile.mkdtemp(prefix="sbi-benchmark-"))  # sbi's TensorBoard logs go to ./sbi-logs
    if args.quick:
        args.seeds, args.samples, args.max_epochs = args.seeds[:1], 500, 5
    command = "python benchmarks/sbi.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    stored = Path(args.out).with_suffix(".json")
    if args.resume and stored.is_file():
        previous = json.loads(stored.read_text())
        results = previous["results"]
        command = previous["command"] + " ; " + command.strip()
    for task_name in args.tasks:
        task = TASKS[task_name]()
        simulations = args.simulations or (2000 if task_name == "gaussian_linear" else 3000)
        results.setdefault(task_name, {})
        for name in args.estimators:
            if name in results[task_name]:
                continue  # --resume: done already
            runs = []
            for seed in args.seeds:  # the same simulations for every estimator
                record = run(task, name, simulations, seed, args.samples, args.max_epochs)
                record["simulations"] = simulations
                runs.append(record)
                print(f"{task_name:16s} {name:18s} seed {seed}: C2ST {record['c2st']:.3f}, "
                      f"{record['seconds']:.1f} s, {record['epochs']} epochs", flush=True)
            results[task_name][name] = runs
            write(results, command.strip(), Path(args.out))  # after each estimator: partial
    print(table(results, command.strip()))


def write(results: dict[str, dict[str, list[dict[str, float]]]], command: str,
          stem: Path) -> None:
    stem.with_suffix(".json").write_text(json.dumps({
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "sbi": sbi.__version__, "pushforward": pf.__version__,
        "results": results}, indent=2) + "\n")
    stem.with_suffix(".md").write_text(table(results, command))


if __name__ == "__main__":
    main()
