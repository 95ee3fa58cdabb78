"""PyTorch twins of models/dssm.net's three models, trained on the corpus of
make_corpus.py and evaluated like bm25.py (every test document ranked for
every test query; netc's ranking JSON; metrics.py's numbers).

Same inputs as netc (tools/dssm/texthash.py = docs/text.md: FNV-1a 64
letter-trigram bags mod 30000, per-word bags of the first --words words,
word ids 2 + h mod (30000 - 2) right-aligned behind padding 0), same
architecture, initialisation scheme (PyTorch's defaults, which netc's
follow) and `train` sections: dssm and cnn_dssm SGD lr 0.1, lstm_dssm Adam
lr 1e-3; loss = mean of -log softmax(gamma * cosine)[:, 0], gamma 10; 4
negatives per query drawn from the other positives of the batch with
docs/text.md's rule (seed = --seed + batch index); batches of 64 in a
seeded shuffled order per epoch; a last partial batch is dropped.

Differences from netc's computation that do not change the maths: the
sparse layers are nn.EmbeddingBag (sum, per-sample counts) plus a bias,
with sparse gradients for SGD (the same update as a dense one); each batch
encodes its 64 positive documents once and takes the negatives' vectors
from them, where netc encodes the [64, 5] document texts (the same texts).
The LSTM is a hand-written peephole cell (ops/rnn.rs's equations; nn.LSTM
with --no-peephole).

Run: /work/venv/bin/python tools/dssm/torch_twins.py --model dssm --epochs 1 [--limit N]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import metrics  # noqa: E402
import texthash as th  # noqa: E402

M64 = (1 << 64) - 1
HIDDEN = 300
SEMANTIC = 128


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def read_pairs(path: str, limit: int | None):
    qs, ds = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if limit is not None and len(qs) >= limit:
                break
            q, d = line.rstrip("\n").split("\t")[:2]
            qs.append(q)
            ds.append(d)
    return qs, ds


def read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def splitmix64(x: int) -> int:
    z = (x + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def sample_negatives(docs: list[str], k: int, seed: int) -> list[list[int]]:
    """docs/text.md's rule (runtime/src/text/tsv.rs `sample_negatives`)."""
    out = []
    for i, d in enumerate(docs):
        cand = [j for j in range(len(docs)) if j != i and docs[j] != d]
        m = len(cand)
        if m < k:
            raise ValueError(f"example {i}: {m} candidates for {k} negatives")
        state = splitmix64((seed ^ i) & M64)
        for s in range(k):
            u = splitmix64((state + s) & M64)
            j = s + ((u * (m - s)) >> 64)
            cand[s], cand[j] = cand[j], cand[s]
        out.append(cand[:k])
    return out


