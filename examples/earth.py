"""Densities on the Earth: the ``sphere-cnf`` preset trained by Riemannian flow matching.

Volcano eruptions, earthquakes, floods and wildfires (latitude/longitude, from
``../shared/data/earth/``; another folder with ``--data``) become unit vectors on S². For each
dataset and seed the script draws the seeded 80/10/10 split of ``pushforward.data.load_dataset``,
trains ``pf.flows.build("sphere-cnf", features=3)`` (default options) with
``pf.fit(..., objective="flow-matching")`` (validation NLL picks the best weights; the test split
is never looked at before the end) and reports the test NLL in nats (density w.r.t. the surface
measure of the unit sphere; uniform: log 4π = 2.53) beside the published figures. Each finished
seed is written at once to ``<out>/earth/<dataset>.json``; ``--merge`` collects those files into
``<out>/earth_results.json``; each dataset's density map ``<out>/earth_<dataset>.png`` is
drawn from seed 0 (or from the first seed run when there is no map yet).

Run (one thread per process; datasets can run in parallel)::

    nice -n 5 python examples/earth.py --datasets volcano --seeds 5 --out docs &
    ...
    python examples/earth.py --merge --out docs
    python examples/earth.py --quick --out /tmp/earth
    python examples/earth.py --datasets flood --seeds 1 --option frequencies=4 \
        --batch-size 1024 --pairs 1 --out /tmp/ablation  # an ablation row of docs/guide/earth.md

References:
    Flow Matching on General Geometries. Chen & Lipman, 2024. arXiv:2302.03660 (RFM).
    Riemannian Score-Based Generative Modelling. De Bortoli et al., 2022. arXiv:2202.02763.
    Moser Flow. Rozen, Grover, Nickel, Lipman, 2021. arXiv:2108.08052.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

import pushforward as pf
from pushforward.cli_base import option
from pushforward.data import load_dataset, unit_to_latlon
from pushforward.training import FlowMatching

DATASETS = {"volcano": "volerup.csv", "earthquake": "quakes_all.csv", "flood": "flood.csv",
            "fire": "fire.csv"}
PUBLISHED = {  # mean, sd of test NLL
    "Moser Flow": {"volcano": (-4.21, 0.17), "earthquake": (-0.16, 0.06),
                   "flood": (0.57, 0.10), "fire": (-1.28, 0.05)},
    "RSGM": {"volcano": (-4.92, 0.25), "earthquake": (-0.19, 0.07), "flood": (0.45, 0.17),
             "fire": (-1.33, 0.06)},
    "RFM": {"volcano": (-7.93, 1.67), "earthquake": (-0.28, 0.08), "flood": (0.42, 0.05),
            "fire": (-1.86, 0.11)},
}
UNIFORM = math.log(4 * math.pi)
DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "earth"


def run(name: str, data: Path, seed: int, steps: int, options: dict,
        training: dict) -> tuple[dict, pf.Flow]:
    """Train one model on one split (``training``: extra ``pf.fit`` keywords, and ``pairs``
    and ``smoothing`` for ``FlowMatching``); return its record and the trained flow."""
    bundle = load_dataset(data / DATASETS[name], seed=seed, manifold="sphere")
    torch.manual_seed(seed)
    flow = pf.flows.build("sphere-cnf", features=3, **options)
    start = time.time()
    fit_options = {k: v for k, v in training.items() if k not in ("pairs", "smoothing")}
    objective = FlowMatching(coupling="independent", pairs=training.get("pairs"),
                             smoothing=training.get("smoothing"))
    history = pf.fit(flow, bundle.train, val=bundle.val, steps=steps, seed=seed,
                     objective=objective, progress=False, handle_signals=False, **fit_options)
    seconds = time.time() - start
    flow.eval()
    with torch.no_grad():
        test = float(-flow.log_prob(bundle.test).mean())
    return {"seed": seed, "test_nll": test, "best_val_nll": min(history.val_nll),
            "train_seconds": seconds, "eval_seconds": time.time() - start - seconds,
            "steps": steps, "options": options, "training": training,
            "pairs": training.get("pairs") or pf.manifolds.GeodesicPath.pairs,
            "smoothing": objective.scale if objective.scale is not None
            else training.get("smoothing")}, flow


def density_map(flow: pf.Flow, test: torch.Tensor, title: str, path: Path) -> None:
    """An equirectangular heat map of the log density with the test points on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lat = np.linspace(-88.5, 88.5, 60)  # 3° cells: 7,200 ODE solves
    lon = np.linspace(-178.5, 178.5, 120)
    la, lo = np.meshgrid(np.radians(lat), np.radians(lon), indexing="ij")
    grid = np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], -1)
    with torch.no_grad():
        logp = flow.log_prob(torch.as_tensor(grid.reshape(-1, 3), dtype=torch.float32))
    logp = logp.reshape(60, 120).numpy()
    fig, ax = plt.subplots(figsize=(9, 4.6), constrained_layout=True)
    image = ax.imshow(np.clip(logp, logp.max() - 12, None), origin="lower",
                      extent=(-180, 180, -90, 90), cmap="magma", aspect="auto")
    points = unit_to_latlon(test.double().numpy())
    ax.scatter(points[:, 1], points[:, 0], s=2, c="cyan", alpha=0.6, linewidths=0)
    ax.set_title(title)
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    fig.colorbar(image, ax=ax, shrink=0.85, label="log density (nats/sr)")
    fig.savefig(path, dpi=90)
    plt.close(fig)


