"""Ranking metrics for one relevant document per query: NDCG@1, NDCG@10,
MRR, and recall@100, from netc's ranking JSON

    [{"query": 0, "hits": [[doc_line, score], ...]}, ...]

(hits best first) and the qrels file `query_line<TAB>doc_line`.

With a single relevant document of gain 1 at rank r (1-based), the ideal
DCG is 1, so NDCG@k = 1 / log2(r + 1) if r <= k else 0, and the reciprocal
rank is 1 / r. A query whose relevant document is not among its hits
counts 0 (MRR is exact when the hits rank every document, otherwise it is
MRR@len(hits)); a query missing from the JSON counts 0 as well.

Run: python tools/dssm/metrics.py ranking.json /tmp/dssm-corpus/test_qrels.tsv
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np


def read_qrels(path: str) -> dict[int, int]:
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                q, d = line.split("\t")
                out[int(q)] = int(d)
    return out


def metrics_from_ranks(ranks) -> dict[str, float]:
    """`ranks`: the 1-based rank of each query's relevant document, or 0
    when it was not ranked."""
    r = np.asarray(ranks, dtype=np.float64)
    found = r > 0
    safe = np.where(found, r, 1.0)
    gain = np.where(found, 1.0 / np.log2(safe + 1.0), 0.0)
    return {
        "queries": int(len(r)),
        "ndcg@1": float(np.mean(np.where(found & (r <= 1), gain, 0.0))),
        "ndcg@10": float(np.mean(np.where(found & (r <= 10), gain, 0.0))),
        "mrr": float(np.mean(np.where(found, 1.0 / safe, 0.0))),
        "recall@100": float(np.mean(found & (r <= 100))),
    }


def ranks_from_ranking(ranking: list, qrels: dict[int, int]) -> list[int]:
    by_query = {int(e["query"]): e["hits"] for e in ranking}
    ranks = []
    for q, rel in sorted(qrels.items()):
        rank = 0
        for pos, (doc, _score) in enumerate(by_query.get(q, [])):
            if int(doc) == rel:
                rank = pos + 1
                break
        ranks.append(rank)
    return ranks


def ranks_from_scores(scores: np.ndarray, qrels: dict[int, int]) -> list[int]:
    """Ranks in the full ranking of a [queries, docs] score matrix, sorted
    by descending score, ties by ascending doc line (as `top_hits`)."""
    ranks = []
    for q, rel in sorted(qrels.items()):
        s = scores[q]
        ahead = np.count_nonzero(s > s[rel]) + np.count_nonzero(s[:rel] == s[rel])
        ranks.append(int(ahead) + 1)
    return ranks


def top_hits(scores: np.ndarray, k: int) -> list:
    """The ranking JSON of a score matrix: the best `k` docs per query
    (descending score, ties by doc line)."""
    out = []
    for q in range(scores.shape[0]):
        s = scores[q]
        order = np.lexsort((np.arange(len(s)), -s))[:k]
        out.append({"query": q, "hits": [[int(d), float(s[d])] for d in order]})
    return out


def report(name: str, m: dict[str, float]) -> str:
    return (f"{name}: {m['queries']} queries  NDCG@1 {m['ndcg@1']:.4f}  "
            f"NDCG@10 {m['ndcg@10']:.4f}  MRR {m['mrr']:.4f}  recall@100 {m['recall@100']:.4f}")


def main():
    ap = argparse.ArgumentParser(description="NDCG@1, NDCG@10, MRR of a ranking JSON")
    ap.add_argument("ranking")
    ap.add_argument("qrels")
    args = ap.parse_args()
    with open(args.ranking, encoding="utf-8") as f:
        ranking = json.load(f)
    qrels = read_qrels(args.qrels)
    depth = min((len(e["hits"]) for e in ranking), default=0)
    m = metrics_from_ranks(ranks_from_ranking(ranking, qrels))
    print(report(args.ranking, m))
    print(json.dumps(m, sort_keys=True))
    if ranking and depth < max(qrels.values()) + 1:
        print(f"(hits hold {depth}+ docs per query: MRR is MRR@{depth})")
    assert all(math.isfinite(v) for v in m.values())


if __name__ == "__main__":
    main()