class Encoder:
    """Text -> model input, cached per text (each training text is encoded
    once: the hashing is pure Python)."""

    def __init__(self, model: str, words: int):
        self.model, self.words = model, words
        self.cache: dict[str, object] = {}

    def one(self, text: str):
        hit = self.cache.get(text)
        if hit is not None:
            return hit
        if self.model == "dssm":
            bag = th.text_bag(text)
            keys = sorted(bag)
            enc = (np.array(keys, dtype=np.int64), np.array([bag[k] for k in keys], np.float32))
        elif self.model == "cnn_dssm":
            ws = th.words(text)[: self.words]
            bags = []
            for w in ws:
                ids, counts = np.unique(np.array(th.word_trigram_ids(w), dtype=np.int64),
                                        return_counts=True)
                bags.append((ids, counts.astype(np.float32)))
            bags += [(np.zeros(0, np.int64), np.zeros(0, np.float32))] * (self.words - len(ws))
            enc = bags
        else:
            enc = th.word_id_rows([text], self.words)[0]
        self.cache[text] = enc
        return enc

    def batch(self, texts: list[str]):
        """Tensors for a tower: (flat ids, bag offsets, counts) for the bag
        models (one bag per text, or per word), or ids [B, words]."""
        encs = [self.one(t) for t in texts]
        if self.model == "lstm_dssm":
            return (torch.from_numpy(np.stack(encs)),)
        bags = encs if self.model == "dssm" else [b for e in encs for b in e]
        lens = np.array([len(ids) for ids, _ in bags], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
        ids = np.concatenate([ids for ids, _ in bags]) if lens.sum() else np.zeros(0, np.int64)
        vals = np.concatenate([v for _, v in bags]) if lens.sum() else np.zeros(0, np.float32)
        return torch.from_numpy(ids), torch.from_numpy(offsets), torch.from_numpy(vals)


# ---------------------------------------------------------------------------
# Towers
# ---------------------------------------------------------------------------


def fan_in_uniform_(t: torch.Tensor, fan_in: int):
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        t.uniform_(-bound, bound)


class SparseLinear(nn.Module):
    """nn.Linear(V, out) on CSR bags: EmbeddingBag (sum of count * row) +
    bias; the weight is nn.Linear's transposed, initialised the same way."""

    def __init__(self, vocab: int, out: int, sparse: bool):
        super().__init__()
        self.bag = nn.EmbeddingBag(vocab, out, mode="sum", sparse=sparse)
        self.bias = nn.Parameter(torch.zeros(out))
        fan_in_uniform_(self.bag.weight, vocab)
        fan_in_uniform_(self.bias, vocab)

    def forward(self, ids, offsets, values):
        return self.bag(ids, offsets, per_sample_weights=values) + self.bias


class DssmTower(nn.Module):
    def __init__(self, trigrams: int, sparse: bool):
        super().__init__()
        self.net0 = SparseLinear(trigrams, HIDDEN, sparse)
        self.net2 = nn.Linear(HIDDEN, HIDDEN)
        self.net4 = nn.Linear(HIDDEN, SEMANTIC)

    def forward(self, ids, offsets, values):
        h = torch.tanh(self.net0(ids, offsets, values))
        return torch.tanh(self.net4(torch.tanh(self.net2(h))))


class CnnDssmTower(nn.Module):
    """Conv1d(V, 300, 3, padding 1) over per-word bags: one EmbeddingBag
    row [3 * 300] per trigram holds the three taps; output position t sums
    tap j of word t + j - 1."""

    def __init__(self, trigrams: int, words: int, sparse: bool):
        super().__init__()
        self.words = words
        self.taps = nn.EmbeddingBag(trigrams, 3 * HIDDEN, mode="sum", sparse=sparse)
        self.bias = nn.Parameter(torch.zeros(HIDDEN))
        fan_in_uniform_(self.taps.weight, 3 * trigrams)  # nn.Conv1d's fan-in: V * k
        fan_in_uniform_(self.bias, 3 * trigrams)
        self.fc = nn.Linear(HIDDEN, SEMANTIC)

    def forward(self, ids, offsets, values):
        taps = self.taps(ids, offsets, per_sample_weights=values)
        taps = taps.view(-1, self.words, 3, HIDDEN)
        bias = self.bias
        # Zero padding of one word on each side.
        padded = F.pad(taps, (0, 0, 0, 0, 1, 1))
        h = padded[:, 0:-2, 0] + padded[:, 1:-1, 1] + padded[:, 2:, 2] + bias
        return torch.tanh(self.fc(torch.tanh(h).amax(dim=1)))


class PeepholeLstm(nn.Module):
    """ops/rnn.rs's LSTM (gate order i, f, g, o), last hidden state."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size
        self.weight_ih_l0 = nn.Parameter(torch.empty(4 * size, size))
        self.weight_hh_l0 = nn.Parameter(torch.empty(4 * size, size))
        self.bias_ih_l0 = nn.Parameter(torch.empty(4 * size))
        self.bias_hh_l0 = nn.Parameter(torch.empty(4 * size))
        self.weight_ci = nn.Parameter(torch.empty(size))
        self.weight_cf = nn.Parameter(torch.empty(size))
        self.weight_co = nn.Parameter(torch.empty(size))
        for p in self.parameters():
            fan_in_uniform_(p, size)

    def forward(self, x):
        b, steps, _ = x.shape
        h = x.new_zeros(b, self.size)
        c = x.new_zeros(b, self.size)
        xw = x @ self.weight_ih_l0.T + (self.bias_ih_l0 + self.bias_hh_l0)
        for t in range(steps):
            gi, gf, gg, go = (xw[:, t] + h @ self.weight_hh_l0.T).chunk(4, dim=1)
            i = torch.sigmoid(gi + self.weight_ci * c)
            f = torch.sigmoid(gf + self.weight_cf * c)
            c = f * c + i * torch.tanh(gg)
            h = torch.sigmoid(go + self.weight_co * c) * torch.tanh(c)
        return h


class LstmDssmTower(nn.Module):
    def __init__(self, vocab: int, peephole: bool):
        super().__init__()
        self.emb = nn.Embedding(vocab, SEMANTIC)  # normal(0, 1), as netc
        self.peephole = peephole
        self.lstm = PeepholeLstm(SEMANTIC) if peephole else nn.LSTM(SEMANTIC, SEMANTIC,
                                                                   batch_first=True)

    def forward(self, ids):
        x = self.emb(ids)
        if self.peephole:
            return self.lstm(x)
        _, (h, _) = self.lstm(x)
        return h[0]


def build(args):
    if args.model == "dssm":
        make = lambda: DssmTower(args.trigrams, sparse=True)  # noqa: E731
    elif args.model == "cnn_dssm":
        make = lambda: CnnDssmTower(args.trigrams, args.words, sparse=True)  # noqa: E731
    else:
        make = lambda: LstmDssmTower(args.vocab, args.peephole)  # noqa: E731
    return nn.ModuleDict({"q_tower": make(), "d_tower": make()})


def optimizer(args, model):
    if args.model == "lstm_dssm":
        return torch.optim.Adam(model.parameters(), lr=args.lr or 1e-3)
    return torch.optim.SGD(model.parameters(), lr=args.lr or 0.1)


# ---------------------------------------------------------------------------
# Training and evaluation
# ---------------------------------------------------------------------------


def train(args, model, enc_q: Encoder, enc_d: Encoder, qs, ds):
    opt = optimizer(args, model)
    rng = np.random.default_rng(args.seed)
    step, start = 0, time.time()
    for epoch in range(args.epochs):
        order = rng.permutation(len(qs))
        total, count = 0.0, 0
        for lo in range(0, len(order) - args.batch + 1, args.batch):
            idx = order[lo : lo + args.batch]
            bq = [qs[i] for i in idx]
            bd = [ds[i] for i in idx]
            neg = torch.tensor(sample_negatives(bd, args.negatives, args.seed + step))
            yq = model["q_tower"](*enc_q.batch(bq))
            yd = model["d_tower"](*enc_d.batch(bd))
            cols = torch.cat([torch.arange(len(idx))[:, None], neg], dim=1)  # [B, 1 + k]
            d = yd[cols]
            cos = (yq[:, None] * d).sum(-1) / (
                yq.norm(dim=-1).clamp_min(1e-8)[:, None] * d.norm(dim=-1).clamp_min(1e-8))
            loss = -F.log_softmax(args.gamma * cos, dim=1)[:, 0].mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, count, step = total + loss.item(), count + 1, step + 1
            if step % args.log_every == 0:
                print(f"  epoch {epoch + 1} step {step}: mean loss {total / count:.4f} "
                      f"({time.time() - start:.0f} s)", flush=True)
        print(f"epoch {epoch + 1}: {count} steps, mean loss {total / max(count, 1):.4f}, "
              f"{time.time() - start:.0f} s", flush=True)
    return time.time() - start


@torch.no_grad()
def encode(tower, enc: Encoder, texts: list[str], batch: int = 256) -> torch.Tensor:
    out = [tower(*enc.batch(texts[lo : lo + batch])) for lo in range(0, len(texts), batch)]
    return torch.cat(out)


@torch.no_grad()
def evaluate(args, model, enc_q, enc_d):
    queries = read_lines(os.path.join(args.corpus, "test_queries.txt"))
    docs = read_lines(os.path.join(args.corpus, "test_docs.txt"))
    qrels = metrics.read_qrels(os.path.join(args.corpus, "test_qrels.tsv"))
    model.eval()
    yq = F.normalize(encode(model["q_tower"], enc_q, queries), dim=-1, eps=1e-8)
    yd = F.normalize(encode(model["d_tower"], enc_d, docs), dim=-1, eps=1e-8)
    ranking, ranks = [], []
    for lo in range(0, len(queries), 512):
        scores = (args.gamma * (yq[lo : lo + 512] @ yd.T)).double().numpy()
        sub = {i - lo: d for i, d in qrels.items() if lo <= i < lo + 512}
        ranks += metrics.ranks_from_scores(scores, sub)
        for e in metrics.top_hits(scores, args.top):
            e["query"] += lo
            ranking.append(e)
    return ranking, metrics.metrics_from_ranks(ranks)


def main():
    ap = argparse.ArgumentParser(description="PyTorch twins of models/dssm.net")
    ap.add_argument("--model", choices=["dssm", "cnn_dssm", "lstm_dssm"], default="dssm")
    ap.add_argument("--corpus", default="/tmp/dssm-corpus")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--limit", type=int, help="train on the first N pairs of train.tsv only")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--negatives", type=int, default=4)
    ap.add_argument("--gamma", type=float, default=10.0)
    ap.add_argument("--lr", type=float, help="default: the train section's (0.1 / 1e-3)")
    ap.add_argument("--trigrams", type=int, default=th.TRIGRAMS)
    ap.add_argument("--vocab", type=int, default=th.VOCAB)
    ap.add_argument("--words", type=int, default=20, help="words per text (cnn, lstm)")
    ap.add_argument("--no-peephole", dest="peephole", action="store_false",
                    help="lstm_dssm with nn.LSTM (netc's peephole = false)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--top", type=int, default=100, help="hits per query in the JSON")
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--out", help="ranking JSON (default <corpus>/<model>.json)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    t0 = time.time()
    qs, ds = read_pairs(os.path.join(args.corpus, "train.tsv"), args.limit)
    # Queries and documents are encoded alike; two caches keep them apart.
    enc_q, enc_d = Encoder(args.model, args.words), Encoder(args.model, args.words)
    model = build(args)
    params = sum(p.numel() for p in model.parameters())
    print(f"{args.model}: {params} parameters, {len(qs)} training pairs, batch {args.batch}, "
          f"{args.negatives} negatives, {args.epochs} epoch(s), {args.threads} thread(s)")
    seconds = train(args, model, enc_q, enc_d, qs, ds)
    ranking, m = evaluate(args, model, enc_q, enc_d)
    out = args.out or os.path.join(args.corpus, f"{args.model}.json")
    with open(out, "w", encoding="utf-8") as f:
        json.dump(ranking, f)
    print(f"training {seconds:.0f} s (hashing included), total {time.time() - t0:.0f} s; "
          f"top {args.top} hits -> {out}")
    print(metrics.report(f"{args.model} full ranking", m))


if __name__ == "__main__":
    main()
