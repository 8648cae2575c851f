"""Ours / fastest peer from one or more ``suite.py`` JSON files, paired by repeat.

``suite.py`` reports the ratio of medians. On a loaded machine the load changes between repeats
but hardly within one (the implementations alternate inside every repeat), so the ratio taken
inside each repeat — the fastest peer's time in that repeat over ours — and its median over all
repeats of all files is steadier. The matmuls-only bound is paired the same way.

    python benchmarks/suite_ratios.py run1.json run2.json > table.md
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path


def paired(files: list[Path]) -> dict[tuple[str, int, str], dict[str, list[float]]]:
    """Per (flow, d, op): every repeat's fastest-peer/ours and fastest-peer/matmuls ratios."""
    out: dict[tuple[str, int, str], dict[str, list[float]]] = defaultdict(
        lambda: {"ours": [], "bound": []})
    for path in files:
        cases: dict[tuple[str, int, str], dict[str, list[float]]] = defaultdict(dict)
        for r in json.loads(path.read_text())["speed"]:
            cases[(r["flow"], r["d"], r["op"])][r["impl"]] = r["seconds"]
        for key, times in cases.items():
            peers = [t for name, t in times.items()
                     if name not in ("pushforward", "matmuls") and "+" not in name]
            for i, ours in enumerate(times["pushforward"]):
                fastest = min(t[i] for t in peers)
                out[key]["ours"].append(fastest / ours)
                if "matmuls" in times:
                    out[key]["bound"].append(fastest / times["matmuls"][i])
    return out


def table(ratios: dict[tuple[str, int, str], dict[str, list[float]]]) -> str:
    rows = ["| flow | d | op | ours / fastest peer (median, min–max of repeats) | "
            "matmuls-only bound | fraction of bound |", "|---|---|---|---|---|---|"]
    for (flow, d, op), r in sorted(ratios.items()):
        ours = statistics.median(r["ours"])
        spread = f"{min(r['ours']):.2f}–{max(r['ours']):.2f}"
        if r["bound"]:
            bound = statistics.median(r["bound"])
            tail = f"{bound:.2f}× | {ours / bound:.2f}"
        else:
            tail = "— | —"
        rows.append(f"| {flow} | {d} | {op} | {ours:.2f}× ({spread}, n={len(r['ours'])}) | "
                    f"{tail} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    print(table(paired(parser.parse_args().files)))


if __name__ == "__main__":
    main()
