"""The ``pushforward`` command line (the training issue extends it to the full contract)."""

from __future__ import annotations

import argparse
import sys

import torch

import pushforward as pf
from pushforward.transforms import ActNorm, Affine, LULinear


def _train(args: argparse.Namespace) -> int:
    """Fit a linear flow to a correlated Gaussian and print its NLL against the true entropy."""
    torch.manual_seed(args.seed)
    d = 4
    mix = torch.randn(d, d) / d**0.5 + torch.eye(d)
    data = torch.randn(4096, d) @ mix.T + 1.0
    flow = pf.Flow([ActNorm(d), LULinear(d), Affine(d)], pf.StandardNormal(d))
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-2)
    for step in range(args.steps):
        batch = data[torch.randint(0, len(data), (256,))]
        loss = -flow.log_prob(batch).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % max(1, args.steps // 5) == 0:
            print(f"step {step:4d}  nll {loss.item():.4f}")
    truth = torch.distributions.MultivariateNormal(torch.ones(d), mix @ mix.T)
    with torch.no_grad():
        nll = -flow.log_prob(data).mean().item()
    print(f"final nll {nll:.4f}  (true entropy {truth.entropy().item():.4f})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pushforward`` command."""
    parser = argparse.ArgumentParser(prog="pushforward", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a flow")
    train.add_argument("--steps", type=int, default=500)
    train.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "train":
        return _train(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
