"""Trains the PyTorch twins of netc's EEG models on the digits data
(tools/digits/export_digits.py), the reference runs of `netc train`.

The twins are built from the same recipe as models/eeg_ccnn.net,
eeg_mlp.net and eeg_svm.net, with netc's layer names, so that their
state_dict keys are netc's parameter paths:

    eeg_ccnn  conv1..conv4: conv 3x3 pad 1 (64, 128, 256, 64) + relu, flatten,
              fc: linear 1024 + relu, dropout 0.5, out: linear classes
    eeg_mlp   flatten, fc1: linear 512 + relu, fc2: linear 256 + relu, out: linear classes
    eeg_svm   flatten, linear: linear classes

The loss and the optimizer are read from the model's `train` section
(cross_entropy / multi_margin; adam / adamw / sgd with their arguments);
`--lr`, `--weight-decay`, `--optimizer` override them.

    /work/venv/bin/python tools/digits/train_torch.py --model eeg_ccnn \\
        [--init WEIGHTS.safetensors] --epochs 30 --batch 32 [--lr 1e-3] \\
        [--seed 0] [--out summary.json]

`--init` loads initial weights exported by netc (by state_dict key; missing,
extra or mis-shaped tensors are an error); without it the twin keeps
PyTorch's default initialisation (after torch.manual_seed(seed)). Batches
are reshuffled every epoch by a torch.Generator seeded with `--seed`; the
last partial batch is kept. Prints per-epoch mean train loss, test loss and
test accuracy, and writes a JSON summary with `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS = os.path.join(ROOT, "models")
DATA = os.path.join(ROOT, "tests", "fixtures", "digits")


# ---------------------------------------------------------------------------
# The twins
# ---------------------------------------------------------------------------


class EEGCCNN(nn.Module):
    """models/eeg_ccnn.net: four 3x3 convs without pooling, fc 1024, dropout."""

    def __init__(self, bands: int, grid: int, classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(bands, 64, 3, padding=1)
        self.conv2 = nn.Conv2d(64, 128, 3, padding=1)
        self.conv3 = nn.Conv2d(128, 256, 3, padding=1)
        self.conv4 = nn.Conv2d(256, 64, 3, padding=1)
        self.fc = nn.Linear(64 * grid * grid, 1024)
        self.dropout = nn.Dropout(0.5)
        self.out = nn.Linear(1024, classes)

    def forward(self, x):
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = F.relu(conv(x))
        x = self.dropout(F.relu(self.fc(x.flatten(1))))
        return self.out(x)


class EEGMLP(nn.Module):
    """models/eeg_mlp.net: flatten -> 512 -> 256 -> classes, ReLU."""

    def __init__(self, bands: int, grid: int, classes: int):
        super().__init__()
        self.fc1 = nn.Linear(bands * grid * grid, 512)
        self.fc2 = nn.Linear(512, 256)
        self.out = nn.Linear(256, classes)

    def forward(self, x):
        x = F.relu(self.fc1(x.flatten(1)))
        return self.out(F.relu(self.fc2(x)))


class EEGSVM(nn.Module):
    """models/eeg_svm.net: one linear layer (scores)."""

    def __init__(self, bands: int, grid: int, classes: int):
        super().__init__()
        self.linear = nn.Linear(bands * grid * grid, classes)

    def forward(self, x):
        return self.linear(x.flatten(1))


TWINS = {"eeg_ccnn": EEGCCNN, "eeg_mlp": EEGMLP, "eeg_svm": EEGSVM}


# ---------------------------------------------------------------------------
# The train section
# ---------------------------------------------------------------------------


def parse_call(text: str) -> tuple[str, list[str], dict[str, str]]:
    """`name(a, b, k = v)` -> (name, positional, keyword) as strings."""
    m = re.fullmatch(r"\s*(\w+)\s*\((.*)\)\s*", text, re.S)
    if not m:
        raise ValueError(f"cannot read the call `{text.strip()}`")
    pos, kw = [], {}
    for arg in filter(None, (a.strip() for a in m.group(2).split(","))):
        if "=" in arg:
            k, v = arg.split("=", 1)
            kw[k.strip()] = v.strip()
        else:
            pos.append(arg)
    return m.group(1), pos, kw


def train_section(model: str) -> dict[str, tuple[str, list[str], dict[str, str]]]:
    """The `loss` and `optimizer` lines of `train <model> { ... }` in
    models/<model>.net."""
    with open(os.path.join(MODELS, f"{model}.net")) as f:
        text = re.sub(r"#[^\n]*", "", f.read())
    m = re.search(r"\btrain\s+" + re.escape(model) + r"\s*\{(.*?)\n\}", text, re.S)
    if not m:
        raise ValueError(f"models/{model}.net has no `train {model}` section")
    out = {}
    for line in m.group(1).splitlines():
        key, _, value = line.partition("=")
        if key.strip() in ("loss", "optimizer"):
            out[key.strip()] = parse_call(value)
    if set(out) != {"loss", "optimizer"}:
        raise ValueError(f"train {model}: expected `loss = ...` and `optimizer = ...`, got {out}")
    return out


def number(text: str) -> float | bool:
    """A train-section argument: `true`/`false` or a number."""
    return text == "true" if text in ("true", "false") else float(text)


def make_loss(call):
    name, _, kw = call
    if name == "cross_entropy":
        smoothing = float(kw.get("label_smoothing", 0.0))
        return lambda out, y: F.cross_entropy(out, y, label_smoothing=smoothing)
    if name == "multi_margin":
        margin = float(kw.get("margin", 1.0))
        return lambda out, y: F.multi_margin_loss(out, y, margin=margin)
    raise ValueError(f"loss `{name}` is not supported by this script")


def make_optimizer(call, params, args):
    name, _, kw = call
    name = args.optimizer or name
    kw = {k: number(v) for k, v in kw.items()}
    if args.lr is not None:
        kw["lr"] = args.lr
    if args.weight_decay is not None:
        kw["weight_decay"] = args.weight_decay
    if name == "sgd":
        return torch.optim.SGD(params, lr=kw["lr"], momentum=kw.get("momentum", 0.0),
                               nesterov=bool(kw.get("nesterov", False)),
                               weight_decay=kw.get("weight_decay", 0.0)), name, kw
    if name in ("adam", "adamw"):
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        extra = {"weight_decay": kw["weight_decay"]} if "weight_decay" in kw else {}
        return cls(params, lr=kw["lr"], **extra), name, kw
    raise ValueError(f"optimizer `{name}` is not supported by this script")


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


def load_init(module: nn.Module, path: str):
    """Loads netc-exported weights by state_dict key; any difference is an error."""
    weights = load_file(path)
    state = module.state_dict()
    missing = sorted(set(state) - set(weights))
    extra = sorted(set(weights) - set(state))
    shapes = [f"{k}: file {list(weights[k].shape)} vs model {list(state[k].shape)}"
              for k in state if k in weights and weights[k].shape != state[k].shape]
    if missing or extra or shapes:
        raise SystemExit(f"{path}: weights do not match the twin\n"
                         f"  missing: {missing}\n  extra: {extra}\n  shapes: {shapes}")
    module.load_state_dict({k: v.to(torch.float32) for k, v in weights.items()})


def evaluate(module, loss_fn, x, y, batch):
    module.eval()
    total, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(y), batch):
            out = module(x[i : i + batch])
            total += float(loss_fn(out, y[i : i + batch])) * len(out)
            correct += int((out.argmax(1) == y[i : i + batch]).sum())
    return total / len(y), correct / len(y)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, choices=sorted(TWINS))
    p.add_argument("--init", help="initial weights (safetensors, netc's parameter paths)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, help="overrides the train section's lr")
    p.add_argument("--weight-decay", type=float, help="overrides the weight decay")
    p.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], help="overrides the optimizer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bands", type=int, default=1)
    p.add_argument("--grid", type=int, default=8)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--train", default=os.path.join(DATA, "train.safetensors"))
    p.add_argument("--test", default=os.path.join(DATA, "test.safetensors"))
    p.add_argument("--out", help="JSON summary")
    p.add_argument("--save-init", help="write the initial weights (safetensors) before training")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    module = TWINS[args.model](args.bands, args.grid, args.classes)
    if args.init:
        load_init(module, args.init)
    if args.save_init:
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, args.save_init)
    section = train_section(args.model)
    loss_fn = make_loss(section["loss"])
    opt, opt_name, opt_kw = make_optimizer(section["optimizer"], module.parameters(), args)

    train, test = load_file(args.train), load_file(args.test)
    x, y = train["x"].float(), train["y"].long()
    xt, yt = test["x"].float(), test["y"].long()
    want = (args.bands, args.grid, args.grid)
    if tuple(x.shape[1:]) != want:
        raise SystemExit(f"{args.train}: x is {list(x.shape)}, the model wants [N, {want}]")
    shuffle = torch.Generator().manual_seed(args.seed)
    print(f"{args.model}: {sum(p.numel() for p in module.parameters())} parameters, "
          f"init {'file ' + args.init if args.init else 'PyTorch default'}, "
          f"loss {section['loss'][0]}, optimizer {opt_name} {opt_kw}, "
          f"{len(y)} train / {len(yt)} test samples")
    history = []
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        module.train()
        order = torch.randperm(len(y), generator=shuffle)
        total = 0.0
        for i in range(0, len(y), args.batch):
            idx = order[i : i + args.batch]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(module(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        test_loss, acc = evaluate(module, loss_fn, xt, yt, 256)
        history.append({"epoch": epoch, "train_loss": total / len(y), "test_loss": test_loss,
                        "test_accuracy": acc})
        print(f"epoch {epoch:3d}  train loss {total / len(y):.4f}  test loss {test_loss:.4f}  "
              f"test accuracy {100 * acc:.2f}%", flush=True)
    seconds = time.perf_counter() - start
    print(f"{args.model}: final test accuracy {100 * history[-1]['test_accuracy']:.2f}% "
          f"after {args.epochs} epochs ({seconds:.1f} s)")
    if args.out:
        summary = {
            "model": args.model, "init": args.init or "pytorch-default",
            "set": {"bands": args.bands, "grid": args.grid, "classes": args.classes},
            "epochs": args.epochs, "batch": args.batch, "seed": args.seed,
            "loss": section["loss"][0], "optimizer": opt_name, "optimizer_args": opt_kw,
            "threads": args.threads, "seconds": seconds,
            "final_test_accuracy": history[-1]["test_accuracy"], "history": history,
        }
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
