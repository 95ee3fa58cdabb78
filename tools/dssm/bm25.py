"""Okapi BM25 baseline: ranks every test document for every test query and
writes netc's ranking JSON (the best --top hits per query), then prints the
metrics of the full ranking (tools/dssm/metrics.py).

    score(q, d) = sum over query tokens t (repeats counted) of
                  idf(t) * tf(t, d) * (k1 + 1) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl))
    idf(t)      = ln(1 + (D - df(t) + 0.5) / (df(t) + 0.5))     (Lucene's, never negative)

k1 = 1.2, b = 0.75; D, df, avgdl over the test documents; tokens are
lower-cased alphanumeric words (docs/text.md's words). Scores are computed
as a sparse product, --chunk queries at a time.

Run: /work/venv/bin/python tools/dssm/bm25.py [--corpus /tmp/dssm-corpus] [--out bm25.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import metrics  # noqa: E402
from texthash import words  # noqa: E402


def read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def count_matrix(texts, vocab: dict[str, int], grow: bool) -> sp.csr_matrix:
    """Token counts [len(texts), |vocab|]; unknown tokens are added to
    `vocab` when `grow`, else dropped."""
    indptr, indices, data = [0], [], []
    for t in texts:
        c = collections.Counter()
        for w in words(t):
            j = vocab.setdefault(w, len(vocab)) if grow else vocab.get(w)
            if j is not None:
                c[j] += 1
        indices += list(c.keys())
        data += list(c.values())
        indptr.append(len(indices))
    return sp.csr_matrix((np.array(data, dtype=np.float64), np.array(indices, dtype=np.int64),
                          np.array(indptr, dtype=np.int64)), shape=(len(texts), len(vocab)))


def bm25_weights(tf: sp.csr_matrix, k1: float, b: float) -> sp.csr_matrix:
    """The per (doc, term) BM25 weight matrix, idf included."""
    n_docs = tf.shape[0]
    dl = np.asarray(tf.sum(axis=1)).ravel()
    avgdl = dl.mean()
    df = np.bincount(tf.indices, minlength=tf.shape[1]).astype(np.float64)
    idf = np.log1p((n_docs - df + 0.5) / (df + 0.5))
    w = tf.tocoo()
    norm = k1 * (1.0 - b + b * dl[w.row] / avgdl)
    vals = idf[w.col] * w.data * (k1 + 1.0) / (w.data + norm)
    return sp.csr_matrix((vals, (w.row, w.col)), shape=tf.shape)


def main():
    ap = argparse.ArgumentParser(description="Okapi BM25 on the test split")
    ap.add_argument("--corpus", default="/tmp/dssm-corpus")
    ap.add_argument("--out", default="/tmp/dssm-corpus/bm25.json", help="ranking JSON")
    ap.add_argument("--top", type=int, default=100, help="hits per query in the JSON")
    ap.add_argument("--k1", type=float, default=1.2)
    ap.add_argument("--b", type=float, default=0.75)
    ap.add_argument("--chunk", type=int, default=512)
    args = ap.parse_args()

    start = time.time()
    queries = read_lines(os.path.join(args.corpus, "test_queries.txt"))
    docs = read_lines(os.path.join(args.corpus, "test_docs.txt"))
    qrels = metrics.read_qrels(os.path.join(args.corpus, "test_qrels.tsv"))
    vocab: dict[str, int] = {}
    tf = count_matrix(docs, vocab, grow=True)
    w_t = bm25_weights(tf, args.k1, args.b).T.tocsr()  # [terms, docs]
    q = count_matrix(queries, vocab, grow=False)
    ranking, ranks = [], []
    for lo in range(0, len(queries), args.chunk):
        scores = (q[lo : lo + args.chunk] @ w_t).toarray()
        sub = {i - lo: d for i, d in qrels.items() if lo <= i < lo + args.chunk}
        ranks += metrics.ranks_from_scores(scores, sub)
        for e in metrics.top_hits(scores, args.top):
            e["query"] += lo
            ranking.append(e)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(ranking, f)
    m = metrics.metrics_from_ranks(ranks)
    print(f"bm25 (k1 {args.k1}, b {args.b}): {len(queries)} queries x {len(docs)} docs, "
          f"{len(vocab)} terms, {time.time() - start:.1f} s; top {args.top} hits -> {args.out}")
    print(metrics.report("bm25 full ranking", m))


if __name__ == "__main__":
    main()
