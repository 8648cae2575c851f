"""Lossy compression with a flow (Helminger et al., 2020) against JPEG: a rate–distortion curve.

For each dataset the script takes the integer discrete flow trained by ``examples/compression.py``
(``OUT/<dataset>-idf``; trained here with the same budget if missing), and for several
quantisation steps ``Δ``: quantises the test images' latents ``q = ⌊f⁻¹(x)/Δ⌉``, range-codes
them (``encode_lossy``) under (a) a factorised prior (a discretized logistic mixture per latent
channel, fitted to the training images' quantised latents: Helminger et al.'s setting) and
(b) the flow's own factor-out priors rescaled to the step (conditioned on the decoded coarser
parts), decodes them through the flow's inverse (``decode_lossy``) and measures the rate (bits
per pixel of the actual stream) and the distortion (PSNR over the whole test set). JPEG
(Pillow, qualities 5…95) codes the same images as one tiled sheet (the headers amortised); the
table gives JPEG's PSNR interpolated at the flow's rates. Digits (levels 0…16) are scaled ×15
for JPEG and back. Writes ``lossy.md``, ``lossy.json`` and ``lossy.png`` to ``--out``.

Run::

    python examples/compression.py --out results/compression        # trains the flows
    python examples/lossy_compression.py --out results/compression  # ≈5 min, one thread
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

import pushforward as pf
from pushforward.compression import lossy

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compression as lossless_example  # noqa: E402

STEPS = {"digits": (2, 3, 4, 6, 8), "fashion-mnist": (4, 8, 16, 32)}
QUALITIES = (5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95)


def psnr(x: np.ndarray, y: np.ndarray, peak: float) -> float | None:
    """``10 log₁₀(peak² / MSE)`` over all pixels (None when the images are identical)."""
    mse = float(np.mean((x.astype(np.float64) - y.astype(np.float64)) ** 2))
    return None if mse == 0 else 10 * math.log10(peak ** 2 / mse)


def jpeg_curve(images: np.ndarray, levels: int) -> list[dict]:
    """JPEG rate and PSNR at each quality, the images tiled into one sheet."""
    from PIL import Image

    scale = 255 // (levels - 1)
    n, _, h, w = images.shape
    cols = min(n, 100)
    rows = math.ceil(n / cols)
    sheet = np.zeros((rows * h, cols * w), dtype=np.uint8)
    for i, image in enumerate(images[:, 0]):
        r, c = divmod(i, cols)
        sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] = image * scale
    curve = []
    for quality in QUALITIES:
        buffer = io.BytesIO()
        Image.fromarray(sheet).save(buffer, format="JPEG", quality=quality, optimize=True)
        decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())), dtype=np.float64)
        out = np.stack([decoded[(i // cols) * h:(i // cols + 1) * h,
                                (i % cols) * w:(i % cols + 1) * w] for i in range(n)])
        out = np.clip(np.rint(out / scale), 0, levels - 1)
        curve.append({"quality": quality, "bpp": 8 * buffer.tell() / (n * h * w),
                      "psnr": psnr(out, images[:, 0], levels - 1)})
    return curve


def run_dataset(name: str, out: Path, quick: bool, test_limit: int | None) -> dict | None:
    """The rate–distortion points of the flow and of JPEG on one dataset."""
    data = lossless_example.load_images(name, quick, test_limit)
    if data is None:
        return None
    train, test = data
    folder = out / f"{name}-idf"
    if not (folder / "config.json").is_file():
        lossless_example.run_dataset(name, out, quick, test_limit, reuse=False)
    flow = pf.load(folder)
    levels = int(flow.levels)
    fit_images = train[:2000]
    points = []
    for step in STEPS[name][:2] if quick else STEPS[name]:
        factorised = lossy.fit_prior(flow, fit_images, step, steps=30 if quick else 300)
        for prior_name, prior in (("factorised", factorised), ("conditional", None)):
            stream = lossy.encode_lossy(flow, prior, test, step)
            decoded = lossy.decode_lossy(flow, prior, stream)
            points.append({"prior": prior_name, "step": step,
                           "bpp": 8 * len(stream) / test[:, 0].size,
                           "psnr": psnr(decoded, test, levels - 1)})
            print(name, points[-1], flush=True)
    jpeg = [j for j in jpeg_curve(test, levels) if j["psnr"] is not None]
    for p in points:  # JPEG's PSNR at the flow's rate (linear interpolation in bpp)
        rates = [j["bpp"] for j in jpeg]
        p["jpeg_psnr_at_rate"] = (float(np.interp(p["bpp"], rates, [j["psnr"] for j in jpeg]))
                                  if rates[0] <= p["bpp"] <= rates[-1] else None)
    return {"dataset": name, "test_images": len(test), "levels": levels, "flow": points,
            "jpeg": jpeg}


def plot(results: list[dict], path: Path) -> None:
    """PSNR against bits per pixel, flow and JPEG, one panel per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False)
    for ax, r in zip(axes[0], results):
        for prior, marker in (("factorised", "o-"), ("conditional", "^-")):
            mine = [p for p in r["flow"] if p["prior"] == prior and p["psnr"] is not None]
            ax.plot([p["bpp"] for p in mine], [p["psnr"] for p in mine], marker,
                    label=f"IDF latent quantised, {prior} prior")
        ax.plot([j["bpp"] for j in r["jpeg"]], [j["psnr"] for j in r["jpeg"]], "s--",
                color="C7", label="JPEG (Pillow, one sheet)")
        for p in (p for p in r["flow"] if p["psnr"] is not None):
            ax.annotate(f"Δ={p['step']}", (p["bpp"], p["psnr"]), fontsize=7,
                        textcoords="offset points", xytext=(3, -9))
        ax.set_xlabel("bits per pixel")
        ax.set_ylabel("PSNR (dB)")
        ax.set_title(f"{r['dataset']} ({r['test_images']} test images)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(results: list[dict]) -> str:
    """Markdown: the flow's rate–distortion points beside JPEG at the same rate."""
    lines = []
    for r in results:
        lines += [f"### {r['dataset']} — {r['test_images']} test images", "",
                  "| prior | step Δ | bits/pixel | PSNR (dB) | JPEG PSNR at that rate (dB) |",
                  "|---|---:|---:|---:|---:|"]
        for p in r["flow"]:
            jpeg = "—" if p["jpeg_psnr_at_rate"] is None else f"{p['jpeg_psnr_at_rate']:.2f}"
            quality = "lossless" if p["psnr"] is None else f"{p['psnr']:.2f}"
            lines.append(f"| {p['prior']} | {p['step']} | {p['bpp']:.3f} | {quality} | "
                         f"{jpeg} |")
        lines += ["", "JPEG qualities: " + ", ".join(
            f"q{j['quality']}: {j['bpp']:.2f} bpp / {j['psnr']:.1f} dB" for j in r["jpeg"]), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the rate–distortion comparison; returns one result per dataset."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (and the trained flows)")
    parser.add_argument("--quick", action="store_true", help="tiny budgets (smoke test)")
    parser.add_argument("--datasets", nargs="+", default=["digits", "fashion-mnist"],
                        choices=sorted(STEPS))
    parser.add_argument("--test-limit", type=int, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = [r for name in args.datasets
               if (r := run_dataset(name, out, args.quick, args.test_limit))]
    (out / "lossy.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "lossy.md").write_text("# Lossy compression: rate and distortion\n\n"
                                  + table(results))
    if results:
        plot(results, out / "lossy.png")
    print(f"wrote {out / 'lossy.md'}", flush=True)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
