"""Flow matching against maximum-likelihood CNF training (FFJORD, RNODE) and torchcfm.

One command, one process, one thread::

    nice -n 10 python benchmarks/flow_matching.py            # Markdown table + flow_matching.json
    python benchmarks/flow_matching.py --quick               # smoke test (a minute or two)
    python benchmarks/flow_matching.py --datasets moons digits --fm-steps 2000
    python benchmarks/flow_matching.py --methods "flow matching" "torchcfm OT-CFM" --seed 1
    python benchmarks/flow_matching.py --merge RUN1.json RUN2.json   # mean ± std over seeds

Per dataset (the 2-D toys with their true NLL where it has a closed form or a 1-D quadrature;
scikit-learn's 8×8 digits, 64-D, dequantised and logit-transformed, in bits/dim):

- ``flow matching`` trains ``pf.flows.build("cnf", features=d)`` (the preset defaults) with
  ``pf.fit(..., objective="flow-matching")`` (its defaults: OT pairing, CondOT path) for
  ``--fm-steps`` steps; its training wall time ``T`` is the budget of the others.
- ``torchcfm OT-CFM`` (if installed; ``pip install --no-deps torchcfm pot``) trains the same
  field architecture from the same initial weights on the same batches, for the same steps,
  with the same optimiser, peak lr (``--lr``) and schedule (no weight average), its loss from
  torchcfm's
  ``ExactOptimalTransportConditionalFlowMatcher`` (σ = 0): ours and theirs in one process.
- ``FFJORD`` and ``RNODE`` (``kinetic = jacobian = 0.01``) train the same preset by maximum
  likelihood (dopri5, exact trace in 2-D, Hutchinson in 64-D) for as many steps as fit in
  ``T`` seconds (calibrated on a few steps): equal wall-clock budget.

Per-step speed, ours against torchcfm: ``--speed-rounds`` alternating rounds of
``--speed-steps`` steps each (after one untimed warm-up round of both), the median; ``--clock
cpu`` times by this thread's CPU time instead of the wall clock, for a loaded machine.

Reported: test NLL of the exact CNF density (exact trace, dopri5 rtol = atol = 1e-5, the same
evaluation for every model), training time (``--clock``) and steps, milliseconds per step
(in the run and alternating), the adaptive solver's NFE for one sampling solve, and the NFE a
fixed-step RK4 sampler needs to reach a fixed accuracy (RMS distance to a dopri5 reference at
1e-7 below ``--accuracy``, step counts 1, 2, 4, ..., 256).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pushforward as pf  # noqa: E402
from pushforward.continuous import CNF  # noqa: E402

TOYS = ("checkerboard", "8gaussians", "moons", "pinwheel", "rings")
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
clock = time.perf_counter  # set by --clock


# -- true densities of the toys ------------------------------------------------------------------
def _log_mean_exp(values: np.ndarray, axis: int) -> np.ndarray:
    top = values.max(axis=axis, keepdims=True)
    return (top + np.log(np.exp(values - top).mean(axis=axis, keepdims=True))).squeeze(axis)


def _gauss2(x: np.ndarray, centers: np.ndarray, std: float) -> np.ndarray:
    """log N(x; c, std² I) for every pair, ``(n, m)``."""
    d2 = ((x[:, None, :] - centers[None]) ** 2).sum(-1)
    return -d2 / (2 * std**2) - math.log(2 * math.pi * std**2)


def true_log_density(name: str, x: np.ndarray) -> np.ndarray | None:
    """log p(x) of the generator in ``pf.data.toy`` (closed form or 1-D quadrature), or None."""
    if name == "checkerboard":  # uniform on 8 squares of side 2
        inside = ((np.floor(x[:, 0] / 2) + np.floor(x[:, 1] / 2)) % 2 == 0) & (
            np.abs(x).max(1) <= 4)
        return np.where(inside, -math.log(32.0), -np.inf)
    if name == "8gaussians":
        angles = np.arange(8) * (2 * math.pi / 8)
        centers = 4 * np.stack([np.cos(angles), np.sin(angles)], 1) / math.sqrt(2)
        return _log_mean_exp(_gauss2(x, centers, 0.5 / math.sqrt(2)), 1)
    theta = (np.arange(4096) + 0.5) * (2 * math.pi / 4096)
    circle = np.stack([np.cos(theta), np.sin(theta)], 1)
    if name == "rings":  # radii (1..4)·3/4, noise 0.08·3/4, uniform angle
        parts = [_log_mean_exp(_gauss2(x, 0.75 * r * circle, 0.06), 1) for r in (1, 2, 3, 4)]
        return _log_mean_exp(np.stack(parts, 1), 1)
    if name == "moons":  # arcs uniform in the parameter (linspace), noise 0.1
        s = (np.arange(2048) + 0.5) * (math.pi / 2048)
        outer = np.stack([np.cos(s), np.sin(s)], 1)
        inner = np.stack([1 - np.cos(s), 0.5 - np.sin(s)], 1)
        both = np.stack([_log_mean_exp(_gauss2(x, outer, 0.1), 1),
                         _log_mean_exp(_gauss2(x, inner, 0.1), 1)], 1)
        return _log_mean_exp(both, 1)
    return None


# -- data ----------------------------------------------------------------------------------------
def load(name: str, n_train: int, n_test: int, seed: int) -> dict:
    if name in TOYS:
        data = torch.as_tensor(pf.data.toy(name, n_train + n_test, seed=seed), dtype=torch.float32)
        train, test = data[:n_train], data[n_train:]
        log_p = true_log_density(name, test.double().numpy())
        true = None if log_p is None else float(-log_p.mean())
        return {"train": train, "test": test, "unit": "nats", "true": true, "shift": 0.0}
    if name != "digits":
        raise ValueError(f"unknown dataset {name!r}")
    bundle = pf.data.load_dataset("digits", seed=seed)
    logit = bundle.preprocess[0]
    generator = torch.Generator().manual_seed(seed)

    def flat(images: object, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        x = images[torch.arange(count)]  # one fixed uniform dequantisation
        y, ladj = logit.inverse(x)  # logit space, where the CNF works
        return y.reshape(count, -1).float(), ladj

    train, _ = flat(bundle.train, len(bundle.train))
    test, test_ladj = flat(bundle.test, min(n_test, len(bundle.test)))
    # nats of the dequantised pixels = CNF nats in logit space − log|det ∂y/∂x|
    return {"train": train, "test": test, "unit": "bits/dim", "true": None,
            "shift": float(-test_ladj.mean()), "levels": bundle.levels}


def report_nll(nll: float, data: dict) -> float:
    if data["unit"] == "nats":
        return nll
    return float(pf.data.bits_per_dim(nll + data["shift"], data["test"].shape[1],
                                      data["levels"]))


# -- evaluation ----------------------------------------------------------------------------------
def exact_nll(flow: pf.Flow, test: torch.Tensor) -> float:
    d = test.shape[1]
    cnf = CNF(flow.transform.field, d, trace="exact", rtol=1e-5, atol=1e-5)
    exact = pf.Flow(cnf, pf.StandardNormal(d))
    with torch.no_grad():
        values = torch.cat([exact.log_prob(part) for part in test.split(1000)])
    return float(-values.double().mean())


def sampling_cost(flow: pf.Flow, n: int, accuracy: float, seed: int) -> dict:
    """Adaptive NFE of one sampling solve, and the RK4 NFE reaching ``accuracy`` (RMS)."""
    cnf = flow.transform
    z = torch.randn(n, cnf.event_shape[0], generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        with cnf.solver(method="dopri5", rtol=1e-7, atol=1e-7):
            reference = cnf(z)[0]
        with cnf.solver(method="dopri5", rtol=1e-5, atol=1e-5):
            cnf(z)
            adaptive = cnf.nfe
        scale = float(reference.std())
        for steps in (1, 2, 4, 8, 16, 32, 64, 128, 256):
            with cnf.solver(method="rk4", steps=steps):
                x = cnf(z)[0]
            error = float((x - reference).pow(2).sum(-1).mean().sqrt()) / scale
            if error < accuracy:
                return {"nfe_dopri5": adaptive, "nfe_rk4": 4 * steps, "rk4_error": error}
    return {"nfe_dopri5": adaptive, "nfe_rk4": None, "rk4_error": error}


# -- training ------------------------------------------------------------------------------------
def preset(d: int, seed: int, **options: object) -> pf.Flow:
    torch.manual_seed(seed)
    return pf.flows.build("cnf", features=d, **options)


def train_ours(data: dict, args: argparse.Namespace, seed: int,
               steps: int | None = None) -> tuple[pf.Flow, dict]:
    flow = preset(data["train"].shape[1], seed)
    start = clock()
    history = pf.fit(flow, data["train"], steps=steps or args.fm_steps,
                     batch_size=args.batch_size, objective="flow-matching", seed=seed,
                     progress=False, handle_signals=False)
    wall = clock() - start
    return flow, {"train_s": wall, "steps": history.steps}


def train_torchcfm(data: dict, args: argparse.Namespace, seed: int,
                   steps: int | None = None) -> tuple[pf.Flow, dict]:
    from torchcfm.conditional_flow_matching import ExactOptimalTransportConditionalFlowMatcher

    flow = preset(data["train"].shape[1], seed)  # same initial weights as ours
    field = flow.transform.field
    matcher = ExactOptimalTransportConditionalFlowMatcher(sigma=0.0)
    optimizer = torch.optim.Adam(field.parameters(), lr=args.lr)
    total = steps or args.fm_steps
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, total) / total)))
    train = data["train"]
    generator = torch.Generator().manual_seed(seed)
    start = clock()
    for _ in range(total):
        x1 = train[torch.randint(len(train), (args.batch_size,), generator=generator)]
        x0 = torch.randn_like(x1)
        t, xt, ut = matcher.sample_location_and_conditional_flow(x0, x1)
        loss = (field(t, xt) - ut).pow(2).sum(-1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(field.parameters(), 5.0)
        optimizer.step()
        schedule.step()
    wall = clock() - start
    return flow, {"train_s": wall, "steps": total}


def train_mle(data: dict, args: argparse.Namespace, seed: int, budget: float,
              rnode: bool) -> tuple[pf.Flow, dict]:
    d = data["train"].shape[1]
    options = {"kinetic": 0.01, "jacobian": 0.01} if rnode else {}
    probe = preset(d, seed, **options)
    calibration = max(3, args.calibration_steps)
    start = clock()
    pf.fit(probe, data["train"], steps=calibration, batch_size=args.batch_size, seed=seed,
           progress=False, handle_signals=False)
    per_step = (clock() - start) / calibration
    steps = max(1, int(budget / per_step))
    flow = preset(d, seed, **options)
    start = clock()
    history = pf.fit(flow, data["train"], steps=steps, batch_size=args.batch_size, seed=seed,
                     progress=False, handle_signals=False)
    wall = clock() - start
    return flow, {"train_s": wall, "steps": history.steps}


METHODS = ("flow matching", "torchcfm OT-CFM", "FFJORD", "RNODE")


def per_step_speed(data: dict, args: argparse.Namespace, seed: int) -> dict | None:
    """ms per step of ``pf.fit(objective="flow-matching")`` and of torchcfm's loop, alternating.

    ``--speed-rounds`` rounds of ``--speed-steps`` steps each, ours then theirs, after one
    untimed warm-up round of each (first calls: POT, Adam's state, allocator); the median of
    the rounds. Same field, initial weights, batch size, optimiser, clipping and schedule; both
    pair noise and data by POT's exact assignment.
    """
    try:
        import torchcfm  # noqa: F401
    except ImportError:
        return None
    ours, theirs = [], []
    for round_ in range(args.speed_rounds + 1):
        a = train_ours(data, args, seed, steps=args.speed_steps)[1]
        b = train_torchcfm(data, args, seed, steps=args.speed_steps)[1]
        if round_:  # round 0 warms up
            ours.append(1000 * a["train_s"] / a["steps"])
            theirs.append(1000 * b["train_s"] / b["steps"])
    return {"ours_ms": float(np.median(ours)), "torchcfm_ms": float(np.median(theirs)),
            "ours_rounds": ours, "torchcfm_rounds": theirs}


def run_dataset(name: str, args: argparse.Namespace, seed: int) -> tuple[list[dict], dict | None]:
    """The rows of ``--methods`` on one dataset, and the alternating per-step speed (or None)."""
    data = load(name, args.n_train, args.n_test, seed)
    results = []
    budget = None
    speed = per_step_speed(data, args, seed) if args.speed_rounds else None
    if speed is not None:
        print(json.dumps({"dataset": name, "speed": speed}), flush=True)
    for method in args.methods:
        if method == "torchcfm OT-CFM":
            try:
                import torchcfm  # noqa: F401
            except ImportError:
                print("torchcfm not installed: skipped", flush=True)
                continue
            flow, info = train_torchcfm(data, args, seed)
        elif method == "flow matching":
            flow, info = train_ours(data, args, seed)
            budget = info["train_s"]
        else:
            if budget is None:
                raise SystemExit("FFJORD/RNODE take flow matching's training time as their "
                                 "budget: list 'flow matching' first in --methods")
            flow, info = train_mle(data, args, seed, budget, rnode=method == "RNODE")
        nll = exact_nll(flow, data["test"])
        row = {"dataset": name, "method": method, "seed": seed, **info,
               "ms_per_step": 1000 * info["train_s"] / max(1, info["steps"]),
               "test_nll": report_nll(nll, data), "unit": data["unit"], "true_nll": data["true"],
               **sampling_cost(flow, args.n_sample, args.accuracy, seed)}
        if speed is not None and method in ("flow matching", "torchcfm OT-CFM"):
            row["ms_per_step_alternating"] = speed[
                "ours_ms" if method == "flow matching" else "torchcfm_ms"]
        print(json.dumps(row), flush=True)
        results.append(row)
    return results, speed


def table(results: list[dict]) -> str:
    rows = ["| dataset | method | test NLL | true NLL | train s | steps | ms/step "
            "| ms/step alternating | NFE dopri5 | NFE rk4 @ accuracy |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for row in results:
        true = "—" if row["true_nll"] is None else f"{row['true_nll']:.3f}"
        rk4 = "> 1024" if row["nfe_rk4"] is None else str(row["nfe_rk4"])
        alternating = row.get("ms_per_step_alternating")
        alternating = "—" if alternating is None else f"{alternating:.1f}"
        rows.append(
            f"| {row['dataset']} | {row['method']} | {row['test_nll']:.3f} {row['unit']} "
            f"| {true} | {row['train_s']:.0f} | {row['steps']} | {row['ms_per_step']:.1f} "
            f"| {alternating} | {row['nfe_dopri5']} | {rk4} |")
    return "\n".join(rows)


def speed_table(speeds: dict) -> str:
    """ms per step, ours and torchcfm's, median of the alternating rounds, and their ratio."""
    rows = ["| dataset | ours ms/step | torchcfm ms/step | torchcfm / ours | rounds |",
            "|---|---|---|---|---|"]
    for name, speed in speeds.items():
        if speed:
            rows.append(f"| {name} | {speed['ours_ms']:.2f} | {speed['torchcfm_ms']:.2f} "
                        f"| {speed['torchcfm_ms'] / speed['ours_ms']:.3f} "
                        f"| {len(speed['ours_rounds'])} |")
    return "\n".join(rows)


def merge(paths: list[Path], out: Path) -> None:
    """Ours against torchcfm over the seeds of several records: mean ± std and per-seed gaps."""
    rows = [row for path in paths for row in json.loads(path.read_text())["results"]]
    pair = ("flow matching", "torchcfm OT-CFM")
    lines = ["| dataset | seeds | ours | torchcfm | ours − torchcfm per seed | ours lower "
             "| ms/step alternating ours / torchcfm (median) |", "|---|---|---|---|---|---|---|"]
    summary = []
    for name in dict.fromkeys(row["dataset"] for row in rows):
        by_seed = {}
        for row in rows:
            if row["dataset"] == name and row["method"] in pair:
                by_seed.setdefault(row["seed"], {})[row["method"]] = row
        seeds = sorted(seed for seed, both in by_seed.items() if len(both) == 2)
        if not seeds:
            continue
        nll = {m: np.array([by_seed[s][m]["test_nll"] for s in seeds]) for m in pair}
        speed = {m: float(np.median([by_seed[s][m].get("ms_per_step_alternating", np.nan)
                                     for s in seeds])) for m in pair}
        gaps = nll[pair[0]] - nll[pair[1]]
        unit = by_seed[seeds[0]][pair[0]]["unit"]
        summary.append({"dataset": name, "seeds": seeds, "unit": unit,
                        **{f"{m} test_nll": nll[m].tolist() for m in pair},
                        **{f"{m} ms_per_step_alternating": speed[m] for m in pair}})
        lines.append(
            f"| {name} ({unit}) | {len(seeds)} "
            f"| {nll[pair[0]].mean():.3f} ± {nll[pair[0]].std():.3f} "
            f"| {nll[pair[1]].mean():.3f} ± {nll[pair[1]].std():.3f} "
            f"| {', '.join(f'{g:+.3f}' for g in gaps)} | {int((gaps < 0).sum())} of {len(seeds)} "
            f"| {speed[pair[0]]:.1f} / {speed[pair[1]]:.1f} |")
    text = "\n".join(lines)
    print(text)
    write(out, {"merged": [str(p) for p in paths], "rows": summary, "table": text}, text)


def write(out: Path, record: dict, text: str) -> None:
    """The record to ``out`` (JSON) and its table to ``out`` with suffix ``.md``."""
    out.write_text(json.dumps(record, indent=2))
    out.with_suffix(".md").write_text(text + "\n")
    print(f"\nwrote {out} and {out.with_suffix('.md')}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=[*TOYS, "digits"],
                        choices=[*TOYS, "digits"])
    parser.add_argument("--fm-steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-3,
                        help="torchcfm's peak lr (default: fit's flow-matching default)")
    parser.add_argument("--n-train", type=int, default=20000)
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--n-sample", type=int, default=1000)
    parser.add_argument("--accuracy", type=float, default=0.01,
                        help="relative RMS sample error the RK4 sampler must reach")
    parser.add_argument("--calibration-steps", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS,
                        help="which to train (FFJORD/RNODE need 'flow matching' before them: "
                             "its time is their budget); none: the per-step speed alone")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="time training by wall clock or by this thread's CPU time (use "
                             "cpu on a loaded machine)")
    parser.add_argument("--speed-rounds", type=int, default=3,
                        help="alternating rounds of ours vs torchcfm per dataset (0: none)")
    parser.add_argument("--speed-steps", type=int, default=200)
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: moons only, 200 steps, small sets")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--merge", type=Path, nargs="+", default=None, metavar="JSON",
                        help="no training: ours against torchcfm over the seeds of these records "
                             "(written to --out, default flow_matching_seeds.json)")
    args = parser.parse_args(argv)
    if args.merge:
        merge(args.merge, args.out or Path(__file__).with_name("flow_matching_seeds.json"))
        return
    if args.quick:
        args.datasets, args.fm_steps, args.n_train, args.n_test = ["moons"], 200, 2000, 300
        args.n_sample, args.calibration_steps = 200, 3
        args.speed_rounds, args.speed_steps = 1, 50
    out = args.out or Path(__file__).with_name(
        "flow_matching_quick.json" if args.quick else "flow_matching.json")
    torch.set_num_threads(1)
    global clock
    clock = CLOCKS[args.clock]

    results, speeds = [], {}
    for name in args.datasets:
        rows, speeds[name] = run_dataset(name, args, args.seed)
        results.extend(rows)
    text = "\n\n".join(part for part in (table(results) if results else "",
                                          speed_table(speeds) if any(speeds.values()) else "")
                         if part)
    print()
    print(f"flow matching: {args.fm_steps} steps, batch {args.batch_size}; MLE at the same "
          f"{args.clock} clock; seed {args.seed}; RK4 accuracy {args.accuracy:g}")
    print(text)
    record = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.platform(), "torch": torch.__version__,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "results": results, "table": text, "speed": speeds,
    }
    write(out, record, text)


if __name__ == "__main__":
    main()
