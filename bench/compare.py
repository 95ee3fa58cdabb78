#!/usr/bin/env python3
"""Side-by-side latency of netc and its peers on the same machine, in one run.

For each model and batch size, netc (`netc bench --json`, a subprocess) and the
peers (PyTorch eager; with --compile also torch.compile default mode; with --ort
also ONNX Runtime with all graph optimisations) are timed in interleaved rounds,
2 threads everywhere. Each round gives every configuration a warm-up and then
timed calls for at least --seconds; the reported figure is the median of the
per-call latencies pooled over rounds. Ratios are peer/netc latency (> 1 means
netc is faster). Also reports netc's cold compile time (parse -> ready to run).

Peers are built from ../shared/peers/models.py (the PyTorch definitions of the
seed models). Run from the repository root after `cargo build --release`:

    /path/to/venv/bin/python bench/compare.py --models eeg_ccnn,densenet121 --rounds 3

Prints a markdown table (docs/performance.md carries one run's table).
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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT.parent / "shared" / "peers"
NETC = ROOT / "target" / "release" / "netc"
# The machine's fp32 peak for 2 threads (zmm FMAs on both cores, ../shared/bench-limits.md §1).
PEAK_GFLOPS = 340.0

# model -> (netc file, netc model name, peers builder name, input name, big batch[, netc args])
# The DSSMs: netc reads sparse CSR bags (`netc bench` draws the op's nnz ids
# per bag: the peers' 20 and 8), the peers their dense inputs; lstm_dssm
# without peepholes, as nn.LSTM.
MODELS = {
    "eeg_ccnn": ("models/eeg_ccnn.net", None, "eeg_ccnn", "x", 256),
    "eeg_mlp": ("models/eeg_mlp.net", None, "mlp", "x", 256),
    "eeg_svm": ("models/eeg_svm.net", None, "svm", "x", 256),
    "densenet121": ("models/densenet.net", "densenet121", "densenet121", "image", 8),
    "vggish": ("models/vggish.net", "vggish", "vggish", "x", 32),
    "dssm": ("models/dssm.net", "dssm", "dssm", "q", 64),
    "cnn_dssm": ("models/dssm.net", "cnn_dssm", "cnn_dssm", "q", 64),
    "lstm_dssm": ("models/dssm.net", "lstm_dssm", "lstm_dssm", "q", 64, ["--set", "peephole=false"]),
    "fcos": ("models/fcos.net", "fcos_resnet50_fpn", "fcos_backbone_head", "image", 2),
    # The peers' small diffusers config (needs `pip install diffusers`).
    "unet": ("models/sd_unet.net", "sd_unet_small", "unet", "sample", 2),
    # spconv 2.3.x on CPU (`pip install spconv`), batch 1 only: 20000 random
    # distinct voxels of the 40x200x200 grid on both sides. netc's FLOP count
    # is the shape rule's upper bound on the rule-book pairs, far above the
    # pairs of such inputs, so the "% of peak" column overstates.
    "spconv": ("models/spconv.net", "spconv_encoder", "spconv_net", "features", 1, ["--set", "M=20000"]),
}

# Models ONNX Runtime cannot run: spconv 2.3.8's ONNX export of its sparse
# convolutions fails (`IndexError: unordered_map::at` in indice_conv; the
# peers' own harness did not attempt ORT for it either).
NO_ONNX = {"spconv"}


def fcos_backbone_head():
    """torchvision's FCOS at 512 x 512 as built with pretrained weights
    (FrozenBatchNorm2d), backbone and head only: what netc's
    fcos_resnet50_fpn computes. (The peers' `fcos` also times the
    transform and the post-processing, which netc runs as a separate
    model.)"""
    import torch
    from torchvision.models import resnet50
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import misc as misc_nn_ops
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    body = resnet50(weights=None, norm_layer=misc_nn_ops.FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(
        body, 3, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256)
    )
    fcos = FCOS(backbone, num_classes=91)

    class BackboneHead(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone, self.head = fcos.backbone, fcos.head

        def forward(self, image):
            out = self.head(list(self.backbone(image).values()))
            return out["cls_logits"], out["bbox_regression"], out["bbox_ctrness"]

    def inputs(batch: int):
        g = torch.Generator().manual_seed(0)
        return (torch.randn(batch, 3, 512, 512, generator=g),)

    return BackboneHead().eval(), inputs


# Peers defined here rather than in ../shared/peers/models.py.
LOCAL_PEERS = {"fcos_backbone_head": fcos_backbone_head}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def set_threads(threads: int) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)


def netc_bench(name: str, batch: int, threads: int, seconds: float, extra: list[str]) -> dict:
    path, model = MODELS[name][:2]
    cmd = [str(NETC), "bench", path, "--batch", str(batch), "--threads", str(threads),
           "--json", "--min-time", str(seconds)] + extra + list(MODELS[name][5:6] and MODELS[name][5])
    if model:
        cmd += ["--model", model]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def time_calls(fn, seconds: float, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return times


def peer_runners(name: str, batch: int, with_compile: bool, with_ort: bool):
    import torch
    sys.path.insert(0, str(PEERS))
    import models as peer_models  # noqa: E402  (the shared PyTorch definitions)

    builder = MODELS[name][2]
    model, make_inputs = (LOCAL_PEERS.get(builder) or getattr(peer_models, builder))()
    model.eval()
    inputs = make_inputs(batch)
    runners = {}

    def eager():
        with torch.inference_mode():
            model(*inputs)

    runners["eager"] = eager
    compile_s = None
    if with_compile:
        compiled = torch.compile(model, dynamic=False)
        t = time.perf_counter()
        with torch.inference_mode():
            compiled(*inputs)
        compile_s = time.perf_counter() - t

        def comp():
            with torch.inference_mode():
                compiled(*inputs)

        runners["torch.compile"] = comp
    if with_ort and name not in NO_ONNX:
        import onnxruntime as ort
        import tempfile
        onnx_path = Path(tempfile.mkdtemp()) / f"{name}_{batch}.onnx"
        torch.onnx.export(model, inputs, str(onnx_path), dynamo=False)
        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        feeds = {i.name: x.numpy() for i, x in zip(sess.get_inputs(), inputs)}
        runners["ORT"] = lambda: sess.run(None, feeds)
    return runners, compile_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--batches", default="", help="comma list; default: 1 and the model's big batch")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile")
    ap.add_argument("--ort", action="store_true", help="also time ONNX Runtime")
    ap.add_argument("--netc-args", default="", help="extra netc bench flags, e.g. '--no-fuse'")
    args = ap.parse_args()
    set_threads(args.threads)
    import torch
    torch.set_num_threads(args.threads)
    extra = args.netc_args.split()
    rows = []
    for name in args.models.split(","):
        batches = [int(b) for b in args.batches.split(",") if b] or sorted({1, MODELS[name][4]})
        for batch in batches:
            runners, compile_s = peer_runners(name, batch, args.compile, args.ort)
            pooled = {k: [] for k in ["netc", *runners]}
            netc_res = None
            for r in range(args.rounds):
                order = ["netc", *runners]
                order = order[r % len(order):] + order[: r % len(order)]
                for who in order:
                    if who == "netc":
                        res = netc_bench(name, batch, args.threads, args.seconds, extra)
                        pooled["netc"] += res["times_ms"]
                        netc_res = res
                    else:
                        pooled[who] += time_calls(runners[who], args.seconds)
            med = {k: statistics.median(v) for k, v in pooled.items()}
            rows.append((name, batch, med, netc_res, compile_s))
            print(f"{name} b{batch}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in med.items()), file=sys.stderr)
    peers = [p for p in ["eager", "torch.compile", "ORT"] if any(p in r[2] for r in rows)]
    print(f"Run {datetime.date.today()} on {platform.node()}: {cpu_model()}, {os.cpu_count()} CPUs; "
          f"{args.threads} threads, {args.rounds} interleaved rounds of >= {args.seconds} s; "
          f"command: `python bench/compare.py {' '.join(sys.argv[1:])}`\n")
    print(f"Machine fp32 peak taken as {PEAK_GFLOPS:.0f} GFLOP/s (2 cores, ../shared/bench-limits.md). "
          f"Target: best peer/netc >= 1.0, or >= 1.3 where the best peer reaches less than 60% of peak.\n")
    head = ("| model | batch | netc ms | " + " | ".join(f"{p} ms | {p}/netc" for p in peers)
            + " | best peer | best/netc | best peer % of peak | target | met | netc compile ms | torch.compile s |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for name, batch, med, res, compile_s in rows:
        cells = [name, str(batch), f"{med['netc']:.4g}"]
        for p in peers:
            cells += [f"{med[p]:.4g}", f"{med[p] / med['netc']:.2f}x"] if p in med else ["—", "—"]
        best = min((p for p in peers if p in med), key=lambda p: med[p])
        ratio = med[best] / med["netc"]
        flops = res["flops"]  # the model's FLOP count per call, as `netc bench` counts it
        share = flops / (med[best] * 1e6) / PEAK_GFLOPS
        target = 1.3 if share < 0.6 else 1.0
        cells += [best, f"{ratio:.2f}x", f"{100 * share:.1f}%", f"{target:.1f}x", "yes" if ratio >= target else "no"]
        cells.append(f"{res['compile_ms']:.0f}" if res.get("compile_ms") is not None else "—")
        cells.append(f"{compile_s:.1f}" if compile_s is not None else "—")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
