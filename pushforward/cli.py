"""The ``pushforward`` command: ``train | sample | eval | plot | datasets``.

``pushforward train`` with no arguments fits the default flow to the default 2-D dataset and
prints where its output folder is. Every error is one line on stderr with a non-zero exit code
(set ``PUSHFORWARD_DEBUG=1`` for the traceback). New subcommands register with ``command``::

    @command("check", help="...")
    def _check(parser):            # adds the arguments, returns the function that runs them
        parser.add_argument("--checkpoint", required=True)
        return run_check           # run_check(args) -> int (exit code)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pushforward.cli_config import add_config_argument, parse_args

__all__ = ["main", "command", "DEFAULT_DATASET", "DEFAULT_FLOW"]

DEFAULT_DATASET = "moons"
DEFAULT_FLOW = "nsf"
DEFAULT_STEPS = 2000
DEFAULT_LR = 2e-3
FLOW_MATCHING_FLOWS = ("sphere-cnf",)
DEFAULT_BATCH = 256
HISTORY_FILE = "history.json"
METRICS_FILE = "metrics.json"

Runner = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], Runner]]] = {}


class CommandError(Exception):
    """A user-facing error: printed as one line, exit code 2 (usage) or 1."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        raise CommandError(f"{self.prog}: {message} (see --help)", 2)


def command(name: str, help: str) -> Callable[[Callable[[argparse.ArgumentParser], Runner]],
                                                Callable[[argparse.ArgumentParser], Runner]]:
    """Register a subcommand: the decorated function adds its arguments and returns its runner."""

    def decorate(configure: Callable[[argparse.ArgumentParser], Runner]
                 ) -> Callable[[argparse.ArgumentParser], Runner]:
        _COMMANDS[name] = (help, configure)
        return configure

    return decorate


def _say(*parts: object, err: bool = False) -> None:
    from pushforward.training import distributed as ddp

    if ddp.is_main():
        print(*parts, file=sys.stderr if err else sys.stdout, flush=True)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key, parsed


# -- helpers shared by the commands -------------------------------------------------------------
def _set_threads(threads: int | None, image: bool) -> None:
    from pushforward.training import distributed as ddp

    if threads is None:
        cores = os.cpu_count() or 1
        threads = 1 if (ddp.launched() or not image) else min(cores, 4)
    torch.set_num_threads(threads)


def _build_flow(name: str, bundle: Any, options: dict[str, Any]) -> Any:
    import pushforward.flows as flows
    from pushforward.transforms import Reshape

    if name.lower() not in flows.names():
        raise CommandError(f"unknown flow {name!r}; choose one of {', '.join(flows.names())}")
    accepted = flows.accepts(name)
    sphere_flows = [n for n in flows.names() if "sphere" in flows.accepts(n)]
    if bundle.kind == "sphere" and "sphere" not in accepted:
        raise CommandError(f"--manifold sphere needs a flow on the sphere "
                           f"({', '.join(sphere_flows)}), not {name!r}")
    if bundle.kind != "sphere" and "sphere" in accepted:
        raise CommandError(f"the {name.lower()!r} flow needs latitude/longitude data: add "
                           "--manifold sphere and a .csv/.npy file")
    layers = list(bundle.preprocess)
    if bundle.kind == "image" and "images" in accepted:
        flow = flows.build(name, shape=list(bundle.event_shape), **options)
    else:
        if bundle.kind == "image":
            layers.insert(0, Reshape(bundle.event_shape, (bundle.dims,)))
        flow = flows.build(name, features=bundle.dims, **options)
    return flow.prepend(layers)


def _device(name: str) -> torch.device:
    from pushforward.training import distributed as ddp

    if ddp.is_active():
        return ddp.device()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise CommandError(f"unknown device {name!r}") from None


