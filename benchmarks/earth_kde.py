"""Kernel baselines for the Earth benchmark: von Mises–Fisher kernel density estimates on S².

``p(x) = (1/N) Σᵢ C(κᵢ) exp(κᵢ xᵀxᵢ)`` over the training points ``xᵢ`` (``log C`` from
``vmf_log_normalizer``: the vMF density on ``S²`` w.r.t. surface measure), in two kinds:

* **fixed**: one concentration ``κ`` per dataset and seed, chosen on the validation split from
  a log grid (10 … 10⁵, 8 per decade);
* **adaptive** (a balloon estimate, Breiman et al. 1977): ``κᵢ = 1/(α · max(d_k(xᵢ), h))²``
  with ``d_k`` the geodesic distance from ``xᵢ`` to its ``k``-th nearest other training point,
  ``k`` and ``α`` chosen on validation, at two floors ``h`` (0.01 and 0.001 rad). The floor is
  needed: a location repeated in the training set has ``d_k = 0``, and as ``h → 0`` the density
  at it — and so the NLL of a test point there — is unbounded below. Every model's resolution
  is such a floor; the share of test points that repeat a training point exactly is reported
  beside the numbers (it is what a smaller floor buys).

The splits are ``examples/earth.py``'s (``load_dataset``, 80/10/10, seeded). A kernel estimate
cannot memorise beyond its bandwidth: beside the flows it shows how much of a gap is the split
and how much the model.

    python benchmarks/earth_kde.py --data ../shared/data/earth            # 5 seeds
    python benchmarks/earth_kde.py --data ../shared/data/earth --seeds 2
    python benchmarks/earth_kde.py --data ../shared/data/earth --scales   # α at k = 2

Writes ``benchmarks/earth_kde.md`` (test NLL mean ± std, nats) and ``benchmarks/earth_kde.json``
(per seed and kind: the chosen bandwidth, validation and test NLL). With ``--scales``, instead:
the adaptive estimate at ``k = 2`` (flow matching's smoothing rule, ``α`` its ``smoothing``) for
each ``α`` of a grid, floor 0.001 rad, to ``benchmarks/earth_kde_scales.{md,json}`` — which
smoothing scale each data set's kernel estimate prefers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples.earth import DATASETS  # noqa: E402
from pushforward.data import load_dataset  # noqa: E402
from pushforward.manifolds.bandwidth import kernel_log_density  # noqa: E402
from pushforward.manifolds.neighbours import neighbour_distances  # noqa: E402

HERE = Path(__file__).resolve().parent
GRID = [10 ** (e / 8) for e in range(8, 41)]
NEIGHBOURS = (1, 2, 4, 8, 16)
SCALES = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5)
FLOORS = (0.01, 0.001)
SMOOTHING_SCALES = (0.3, 0.4, 0.5, 0.6, 0.7, 0.85, 1.0)


def fixed(train: torch.Tensor, val: torch.Tensor, test: torch.Tensor) -> dict:
    """One κ chosen on validation, and the validation and test NLL at that κ."""
    val_nll, kappa = min((-float(kernel_log_density(train, k, val).mean()), k) for k in GRID)
    test_nll = -float(kernel_log_density(train, kappa, test).mean())
    return {"kappa": round(kappa, 1), "val": round(val_nll, 4), "test": round(test_nll, 4)}


def adaptive(train: torch.Tensor, val: torch.Tensor, test: torch.Tensor, floor: float) -> dict:
    """``κᵢ = 1/(α · max(d_k(xᵢ), floor))²`` with ``k`` and ``α`` chosen on validation."""
    distances = {k: neighbour_distances(train, k)[1].clamp(min=floor) for k in NEIGHBOURS}
    val_nll, k, alpha = min(
        (-float(kernel_log_density(train, 1 / (a * distances[k]) ** 2, val).mean()), k, a)
        for k in NEIGHBOURS for a in SCALES)
    test_nll = -float(kernel_log_density(train, 1 / (alpha * distances[k]) ** 2, test).mean())
    return {"floor": floor, "k": k, "alpha": alpha, "val": round(val_nll, 4),
            "test": round(test_nll, 4)}


def scale_curve(train: torch.Tensor, val: torch.Tensor, test: torch.Tensor) -> list[dict]:
    """Validation and test NLL of ``κᵢ = 1/(α · max(d₂(xᵢ), 0.001))²`` for every ``α``."""
    d2 = neighbour_distances(train, 2)[1].clamp(min=FLOORS[-1])
    rows = []
    for alpha in SMOOTHING_SCALES:
        kappa = 1 / (alpha * d2) ** 2
        val_nll, test_nll = (-float(kernel_log_density(train, kappa, x).mean())
                             for x in (val, test))
        rows.append({"alpha": alpha, "val": round(val_nll, 4), "test": round(test_nll, 4)})
    return rows


def scales(data: Path, seeds: int) -> None:
    """``--scales``: the k = 2 estimate's NLL against ``α``, per data set and seed."""
    results, lines = {}, [
        "| dataset | seed | " + " | ".join(f"α = {a:g}" for a in SMOOTHING_SCALES) + " |",
        "|---|---|" + "---|" * len(SMOOTHING_SCALES)]
    for name, file in DATASETS.items():
        results[name] = []
        for seed in range(seeds):
            rows = scale_curve(*splits(data / file, seed))
            results[name].append({"seed": seed, "scales": rows})
            lines.append(f"| {name} | {seed} | " + " | ".join(
                f"{r['test']:.3f} ({r['val']:.3f})" for r in rows) + " |")
    write("earth_kde_scales", "The k = 2 adaptive kernel estimate against its scale α (test "
          "NLL, validation in brackets; floor 0.001 rad)", f"--seeds {seeds} --scales", lines,
          results)


