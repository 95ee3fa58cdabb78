#!/usr/bin/env python3
"""Per-layer A/B of two netc binaries: `netc time` with each, interleaved.

On a shared machine whose speed moves by tens of percent within minutes, a
change to one kernel is only visible when the old and new binaries run
alternately. This runs `BASE time ARGS` and `NEW time ARGS` in `--rounds`
alternating rounds, takes each layer-and-op row's median over the rounds,
and prints a markdown table of the rows matching `--match` (a regular
expression over "layer op"; the total is always printed): median ms of
both and base/new (> 1 means the new binary is faster).

Run from the repository root, e.g. with the commit before a change built
into /tmp/netc.old:

    python3 bench/layer_ab.py --base /tmp/netc.old --rounds 3 \\
        --match conv2d_grad_weight -- models/eeg_ccnn.net --batch 256 --threads 2 --train
"""
from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# A row of `netc time`: rank, layer, op, ms, share, GFLOP/s.
ROW = re.compile(r"^\s*\d+\s+(\S+)\s+(\S+)\s+([\d.]+)\s+[\d.]+%")
TOTAL = re.compile(r"^\s*total \((\d+) layers\)\s+([\d.]+)")


def layer_times(netc: str, args: list[str]) -> dict[str, float]:
    """One `netc time` run: milliseconds per "layer op", plus "total"."""
    out = subprocess.run(
        [netc, "time", *args, "--top", "100000"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    times = {}
    for line in out.splitlines():
        if m := ROW.match(line):
            times[f"{m[1]} {m[2]}"] = float(m[3])
        elif m := TOTAL.match(line):
            times["total"] = float(m[2])
    if "total" not in times:
        sys.exit(f"{netc} time {' '.join(args)} printed no total:\n{out}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="the old netc binary")
    parser.add_argument(
        "--new", default=str(ROOT / "target" / "release" / "netc"), help="the new netc binary"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--match", default=".", help="regex over 'layer op' rows to print")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="-- then the `netc time` arguments")
    opts = parser.parse_args()
    args = opts.args[1:] if opts.args[:1] == ["--"] else opts.args
    runs: dict[str, dict[str, list[float]]] = {"base": defaultdict(list), "new": defaultdict(list)}
    for _ in range(opts.rounds):
        for side, netc in (("base", opts.base), ("new", opts.new)):
            for row, ms in layer_times(netc, args).items():
                runs[side][row].append(ms)
    pattern = re.compile(opts.match)
    rows = sorted(r for r in runs["base"] if r != "total" and pattern.search(r) and r in runs["new"])
    print(f"`netc time {' '.join(args)}`, {opts.rounds} interleaved rounds, medians\n")
    print("| layer op | base ms | new ms | base/new |")
    print("|---|---|---|---|")
    for row in [*rows, "total"]:
        base, new = (statistics.median(runs[s][row]) for s in ("base", "new"))
        print(f"| {row} | {base:.3f} | {new:.3f} | {base / new:.2f}x |")


if __name__ == "__main__":
    main()