def merge(out: Path) -> dict:
    """Collect ``<out>/earth/*.json`` into ``<out>/earth_results.json`` and print the table."""
    table = {}
    for name in DATASETS:
        part = out / "earth" / f"{name}.json"
        if not part.exists():
            continue
        runs = json.loads(part.read_text())["runs"]
        values = np.array([r["test_nll"] for r in runs])
        table[name] = {"mean": float(values.mean()),
                       "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                       "seeds": [r["seed"] for r in runs], "runs": runs}
    print("test NLL in nats, mean ± sd over seeds (lower is better)")
    print(f"{'dataset':11s} {'sphere-cnf':>16s} {'seeds':>5s} " + " ".join(
        f"{k:>13s}" for k in PUBLISHED))
    for name, row in table.items():
        ours = f"{row['mean']:8.2f} ± {row['sd']:5.2f} {len(row['seeds']):5d} "
        print(f"{name:11s} {ours}" + " ".join(
            f"{PUBLISHED[k][name][0]:6.2f} ± {PUBLISHED[k][name][1]:4.2f}" for k in PUBLISHED))
    record = {"model": "sphere-cnf (default options), pf.fit objective='flow-matching'",
              "results": table, "published": PUBLISHED, "uniform": UNIFORM}
    (out / "earth_results.json").write_text(json.dumps(record, indent=1))
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of the CSVs")
    parser.add_argument("--out", type=Path, default=Path("docs"), help="folder for PNG/JSON")
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="first seed; runs of other seeds already in <out>/earth/ are kept")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--option", type=option, action="append", default=[],
                        metavar="KEY=VALUE", help="a sphere-cnf preset option (JSON value), "
                        "e.g. frequencies=4 or hidden=[512,512]; repeatable")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="default: the flow-matching path's (4096)")
    parser.add_argument("--lr", type=float, default=None, help="default: the sphere path's (6e-3)")
    parser.add_argument("--pairs", type=int, default=None,
                        help="least (noise, time, data) triples per step, repeating a smaller "
                        "batch (default: the path's, 8192; 1: no repeats)")
    parser.add_argument("--smoothing", type=float, default=None,
                        help="data smoothing, a multiple of each point's second-neighbour "
                        "distance (default: the path's 'auto', chosen by cross-validation; "
                        "0: none)")
    parser.add_argument("--quick", action="store_true", help="one dataset, one seed, few steps")
    parser.add_argument("--merge", action="store_true", help="only merge finished seeds")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.merge:
        merge(args.out)
        return
    names = ["volcano"] if args.quick else args.datasets
    seeds = 1 if args.quick else args.seeds
    steps = 30 if args.quick else args.steps
    options = {"hidden": (32, 32)} if args.quick else {}
    options.update(dict(args.option))
    training = {k: v for k, v in (("batch_size", args.batch_size), ("lr", args.lr))
                if v is not None}
    for key in ("pairs", "smoothing"):
        if getattr(args, key) is not None:
            training[key] = getattr(args, key)
    (args.out / "earth").mkdir(exist_ok=True)
    for name in names:
        part = args.out / "earth" / f"{name}.json"
        first = args.first_seed
        kept = json.loads(part.read_text())["runs"] if part.exists() and first else []
        runs = [r for r in kept if not first <= r["seed"] < first + seeds]
        for seed in range(first, first + seeds):
            record, flow = run(name, args.data, seed, steps, options, training)
            runs = sorted([*runs, record], key=lambda r: r["seed"])
            print(f"{name:10s} seed {seed}: test NLL {record['test_nll']:7.3f} "
                  f"(train {record['train_seconds']:.0f} s)", flush=True)
            part.write_text(
                json.dumps({"dataset": name, "runs": runs}, indent=1))
            png = args.out / f"earth_{name}.png"
            if seed == 0 or not png.exists():  # the map of seed 0, else of the first seed run
                test = load_dataset(args.data / DATASETS[name], seed=seed, manifold="sphere").test
                density_map(flow, test, f"{name}: sphere-cnf log density (seed {seed}), "
                            "test points", png)
    merge(args.out)


if __name__ == "__main__":
    main()
