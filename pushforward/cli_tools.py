"""``pushforward sample | eval | check | plot | compress | decompress | datasets``."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pushforward.cli_base import CommandError, Runner, command, positive_float, positive_int
from pushforward.cli_runs import (
    bundle_from_config,
    data_points,
    load_run,
    make_plots,
    read_history,
    seeded_nll,
)

__all__: list[str] = []


@command("sample", help="draw samples from a trained flow into a .npy file")
def _sample_parser(p: argparse.ArgumentParser) -> Runner:
    p.add_argument("--checkpoint", required=True, help="a folder written by train")
    p.add_argument("-n", "--n", type=positive_int, default=1000, help="number of samples")
    p.add_argument("--out", help="output .npy file (default CHECKPOINT/samples.npy)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=positive_float, default=1.0,
                   help="scale of the base draw (Gaussian bases)")
    return _run_sample


def _run_sample(args: argparse.Namespace) -> int:
    from pushforward.data.tabular import unit_to_latlon

    flow, config = load_run(args.checkpoint)
    out = Path(args.out) if args.out else Path(args.checkpoint) / "samples.npy"
    if out.suffix != ".npy":
        raise CommandError(f"--out must end in .npy, got {out}")
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(args.seed)
        x = flow.sample(args.n, temperature=args.temperature)
    array = x.cpu().numpy()  # the model's dtype (float32 model -> float32 .npy)
    what = ""
    if config.get("kind") == "sphere":
        array = unit_to_latlon(array).astype(array.dtype)
        what = " as latitude, longitude (degrees)"
    elif config.get("kind") == "image":
        what = ", pixel intensities in [0, 1]"
    what = f"shape {array.shape}{what}"
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, array, allow_pickle=False)
    print(f"wrote {args.n} samples to {out} ({what})")
    return 0


def _checkpoint_and_data(checkpoint: str, dataset: str | None) -> tuple[Any, dict, Any]:
    """A trained flow, its config, and its dataset (or ``dataset``), checked to match in shape."""
    flow, config = load_run(checkpoint)
    bundle = bundle_from_config(config, dataset)
    if tuple(bundle.event_shape) != tuple(flow.event_shape):
        raise CommandError(f"dataset {bundle.name} has samples of shape "
                           f"{tuple(bundle.event_shape)}, the flow models "
                           f"{tuple(flow.event_shape)}")
    return flow, config, bundle


@command("eval", help="print the test NLL of a trained flow")
def _eval_parser(p: argparse.ArgumentParser) -> Runner:
    p.add_argument("--checkpoint", required=True, help="a folder written by train")
    p.add_argument("--dataset", help="evaluate on this dataset or file instead of the "
                   "training one (same seed and split)")
    p.add_argument("--split", choices=["test", "val", "train", "all"], default="test")
    p.add_argument("--seed", type=int, default=None, help="dequantisation noise seed")
    return _run_eval


def _run_eval(args: argparse.Namespace) -> int:
    from pushforward.data import bits_per_dim

    flow, config, bundle = _checkpoint_and_data(args.checkpoint, args.dataset)
    if args.split == "all":
        parts = [bundle.train, bundle.val, bundle.test]
        data = torch.cat(parts) if isinstance(parts[0], torch.Tensor) else None
        if data is None:
            raise CommandError("--split all is for vector data; pick test/val/train")
    else:
        data = getattr(bundle, args.split)
    seed = args.seed if args.seed is not None else int((config.get("data") or {}).get("seed",
                                                                                       0))
    nll, se = seeded_nll(flow, data, seed)
    line = f"{args.split} NLL {nll:.4f} ± {se:.4f} nats on {bundle.name} ({len(data)} points)"
    if bundle.kind == "image":
        line += f", {bits_per_dim(nll, bundle.dims, bundle.levels):.4f} bits/dim"
    print(line)
    return 0


@command("check", help="invertibility report of a trained flow on its data (exit 1 if not ok)")
def _check_parser(p: argparse.ArgumentParser) -> Runner:
    p.add_argument("--checkpoint", required=True, help="a folder written by train")
    p.add_argument("--dataset", help="check on this dataset or file instead of the training one")
    p.add_argument("--split", choices=["test", "val", "train"], default="test")
    p.add_argument("-n", type=positive_int, default=1000, help="points checked (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    return _run_check


def _run_check(args: argparse.Namespace) -> int:
    from pushforward.diagnostics import invertibility_report

    flow, config, bundle = _checkpoint_and_data(args.checkpoint, args.dataset)
    x = data_points(bundle, getattr(bundle, args.split), args.n)
    # On the sphere the ambient Jacobian is singular across the surface: no conditioning there.
    report = invertibility_report(flow, x, seed=args.seed,
                                  n_conditioning=0 if bundle.kind == "sphere" else 32)
    print(f"{bundle.name}, {args.split} split, {len(x)} points")
    print(report)
    return 0 if report.ok else 1


@command("plot", help="redraw a trained flow's figures (loss, samples, density)")
def _plot_parser(p: argparse.ArgumentParser) -> Runner:
    p.add_argument("--checkpoint", required=True, help="a folder written by train")
    p.add_argument("--out", help="folder for the PNG files (default: the checkpoint)")
    p.add_argument("--seed", type=int, default=0)
    return _run_plot


def _run_plot(args: argparse.Namespace) -> int:
    flow, config = load_run(args.checkpoint)
    bundle = bundle_from_config(config)
    out = Path(args.out) if args.out else Path(args.checkpoint)
    paths = make_plots(flow, bundle, read_history(Path(args.checkpoint)), out, args.seed)
    print("plots: " + "  ".join(str(p) for p in paths))
    return 0


def _coding_arguments(p: argparse.ArgumentParser, model: str, source: str, target: str) -> None:
    """The three paths compress and decompress share: ``--checkpoint``, ``--input``, ``--out``."""
    for flag, text in (("--checkpoint", model), ("--input", source), ("--out", target)):
        p.add_argument(flag, required=True, help=text)


@command("compress", help="losslessly compress images with a trained integer flow (idf)")
def _compress_parser(p: argparse.ArgumentParser) -> Runner:
    _coding_arguments(p, "a saved idf model folder", "a folder of PNG images or an IDX file",
                      "the compressed file to write")
    p.add_argument("--batch-size", type=positive_int, default=256)
    return _run_compress


def _coding_progress(total: int, what: str) -> Callable[[int], None]:
    from tqdm import tqdm

    bar = tqdm(total=total, unit="img", desc=what, file=sys.stderr, leave=False)

    def update(done: int) -> None:
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return update


def _run_compress(args: argparse.Namespace) -> int:
    from pushforward import compression
    from pushforward.compression import files

    flow, _ = load_run(args.checkpoint)
    images, names, kind = files.read_images(args.input)
    started = time.time()
    stream = compression.encode(flow, images, batch_size=args.batch_size,
                                progress=_coding_progress(len(images), "compress"))
    data = files.pack_names(stream, names, kind)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    print(f"{len(images)} images {images.shape[1:]} -> {out}: {len(data)} bytes, "
          f"{8 * len(data) / images.size:.4f} bits/dim ({time.time() - started:.1f} s)")
    return 0


@command("decompress", help="decompress a file written by compress, bit for bit")
def _decompress_parser(p: argparse.ArgumentParser) -> Runner:
    _coding_arguments(p, "the model folder used by compress", "a file written by compress",
                      "folder for the PNG images")
    return _run_decompress


def _run_decompress(args: argparse.Namespace) -> int:
    from pushforward import compression
    from pushforward.compression import files

    flow, _ = load_run(args.checkpoint)
    stream, names, kind = files.unpack_names(Path(args.input).read_bytes())
    count = compression.stream.unpack(stream)[0].count
    images = compression.decode(flow, stream, progress=_coding_progress(count, "decompress"))
    written = files.write_images(images, names, kind, args.out)
    print(f"{len(images)} images -> {args.out} ({len(written)} files)")
    return 0


@command("datasets", help="list the built-in datasets and flows")
def _datasets_parser(p: argparse.ArgumentParser) -> Runner:
    return _run_datasets


def _run_datasets(args: argparse.Namespace) -> int:
    import pushforward.flows as flows
    from pushforward.data import datasets

    print("datasets (--dataset NAME, or a .csv / .npy file):")
    for name, text in datasets().items():
        print(f"  {name:<14} {text}")
    print("flows (--flow NAME): " + ", ".join(flows.names()))
    return 0
