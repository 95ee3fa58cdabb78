"""netc's text hashing (docs/text.md), for the Python tools: words, letter
trigrams, FNV-1a 64 ids, CSR bags and right-aligned word-id rows.

Transcribed from docs/text.md like the runtime's reference
(runtime/tests/fixtures/text/make_text_reference.py, which cannot be
imported: it writes its fixture when run); `python texthash.py` checks this
module against that fixture (bags and word ids netc's runtime must equal).

Words are maximal runs of str.isalnum() characters, lower-cased with
str.lower() (equal to Rust's char::is_alphanumeric / to_lowercase for the
Latin text of the Debian corpus); trigrams are the 3-windows of '#word#';
trigram id = fnv1a64(trigram) mod dim; word id = 2 + fnv1a64(word) mod
(dim - 2), 0 = padding.
"""

from __future__ import annotations

import collections
import functools
import os

import numpy as np

M64 = (1 << 64) - 1
TRIGRAMS = 30000
VOCAB = 30000


def fnv1a64(s: str) -> int:
    h = 0xCBF29CE484222325
    for b in s.encode("utf-8"):
        h = ((h ^ b) * 0x100000001B3) & M64
    return h


def words(text: str) -> list[str]:
    out, cur = [], []
    for ch in text:
        if ch.isalnum():
            cur.append(ch)
        elif cur:
            out.append("".join(cur).lower())
            cur = []
    if cur:
        out.append("".join(cur).lower())
    return out


def trigrams(word: str) -> list[str]:
    m = "#" + word + "#"
    return [m[i : i + 3] for i in range(len(m) - 2)]


@functools.lru_cache(maxsize=1 << 20)
def word_trigram_ids(word: str, dim: int = TRIGRAMS) -> tuple[int, ...]:
    return tuple(fnv1a64(t) % dim for t in trigrams(word))


@functools.lru_cache(maxsize=1 << 20)
def word_id(word: str, dim: int = VOCAB) -> int:
    return 2 + fnv1a64(word) % (dim - 2)


def text_bag(text: str, dim: int = TRIGRAMS) -> collections.Counter:
    """The DSSM bag of a text: trigram id -> count."""
    c = collections.Counter()
    for w in words(text):
        c.update(word_trigram_ids(w, dim))
    return c


def csr(bags) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Canonical CSR (ids ascending, repeats merged into counts) of Counters."""
    indices, offsets, values = [], [0], []
    for bag in bags:
        for k in sorted(bag):
            indices.append(k)
            values.append(float(bag[k]))
        offsets.append(len(indices))
    return (np.array(indices, dtype=np.int64), np.array(offsets, dtype=np.int64),
            np.array(values, dtype=np.float32))


def text_bags(texts, dim: int = TRIGRAMS):
    """`text_bags` of docs/text.md: one bag per text."""
    return csr(text_bag(t, dim) for t in texts)


def word_bags(texts, words_per_text: int, dim: int = TRIGRAMS):
    """`word_bags` of docs/text.md: one bag per word, the first
    `words_per_text` words, then empty bags at the end."""
    bags = []
    for t in texts:
        ws = words(t)[:words_per_text]
        bags += [collections.Counter(word_trigram_ids(w, dim)) for w in ws]
        bags += [collections.Counter() for _ in range(words_per_text - len(ws))]
    return csr(bags)


def word_id_rows(texts, length: int, dim: int = VOCAB) -> np.ndarray:
    """`WordIdMatrix::build`: the first `length` words, right-aligned behind
    padding ids 0. i64 [len(texts), length]."""
    out = np.zeros((len(texts), length), dtype=np.int64)
    for r, t in enumerate(texts):
        ids = [word_id(w, dim) for w in words(t)[:length]]
        if ids:
            out[r, length - len(ids):] = ids
    return out


def _self_check():
    """Compare with the runtime's text fixture (what netc must produce)."""
    from safetensors import safe_open

    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, "../../runtime/tests/fixtures/text/text_reference.safetensors")
    with safe_open(path, "np") as f:
        texts = f.metadata()["texts"].split("\n")
        ref = {k: f.get_tensor(k) for k in f.keys()}
    for name, got in (("q", text_bags(texts)), ("w", word_bags(texts, 4))):
        for part, g in zip(("indices", "offsets", "values"), got):
            assert np.array_equal(ref[f"{name}.{part}"], g), f"{name}.{part}"
    assert np.array_equal(ref["ids"], word_id_rows(texts, 4, 1000)), "ids"
    print(f"texthash: {len(texts)} texts equal to {os.path.normpath(path)}")


if __name__ == "__main__":
    _self_check()
