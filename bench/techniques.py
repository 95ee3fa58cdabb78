#!/usr/bin/env python3
"""What each performance technique is worth: netc with it and without it.

Every technique of issue 7 has a switch on `netc bench` (see
docs/performance.md). For each technique this runs the model it matters most
for twice, with the technique and with its switch, in interleaved rounds
(`netc bench --json`, one process per measurement, 2 threads unless the
technique is the thread count), and prints one markdown table: the median
latency of both, their ratio (without / with: > 1 means the technique
helps), and the arena size for the memory technique. The per-call overhead
row times `bench/empty.net`, a model that copies one float.

Run from the repository root after `cargo build --release`:

    python3 bench/techniques.py [--rounds 3] [--seconds 2] [--only fuse,layout]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NETC = ROOT / "target" / "release" / "netc"

DENSENET = ["models/densenet.net", "--model", "densenet121"]
VGGISH = ["models/vggish.net", "--model", "vggish"]
EEG_MLP = ["models/eeg_mlp.net", "--model", "eeg_mlp"]
UNET = ["models/sd_unet.net", "--model", "sd_unet_small"]

# name -> (what, model args, batch, flags with the technique, flags without it)
# The two fusion rows separate what `--no-fuse` switches off together:
# `--no-fold-bn` keeps the epilogue and chain fusions and drops only the
# folding; `--no-fuse` then drops the fusions as well.
TECHNIQUES = {
    "fuse": ("fused epilogues and elementwise chains", DENSENET, 1, ["--no-fold-bn"], ["--no-fuse"]),
    "fold_bn": ("batch norms folded into convolutions", DENSENET, 1, [], ["--no-fold-bn"]),
    "pool_first": ("average pools before 1x1 convolutions", DENSENET, 8, [], ["--no-pool-first"]),
    "layout": ("blocked (NHWC) convolution layouts", VGGISH, 1, [], ["--layout", "nchw"]),
    "layout_densenet": ("blocked (NHWC) convolution layouts", DENSENET, 1, [], ["--layout", "nchw"]),
    "prepack": ("weights packed once (packed GEMM vs the gemm crate)", VGGISH, 1, [], ["--gemm", "native"]),
    "prepack_densenet": ("weights packed once (packed GEMM vs the gemm crate)", DENSENET, 1, [], ["--gemm", "native"]),
    "threads_b1": ("both cores at batch 1 (2 threads vs 1)", DENSENET, 1, [], ["--threads", "1"]),
    "team": ("spinning helper splitting a small model's GEMMs (vs the calling thread alone)", EEG_MLP, 1, [], ["--no-team"]),
    "arena": ("arena reuse (memory)", DENSENET, 8, [], ["--no-arena-reuse"]),
    "wide_pointwise": ("GELU/SiLU chains on AVX-512 (vs the JIT's 4-lane kernels)", UNET, 1, [], ["--no-wide-pointwise"]),
    "thin_linear": ("small-batch linear products with the weight read in place (training)", VGGISH, 32, ["--train"], ["--train", "--no-thin-linear"]),
    "winograd": ("3x3 convolutions as Winograd transforms (inference)", VGGISH, 32, [], ["--no-winograd"]),
    "winograd_train": ("3x3 convolutions as Winograd transforms (training)", VGGISH, 32, ["--train"], ["--train", "--no-winograd"]),
    "norm_prologue": ("concat+norm+relu gathered by the 1x1 convolution reading it (vs stored)", DENSENET, 8, [], ["--no-norm-prologue"]),
    "fuse_train": ("fusion in the training step (norm+relu, gradient epilogues)", DENSENET, 4, ["--train"], ["--train", "--no-fuse"]),
}


def bench(args: list[str], batch: int, seconds: float) -> dict:
    threads = [] if "--threads" in args else ["--threads", "2"]
    cmd = [str(NETC), "bench", *args, "--batch", str(batch), "--json", "--min-time", str(seconds), *threads]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--only", default="", help="comma list of technique names")
    args = ap.parse_args()
    chosen = [t for t in args.only.split(",") if t] or list(TECHNIQUES)
    rows = []
    for name in chosen:
        what, model, batch, on, off = TECHNIQUES[name]
        times = {"on": [], "off": []}
        arena = {}
        for r in range(args.rounds):
            for side in (["on", "off"] if r % 2 == 0 else ["off", "on"]):
                res = bench(model + (on if side == "on" else off), batch, args.seconds)
                times[side] += res["times_ms"]
                arena[side] = res["arena_mb"]
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append((name, what, model[-1] if "--model" in model else model[0], batch, on, off, med, arena))
        print(f"{name}: {med}", file=sys.stderr)
    empty = []
    for _ in range(args.rounds):
        empty += bench(["bench/empty.net"], 1, args.seconds)["times_ms"]
    print(f"Run {datetime.date.today()} on {platform.node()} ({os.cpu_count()} CPUs), "
          f"{args.rounds} interleaved rounds of >= {args.seconds} s; command: "
          f"`python3 bench/techniques.py {' '.join(sys.argv[1:])}`\n")
    print("| technique | model | batch | with (flags) | ms | without (flags) | ms | without/with | arena MB with / without |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, what, model, batch, on, off, med, arena in rows:
        flags = lambda f: "`" + " ".join(f) + "`" if f else "default"
        print(f"| {what} | {model} | {batch} | {flags(on)} | {med['on']:.3f} | {flags(off)} | {med['off']:.3f} "
              f"| {med['off'] / med['on']:.2f}x | {arena['on']:.1f} / {arena['off']:.1f} |")
    print(f"\nPer-call overhead (`netc bench bench/empty.net --batch 1 --threads 2`): median "
          f"{1e3 * statistics.median(empty):.2f} µs, min {1e3 * min(empty):.2f} µs over {len(empty)} calls.")


if __name__ == "__main__":
    main()
