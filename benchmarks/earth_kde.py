"""A kernel baseline for the Earth benchmark: von Mises–Fisher kernel density estimates on S².

``p(x) = (1/N) Σᵢ C(κ) exp(κ xᵀxᵢ)`` over the training points ``xᵢ`` (``log C`` from
``vmf_log_normalizer``: the vMF density on ``S²`` w.r.t. surface measure), with one
concentration ``κ`` per dataset and seed chosen on the validation split from a log grid
(10 … 10⁵, 8 per decade). The splits are ``examples/earth.py``'s (``load_dataset``, 80/10/10,
seeded). A kernel estimate cannot memorise beyond its bandwidth: beside the flows it shows how
much of a gap is the split and how much the model.

    python benchmarks/earth_kde.py --data ../shared/data/earth            # 5 seeds
    python benchmarks/earth_kde.py --data ../shared/data/earth --seeds 2

Writes ``benchmarks/earth_kde.md`` (test NLL mean ± std, nats) and ``benchmarks/earth_kde.json``
(per seed: κ, validation and test NLL).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples.earth import DATASETS  # noqa: E402
from pushforward.data import load_dataset  # noqa: E402
from pushforward.manifolds._bessel import vmf_log_normalizer  # noqa: E402

HERE = Path(__file__).resolve().parent
GRID = [10 ** (e / 8) for e in range(8, 41)]


def log_density(train: torch.Tensor, x: torch.Tensor, kappa: float) -> torch.Tensor:
    """``log p(x)`` of the vMF kernel estimate, ``(batch,)``, computed in chunks of 1,024."""
    log_c = vmf_log_normalizer(3, torch.tensor(kappa, dtype=train.dtype))
    parts = [torch.logsumexp(kappa * (chunk @ train.T), dim=1) for chunk in x.split(1024)]
    return torch.cat(parts) - math.log(train.shape[0]) + log_c


def run(path: Path, seed: int) -> dict:
    """κ chosen on validation, and the validation and test NLL at that κ."""
    bundle = load_dataset(path, seed=seed, manifold="sphere")
    train, val, test = (t.double() for t in (bundle.train, bundle.val, bundle.test))
    val_nll, kappa = min((-float(log_density(train, val, k).mean()), k) for k in GRID)
    test_nll = -float(log_density(train, test, kappa).mean())
    return {"seed": seed, "kappa": round(kappa, 1), "val": round(val_nll, 4),
            "test": round(test_nll, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder of the Earth CSV files")
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    results = {name: [run(Path(args.data) / file, seed) for seed in range(args.seeds)]
               for name, file in DATASETS.items()}
    lines = ["| dataset | vMF KDE test NLL | per seed (κ) |", "|---|---|---|"]
    for name, rows in results.items():
        tests = [r["test"] for r in rows]
        spread = statistics.stdev(tests) if len(tests) > 1 else 0.0
        seeds = ", ".join(f"{r['test']:.2f} ({r['kappa']:.0f})" for r in rows)
        lines.append(f"| {name} | {statistics.mean(tests):.2f} ± {spread:.2f} | {seeds} |")
    table = "\n".join(lines)
    print(table)
    (HERE / "earth_kde.md").write_text(
        "# vMF kernel density estimate on the Earth data (bandwidth chosen on validation)\n\n"
        f"`python benchmarks/earth_kde.py --data ../shared/data/earth --seeds {args.seeds}`\n\n"
        + table + "\n")
    (HERE / "earth_kde.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
