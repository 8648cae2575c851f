"""Image generation: multi-scale Glow and RealNVP on the 8×8 digits and on Fashion-MNIST 28×28.

For each (dataset, model) the script trains a CPU-sized multi-scale flow with ``pf.fit`` on
dequantised pixels (the logit pre-processing lives inside the flow, so ``log_prob`` is the
density of the dequantised image in ``[0, 1]^D``), reports test bits/dim, writes sample grids at
temperatures 0.6 / 0.8 / 1.0 and runs ``invertibility_report`` on test images. The trained
models are saved with ``pf.save`` (``examples/anomaly.py`` reuses the Fashion-MNIST Glow).

Run::

    python examples/images.py --dataset digits          # ≈2 minutes on one CPU thread
    python examples/images.py --dataset fashion-mnist   # ≈10 minutes (Glow and RealNVP)
    python examples/images.py --quick                   # seconds: the smoke test

Fashion-MNIST needs the IDX files: ``apt-get install dataset-fashion-mnist`` puts them under
``/usr/share/datasets/fashion-mnist/`` (or set ``$PUSHFORWARD_DATA`` to a folder holding
``fashion-mnist/``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

import pushforward as pf
from pushforward.data import bits_per_dim, load_dataset
from pushforward.data.preprocess import wrap
from pushforward.training import fit, load, save

TEMPERATURES = (0.6, 0.8, 1.0)

# CPU-sized architectures and budgets (per dataset): (preset options, steps, batch size, lr).
BUDGETS = {
    "digits": {
        "glow": (dict(hidden=48, transforms=4, levels=2), 1500, 64, 2e-3),
        "realnvp": (dict(hidden=48, transforms=3, levels=2, blocks=1), 1500, 64, 2e-3),
    },
    "fashion-mnist": {
        "glow": (dict(hidden=32, transforms=4, levels=2), 1500, 64, 1e-3),
        "realnvp": (dict(hidden=32, transforms=2, levels=2, blocks=1), 1000, 64, 1e-3),
    },
}
QUICK = {
    "glow": (dict(hidden=8, transforms=1, levels=2), 4, 64, 2e-3),
    "realnvp": (dict(hidden=8, transforms=1, levels=2, blocks=1), 4, 64, 2e-3),
}


def build_image_flow(name: str, shape: tuple[int, ...], preprocess: list, options: dict
                     ) -> pf.Flow:
    """A multi-scale preset on ``shape`` followed by the dataset's fixed pre-processing."""
    return wrap(pf.flows.build(name, shape=tuple(shape), **options), preprocess)


@torch.no_grad()
def test_bits_per_dim(flow: pf.Flow, test, levels: int, batch_size: int = 500,
                      seed: int = 0) -> float:
    """Mean test NLL in bits/dim, one seeded dequantisation draw per image."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        total, count = 0.0, 0
        for start in range(0, len(test), batch_size):
            x = test[torch.arange(start, min(start + batch_size, len(test)))]
            total += float(-flow.log_prob(x).double().sum())
            count += x.shape[0]
    finally:
        torch.random.set_rng_state(state)
    dims = math.prod(test.shape)
    return float(bits_per_dim(total / count, dims, levels))


def save_grids(flow: pf.Flow, path: Path, n: int = 64, seed: int = 0) -> None:
    """One PNG: a grid of ``n`` samples per temperature, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    side = int(math.sqrt(n))
    fig, axes = plt.subplots(1, len(TEMPERATURES), figsize=(3.2 * len(TEMPERATURES), 3.5),
                             dpi=80)
    for ax, temperature in zip(axes, TEMPERATURES):
        torch.manual_seed(seed)
        with torch.no_grad():
            x = flow.sample(side * side, temperature=temperature).clamp(0, 1)
        c, h, w = x.shape[1:]
        grid = x[:, 0].reshape(side, side, h, w).permute(0, 2, 1, 3).reshape(side * h, side * w)
        ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"T = {temperature}")
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def load_or_explain(dataset: str, seed: int):
    """The dataset bundle, or exit with a message saying how to get the files."""
    try:
        return load_dataset(dataset, seed=seed)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        print("Fashion-MNIST: `apt-get install dataset-fashion-mnist` (Debian/Ubuntu) puts the "
              "IDX files in /usr/share/datasets/fashion-mnist/; or download "
              "train-images-idx3-ubyte.gz and t10k-images-idx3-ubyte.gz from "
              "https://github.com/zalandoresearch/fashion-mnist into "
              "$PUSHFORWARD_DATA/fashion-mnist/.", file=sys.stderr)
        raise SystemExit(2) from None


