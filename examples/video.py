"""Video prediction on Moving MNIST: a conditional Glow given the past frames vs the same flow
without them.

Moving MNIST (two digits bouncing in 32×32 frames, Srivastava et al. 2015) is generated from the
MNIST test digits at ``--data`` (``t10k-images-idx3-ubyte.gz``); the digits are split once into
a training pool and a held-out pool, so the test videos show unseen digits. Two flows of the
same ``"video-glow"`` architecture are trained for the same number of steps on the same frames:

* conditional: frame ``t`` given the ``--past`` previous frames (encoded to maps that every
  coupling reads, VideoFlow-style);
* unconditional: frame ``t`` alone (``past=0``), the baseline frame model.

Reports the test bits/dim of every predicted frame for both (dequantised 8-bit pixels), and
draws autoregressive rollouts (sample frame ``t``, quantise it, feed it back) at each
``--temperature``. Training runs in rounds; after each round ``metrics.json``, the models and
the figures are rewritten, so an interrupted run (SIGTERM, ``timeout``) leaves usable results.

Writes to ``--out``: ``metrics.json``, ``bits_per_frame.png``, ``rollouts.png`` (per test
video: the ground-truth row, then sampled rows; the first ``past`` frames are the given
context), ``rollouts.gif`` (the same, animated), ``conditional/`` and ``unconditional/``
(checkpoints, ``pf.load``).

Run::

    python examples/video.py --data ../shared/data/mnist --out docs/results/video --minutes 55
    python examples/video.py --data ../shared/data/mnist --out /tmp/video --quick   # minutes
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

import pushforward as pf

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
ARCH = dict(hidden=32, transforms=3, levels=3, maps=8, encoder_hidden=16, encoder_layers=1)
QUICK_ARCH = dict(hidden=8, transforms=1, levels=3, maps=4, encoder_hidden=8, encoder_layers=1)


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="folder (or file) of the MNIST test images t10k-images-idx3-ubyte.gz")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--quick", action="store_true", help="tiny budget (smoke test)")
    parser.add_argument("--past", type=int, default=2, help="context frames")
    parser.add_argument("--frames", type=int, default=10, help="frames per video")
    parser.add_argument("--train-videos", type=int, default=2000)
    parser.add_argument("--test-videos", type=int, default=200)
    parser.add_argument("--minutes", type=float, default=50.0,
                        help="training budget (wall clock, both models together)")
    parser.add_argument("--round-steps", type=int, default=200,
                        help="steps per model between evaluations")
    parser.add_argument("--save-every", type=int, default=1,
                        help="rewrite results every this many rounds")
    parser.add_argument("--max-steps", type=int, default=None, help="steps per model at most")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    parser.add_argument("--temperature", type=float, nargs="+", default=[1.0, 0.7],
                        help="sampling temperatures of the rollouts")
    parser.add_argument("--samples", type=int, default=2, help="rollouts per video and "
                        "temperature")
    parser.add_argument("--show", type=int, default=3, help="test videos in the figures")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.train_videos, args.test_videos = 48, 16
        args.minutes, args.round_steps, args.max_steps = 3.0, 15, 30
        args.batch_size, args.samples, args.show = 16, 1, 2
    return args


def build(past: int, quick: bool) -> pf.Flow:
    """The shared architecture; ``past=0`` is the unconditional twin."""
    return pf.flows.build("video-glow", shape=(1, 32, 32), past=past,
                          **(QUICK_ARCH if quick else ARCH))


def evaluate(models: dict[str, pf.Flow], test: np.ndarray, past: int) -> dict[str, list]:
    """Bits/dim per predicted frame (frames ``past … T−1``) for both models."""
    return {name: pf.video.bits_per_frame(flow, test, flow_past, predict_from=past,
                                          seed=1).tolist()
            for name, (flow, flow_past) in models.items()}


def draw(models: dict, test: np.ndarray, args: argparse.Namespace, out: Path) -> None:
    """``rollouts.png`` and ``rollouts.gif``: truth vs autoregressive samples per video."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    flow, past = models["conditional"]
    uncond = models["unconditional"][0]
    shown = torch.as_tensor(test[: args.show])
    steps = args.frames - args.past
    torch.manual_seed(args.seed)
    rows: list[tuple[str, np.ndarray]] = []  # (label, (show, frames, 32, 32))
    rows.append(("truth", shown.numpy()))
    for temperature in args.temperature:
        drawn = pf.video.rollout(flow, shown[:, : args.past], steps, args.samples,
                                 temperature, past)[:, :, :, 0]
        for s in range(args.samples):
            full = torch.cat([shown[:, : args.past], drawn[s]], 1)
            rows.append((f"sample T={temperature:g}", full.numpy()))
    free = pf.video.rollout(uncond, shown[:, : args.past], steps, 1, args.temperature[-1],
                            0)[0, :, :, 0]
    rows.append((f"uncond. T={args.temperature[-1]:g}",
                 torch.cat([shown[:, : args.past], free], 1).numpy()))

    n_rows = len(rows) * len(shown)
    fig, axes = plt.subplots(n_rows, args.frames, figsize=(args.frames * 0.8, n_rows * 0.85),
                             squeeze=False)
    for v in range(len(shown)):
        for r, (label, frames) in enumerate(rows):
            row = v * len(rows) + r
            for t in range(args.frames):
                ax = axes[row, t]
                ax.imshow(frames[v, t], cmap="gray", vmin=0, vmax=255)
                ax.set_xticks([])
                ax.set_yticks([])
                if t < args.past and r > 0:
                    for side in ax.spines.values():
                        side.set_color("tab:blue")
                        side.set_linewidth(2)
                if t == 0:
                    ax.set_ylabel(f"{v}: {label}" if r == 0 else label, fontsize=6,
                                  rotation=0, ha="right", va="center")
                if row == 0:
                    ax.set_title(f"t={t}", fontsize=7)
    fig.suptitle(f"Moving MNIST test videos (unseen digits): truth, then rollouts given the "
                 f"first {args.past} frames (blue)", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "rollouts.png", dpi=110)
    plt.close(fig)

    scale, gap = 3, 2
    tiles = [frames for _, frames in rows]
    cell = 32 * scale + gap
    pictures = []
    for t in range(args.frames):
        canvas = np.full((len(shown) * cell, len(tiles) * cell), 60, np.uint8)
        for v in range(len(shown)):
            for r, frames in enumerate(tiles):
                big = np.kron(frames[v, t], np.ones((scale, scale), np.uint8))
                canvas[v * cell:v * cell + 32 * scale, r * cell:r * cell + 32 * scale] = big
        pictures.append(Image.fromarray(canvas))
    pictures[0].save(out / "rollouts.gif", save_all=True, append_images=pictures[1:],
                     duration=300, loop=0)


