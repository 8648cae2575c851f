"""Anomaly detection with flows, and the out-of-distribution failure made visible.

Part 1 (images). A Glow trained on Fashion-MNIST scores the Fashion-MNIST test set (in
distribution) against the MNIST test set (out of distribution). The source text's warning shows
up: MNIST digits — simpler images, mostly black background — get a *higher* likelihood than the
clothes the model was trained on, so the raw likelihood ranks them as *more* normal (AUROC of the
NLL score below 0.5). Three things recover:

* the per-sample typicality score ``|NLL(x) − Ĥ|`` (``Ĥ``: mean NLL of held-out Fashion images);
* the batch typicality test (Nalisnick et al., 2019): batches of MNIST images are flagged as
  "too likely" once the batch holds a few images;
* a likelihood ratio against a generic "universal" model: ``S(x) = NLL(x) − L(x)`` where ``L(x)``
  is the length in bits of the image compressed losslessly by zlib (Serrà et al., 2020, "Input
  complexity and out-of-distribution detection with likelihood-based generative models",
  arXiv:1909.11480). Simple images compress well and lose their unfair advantage.

Part 2 (tabular). A MAF trained on benign tumours of scikit-learn's breast cancer data scores
held-out benign against malignant tumours (AUROC of the NLL), next to a Gaussian baseline.

Run::

    python examples/images.py --dataset fashion-mnist --flows glow   # trains the model first
    python examples/anomaly.py                                       # ≈2 minutes
    python examples/anomaly.py --quick                               # seconds: smoke test
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch

import pushforward as pf
from pushforward.data import bits_per_dim, idx_dataset, load_dataset, load_idx
from pushforward.data.images import idx_search_dirs
from pushforward.diagnostics import auroc, typicality_test_from_nll
from pushforward.training import fit, load

HERE = Path(__file__).resolve().parent
BATCH_SIZES = (1, 2, 5, 10, 25)


# -- part 1: Fashion-MNIST vs MNIST -----------------------------------------------------------
def find_mnist_test(explicit: str | None) -> Path | None:
    """The MNIST test images file: ``--mnist``, the IDX search folders, or ../shared/data."""
    candidates = [Path(explicit)] if explicit else []
    for folder in [*idx_search_dirs("mnist"), HERE.parents[1] / "shared" / "data" / "mnist"]:
        candidates += [folder / "t10k-images-idx3-ubyte.gz", folder / "t10k-images-idx3-ubyte"]
    return next((p for p in candidates if p.is_file()), None)


def dequantize(images: np.ndarray, seed: int) -> torch.Tensor:
    """``(k + ε)/256`` with seeded uniform noise, ``(N, 1, 28, 28)`` float32."""
    k = torch.as_tensor(images, dtype=torch.float32)
    noise = torch.rand(k.shape, generator=torch.Generator().manual_seed(seed))
    return (k + noise) / 256


@torch.no_grad()
def nll_bits(flow: pf.Flow, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Per-image NLL in bits/dim of the discrete image."""
    nll = pf.diagnostics.negative_log_likelihood(flow, x, batch_size=batch_size).double()
    return bits_per_dim(nll, math.prod(x.shape[1:]), 256)


def complexity_bits(images: np.ndarray) -> torch.Tensor:
    """Compressed length of each uint8 image in bits per pixel (zlib, level 9)."""
    flat = images.reshape(len(images), -1)
    return torch.tensor([8 * len(zlib.compress(row.tobytes(), 9)) / row.size for row in flat],
                        dtype=torch.float64)


