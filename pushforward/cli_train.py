"""``pushforward train``: fit a preset to a dataset and write model, config, metrics, plots."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from pushforward.cli_base import (
    CommandError,
    Runner,
    command,
    option,
    positive_float,
    positive_int,
    say,
)
from pushforward.cli_config import add_config_argument
from pushforward.cli_runs import (
    HISTORY_FILE,
    METRICS_FILE,
    baseline_nll,
    build_flow,
    choose_device,
    make_plots,
    seeded_nll,
    set_threads,
    write_json,
)
from pushforward.training.objectives import Objective, make_objective

__all__ = ["DEFAULT_DATASET", "DEFAULT_FLOW", "DEFAULT_STEPS", "DEFAULT_LR", "DEFAULT_BATCH",
           "FLOW_MATCHING_FLOWS"]

DEFAULT_DATASET = "moons"
DEFAULT_FLOW = "nsf"
DEFAULT_STEPS = 2000
DEFAULT_LR = 2e-3
FLOW_MATCHING_FLOWS = ("sphere-cnf",)
DEFAULT_BATCH = Objective.default_batch_size

_TRAIN_KEYS = ("dataset", "flow", "batch_size", "lr", "seed", "manifold", "preprocess",
               "schedule", "clip_grad", "val_every", "patience", "checkpoint_every", "dtype",
               "option", "size", "bounds")


@command("train", help="train a flow and write model, config, metrics and plots")
def _train_parser(p: argparse.ArgumentParser) -> Runner:
    p.add_argument("--dataset", help=f"a built-in name (see `pushforward datasets`), a .csv or "
                   f".npy file, or a folder of IDX images (default {DEFAULT_DATASET})")
    p.add_argument("--flow", help=f"a registered preset (default {DEFAULT_FLOW})")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=positive_int,
                        help=f"optimisation steps (default {DEFAULT_STEPS})")
    length.add_argument("--epochs", type=positive_int, help="passes over the training split")
    p.add_argument("--batch-size", type=positive_int,
                   help=f"default {DEFAULT_BATCH}; flow matching: the path's (sphere-cnf: 4096)")
    p.add_argument("--lr", type=positive_float, help=f"peak learning rate (default {DEFAULT_LR})")
    p.add_argument("--out", help="output folder (default runs/DATASET-FLOW)")
    p.add_argument("--seed", type=int, help="seeds the model, data split and order (default 0)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run saved in --out (after SIGINT/SIGTERM or a crash)")
    p.add_argument("--manifold", choices=["sphere"],
                   help="sphere: the file holds latitude, longitude in degrees")
    p.add_argument("--preprocess", choices=["logit", "unit"],
                   help="image pre-processing (default logit)")
    p.add_argument("--schedule", choices=["cosine", "plateau", "none"], help="default cosine")
    p.add_argument("--clip-grad", type=positive_float, help="max gradient norm (default 5)")
    p.add_argument("--val-every", type=positive_int, help="validate every N steps")
    p.add_argument("--patience", type=positive_int,
                   help="stop after N validations without improvement")
    p.add_argument("--checkpoint-every", type=positive_int,
                   help="checkpoint every N steps (default: at each validation)")
    p.add_argument("--dtype", choices=["float32", "float64"], help="default float32")
    p.add_argument("--option", action="append", type=option, metavar="KEY=VALUE",
                   help="a preset option, e.g. --option transforms=8 --option hidden=[64,64]")
    p.add_argument("--size", type=positive_int, help="points drawn from a toy density")
    p.add_argument("--bounds", metavar="auto|LOW,HIGH",
                   help="data in a box: end the flow with a sigmoid onto [LOW, HIGH] (every "
                        "feature), or onto the data's range widened by 5%% ('auto'); "
                        "replaces the standardisation (vector data only)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default auto)")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads")
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
    settings = {"dataset": DEFAULT_DATASET, "flow": DEFAULT_FLOW, "batch_size": None,
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
    set_threads(args.threads, bundle.kind == "image")
    if settings["bounds"] is not None:
        _apply_bounds(bundle, settings["bounds"])
    device = choose_device(args.device)
    dtype = torch.float64 if settings["dtype"] == "float64" else torch.float32
    torch.manual_seed(settings["seed"])
    options = dict(settings["option"])
    try:
        flow = build_flow(settings["flow"], bundle, options)
    except CommandError:
        raise
    except (TypeError, ValueError) as error:
        raise CommandError(f"cannot build flow {settings['flow']!r} with options {options}: "
                           f"{str(error).splitlines()[0] if str(error) else error}") from None
    flow = flow.to(device=device, dtype=dtype)
    # sphere-cnf trains by Riemannian flow matching, at fit's flow-matching lr and batch size
    # unless given
    matching = settings["flow"].lower() in FLOW_MATCHING_FLOWS
    objective = make_objective("flow-matching" if matching else "mle")
    if settings["batch_size"] is None:
        settings["batch_size"] = objective.batch_size(flow)
    n_params = sum(p.numel() for p in flow.parameters())
    steps_text = (f"{settings['steps']} steps" if settings["steps"] else
                  f"{settings['epochs']} epochs")
    say(f"{'resuming' if resuming else 'training'} {settings['flow']} ({n_params:,} parameters)"
         f" on {bundle.name} ({len(bundle.train):,} train / {len(bundle.val):,} val / "
         f"{len(bundle.test):,} test, {bundle.kind} {tuple(bundle.event_shape)}) for "
         f"{steps_text}{f' on {ddp.world_size()} processes' if ddp.is_active() else ''}")
    extra = {"data": bundle.spec, "train": {k: settings[k] for k in (*_TRAIN_KEYS, "steps",
                                                                      "epochs")},
             "kind": bundle.kind, "event_shape": list(bundle.event_shape),
             "levels": bundle.levels}
    start = time.time()
    history = fit(
        flow, bundle.train, bundle.val, steps=settings["steps"], epochs=settings["epochs"],
        batch_size=settings["batch_size"],
        lr=None if matching and args.lr is None else settings["lr"],
        objective=objective,
        schedule=None if settings["schedule"] == "none" else settings["schedule"],
        clip_grad=settings["clip_grad"], val_every=settings["val_every"],
        patience=settings["patience"], seed=settings["seed"], checkpoint_dir=out,
        checkpoint_every=settings["checkpoint_every"], checkpoint_extra=extra,
        resume=args.resume, progress=not args.no_progress,
    )
    seconds = time.time() - start
    if ddp.is_main():
        write_json(out / HISTORY_FILE, history.to_dict())
    if history.interrupted:
        say(f"interrupted at step {history.steps}; checkpoint saved in {out}. Continue with: "
             f"pushforward train --resume --out {out}", err=True)
        ddp.barrier()
        return 130
    if not ddp.is_main():
        ddp.barrier()
        return 0
    test_nll, test_se = seeded_nll(flow, bundle.test, settings["seed"])
    metrics: dict[str, Any] = {
        "test_nll": test_nll, "test_nll_stderr": test_se,
        "val_nll": history.best_val_nll, "train_nll": history.train_nll[-1]
        if history.train_nll else None,
        "baseline_nll": baseline_nll(bundle, bundle.test),
        "dataset": bundle.name, "flow": settings["flow"], "parameters": n_params,
        "steps": history.steps, "skipped_steps": history.skipped_steps,
        "stopped_early": history.stopped_early, "seconds": seconds,
        "n_train": len(bundle.train), "n_test": len(bundle.test), "units": "nats",
    }
    if bundle.kind == "audio":  # b-bit samples x = (k + u) / 2^(b-1): bins of width 2^-(b-1)
        metrics["test_bits_per_sample"] = (test_nll / (bundle.dims * math.log(2))
                                           + bundle.train.bits - 1)
    if bundle.kind == "image":
        metrics["test_bits_per_dim"] = bits_per_dim(test_nll, bundle.dims, bundle.levels)
        metrics["levels"] = bundle.levels
    write_json(out / METRICS_FILE, metrics)
    plots = make_plots(flow, bundle, history, out, settings["seed"])
    line = f"test NLL {test_nll:.4f} ± {test_se:.4f} nats"
    if metrics.get("baseline_nll") is not None:
        line += f" (N(0, I) baseline {metrics['baseline_nll']:.4f})" if bundle.kind == "vector" \
            else f" (uniform on the sphere {metrics['baseline_nll']:.4f})"
    if "test_bits_per_dim" in metrics:
        line += f", {metrics['test_bits_per_dim']:.4f} bits/dim"
    say(line)
    say(f"wrote {out}/: model.safetensors, config.json, {METRICS_FILE}, "
         + ", ".join(p.name for p in plots))
    say("plots: " + "  ".join(str(p) for p in plots))
    ddp.barrier()
    return 0
