"""What the commands share: building the flow for a dataset, the device, the test NLL, plots.

Every function here calls the public API of the layers below (``pf.flows``, ``pf.data``,
``pushforward.evaluation``, ``pf.training``, ``pf.plotting``); nothing private crosses modules.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from pushforward.cli_base import CommandError

__all__ = ["HISTORY_FILE", "METRICS_FILE", "set_threads", "build_flow", "choose_device",
           "seeded_nll", "baseline_nll", "samples_in_data_units", "data_points", "make_plots",
           "bundle_from_config", "load_run", "read_history", "write_json"]

HISTORY_FILE = "history.json"
METRICS_FILE = "metrics.json"


def set_threads(threads: int | None, image: bool) -> None:
    """Set torch's CPU threads: ``threads``, else 1 for vectors or DDP and up to 4 for images."""
    from pushforward.training import distributed as ddp

    if threads is None:
        cores = os.cpu_count() or 1
        threads = 1 if (ddp.launched() or not image) else min(cores, 4)
    torch.set_num_threads(threads)


def build_flow(name: str, bundle: Any, options: dict[str, Any]) -> Any:
    """The preset ``name`` for the dataset ``bundle``, with its pre-processing prepended.

    What the preset accepts is read from its registration (``pf.flows.accepts``): images go to
    an image preset as ``shape=``, or flattened (a ``Reshape`` layer) to a vector one.

    Raises:
        CommandError: an unknown flow, or a flow and data of different kinds (sphere / not).
    """
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
    if (bundle.kind == "audio") != ("audio" in accepted):
        needs = "a folder of WAV files" if "audio" in accepted else "non-audio data"
        raise CommandError(f"a folder of WAV files goes with an audio flow (--flow vocoder); "
                           f"the {name.lower()!r} flow needs {needs}")
    if bundle.kind == "audio":  # the mel filterbank at the files' sample rate
        options = {"sample_rate": bundle.train.mel.config.sample_rate, **options}
    layers = list(bundle.preprocess)
    if bundle.kind == "image" and "images" in accepted:
        flow = flows.build(name, shape=list(bundle.event_shape), **options)
    else:
        if bundle.kind == "image":
            layers.insert(0, Reshape(bundle.event_shape, (bundle.dims,)))
        flow = flows.build(name, features=bundle.dims, **options)
    return flow.prepend(layers)


def choose_device(name: str) -> torch.device:
    """The device for ``--device`` (``auto``: CUDA when available; DDP's own device).

    Raises:
        CommandError: an unknown device name.
    """
    from pushforward.training import distributed as ddp

    if ddp.is_active():
        return ddp.device()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise CommandError(f"unknown device {name!r}") from None


def seeded_nll(flow: Any, data: Any, seed: int) -> tuple[float, float]:
    """Mean NLL and its standard error (dequantisation noise fixed by ``seed``)."""
    from pushforward.evaluation import batched_negative_log_likelihood
    from pushforward.training import DataSource

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        nll = batched_negative_log_likelihood(flow, DataSource(data, "test").batches(2048))
    nll = nll.double().cpu()
    se = float(nll.std() / math.sqrt(len(nll))) if len(nll) > 1 else float("nan")
    return float(nll.mean()), se


def baseline_nll(bundle: Any, data: Any) -> float | None:
    """NLL of N(0, I) on the raw vector data (the trivial baseline), or log 4π on the sphere."""
    if bundle.kind == "sphere":
        return math.log(4 * math.pi)
    if bundle.kind != "vector":
        return None
    x = data.double()
    return float((0.5 * x.pow(2).sum(1) + 0.5 * x.shape[1] * math.log(2 * math.pi)).mean())


def samples_in_data_units(flow: Any, n: int, seed: int) -> torch.Tensor:
    """``n`` samples drawn with ``seed`` (the global generator untouched), on the CPU."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        return flow.sample(n).cpu()


def data_points(bundle: Any, split: Any, n: int) -> torch.Tensor:
    """The first ``n`` points of a split (dequantisation noise seeded), on the CPU."""
    if isinstance(split, torch.Tensor):
        return split[:n].cpu()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return split[torch.arange(min(n, len(split)))]


def make_plots(flow: Any, bundle: Any, history: Any, out: Path, seed: int) -> list[Path]:
    """Write ``loss.png``, ``samples.png`` and (2-D data, sphere) ``density.png`` into ``out``."""
    from pushforward import plotting

    paths = []
    if history is not None:
        title = f"{bundle.name} — {flow.config.get('flow', 'flow')}"
        paths.append(plotting.plot_history(history, out / "loss.png", title=title))
    if bundle.kind == "audio":
        return paths  # samples need a mel spectrogram: examples/vocoder.py vocodes and plots
    if bundle.kind == "image":
        samples = samples_in_data_units(flow, 64, seed).clamp(0, 1)
        data = data_points(bundle, bundle.test, 64)
        paths.append(plotting.plot_image_grid(samples, out / "samples.png", data=data))
        return paths
    data = data_points(bundle, bundle.test, 2000)
    samples = samples_in_data_units(flow, len(data), seed)
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


def bundle_from_config(config: dict[str, Any], dataset: str | None = None) -> Any:
    """The dataset a checkpoint was trained on (or ``dataset``, with the same seed and split).

    Raises:
        CommandError: no dataset is recorded and none is given, or the record is malformed.
    """
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


def load_run(path: str) -> tuple[Any, dict[str, Any]]:
    """The trained flow and the config of a run folder (``pf.training.load_checkpoint``)."""
    from pushforward.training.checkpoint import load_checkpoint

    return load_checkpoint(path)


def read_history(folder: Path) -> Any:
    """The run's ``History`` from ``history.json``, or None if absent or unreadable."""
    from pushforward.training import History

    file = folder / HISTORY_FILE
    if not file.is_file():
        return None
    try:
        return History.from_dict(json.loads(file.read_text()))
    except (json.JSONDecodeError, TypeError, AttributeError):
        return None


def write_json(path: Path, record: dict[str, Any]) -> None:
    """Write ``record`` as indented JSON, atomically."""
    from pushforward.training.checkpoint import atomic_write

    atomic_write(path, (json.dumps(record, indent=2, allow_nan=True) + "\n").encode())
