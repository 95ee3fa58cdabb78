"""Checks the towers of torch_twins.py against the gradient fixtures of
tests/fixtures/grads/make_dssm_reference.py: with the counter weights of
seed 0 (netc's parameter layouts converted to the twins': nn.Linear's
weight transposed for the EmbeddingBag, nn.Conv1d's [out, V, 3] as rows of
three taps) and the fixtures' CSR / id inputs, the twins' scores must equal
the fixtures' `output.scores` (written by a dense computation) to 1e-12.
Also checks the twins' negative sampling against the draws pinned in
runtime/src/text/tsv.rs (`SAMPLE_PINS`).

Run from the repository root: /work/venv/bin/python tools/dssm/check_twins.py
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch
from safetensors.numpy import load_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures"))
import counter_weights as cw  # noqa: E402
import torch_twins as tw  # noqa: E402

torch.set_num_threads(1)
torch.set_default_dtype(torch.float64)


def weight(path: str, shape) -> torch.Tensor:
    return torch.from_numpy(cw.tensor(0, path, tuple(shape), np.float32).astype(np.float64))


def fixture(case: str) -> dict:
    return load_file(os.path.join(ROOT, "tests", "fixtures", "grads", f"{case}.safetensors"))


def csr(f: dict, name: str):
    """EmbeddingBag arguments: ids, bag starts, counts."""
    return (torch.from_numpy(f[f"input.{name}.indices"]),
            torch.from_numpy(f[f"input.{name}.offsets"][:-1].copy()),
            torch.from_numpy(f[f"input.{name}.values"].astype(np.float64)))


def linear(lin: torch.nn.Linear, path: str):
    lin.weight.copy_(weight(f"{path}.weight", lin.weight.shape))
    lin.bias.copy_(weight(f"{path}.bias", lin.bias.shape))


@torch.no_grad()
def dssm(t: str, f: dict, name: str):
    m = tw.DssmTower(300, False)
    m.net0.bag.weight.copy_(weight(f"{t}.net.0.weight", (300, 300)).T)
    m.net0.bias.copy_(weight(f"{t}.net.0.bias", (300,)))
    linear(m.net2, f"{t}.net.2")
    linear(m.net4, f"{t}.net.4")
    return m(*csr(f, name))


@torch.no_grad()
def cnn_dssm(t: str, f: dict, name: str):
    m = tw.CnnDssmTower(200, 5, False)
    conv = weight(f"{t}.conv.weight", (300, 200, 3))  # [o, v, j] -> [v, j * 300 + o]
    m.taps.weight.copy_(conv.permute(1, 2, 0).reshape(200, 900))
    m.bias.copy_(weight(f"{t}.conv.bias", (300,)))
    linear(m.fc, f"{t}.fc")
    return m(*csr(f, name))


@torch.no_grad()
def lstm_dssm(t: str, f: dict, name: str, peephole: bool):
    m = tw.LstmDssmTower(50, peephole)
    m.emb.weight.copy_(weight(f"{t}.emb.weight", (50, 128)))
    for k, p in m.lstm.named_parameters():
        p.copy_(weight(f"{t}.lstm.{k}", p.shape))
    return m(torch.from_numpy(f[f"input.{name}"]).reshape(-1, 5))


def main():
    picks = tw.sample_negatives([f"d{i}" for i in range(5)], 2, 42)
    assert picks == [[2, 4], [4, 3], [0, 4], [2, 1], [3, 2]], picks
    print("sample_negatives: equal to runtime/src/text/tsv.rs SAMPLE_PINS")
    cases = [("dssm", dssm), ("cnn_dssm", cnn_dssm),
             ("lstm_dssm", lambda t, f, n: lstm_dssm(t, f, n, True)),
             ("lstm_dssm_plain", lambda t, f, n: lstm_dssm(t, f, n, False))]
    for case, tower in cases:
        f = fixture(case)
        want = f["output.scores"]
        yq = tower("q_tower", f, "q")
        yd = tower("d_tower", f, "docs").reshape(*want.shape, -1)
        got = (10.0 * (yq[:, None] * yd).sum(-1)
               / (yq.norm(dim=-1)[:, None] * yd.norm(dim=-1))).numpy()
        gap = float(np.abs(got - want).max())
        print(f"{case}: twin scores vs fixture: max difference {gap:.1e}")
        assert gap <= 1e-12, case


if __name__ == "__main__":
    main()