def run_one(bundle, name: str, budget: tuple, out: Path, quick: bool, seed: int) -> dict:
    options, steps, batch_size, lr = budget
    torch.manual_seed(seed)
    flow = build_image_flow(name, bundle.event_shape, bundle.preprocess, options)
    train, val = bundle.train, bundle.val
    if quick:
        train = train.subset(torch.arange(min(256, len(train))))
        val = val.subset(torch.arange(min(128, len(val))))
    start = time.time()
    history = fit(flow, train, val=val, steps=steps, batch_size=batch_size, lr=lr,
                  val_every=max(1, steps // 5), progress=not quick, seed=seed)
    seconds = time.time() - start
    flow.eval()
    test = bundle.test if not quick else bundle.test.subset(torch.arange(min(128,
                                                                            len(bundle.test))))
    bpd = test_bits_per_dim(flow, test, bundle.levels, seed=seed)
    folder = out / f"{bundle.name}-{name}"
    save_grids(flow, folder / "samples.png", seed=seed)
    torch.manual_seed(seed)
    x_check = test[torch.arange(min(500 if not quick else 64, len(test)))]
    report = pf.diagnostics.invertibility_report(flow, x_check, n_conditioning=16)
    (folder / "invertibility.txt").write_text(str(report) + "\n")
    save(flow, folder)
    x_few = x_check[:8]
    with torch.no_grad():
        reloaded = load(folder).eval()
        if not torch.allclose(reloaded.log_prob(x_few), flow.log_prob(x_few), rtol=1e-5):
            raise RuntimeError(f"{folder}: the reloaded checkpoint disagrees with the model")
    result = {
        "dataset": bundle.name, "flow": name, "options": options, "steps": steps,
        "batch_size": batch_size, "lr": lr, "train_images": len(train),
        "parameters": sum(p.numel() for p in flow.parameters()),
        "train_seconds": round(seconds, 1), "test_bits_per_dim": round(bpd, 4),
        "invertibility_ok": report.ok, "invertibility_reason": report.reason,
        "max_relative_round_trip_error": float(report.relative_error.max()),
        "max_condition": float(report.condition.max()) if report.condition.numel() else None,
        "history": history.to_dict() if hasattr(history, "to_dict") else None,
    }
    (folder / "result.json").write_text(json.dumps(result, indent=2))
    print(f"\n== {bundle.name} / {name}: test {bpd:.3f} bits/dim after {steps} steps, "
          f"{seconds:.0f} s; samples in {folder / 'samples.png'}")
    print(report)
    return result


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="digits", choices=sorted(BUDGETS))
    parser.add_argument("--flows", default="glow,realnvp", help="comma-separated presets")
    parser.add_argument("--quick", action="store_true", help="tiny budget (smoke test)")
    parser.add_argument("--steps", type=int, default=None, help="override the budget")
    parser.add_argument("--out", default="runs/images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    bundle = load_or_explain(args.dataset, args.seed)
    results = []
    for name in args.flows.split(","):
        budget = QUICK[name] if args.quick else BUDGETS[args.dataset][name]
        if args.steps is not None:
            budget = (budget[0], args.steps, *budget[2:])
        results.append(run_one(bundle, name, budget, Path(args.out), args.quick, args.seed))
    print("\nflow      test bits/dim   train time   invertibility")
    for r in results:
        print(f"{r['flow']:9s} {r['test_bits_per_dim']:13.3f} {r['train_seconds']:10.0f} s   "
              f"{'ok' if r['invertibility_ok'] else 'NOT OK'}")
    return results


if __name__ == "__main__":
    main()
