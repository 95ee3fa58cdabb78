"""Training-step time and peak memory: netc vs PyTorch eager, side by side.

Each measurement runs in its own process (so its peak RSS, ru_maxrss, is
its own), netc and PyTorch alternating for `--rounds` rounds on the same
machine. netc: `netc bench --train --json` (forward + loss + backward +
optimizer update on seeded random data). PyTorch: the peer definitions of
/work/shared/peers (models.py, TRAIN_SPECS: same loss, optimizer and
batch), `opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()`.

    /work/venv/bin/python bench/train_compare.py [--threads 2] [--rounds 2] [--cases eeg_ccnn,densenet121,densenet121_me,vggish] [--netc BINARY]
"""

import argparse
import datetime
import json
import os
import pathlib
import platform
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Issue 7's training targets: step time >= 1.3x PyTorch eager; the
# memory-efficient DenseNet's peak RSS <= 0.8x PyTorch's memory-efficient mode.
STEP_TARGET = 1.3
RSS_TARGET = 0.8
PEERS = pathlib.Path("/work/shared/peers")
# The load average at the start of every measurement (the machine is shared).
LOADS = []

# case -> (netc file, model, batch, memory-efficient, peer model name, extra netc args)
# The DSSMs: netc reads sparse CSR bags (random, the peers' 20 and 8 ids per
# bag), PyTorch the peers' dense inputs; lstm_dssm without peepholes, as
# nn.LSTM, and with the netc train section's Adam 1e-3 (the peers' spec
# covers dssm only: SGD 0.1; cnn_dssm uses the same). unet: sd_unet_small
# (32 x 32 latents, a 77-token context) against the peers' diffusers
# UNet2DConditionModel, noise prediction as the netc train section has it:
# mse(out, noise) against a fixed random target, Adam 1e-4.
CASES = {
    "eeg_ccnn": ("eeg_ccnn.net", "eeg_ccnn", 256, False, "eeg_ccnn", []),
    "densenet121": ("densenet.net", "densenet121", 8, False, "densenet121", []),
    "densenet121_me": ("densenet.net", "densenet121", 8, True, "densenet121", []),
    "vggish": ("vggish.net", "vggish", 32, False, "vggish", []),
    "dssm": ("dssm.net", "dssm", 64, False, "dssm", []),
    "cnn_dssm": ("dssm.net", "cnn_dssm", 64, False, "cnn_dssm", []),
    "lstm_dssm": ("dssm.net", "lstm_dssm", 64, False, "lstm_dssm", ["--set", "peephole=false"]),
    "unet": ("sd_unet.net", "sd_unet_small", 2, False, "unet", []),
}

TORCH_STEP = r"""
import json, statistics, sys, time
sys.path.insert(0, {peers!r})
import torch
torch.set_num_threads({threads})
import models
name, batch, me, seconds = {name!r}, {batch}, {me}, {seconds}
spec = dict(models.TRAIN_SPECS.get(name, models.TRAIN_SPECS["dssm"]))
if name == "lstm_dssm":
    spec["optim"] = lambda p: torch.optim.Adam(p, lr=1e-3)
if name == "unet":
    noise = torch.randn(batch, 4, 32, 32, generator=torch.Generator().manual_seed(5))
    spec = dict(loss=torch.nn.functional.mse_loss, target=lambda b: noise,
                optim=lambda p: torch.optim.Adam(p, lr=1e-4))
model, build = models.densenet121(memory_efficient=True) if me else models.MODELS[name]()
model.train()
x = build(batch)
y = spec["target"](batch)
opt = spec["optim"](model.parameters())
def step():
    opt.zero_grad(set_to_none=True)
    spec["loss"](model(*x), y).backward()
    opt.step()
for _ in range(2):
    step()
times = []
start = time.perf_counter()
while len(times) < 5 or time.perf_counter() - start < seconds:
    t = time.perf_counter(); step(); times.append((time.perf_counter() - t) * 1e3)
print(json.dumps({{"median_ms": statistics.median(times), "min_ms": min(times)}}))
"""


def child(cmd):
    """Runs cmd; returns (stdout, that child's peak RSS in KB). Notes the
    1-minute load average at its start in LOADS."""
    LOADS.append(os.getloadavg()[0])
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}")
    return out, usage.ru_maxrss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="eeg_ccnn,densenet121,densenet121_me,vggish")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--netc", default=str(ROOT / "target" / "release" / "netc"),
                    help="the netc binary (e.g. an older build, for an A/B)")
    args = ap.parse_args()
    netc = args.netc
    rows = []
    for case in args.cases.split(","):
        file, model, batch, me, peer, extra = CASES[case]
        results = {"netc": [], "torch": []}
        rss = {"netc": [], "torch": []}
        for _ in range(args.rounds):
            cmd = [str(netc), "bench", str(ROOT / "models" / file), "--model", model,
                   "--train", "--json", "--batch", str(batch), "--threads", str(args.threads),
                   "--min-time", str(args.seconds), "--reps", "5", *extra]
            if model == "densenet121" and not me:
                cmd.insert(2, "--no-recompute")
            out, peak = child(cmd)
            j = json.loads(out.strip().splitlines()[-1])
            results["netc"].append(j["median_ms"])
            rss["netc"].append(peak)
            code = TORCH_STEP.format(peers=str(PEERS), threads=args.threads, name=peer,
                                     batch=batch, me=me, seconds=args.seconds)
            out, peak = child([sys.executable, "-c", code])
            results["torch"].append(json.loads(out.strip().splitlines()[-1])["median_ms"])
            rss["torch"].append(peak)
        n = min(results["netc"])
        t = min(results["torch"])
        rows.append((case, batch, n, t, rss["netc"], rss["torch"]))
        print(f"{case}: netc {results['netc']} ms, torch {results['torch']} ms, "
              f"rss netc {rss['netc']} torch {rss['torch']}", file=sys.stderr)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), "unknown CPU")
    print(f"Run {datetime.date.today()} on {platform.node()}: {cpu}, {os.cpu_count()} CPUs; "
          f"{args.threads} threads, {args.rounds} alternating rounds of >= {args.seconds} s, "
          f"the faster round's median; load average {min(LOADS):.1f}-{max(LOADS):.1f} at the "
          f"measurements' starts; command: `python bench/train_compare.py {' '.join(sys.argv[1:])}`\n")
    print(f"Targets: eager/netc >= {STEP_TARGET}; the memory-efficient DenseNet's peak RSS "
          f"<= {RSS_TARGET} x PyTorch's memory-efficient mode (RSS ratio = netc / PyTorch, lowest round each).\n")
    print("| model | batch | netc step ms | PyTorch eager step ms | eager/netc | step target met "
          "| netc peak RSS MB | PyTorch peak RSS MB | RSS netc/PyTorch |")
    print("|---|---|---|---|---|---|---|---|---|")
    for case, batch, n, t, rn, rt in rows:
        mb = lambda v: "/".join(f"{x / 1024:.0f}" for x in v)
        met = "yes" if t / n >= STEP_TARGET else "no"
        print(f"| {case} | {batch} | {n:.1f} | {t:.1f} | {t / n:.2f}× | {met} | {mb(rn)} | {mb(rt)} "
              f"| {min(rn) / min(rt):.2f} |")


if __name__ == "__main__":
    main()
