"""Exports scikit-learn's *digits* data set (1,797 real 8x8 handwritten
digits shipped inside the package, no download) for `netc train`.

    x  f32 [N, 1, 8, 8]  pixel intensities 0..16 scaled to [0, 1] (x / 16)
    y  i64 [N]           the digit, 0..9

A fixed stratified 80/20 split (`train_test_split(stratify=y,
random_state=0)`) is written to tests/fixtures/digits/train.safetensors and
test.safetensors. The tensor names match the EEG models' input `x` and
their `train` label `y` (run them with `--set bands=1 grid=8 classes=10`).

Run from the repository root (needs numpy, safetensors, scikit-learn):
    /work/venv/bin/python tools/digits/export_digits.py
"""

from __future__ import annotations

import os

import numpy as np
from safetensors.numpy import save_file
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "digits")
# Both files together stay below this (they are committed).
MAX_BYTES = 1 << 20


def main():
    digits = load_digits()
    x = (digits.images.astype(np.float32) / np.float32(16.0)).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    assert x.shape == (1797, 1, 8, 8) and x.min() == 0.0 and x.max() == 1.0
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, stratify=y, random_state=0)
    os.makedirs(OUT, exist_ok=True)
    total = 0
    for name, xs, ys in [("train", x_train, y_train), ("test", x_test, y_test)]:
        path = os.path.join(OUT, f"{name}.safetensors")
        save_file({"x": np.ascontiguousarray(xs), "y": np.ascontiguousarray(ys)}, path,
                  # One entry: safetensors writes metadata entries in no fixed order.
                  metadata={"source": "sklearn.datasets.load_digits, x / 16, "
                            "train_test_split(test_size=0.2, stratify=y, random_state=0)"})
        size = os.path.getsize(path)
        total += size
        counts = np.bincount(ys, minlength=10)
        print(f"{name}: x {list(xs.shape)} y {list(ys.shape)}, {size} bytes, "
              f"class counts {counts.tolist()}")
    print(f"total {total} bytes")
    assert total < MAX_BYTES


if __name__ == "__main__":
    main()