def _seeded_nll(flow: Any, data: Any, seed: int) -> tuple[float, float]:
    """Mean NLL and its standard error (dequantisation noise fixed by ``seed``)."""
    from pushforward.evaluation import batched_negative_log_likelihood
    from pushforward.training import DataSource

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        nll = batched_negative_log_likelihood(flow, DataSource(data, "test").batches(2048))
    nll = nll.double().cpu()
    se = float(nll.std() / math.sqrt(len(nll))) if len(nll) > 1 else float("nan")
    return float(nll.mean()), se


def _baseline_nll(bundle: Any, data: Any) -> float | None:
    """NLL of N(0, I) on the raw vector data (the trivial baseline), or log 4π on the sphere."""
    if bundle.kind == "sphere":
        return math.log(4 * math.pi)
    if bundle.kind != "vector":
        return None
    x = data.double()
    return float((0.5 * x.pow(2).sum(1) + 0.5 * x.shape[1] * math.log(2 * math.pi)).mean())


def _samples_in_data_units(flow: Any, n: int, seed: int) -> torch.Tensor:
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        return flow.sample(n).cpu()


def _data_points(bundle: Any, split: Any, n: int) -> torch.Tensor:
    if isinstance(split, torch.Tensor):
        return split[:n].cpu()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return split[torch.arange(min(n, len(split)))]


def _make_plots(flow: Any, bundle: Any, history: Any, out: Path, seed: int) -> list[Path]:
    from pushforward import plotting

    paths = []
    if history is not None:
        title = f"{bundle.name} — {flow.config.get('flow', 'flow')}"
        paths.append(plotting.plot_history(history, out / "loss.png", title=title))
    if bundle.kind == "image":
        samples = _samples_in_data_units(flow, 64, seed).clamp(0, 1)
        data = _data_points(bundle, bundle.test, 64)
        paths.append(plotting.plot_image_grid(samples, out / "samples.png", data=data))
        return paths
    data = _data_points(bundle, bundle.test, 2000)
    samples = _samples_in_data_units(flow, len(data), seed)
    if bundle.kind == "sphere":
        from pushforward.data.tabular import unit_to_latlon

        ll_data, ll_samples = unit_to_latlon(data.numpy()), unit_to_latlon(samples.numpy())
        paths.append(plotting.plot_samples(ll_data[:, ::-1], ll_samples[:, ::-1],
                                           out / "samples.png", labels=("longitude", "latitude")))
        paths.append(plotting.plot_sphere_density(flow, ll_data, out / "density.png"))
        return paths
    paths.append(plotting.plot_samples(data, samples, out / "samples.png"))
    if bundle.event_shape == (2,):
        paths.append(plotting.plot_density(flow, data, out / "density.png"))
    return paths


def _bundle_from_config(config: dict[str, Any], dataset: str | None = None) -> Any:
    from pushforward.data import load_dataset

    spec = dict(config.get("data") or {})
    if dataset is not None:
        spec["source"] = dataset
    if "source" not in spec:
        raise CommandError("the checkpoint records no dataset; pass --dataset")
    try:
        return load_dataset(spec["source"], seed=int(spec.get("seed", 0)),
                            manifold=spec.get("manifold"),
                            image_preprocessing=spec.get("image_preprocessing", "logit"),
                            size=spec.get("size"))
    except TypeError as error:
        raise CommandError(f"the checkpoint's dataset record is malformed: {error}") from None


def _load(path: str) -> tuple[Any, dict[str, Any]]:
    from pushforward.training.checkpoint import load_checkpoint

    return load_checkpoint(path)


def _read_history(folder: Path) -> Any:
    from pushforward.training import History

    file = folder / HISTORY_FILE
    if not file.is_file():
        return None
    try:
        return History.from_dict(json.loads(file.read_text()))
    except (json.JSONDecodeError, TypeError, AttributeError):
        return None


def _write_json(path: Path, record: dict[str, Any]) -> None:
    from pushforward.training.checkpoint import atomic_write

    atomic_write(path, (json.dumps(record, indent=2, allow_nan=True) + "\n").encode())


# -- train ----------------------------------------------------------------------------------------
_TRAIN_KEYS = ("dataset", "flow", "batch_size", "lr", "seed", "manifold", "preprocess",
               "schedule", "clip_grad", "val_every", "patience", "checkpoint_every", "dtype",
               "option", "size", "bounds")


