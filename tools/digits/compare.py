"""netc train vs its PyTorch twin on the digits data, side by side.

For each model: `netc train` from netc's default initialisation (seed 0),
writing its initial weights with --save-init; then the PyTorch twin
(train_torch.py) from those same weights with the same optimizer,
learning rate, batch size and epochs. Prints a markdown table of the final
test accuracies and copies netc's curve pictures to docs/img/.

    /work/venv/bin/python tools/digits/compare.py [--epochs 15] [--models eeg_ccnn,eeg_mlp,eeg_svm]
"""

import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
NETC = ROOT / "target" / "release" / "netc"
DATA = ROOT / "tests" / "fixtures" / "digits"


def netc_history(ckpt: pathlib.Path):
    """The per-epoch history stored in a netc checkpoint's metadata."""
    raw = ckpt.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    return json.loads(header["__metadata__"]["history"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="eeg_ccnn,eeg_mlp,eeg_svm")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="/tmp/netc-digits")
    args = ap.parse_args()
    work = pathlib.Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for model in args.models.split(","):
        init = work / f"{model}.init.safetensors"
        ckpt = work / f"{model}.safetensors"
        cmd = [
            str(NETC), "train", str(ROOT / "models" / f"{model}.net"),
            "--set", "bands=1", "--set", "grid=8", "--set", "classes=10",
            "--data", str(DATA / "train.safetensors"),
            "--val", str(DATA / "test.safetensors"),
            "--epochs", str(args.epochs), "--batch", str(args.batch),
            "--seed", "0", "--threads", str(args.threads), "--quiet",
            "--save-init", str(init), "--out", str(ckpt),
        ]
        print("$", " ".join(cmd), file=sys.stderr)
        t0 = time.time()
        subprocess.run(cmd, check=True)
        netc_s = time.time() - t0
        hist = netc_history(ckpt)
        out = work / f"{model}.torch.json"
        cmd = [
            sys.executable, str(ROOT / "tools" / "digits" / "train_torch.py"),
            "--model", model, "--init", str(init), "--epochs", str(args.epochs),
            "--batch", str(args.batch), "--seed", "0",
            "--threads", str(args.threads), "--out", str(out),
        ]
        print("$", " ".join(cmd), file=sys.stderr)
        t0 = time.time()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        torch_s = time.time() - t0
        twin = json.loads(out.read_text())
        torch_acc = twin["final_test_accuracy"]
        netc_acc = hist[-1]["val_accuracy"]
        rows.append((model, netc_acc, torch_acc, netc_s, torch_s))
        img = ROOT / "docs" / "img"
        img.mkdir(exist_ok=True)
        shutil.copy(ckpt.with_suffix(".svg"), img / f"digits_{model}.svg")
    print(f"| model | netc test accuracy | PyTorch test accuracy | difference | netc wall s | PyTorch wall s |")
    print("|---|---|---|---|---|---|")
    for model, a, b, ns, ts in rows:
        print(f"| {model} | {100*a:.2f}% | {100*b:.2f}% | {100*(a-b):+.2f} | {ns:.0f} | {ts:.0f} |")


if __name__ == "__main__":
    main()
