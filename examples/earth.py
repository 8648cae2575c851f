"""Densities on the Earth: chains of spherical flows on the four standard S² datasets.

Volcano eruptions, earthquakes, floods and wildfires (latitude/longitude, from
``../shared/data/earth/``; a different folder with ``--data``) become unit vectors on S². For each
dataset and each of 5 seeds the script draws a seeded 80/10/10 split, fits two flows by maximum
likelihood with ``pushforward.training.fit`` (validation-based early stopping and best-weight
restore), and reports the test NLL (nats, density w.r.t. the surface measure of the unit sphere)
as mean ± sd over seeds, beside the published figures:

* ``chain``: the ``"sphere"`` preset, 10 ``NormalizedAffine`` layers on a uniform base;
* ``mixture+chain``: 4 ``NormalizedAffine`` layers on a learnable mixture of up to 1024 von
  Mises–Fisher components (``κ = 300`` at first) centred on training points: a learned kernel
  density estimate as a multi-modal base, which the flow warps.

It also writes a lat/lon heat map of the fitted ``mixture+chain`` density (seed 0) with the data.

Run (one CPU thread, 600 Adam steps of batch 512 per model, dataset and seed: about 5 minutes of
CPU time; 31 minutes of wall time on a shared, heavily loaded 2-core machine; ``--quick`` takes
seconds)::

    nice -n 10 python examples/earth.py --out docs
    python examples/earth.py --quick --out /tmp/earth

References:
    Riemannian Continuous Normalizing Flows. Mathieu & Nickel, 2020. arXiv:2006.10605
    (the benchmark).
    Learning Distributions on Manifolds with Free-form Flows. Sorrenson, Draxler, Rousselot,
    Hummerich, Köthe, 2023. arXiv:2312.09852 (the figures quoted).
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
from pushforward.data import load_dataset, unit_to_latlon
from pushforward.manifolds import NormalizedAffine, VonMisesFisherMixture
from pushforward.training import fit

DATASETS = {"volcano": "volerup.csv", "earthquake": "quakes_all.csv", "flood": "flood.csv",
            "fire": "fire.csv"}
PUBLISHED = {"volcano": -2.25, "earthquake": -0.23, "flood": 0.51, "fire": -1.19}
UNIFORM = math.log(4 * math.pi)
DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "earth"


def chain_model(seed: int, transforms: int) -> pf.Flow:
    """The registered ``"sphere"`` preset: a chain of normalised affine maps, uniform base."""
    return pf.flows.build("sphere", features=3, transforms=transforms, base="uniform", seed=seed)


def mixture_model(train: torch.Tensor, seed: int, transforms: int, components: int,
                  concentration: float) -> pf.Flow:
    """A vMF-mixture base (means at random training points) under a chain of affine maps."""
    g = torch.Generator().manual_seed(seed)
    start = train[torch.randperm(len(train), generator=g)[:components]].double()
    start = start / start.norm(dim=-1, keepdim=True)
    base = VonMisesFisherMixture(3, components=len(start), means=start,
                                 concentration=concentration)
    layers = [NormalizedAffine(3, matrix=torch.eye(3) + 0.05 * torch.randn(3, 3, generator=g))
              for _ in range(transforms)]
    return pf.Flow(layers, base.float())


def train_and_test(flow: pf.Flow, bundle, steps: int, seed: int, lr: float) -> float:
    fit(flow, bundle.train, bundle.val, steps=steps, batch_size=512, lr=lr, seed=seed,
        val_every=max(1, steps // 10), progress=False, handle_signals=False)
    with torch.no_grad():
        return float(-flow.log_prob(bundle.test).mean())


def density_map(flows: dict, bundles: dict, path: Path) -> None:
    """2×2 equirectangular heat maps of log density with the test points on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lat = np.linspace(-89.5, 89.5, 180)
    lon = np.linspace(-179.5, 179.5, 360)
    la, lo = np.meshgrid(np.radians(lat), np.radians(lon), indexing="ij")
    grid = np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], -1)
    grid_t = torch.as_tensor(grid.reshape(-1, 3), dtype=torch.float32)
    fig, axes = plt.subplots(2, 2, figsize=(13, 7), constrained_layout=True)
    for ax, (name, flow) in zip(axes.flat, flows.items()):
        with torch.no_grad():
            logp = flow.log_prob(grid_t).reshape(180, 360).numpy()
        image = ax.imshow(np.clip(logp, logp.max() - 12, None), origin="lower",
                          extent=(-180, 180, -90, 90), cmap="magma", aspect="auto")
        points = unit_to_latlon(bundles[name].test.double().numpy())
        ax.scatter(points[:, 1], points[:, 0], s=2, c="cyan", alpha=0.6, linewidths=0)
        ax.set_title(f"{name}: log density (nats/sr) and test points")
        ax.set_xlabel("longitude")
        ax.set_ylabel("latitude")
        fig.colorbar(image, ax=ax, shrink=0.85)
    for ax in list(axes.flat)[len(flows):]:
        ax.axis("off")
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of the CSVs")
    parser.add_argument("--out", type=Path, default=Path("docs"), help="folder for PNG/JSON")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--quick", action="store_true", help="one dataset, one seed, few steps")
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = ["volcano"] if args.quick else list(DATASETS)
    seeds = 1 if args.quick else args.seeds
    steps = 30 if args.quick else args.steps
    # chain layers; mixture: layers, components, initial κ
    sizes = (2, 2, 8, 20.0) if args.quick else (10, 4, 1024, 300.0)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, list[float]]] = {}
    flows, bundles = {}, {}
    start = time.time()
    for name in names:
        results[name] = {"chain": [], "mixture+chain": []}
        for seed in range(seeds):
            bundle = load_dataset(args.data / DATASETS[name], seed=seed, manifold="sphere")
            torch.manual_seed(seed)
            chain = chain_model(seed, sizes[0])
            results[name]["chain"].append(train_and_test(chain, bundle, steps, seed, 5e-3))
            mixture = mixture_model(bundle.train, seed, sizes[1], sizes[2], sizes[3])
            results[name]["mixture+chain"].append(
                train_and_test(mixture, bundle, steps, seed, 1e-2))
            if seed == 0:
                flows[name], bundles[name] = mixture, bundle
            print(f"{name:10s} seed {seed}: chain {results[name]['chain'][-1]:7.3f}  "
                  f"mixture+chain {results[name]['mixture+chain'][-1]:7.3f}  "
                  f"({time.time() - start:.0f} s)", flush=True)
    print(f"\ntest NLL in nats over {seeds} seed(s), mean ± sd (lower is better)")
    print(f"{'dataset':11s} {'chain':>15s} {'mixture+chain':>15s} {'MFF (pub.)':>11s} "
          f"{'uniform':>8s}")
    table = {}
    for name in names:
        row = {}
        for model, values in results[name].items():
            v = np.asarray(values)
            row[model] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1
                          else 0.0, "values": values}
        table[name] = row
        print(f"{name:11s} " + " ".join(
            f"{row[m]['mean']:8.3f} ± {row[m]['sd']:4.2f}" for m in row)
            + f" {PUBLISHED[name]:11.2f} {UNIFORM:8.2f}")
    record = {"seeds": seeds, "steps": steps, "results": table, "published_mff": PUBLISHED,
              "uniform": UNIFORM, "seconds": time.time() - start}
    (args.out / "earth_results.json").write_text(json.dumps(record, indent=1))
    if len(flows) == 4:
        density_map(flows, bundles, args.out / "earth_density.png")
        print(f"map: {args.out / 'earth_density.png'}")
    else:  # quick mode: one panel is enough to exercise the plot
        density_map(flows, bundles, args.out / "earth_density_quick.png")
    print(f"results: {args.out / 'earth_results.json'} ({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