@command("train", help="train a flow and write model, config, metrics and plots")
def _train_parser(p: argparse.ArgumentParser) -> Runner:
    p.add_argument("--dataset", help=f"a built-in name (see `pushforward datasets`), a .csv or "
                   f".npy file, or a folder of IDX images (default {DEFAULT_DATASET})")
    p.add_argument("--flow", help=f"a registered preset (default {DEFAULT_FLOW})")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=_positive_int,
                        help=f"optimisation steps (default {DEFAULT_STEPS})")
    length.add_argument("--epochs", type=_positive_int, help="passes over the training split")
    p.add_argument("--batch-size", type=_positive_int, help=f"default {DEFAULT_BATCH}")
    p.add_argument("--lr", type=_positive_float, help=f"peak learning rate (default {DEFAULT_LR})")
    p.add_argument("--out", help="output folder (default runs/DATASET-FLOW)")
    p.add_argument("--seed", type=int, help="seeds the model, data split and order (default 0)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run saved in --out (after SIGINT/SIGTERM or a crash)")
    p.add_argument("--manifold", choices=["sphere"],
                   help="sphere: the file holds latitude, longitude in degrees")
    p.add_argument("--preprocess", choices=["logit", "unit"],
                   help="image pre-processing (default logit)")
    p.add_argument("--schedule", choices=["cosine", "plateau", "none"], help="default cosine")
    p.add_argument("--clip-grad", type=_positive_float, help="max gradient norm (default 5)")
    p.add_argument("--val-every", type=_positive_int, help="validate every N steps")
    p.add_argument("--patience", type=_positive_int,
                   help="stop after N validations without improvement")
    p.add_argument("--checkpoint-every", type=_positive_int,
                   help="checkpoint every N steps (default: at each validation)")
    p.add_argument("--dtype", choices=["float32", "float64"], help="default float32")
    p.add_argument("--option", action="append", type=_option, metavar="KEY=VALUE",
                   help="a preset option, e.g. --option transforms=8 --option hidden=[64,64]")
    p.add_argument("--size", type=_positive_int, help="points drawn from a toy density")
    p.add_argument("--bounds", metavar="auto|LOW,HIGH",
                   help="data in a box: end the flow with a sigmoid onto [LOW, HIGH] (every "
                        "feature), or onto the data's range widened by 5%% ('auto'); "
                        "replaces the standardisation (vector data only)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default auto)")
    p.add_argument("--threads", type=_positive_int, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_argument(p)  # --config FILE.json|yaml: any flag as a key
    return _run_train


def _resolve_train_args(args: argparse.Namespace) -> tuple[dict[str, Any], Path, bool]:
    from pushforward.training.checkpoint import CONFIG_FILE, STATE_FILE

    explicit = {k: getattr(args, k) for k in _TRAIN_KEYS if getattr(args, k) is not None}
    out = Path(args.out) if args.out else None
    stored: dict[str, Any] = {}
    resuming = False
    if args.resume:
        if out is None:
            raise CommandError("--resume needs --out DIR (the folder of the run to continue)")
        if (out / STATE_FILE).is_file() and (out / CONFIG_FILE).is_file():
            from pushforward.training.checkpoint import read_config

            stored = dict(read_config(out).get("train") or {})
            resuming = True
            for key in ("dataset", "flow", "seed", "batch_size", "manifold", "preprocess",
                        "option", "size", "dtype", "bounds"):
                if key in explicit and key in stored and _norm(explicit[key]) != _norm(
                        stored[key]):
                    raise CommandError(
                        f"--{key.replace('_', '-')} {explicit[key]} differs from the run in "
                        f"{out} ({stored[key]}); resume with the same settings"
                    )
        else:
            # Asked to resume, got nothing to resume: an error, not a silent fresh run.
            where = f"the folder {out} does not exist" if not out.exists() else (
                f"the folder {out} holds no checkpoint ({STATE_FILE} and {CONFIG_FILE})")
            raise CommandError(
                f"--resume: nothing to resume, {where}; check --out, or drop --resume to "
                "start a new run"
            )
    settings = {"dataset": DEFAULT_DATASET, "flow": DEFAULT_FLOW, "batch_size": DEFAULT_BATCH,
                "lr": DEFAULT_LR, "seed": 0, "manifold": None, "preprocess": "logit",
                "schedule": "cosine", "clip_grad": 5.0, "val_every": None, "patience": None,
                "checkpoint_every": None, "dtype": "float32", "option": [], "size": None,
                "bounds": None,
                "steps": None, "epochs": None}
    settings.update(stored)
    settings.update(explicit)
    if settings["manifold"] == "sphere" and "flow" not in explicit and "flow" not in stored:
        settings["flow"] = "sphere"
    if args.steps is not None or args.epochs is not None:
        settings["steps"], settings["epochs"] = args.steps, args.epochs
    if settings["steps"] is None and settings["epochs"] is None:
        settings["steps"] = DEFAULT_STEPS
    settings["option"] = [list(o) for o in settings["option"]]
    if out is None:
        stem = Path(str(settings["dataset"])).stem if Path(str(settings["dataset"])).suffix \
            else str(settings["dataset"])
        out = Path("runs") / f"{stem}-{settings['flow']}"
    return settings, out, resuming


def _apply_bounds(bundle: Any, text: str) -> None:
    """Replace the bundle's pre-processing by a sigmoid onto a box (``--bounds``)."""
    from pushforward.transforms import Sigmoid, box_bounds

    if bundle.kind != "vector":
        raise CommandError(f"--bounds applies to vector data, not {bundle.kind} data")
    if text.strip().lower() == "auto":
        low, high = box_bounds(torch.cat([bundle.train, bundle.val, bundle.test]))
    else:
        try:
            low_v, high_v = (float(v) for v in text.split(","))
        except ValueError:
            raise CommandError(f"--bounds must be 'auto' or LOW,HIGH, got {text!r}") from None
        if not low_v < high_v:
            raise CommandError(f"--bounds: LOW must be below HIGH, got {text!r}")
        low, high = [low_v] * bundle.dims, [high_v] * bundle.dims
    for name in ("train", "val", "test"):
        x = getattr(bundle, name)
        outside = (x < torch.tensor(low)) | (x > torch.tensor(high))
        if bool(outside.any()):
            raise CommandError(f"--bounds {text}: {int(outside.any(-1).sum())} {name} point(s) "
                               "lie outside the box; widen it or use --bounds auto")
    bundle.preprocess = [Sigmoid(torch.tensor(low), torch.tensor(high), bundle.event_shape)]


def _norm(value: Any) -> Any:
    return json.loads(json.dumps(value, default=list))


def _run_train(args: argparse.Namespace) -> int:
    from pushforward.data import bits_per_dim, load_dataset
    from pushforward.training import distributed as ddp
    from pushforward.training import fit

    ddp.init()
    settings, out, resuming = _resolve_train_args(args)
    bundle = load_dataset(settings["dataset"], seed=settings["seed"],
                          manifold=settings["manifold"],
                          image_preprocessing=settings["preprocess"], size=settings["size"])
    _set_threads(args.threads, bundle.kind == "image")
    if settings["bounds"] is not None:
        _apply_bounds(bundle, settings["bounds"])
    device = _device(args.device)
    dtype = torch.float64 if settings["dtype"] == "float64" else torch.float32
    torch.manual_seed(settings["seed"])
    options = dict(settings["option"])
    try:
        flow = _build_flow(settings["flow"], bundle, options)
    except CommandError:
        raise
    except (TypeError, ValueError) as error:
        raise CommandError(f"cannot build flow {settings['flow']!r} with options {options}: "
                           f"{str(error).splitlines()[0] if str(error) else error}") from None
    flow = flow.to(device=device, dtype=dtype)
    n_params = sum(p.numel() for p in flow.parameters())
    steps_text = (f"{settings['steps']} steps" if settings["steps"] else
                  f"{settings['epochs']} epochs")
    _say(f"{'resuming' if resuming else 'training'} {settings['flow']} ({n_params:,} parameters)"
         f" on {bundle.name} ({len(bundle.train):,} train / {len(bundle.val):,} val / "
         f"{len(bundle.test):,} test, {bundle.kind} {tuple(bundle.event_shape)}) for "
         f"{steps_text}{f' on {ddp.world_size()} processes' if ddp.is_active() else ''}")
    extra = {"data": bundle.spec, "train": {k: settings[k] for k in (*_TRAIN_KEYS, "steps",
                                                                      "epochs")},
             "kind": bundle.kind, "event_shape": list(bundle.event_shape),
             "levels": bundle.levels}
    start = time.time()
    # sphere-cnf trains by Riemannian flow matching, at fit's flow-matching lr unless given
    matching = settings["flow"].lower() in FLOW_MATCHING_FLOWS
    history = fit(
        flow, bundle.train, bundle.val, steps=settings["steps"], epochs=settings["epochs"],
        batch_size=settings["batch_size"],
        lr=None if matching and args.lr is None else settings["lr"],
        objective="flow-matching" if matching else "mle",
        schedule=None if settings["schedule"] == "none" else settings["schedule"],
        clip_grad=settings["clip_grad"], val_every=settings["val_every"],
        patience=settings["patience"], seed=settings["seed"], checkpoint_dir=out,
        checkpoint_every=settings["checkpoint_every"], checkpoint_extra=extra,
        resume=args.resume, progress=not args.no_progress,
    )
    seconds = time.time() - start
    if ddp.is_main():
        _write_json(out / HISTORY_FILE, history.to_dict())
    if history.interrupted:
        _say(f"interrupted at step {history.steps}; checkpoint saved in {out}. Continue with: "
             f"pushforward train --resume --out {out}", err=True)
        ddp.barrier()
        return 130
    if not ddp.is_main():
        ddp.barrier()
        return 0
    test_nll, test_se = _seeded_nll(flow, bundle.test, settings["seed"])
    metrics: dict[str, Any] = {
        "test_nll": test_nll, "test_nll_stderr": test_se,
        "val_nll": history.best_val_nll, "train_nll": history.train_nll[-1]
        if history.train_nll else None,
        "baseline_nll": _baseline_nll(bundle, bundle.test),
        "dataset": bundle.name, "flow": settings["flow"], "parameters": n_params,
        "steps": history.steps, "skipped_steps": history.skipped_steps,
        "stopped_early": history.stopped_early, "seconds": seconds,
        "n_train": len(bundle.train), "n_test": len(bundle.test), "units": "nats",
    }
    if bundle.kind == "image":
        metrics["test_bits_per_dim"] = bits_per_dim(test_nll, bundle.dims, bundle.levels)
        metrics["levels"] = bundle.levels
    _write_json(out / METRICS_FILE, metrics)
    plots = _make_plots(flow, bundle, history, out, settings["seed"])
    line = f"test NLL {test_nll:.4f} ± {test_se:.4f} nats"
    if metrics.get("baseline_nll") is not None:
        line += f" (N(0, I) baseline {metrics['baseline_nll']:.4f})" if bundle.kind == "vector" \
            else f" (uniform on the sphere {metrics['baseline_nll']:.4f})"
    if "test_bits_per_dim" in metrics:
        line += f", {metrics['test_bits_per_dim']:.4f} bits/dim"
    _say(line)
    _say(f"wrote {out}/: model.safetensors, config.json, {METRICS_FILE}, "
         + ", ".join(p.name for p in plots))
    _say("plots: " + "  ".join(str(p) for p in plots))
    ddp.barrier()
    return 0


# -- sample / eval / plot / datasets --------------------------------------------------------------
@command("sample", help="draw samples from a trained flow into a .npy file")
def _sample_parser(p: argparse.ArgumentParser) -> Runner:
    p.add_argument("--checkpoint", required=True, help="a folder written by train")
    p.add_argument("-n", "--n", type=_positive_int, default=1000, help="number of samples")
    p.add_argument("--out", help="output .npy file (default CHECKPOINT/samples.npy)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=_positive_float, default=1.0,
                   help="scale of the base draw (Gaussian bases)")
    return _run_sample


def _run_sample(args: argparse.Namespace) -> int:
    from pushforward.data.tabular import unit_to_latlon

    flow, config = _load(args.checkpoint)
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
    flow, config = _load(checkpoint)
    bundle = _bundle_from_config(config, dataset)
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
    nll, se = _seeded_nll(flow, data, seed)
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
    p.add_argument("-n", type=_positive_int, default=1000, help="points checked (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    return _run_check


def _run_check(args: argparse.Namespace) -> int:
    from pushforward.diagnostics import invertibility_report

    flow, config, bundle = _checkpoint_and_data(args.checkpoint, args.dataset)
    x = _data_points(bundle, getattr(bundle, args.split), args.n)
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
    flow, config = _load(args.checkpoint)
    bundle = _bundle_from_config(config)
    out = Path(args.out) if args.out else Path(args.checkpoint)
    paths = _make_plots(flow, bundle, _read_history(Path(args.checkpoint)), out, args.seed)
    print("plots: " + "  ".join(str(p) for p in paths))
    return 0


@command("compress", help="losslessly compress images with a trained integer flow (idf)")
def _compress_parser(p: argparse.ArgumentParser) -> Runner:
    p.add_argument("--checkpoint", required=True, help="a saved idf model folder")
    p.add_argument("--input", required=True, help="a folder of PNG images or an IDX file")
    p.add_argument("--out", required=True, help="the compressed file to write")
    p.add_argument("--batch-size", type=_positive_int, default=256)
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

    flow, _ = _load(args.checkpoint)
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
    p.add_argument("--checkpoint", required=True, help="the model folder used by compress")
    p.add_argument("--input", required=True, help="a file written by compress")
    p.add_argument("--out", required=True, help="folder for the PNG images")
    return _run_decompress


def _run_decompress(args: argparse.Namespace) -> int:
    from pushforward import compression
    from pushforward.compression import files

    flow, _ = _load(args.checkpoint)
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


# -- entry point ----------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pushforward",
                     description="Normalizing flows: train, sample, evaluate, plot.")
    from pushforward import __version__

    parser.add_argument("--version", action="version", version=f"pushforward {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, (text, configure) in _COMMANDS.items():
        child = sub.add_parser(name, help=text, description=text)
        child.set_defaults(_run=configure(child))
    return parser


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pushforward`` command; returns the exit code."""
    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, _interrupt)
    except ValueError:  # not the main thread
        previous = {}
    from pushforward.training import distributed as ddp

    try:
        args = parse_args(_parser(), argv)
        return int(args._run(args))
    except CommandError as error:
        print(f"pushforward: error: {error}" if error.code != 2 else str(error),
              file=sys.stderr)
        return error.code
    except KeyboardInterrupt:
        print("pushforward: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exit_:  # --help / --version
        return int(exit_.code or 0) if isinstance(exit_.code, int) else 0
    except (ValueError, TypeError, OSError, RuntimeError) as error:
        if os.environ.get("PUSHFORWARD_DEBUG"):
            traceback.print_exc()
        text = str(error).strip().splitlines()
        reason = text[0] if text else type(error).__name__
        if isinstance(error, FileNotFoundError) and error.filename and reason.startswith(
                "[Errno"):
            reason = f"no such file or folder: {error.filename}"
        print(f"pushforward: error: {reason}", file=sys.stderr)
        return 1
    except Exception as error:  # noqa: BLE001 - one line for anything unexpected
        if os.environ.get("PUSHFORWARD_DEBUG"):
            traceback.print_exc()
        text = str(error).strip().splitlines()
        print(f"pushforward: error: {type(error).__name__}: {text[0] if text else ''} "
              "(PUSHFORWARD_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        ddp.shutdown()


if __name__ == "__main__":
    sys.exit(main())
