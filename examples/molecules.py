"""Molecular graph generation on MOSES with a MoFlow-style graph flow.

Trains ``pushforward.molecules.GraphFlow`` (a Glow-like flow over the dequantised bond tensor and
a graph-conditional flow over atom types) on the MOSES training molecules with at most
``--max-atoms`` heavy atoms (the data come from the installed ``molsets`` wheel; nothing is
copied into this repository), then reports on the MOSES test molecules of the same size and on
``--samples`` generated graphs:

* ``test_nll``: the dequantisation bound on ``−log P(bonds, atoms)`` in nats per test molecule
  (an upper bound on the discrete NLL of the canonical graph tensors);
* ``validity`` (RDKit sanitisation, no correction, one connected molecule), ``uniqueness``,
  ``novelty`` against the training molecules;
* Wasserstein distances of QED, logP and molecular weight against the test molecules.

The sampling temperatures (bond flow ``--temperatures``, atom flow ``--atom-temperatures``) are
chosen on separate batches of ``--sweep-samples`` samples per pair, unless ``--temperature`` fixes
them: the most valid pair whose uniqueness, projected to ``--samples`` samples, stays ≥ 99 %.
Duplicates grow in proportion to the number of valid samples (the expected number of equal pairs
is quadratic in it), so ``d`` duplicates among ``m`` valid sweep samples project to a
uniqueness of ``1 − d·M/m²`` on ``M`` valid samples. With one or two duplicates in the sweep
this is a noisy estimate (2 duplicates in 1,658 valid of 2,000 projected 99.4 % for T = 0.6 / 0.8,
whose 10,000 samples then had 98.8 %), hence the default of as many sweep samples per pair as
the final evaluation draws, where the projection is the measured uniqueness.
Writes to ``--out``: ``metrics.json``, ``samples.smi`` (every sample, invalid ones too, one per
line), ``samples.png`` (the first 30 valid samples), ``properties.png``, ``loss.png``, the model
(``model.safetensors`` + ``config.json``) and ``train.log``. A run stopped early keeps its last
checkpoint; ``--resume`` continues it and ``--eval-only`` evaluates it.

Run::

    python examples/molecules.py --out results/molecules              # the docs' numbers (95 min)
    python examples/molecules.py --out /tmp/mol --quick                  # < 10 min, one thread
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pushforward.molecules import (
    GraphFlow,
    draw_grid,
    graph_dataset,
    moses_smiles,
    properties,
    property_distances,
    sample_metrics,
    write_smiles,
)


def _log(out: Path, message: str) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {message}"
    print(line, flush=True)
    with open(out / "train.log", "a") as handle:
        handle.write(line + "\n")


def _data(args: argparse.Namespace, out: Path) -> dict:
    cache = out / "data.pt"
    key = [args.max_atoms, args.train_size, args.test_size]
    if cache.is_file():
        data = torch.load(cache)
        if data["key"] == key:
            return data
    train = moses_smiles("train", args.max_atoms, args.train_size)
    test = moses_smiles("test", args.max_atoms, args.test_size)
    bonds, atoms, train_smiles = graph_dataset(train, args.max_atoms)
    test_bonds, test_atoms, test_smiles = graph_dataset(test, args.max_atoms)
    data = {"key": key, "bonds": bonds, "atoms": atoms, "smiles": train_smiles,
            "test_bonds": test_bonds, "test_atoms": test_atoms, "test_smiles": test_smiles}
    torch.save(data, cache)
    return data


def _save(model: GraphFlow, optimizer: torch.optim.Optimizer, state: dict, out: Path) -> None:
    save_file(model.state_dict(), str(out / "model.safetensors.tmp"))
    (out / "model.safetensors.tmp").replace(out / "model.safetensors")
    (out / "config.json").write_text(json.dumps(model.config, indent=1))
    torch.save({"optimizer": optimizer.state_dict(), **state}, out / "state.pt.tmp")
    (out / "state.pt.tmp").replace(out / "state.pt")


def train(model: GraphFlow, data: dict, args: argparse.Namespace, out: Path) -> dict:
    """Maximum likelihood (the dequantisation bound) with Adam for ``args.minutes``."""
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    state = {"step": 0, "seconds": 0.0, "losses": []}
    if args.resume and (out / "state.pt").is_file():
        model.load_state_dict(load_file(str(out / "model.safetensors")))
        saved = torch.load(out / "state.pt")
        optimizer.load_state_dict(saved.pop("optimizer"))
        state = saved
        _log(out, f"resumed at step {state['step']} ({state['seconds']:.0f} s trained)")
    bonds, atoms = data["bonds"], data["atoms"]
    budget = 60.0 * args.minutes
    model.train()
    last_save = time.time()
    running = []
    while state["seconds"] < budget and state["step"] < args.steps:
        start = time.time()
        fraction = max(state["seconds"] / budget, state["step"] / args.steps)
        for group in optimizer.param_groups:  # constant, then linear decay over the last part
            group["lr"] = args.lr * min(1.0, (1.0 - fraction) / args.decay)
        index = torch.randint(0, bonds.shape[0], (args.batch_size,))
        loss = model.nll(bonds[index], atoms[index]).mean()
        optimizer.zero_grad()
        if not torch.isfinite(loss):  # a rare overflow: skip this batch, keep the weights
            state["skipped"] = state.get("skipped", 0) + 1
            continue
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        state["step"] += 1
        state["seconds"] += time.time() - start
        running.append(loss.item())
        if state["step"] % 100 == 0:
            state["losses"].append([state["step"], sum(running) / len(running)])
            running = []
            _log(out, f"step {state['step']}  {state['seconds']:.0f}/{budget:.0f} s  "
                      f"nll {state['losses'][-1][1]:.2f} nats")
        if time.time() - last_save > args.checkpoint_seconds:
            _save(model, optimizer, state, out)
            last_save = time.time()
    _save(model, optimizer, state, out)
    return state


@torch.no_grad()
def test_nll(model: GraphFlow, bonds: torch.Tensor, atoms: torch.Tensor, draws: int) -> float:
    """Mean dequantisation bound (nats per molecule) over the test molecules."""
    total = 0.0
    for i in range(0, bonds.shape[0], 500):
        total += model.nll(bonds[i:i + 500], atoms[i:i + 500], samples=draws).sum().item()
    return total / bonds.shape[0]


@torch.no_grad()
def generate(
    model: GraphFlow, n: int, temperature: float, atom_temperature: float | None = None
) -> list[str]:
    """``n`` samples written as SMILES (invalid graphs written as built)."""
    smiles = []
    for i in range(0, n, 1000):
        bonds, atoms = model.sample(min(1000, n - i), temperature, atom_temperature)
        smiles += [write_smiles(b, a, model.atom_types) for b, a in zip(bonds, atoms)]
    return smiles


def _sweep(
    model: GraphFlow, train: list[str], args: argparse.Namespace, out: Path, sweep: dict
) -> tuple[float, float | None]:
    """The most valid (bond, atom) temperatures whose projected uniqueness stays ≥ 99 %."""
    best, best_validity, fallback = None, -1.0, None
    for t in args.temperatures:
        for t_atom in args.atom_temperatures or [None]:
            torch.manual_seed(args.seed + 2)
            m = sample_metrics(generate(model, args.sweep_samples, t, t_atom), train)
            valid = max(m["valid_count"], 1.0)
            duplicates = round(valid * (1.0 - m["uniqueness"]))
            final_valid = max(m["validity"] * args.samples, valid)
            m["projected_uniqueness"] = 1.0 - duplicates * final_valid / valid / valid
            sweep[f"{t}/{t_atom if t_atom is not None else t}"] = m
            _log(out, f"T={t}, atom T={t_atom}: {m}")
            if m["projected_uniqueness"] >= 0.99 and m["validity"] > best_validity:
                best, best_validity = (t, t_atom), m["validity"]
            if fallback is None or m["projected_uniqueness"] > fallback[1]:
                fallback = ((t, t_atom), m["projected_uniqueness"])
    return best if best is not None else fallback[0]


def _figures(losses: list, samples: list[str], test: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if losses:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot([s for s, _ in losses], [v for _, v in losses])
        ax.set(xlabel="step", ylabel="train NLL bound (nats / molecule)", title="GraphFlow")
        fig.tight_layout()
        fig.savefig(out / "loss.png", dpi=120)
        plt.close(fig)
    a, b = properties(samples), properties(test)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, key, label in zip(axes, ("qed", "logp", "mw"), ("QED", "logP", "mol. weight")):
        ax.hist(b[key], bins=40, density=True, alpha=0.5, label="MOSES test")
        ax.hist(a[key], bins=40, density=True, alpha=0.5, label="samples (valid)")
        ax.set_xlabel(label)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out / "properties.png", dpi=120)
    plt.close(fig)


def main() -> None:
    """Parse the arguments, train (or resume), evaluate, write the outputs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--quick", action="store_true",
                        help="3,000 training molecules, 3 min of training, 3 temperatures "
                        "on 1,000 samples each")
    parser.add_argument("--max-atoms", type=int, default=16)
    parser.add_argument("--train-size", type=int, default=None, help="default: all")
    parser.add_argument("--test-size", type=int, default=None, help="default: all")
    parser.add_argument("--minutes", type=float, default=85.0, help="training budget")
    parser.add_argument("--steps", type=int, default=10**9)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--decay", type=float, default=0.25,
                        help="fraction of the budget over which the lr decays linearly to 0")
    parser.add_argument("--noise", type=float, default=0.4, help="dequantisation scale")
    parser.add_argument("--bond-layers", type=int, default=8)
    parser.add_argument("--bond-hidden", type=int, nargs="+", default=[256, 256])
    parser.add_argument("--atom-layers", type=int, default=3)
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--atom-temperature", type=float, default=None,
                        help="atom-flow temperature with --temperature (default: the same)")
    parser.add_argument("--temperatures", type=float, nargs="+", default=None,
                        help="bond-flow sweep (default 0.55 0.6 0.65; --quick: 0.6 0.7 0.8)")
    parser.add_argument("--atom-temperatures", type=float, nargs="*", default=None,
                        help="atom-flow sweep (default 0.8 0.9 1.0; --quick or none given: "
                        "the bond temperature only)")
    parser.add_argument("--sweep-samples", type=int, default=10_000,
                        help="samples per temperature pair (--quick: at most 1,000)")
    parser.add_argument("--nll-draws", type=int, default=4)
    parser.add_argument("--checkpoint-seconds", type=float, default=300.0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--eval-only", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.quick:
        args.train_size = args.train_size or 3000
        args.test_size = args.test_size or 500
        args.minutes = min(args.minutes, 3.0)
        args.temperatures = args.temperatures or [0.6, 0.7, 0.8]
        args.atom_temperatures = args.atom_temperatures or []
        args.sweep_samples = min(args.sweep_samples, 1000)
    args.temperatures = args.temperatures or [0.55, 0.6, 0.65]
    if args.atom_temperatures is None:
        args.atom_temperatures = [0.8, 0.9, 1.0]
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    began = time.time()
    data = _data(args, out)
    _log(out, f"{len(data['smiles'])} training and {len(data['test_smiles'])} test molecules "
              f"with ≤ {args.max_atoms} heavy atoms ({time.time() - began:.0f} s to load)")
    if args.eval_only or args.resume and (out / "config.json").is_file():
        model = GraphFlow(**json.loads((out / "config.json").read_text()))  # as it was trained
    else:
        model = GraphFlow(args.max_atoms, bond_layers=args.bond_layers,
                          bond_hidden=args.bond_hidden, atom_layers=args.atom_layers,
                          noise=args.noise)
    if args.eval_only:
        model.load_state_dict(load_file(str(out / "model.safetensors")))
        state = {k: v for k, v in torch.load(out / "state.pt").items() if k != "optimizer"}
    else:
        state = train(model, data, args, out)
    model.eval()
    torch.manual_seed(args.seed + 1)
    nll = test_nll(model, data["test_bonds"], data["test_atoms"], args.nll_draws)
    _log(out, f"test NLL bound {nll:.2f} nats / molecule")
    sweep = {}
    temperature, atom_temperature = args.temperature, args.atom_temperature
    if temperature is None:
        temperature, atom_temperature = _sweep(model, data["smiles"], args, out, sweep)
    torch.manual_seed(args.seed + 3)
    samples = generate(model, args.samples, temperature, atom_temperature)
    (out / "samples.smi").write_text("\n".join(samples) + "\n")
    metrics = sample_metrics(samples, data["smiles"])
    valid = [s for s in samples if "." not in s and s != "[empty]"]
    from rdkit import Chem

    valid = [s for s in valid if Chem.MolFromSmiles(s) is not None]
    distances = property_distances(valid, data["test_smiles"])
    draw_grid(valid[:30], str(out / "samples.png"))
    _figures(state.get("losses", []), valid, data["test_smiles"], out)
    result = {
        "validity": metrics["validity"],
        "uniqueness": metrics["uniqueness"],
        "novelty": metrics["novelty"],
        "test_nll": nll,
        "validity_sanitize_only": metrics["validity_sanitize_only"],
        "wasserstein_qed": distances["qed"],
        "wasserstein_logp": distances["logp"],
        "wasserstein_mw": distances["mw"],
        "settings": {
            "max_atoms": args.max_atoms, "train_molecules": len(data["smiles"]),
            "test_molecules": len(data["test_smiles"]), "samples": args.samples,
            "temperature": temperature, "atom_temperature": atom_temperature,
            "temperature_sweep": sweep, "sweep_samples": args.sweep_samples,
            "training_steps": state["step"], "training_seconds": round(state["seconds"], 1),
            "batch_size": args.batch_size, "lr": args.lr, "lr_decay": args.decay,
            "model": model.config,
            "parameters": sum(p.numel() for p in model.parameters()),
            "nll_noise_draws": args.nll_draws, "quick": args.quick, "seed": args.seed,
            "threads": args.threads,
            "definitions": "validity: RDKit parses+sanitises the sample unchanged and it is one "
            "connected molecule (validity_sanitize_only drops connectivity), over all samples; "
            "uniqueness: distinct valid / valid; novelty: distinct valid not in the training "
            "molecules / distinct valid; test_nll: E_u[-log p(e + s u)] - D log s in nats per "
            "test molecule, an upper bound on the discrete NLL of its canonical graph tensors; "
            "wasserstein_*: valid samples vs the test molecules of the same size",
        },
        "wall_seconds": round(time.time() - began, 1),
    }
    (out / "metrics.json").write_text(json.dumps(result, indent=1))
    _log(out, json.dumps({k: v for k, v in result.items() if k != "settings"}))
    if not math.isfinite(nll):
        raise SystemExit("non-finite test NLL")


if __name__ == "__main__":
    main()