def typicality_rates(ref: torch.Tensor, inside: torch.Tensor, outside: torch.Tensor,
                     alpha: float, trials: int, seed: int) -> list[dict]:
    """Fraction of in- and out-of-distribution batches flagged, per batch size."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for m in BATCH_SIZES:
        flagged = {"in": 0, "out": 0}
        for t in range(trials):
            for key, pool in (("in", inside), ("out", outside)):
                batch = pool[torch.randint(0, len(pool), (m,), generator=g)]
                result = typicality_test_from_nll(ref, batch, alpha=alpha, n_bootstrap=1000,
                                                  seed=seed + t)
                flagged[key] += result.is_ood
        rows.append({"batch_size": m, "fashion_flagged": flagged["in"] / trials,
                     "mnist_flagged": flagged["out"] / trials})
    return rows


def histogram(fashion: torch.Tensor, mnist: torch.Tensor, entropy: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 3.6), dpi=90)
    lo = float(min(fashion.quantile(0.001), mnist.quantile(0.001)))
    hi = float(max(fashion.quantile(0.999), mnist.quantile(0.999)))
    bins = np.linspace(lo, hi, 80)
    ax.hist(fashion.numpy(), bins=bins, alpha=0.6, density=True,
            label="Fashion-MNIST test (in distribution)")
    ax.hist(mnist.numpy(), bins=bins, alpha=0.6, density=True, label="MNIST test (OOD)")
    ax.axvline(entropy, color="k", ls="--", lw=1, label="Ĥ (held-out Fashion mean)")
    ax.set_xlabel("NLL under the Fashion-MNIST Glow (bits/dim)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def fashion_vs_mnist(args: argparse.Namespace, out: Path) -> dict | None:
    mnist_file = find_mnist_test(args.mnist)
    try:
        fashion_train, fashion_test = idx_dataset("fashion-mnist")
    except FileNotFoundError as error:
        print(f"[part 1 skipped] {error}", file=sys.stderr)
        return None
    if mnist_file is None:
        print("[part 1 skipped] MNIST test images not found: pass --mnist "
              "PATH/t10k-images-idx3-ubyte.gz", file=sys.stderr)
        return None
    mnist_test = load_idx(mnist_file)[:, None]
    checkpoint = Path(args.checkpoint)
    if args.quick:
        sys.path.insert(0, str(HERE))
        from images import build_image_flow  # the sibling example

        from pushforward.data import DequantizedImages
        from pushforward.transforms import LogitPreprocessing

        torch.manual_seed(args.seed)
        flow = build_image_flow("glow", (1, 28, 28), [LogitPreprocessing((1, 28, 28), 0.05)],
                                dict(hidden=8, transforms=1, levels=2))
        fit(flow, DequantizedImages(fashion_train[:256], 256), epochs=1, batch_size=64,
               lr=2e-3, progress=False)
        n = 200
    else:
        if not (checkpoint / "config.json").is_file():
            print(f"[part 1] no trained model in {checkpoint}; train it with\n"
                  "    python examples/images.py --dataset fashion-mnist --flows glow",
                  file=sys.stderr)
            raise SystemExit(2)
        flow = load(checkpoint)
        n = len(fashion_test)
    flow.eval()
    # Held-out Fashion images for the reference entropy: the validation split the model was
    # not trained on (the same seeded split as examples/images.py; in --quick mode the flow
    # saw only the first 256 training images).
    if args.quick:
        reference_images = fashion_train[-(n // 2):]
    else:
        reference_images = load_dataset("fashion-mnist", seed=args.seed).val.images.numpy()
    start = time.time()
    ref = nll_bits(flow, dequantize(reference_images, args.seed))
    fashion = nll_bits(flow, dequantize(fashion_test[:n], args.seed + 1))
    mnist = nll_bits(flow, dequantize(mnist_test[:n], args.seed + 2))
    entropy = float(ref.mean())
    complexity_f = complexity_bits(fashion_test[:n])
    complexity_m = complexity_bits(mnist_test[:n])
    scores = {
        "NLL (−log p)": (fashion, mnist),
        "typicality |NLL − Ĥ|": ((fashion - entropy).abs(), (mnist - entropy).abs()),
        "NLL − zlib complexity": (fashion - complexity_f, mnist - complexity_m),
    }
    table = {name: auroc(a, b) for name, (a, b) in scores.items()}
    rates = typicality_rates(ref, fashion, mnist, alpha=0.01, trials=20 if args.quick else 200,
                             seed=args.seed)
    histogram(fashion, mnist, entropy, out / "fashion_vs_mnist_nll.png")
    result = {
        "images_per_set": n,
        "mean_bits_per_dim": {"fashion_reference": entropy, "fashion_test": float(fashion.mean()),
                              "mnist_test": float(mnist.mean())},
        "mnist_more_likely_fraction": float((mnist < fashion.median()).double().mean()),
        "auroc": table,
        "typicality_test_alpha_0.01": rates,
        "seconds": round(time.time() - start, 1),
    }
    print("\n== Part 1: Glow trained on Fashion-MNIST; Fashion-MNIST test vs MNIST test ==")
    print(f"mean NLL (bits/dim): held-out Fashion {entropy:.3f}, Fashion test "
          f"{float(fashion.mean()):.3f}, MNIST test {float(mnist.mean()):.3f}")
    print(f"{'score (higher = more anomalous)':32s} AUROC (MNIST as positives)")
    for name, value in table.items():
        print(f"{name:32s} {value:.3f}")
    print("typicality test, alpha 0.01: fraction of batches flagged")
    print(f"{'batch size':>10s} {'Fashion (false alarms)':>24s} {'MNIST (detected)':>18s}")
    for row in rates:
        print(f"{row['batch_size']:10d} {row['fashion_flagged']:24.3f} "
              f"{row['mnist_flagged']:18.3f}")
    return result


# -- part 2: breast cancer ----------------------------------------------------------------------
def breast_cancer(args: argparse.Namespace) -> dict:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    x = np.log1p(data.data)  # positive, skewed measurements
    benign = x[data.target == 1]
    malignant = x[data.target == 0]
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(benign))
    n_train, n_val = int(0.6 * len(benign)), int(0.1 * len(benign))
    train, val, test = (benign[order[:n_train]], benign[order[n_train:n_train + n_val]],
                        benign[order[n_train + n_val:]])
    mean, std = train.mean(0), train.std(0) + 1e-6

    def prep(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor((a - mean) / std, dtype=torch.float32)

    torch.manual_seed(args.seed)
    flow = pf.flows.build("maf", features=x.shape[1], transforms=3, hidden=(64, 64))
    epochs = 2 if args.quick else 150
    fit(flow, prep(train), val=prep(val), epochs=epochs, batch_size=64, lr=1e-3,
           progress=False)
    flow.eval()
    s_in = pf.diagnostics.anomaly_scores(flow, prep(test), reference_x=prep(val))
    s_out = pf.diagnostics.anomaly_scores(flow, prep(malignant), reference_x=prep(val))
    # Baseline: a full-covariance Gaussian fitted to the same benign training data.
    cov = np.cov(prep(train).numpy().T) + 1e-3 * np.eye(x.shape[1])
    gauss = torch.distributions.MultivariateNormal(torch.zeros(x.shape[1], dtype=torch.float64),
                                                   torch.as_tensor(cov))
    g_in = -gauss.log_prob(prep(test).double())
    g_out = -gauss.log_prob(prep(malignant).double())
    result = {
        "train_benign": len(train), "test_benign": len(test), "malignant": len(malignant),
        "epochs": epochs,
        "auroc": {"MAF NLL": auroc(s_in.nll, s_out.nll),
                  "MAF typicality": auroc(s_in.typicality, s_out.typicality),
                  "Gaussian NLL (baseline)": auroc(g_in, g_out)},
    }
    print("\n== Part 2: breast cancer (scikit-learn), trained on benign, malignant = anomaly ==")
    print(f"{len(train)} benign for training, {len(test)} held-out benign vs "
          f"{len(malignant)} malignant")
    for name, value in result["auroc"].items():
        print(f"{name:28s} AUROC {value:.3f}")
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny budget (smoke test)")
    parser.add_argument("--checkpoint", default="runs/images/fashion-mnist-glow",
                        help="the Fashion-MNIST flow trained by examples/images.py")
    parser.add_argument("--mnist", default=None, help="MNIST t10k-images-idx3-ubyte[.gz]")
    parser.add_argument("--out", default="runs/anomaly")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    results = {"fashion_vs_mnist": fashion_vs_mnist(args, out), "breast_cancer":
               breast_cancer(args)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out / 'metrics.json'}")
    return results


if __name__ == "__main__":
    main()