def plot_bits(metrics: dict, out: Path) -> None:
    """``bits_per_frame.png``: test bits/dim per predicted frame, both models."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = metrics["predicted_frames"]
    fig, ax = plt.subplots(figsize=(4.8, 3.2))
    for name, style in (("conditional", "o-"), ("unconditional", "s--")):
        ax.plot(frames, metrics["bits_per_dim"][name], style, label=name)
    ax.set_xlabel("predicted frame t")
    ax.set_ylabel("test bits/dim")
    ax.set_title(f"Moving MNIST, frame t given {metrics['settings']['past']} past frames",
                 fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "bits_per_frame.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    """Generate the data, train both models in rounds, write metrics and figures."""
    args = parse(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    common = dict(frames=args.frames, size=32, digit_size=14, n_digits=2, speed=(1.0, 2.0))
    train = pf.video.moving_mnist(args.data, "train", args.train_videos, seed=args.seed,
                                  **common)
    test = pf.video.moving_mnist(args.data, "test", args.test_videos, seed=args.seed + 1,
                                 **common)
    models = {"conditional": (build(args.past, args.quick), args.past),
              "unconditional": (build(0, args.quick), 0)}
    data = {name: pf.video.FramePairs(train, p, predict_from=args.past, seed=args.seed + i)
            for i, (name, (_, p)) in enumerate(models.items())}
    stop = {"now": False}

    def _stop(signum: int, frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    budget = args.minutes * 60.0
    start = time.monotonic()
    steps, rounds, history = 0, 0, []
    bits: dict = {}
    while not stop["now"]:
        elapsed = time.monotonic() - start
        if elapsed >= budget or (args.max_steps is not None and steps >= args.max_steps):
            break
        # Cosine decay of the learning rate over the wall-clock budget.
        lr = args.lr * 0.5 * (1.0 + math.cos(math.pi * min(elapsed / budget, 1.0)))
        lr = max(lr, args.lr * 0.02)
        n = args.round_steps if args.max_steps is None else min(args.round_steps,
                                                                args.max_steps - steps)
        train_nll = {}
        for name, (flow, _) in models.items():
            h = pf.fit(flow, data[name], steps=n, batch_size=args.batch_size, lr=lr,
                       schedule=None, warmup=min(20, n), seed=args.seed + rounds, progress=False,
                       handle_signals=False)
            train_nll[name] = float(np.mean(h.step_nll[-min(50, len(h.step_nll)):]))
        steps += n
        rounds += 1
        bits = evaluate(models, test, args.past)
        history.append({"steps": steps, "seconds": round(time.monotonic() - start, 1),
                        "lr": lr, "train_bits_per_dim": {
                            k: v / (1024 * math.log(2)) + 8 for k, v in train_nll.items()},
                        "test_bits_per_dim": {k: float(np.mean(v)) for k, v in bits.items()}})
        last = history[-1]["test_bits_per_dim"]
        print(f"step {steps}: test bits/dim conditional {last['conditional']:.3f}, "
              f"unconditional {last['unconditional']:.3f} ({time.monotonic() - start:.0f} s)",
              flush=True)
        if rounds % args.save_every == 0:
            write(models, bits, history, args, train, test, steps, time.monotonic() - start,
                  partial=True)
    if not history:
        raise SystemExit("video: no training round completed within the budget")
    return write(models, bits, history, args, train, test, steps, time.monotonic() - start,
                 partial=stop["now"])


def write(models: dict, bits: dict, history: list, args: argparse.Namespace, train: np.ndarray,
          test: np.ndarray, steps: int, seconds: float, partial: bool) -> dict:
    """Save both models, ``metrics.json``, the bits/dim plot and the rollouts."""
    out = args.out
    for name, (flow, _) in models.items():
        pf.save(flow, out / name)
    metrics = {
        "dataset": "Moving MNIST generated from the MNIST test digits (train/test digit pools "
                   "disjoint, 20 % of the digits held out)",
        "predicted_frames": list(range(args.past, args.frames)),
        "bits_per_dim": bits,
        "mean_bits_per_dim": {k: float(np.mean(v)) for k, v in bits.items()},
        "steps_per_model": steps,
        "train_seconds": round(seconds, 1),
        "partial": partial,
        "settings": {
            "past": args.past, "frames": args.frames, "frame_shape": [1, 32, 32],
            "digit_size": 14, "digits_per_video": 2, "speed_px_per_frame": [1.0, 2.0],
            "train_videos": int(len(train)), "test_videos": int(len(test)),
            "batch_size": args.batch_size, "peak_lr": args.lr, "minutes": args.minutes,
            "round_steps": args.round_steps, "seed": args.seed, "quick": args.quick,
            "architecture": QUICK_ARCH if args.quick else ARCH,
            "parameters": {k: sum(p.numel() for p in f.parameters())
                           for k, (f, _) in models.items()},
            "temperatures": args.temperature, "torch_threads": torch.get_num_threads(),
            "dequantisation": "uniform, x = (v + u)/256 - 1/2; bits/dim = -log2 p(x)/D + 8",
            "command": "python examples/video.py " + " ".join(sys.argv[1:]),
        },
        "history": history,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    plot_bits(metrics, out)
    draw(models, test, args, out)
    return metrics


if __name__ == "__main__":
    main()