def splits(path: Path, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``examples/earth.py``'s seeded train, validation and test split, in float64."""
    bundle = load_dataset(path, seed=seed, manifold="sphere")
    return bundle.train.double(), bundle.val.double(), bundle.test.double()


def write(stem: str, title: str, flags: str, lines: list[str], results: dict) -> None:
    """Print the Markdown table and write ``<stem>.md`` (title, command, table) and
    ``<stem>.json`` beside this script."""
    table = "\n".join(lines)
    print(table)
    (HERE / f"{stem}.md").write_text(
        f"# {title}\n\n`python benchmarks/earth_kde.py --data ../shared/data/earth {flags}`"
        f"\n\n{table}\n")
    (HERE / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")


def run(path: Path, seed: int) -> dict:
    """Both kinds of estimate on one seeded split, and the share of repeated test points."""
    train, val, test = splits(path, seed)
    repeated = float(((test @ train.T) >= 1 - 1e-12).any(dim=1).double().mean())
    return {"seed": seed, "repeated_test_share": round(repeated, 4),
            "fixed": fixed(train, val, test),
            "adaptive": [adaptive(train, val, test, h) for h in FLOORS]}


def summary(values: list[float]) -> str:
    """``mean ± std`` to two decimals."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {spread:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder of the Earth CSV files")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--scales", action="store_true",
                        help="the k = 2 estimate against its scale α instead (smoothing)")
    args = parser.parse_args()
    if args.scales:
        scales(Path(args.data), args.seeds)
        return
    results = {name: [run(Path(args.data) / file, seed) for seed in range(args.seeds)]
               for name, file in DATASETS.items()}
    lines = ["| dataset | fixed κ | adaptive, floor 0.01 rad | adaptive, floor 0.001 rad "
             "| test points repeating a training point | per seed: fixed (κ); adaptive 0.01 "
             "(k, α) |", "|---|---|---|---|---|---|"]
    for name, rows in results.items():
        seeds = ", ".join(f"{r['fixed']['test']:.2f} ({r['fixed']['kappa']:.0f}); "
                          f"{r['adaptive'][0]['test']:.2f} ({r['adaptive'][0]['k']}, "
                          f"{r['adaptive'][0]['alpha']:g})" for r in rows)
        columns = [summary([r["fixed"]["test"] for r in rows])] + [
            summary([r["adaptive"][i]["test"] for r in rows]) for i in range(len(FLOORS))]
        share = statistics.mean(r["repeated_test_share"] for r in rows)
        lines.append(f"| {name} | {' | '.join(columns)} | {100 * share:.0f} % | {seeds} |")
    write("earth_kde", "vMF kernel density estimates on the Earth data (bandwidths chosen on "
          "validation)", f"--seeds {args.seeds}", lines, results)


if __name__ == "__main__":
    main()
