"""A query -> document corpus from the Debian package descriptions:
query = a package's one-line synopsis, document = its long description.

Sources: `apt-cache dumpavail` (the package records: name, source package,
Description-md5, and the long description when the records carry it) and
the Translation-en indexes of an apt lists directory (the long descriptions;
Debian's Packages files ship only the synopsis, and a Docker image sets
`Acquire::Languages "none"`, so fetch them into a private directory, which
leaves the system's apt state alone):

    mkdir -p /tmp/aptlists/partial /tmp/aptcache/archives/partial
    apt-get update -o Acquire::Languages=en \\
        -o Dir::State::Lists=/tmp/aptlists -o Dir::Cache=/tmp/aptcache

Rules:
- document = the continuation lines of the description, each stripped, the
  paragraph marks (" .") dropped, joined by single spaces; tabs and control
  characters become spaces. Case is kept (netc lower-cases when hashing).
- drop packages whose document has fewer than --min-words words (default 8);
- deduplicate: packages are visited in name order and a package whose
  synopsis or whose document was already taken is dropped (-dbgsym, -doc,
  library families often share one text: the first name wins);
- split by the source package (all binaries of one source land in the same
  split, so near-identical siblings cannot leak from train into test):
  fnv1a64(source) mod 10 -> 0..7 train, 8 valid, 9 test. Stable across apt
  updates and machines.

Writes under --out (default /tmp/dssm-corpus):
    train.tsv, valid.tsv   query<TAB>document, one pair a line
    test_queries.txt       one query a line
    test_docs.txt          one document a line, in a seeded shuffled order
    test_qrels.tsv         query_line<TAB>doc_line (0-based), one a query
and prints counts and sizes. --sample FILE also writes a small TSV sample
of the test split (for committed tests).

Run: /work/venv/bin/python tools/dssm/make_corpus.py [--lists /tmp/aptlists]
"""

from __future__ import annotations

import argparse
import glob
import os
import random
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from texthash import fnv1a64, words  # noqa: E402

CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def records(text: str):
    """The deb822 paragraphs of `text` as lists of (field, value lines)."""
    for para in text.split("\n\n"):
        fields, cur = [], None
        for line in para.split("\n"):
            if not line:
                continue
            if line[0] in " \t" and cur is not None:
                cur[1].append(line)
            else:
                key, _, value = line.partition(":")
                cur = (key, [value.strip()])
                fields.append(cur)
        if fields:
            yield fields


def clean(s: str) -> str:
    return " ".join(CONTROL.sub(" ", s).split())


def long_text(lines: list[str]) -> str:
    """Continuation lines -> one line: ' .' paragraph marks dropped."""
    kept = [ln.strip() for ln in lines if ln.strip() != "."]
    return clean(" ".join(kept))


def read_translations(lists: str) -> dict[str, tuple[str, str]]:
    """Description-md5 -> (synopsis, document) from every Translation-en
    index under `lists` (compressed ones read with apt-helper cat-file)."""
    out: dict[str, tuple[str, str]] = {}
    paths = sorted(glob.glob(os.path.join(lists, "*_i18n_Translation-en*")))
    for path in paths:
        if path.endswith((".lz4", ".gz", ".xz", ".bz2", ".zst")):
            text = subprocess.run(["/usr/lib/apt/apt-helper", "cat-file", path], check=True,
                                  capture_output=True).stdout.decode("utf-8", "replace")
        else:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        for fields in records(text):
            d = dict((k, v) for k, v in fields)
            if "Description-md5" in d and "Description-en" in d:
                lines = d["Description-en"]
                out[d["Description-md5"][0]] = (clean(lines[0]), long_text(lines[1:]))
    return out, paths


def packages(dumpavail: str, translations: dict):
    """(name, source, synopsis, document) of every package record."""
    for fields in records(dumpavail):
        d = dict((k, v) for k, v in fields)
        if "Package" not in d or "Description" not in d:
            continue
        name = d["Package"][0]
        source = d.get("Source", [name])[0].split(" ")[0] or name
        desc = d["Description"]
        synopsis, document = clean(desc[0]), long_text(desc[1:])
        if not document and "Description-md5" in d:
            synopsis2, document = translations.get(d["Description-md5"][0], ("", ""))
            synopsis = synopsis or synopsis2
        yield name, source, synopsis, document


def split_of(source: str) -> str:
    b = fnv1a64(source) % 10
    return "train" if b < 8 else ("valid" if b == 8 else "test")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="/tmp/dssm-corpus")
    ap.add_argument("--lists", default="/tmp/aptlists",
                    help="apt lists directory holding Translation-en (see the module doc)")
    ap.add_argument("--dumpavail", help="a saved `apt-cache dumpavail` (default: run it)")
    ap.add_argument("--min-words", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0, help="shuffle of test_docs.txt")
    ap.add_argument("--sample", help="also write this many test pairs to FILE: N:FILE")
    args = ap.parse_args()

    if args.dumpavail:
        with open(args.dumpavail, encoding="utf-8", errors="replace") as f:
            dump = f.read()
    else:
        dump = subprocess.run(["apt-cache", "dumpavail"], check=True,
                              capture_output=True).stdout.decode("utf-8", "replace")
    translations, paths = read_translations(args.lists)
    print(f"translations: {len(translations)} descriptions from {len(paths)} files in {args.lists}")

    rows = sorted(set(packages(dump, translations)))
    seen_q, seen_d = set(), set()
    stats = {"records": len(rows), "no_document": 0, "short": 0, "dup_query": 0, "dup_doc": 0}
    splits: dict[str, list[tuple[str, str]]] = {"train": [], "valid": [], "test": []}
    for name, source, q, d in rows:
        if not d:
            stats["no_document"] += 1
            continue
        if len(words(d)) < args.min_words or not words(q):
            stats["short"] += 1
            continue
        if q in seen_q:
            stats["dup_query"] += 1
            continue
        if d in seen_d:
            stats["dup_doc"] += 1
            continue
        seen_q.add(q)
        seen_d.add(d)
        splits[split_of(source)].append((q, d))
    if not any(splits.values()):
        sys.exit("no pairs: are the Translation-en files there? (see the module doc)")

    os.makedirs(args.out, exist_ok=True)
    for name in ("train", "valid"):
        with open(os.path.join(args.out, f"{name}.tsv"), "w", encoding="utf-8", newline="\n") as f:
            f.writelines(f"{q}\t{d}\n" for q, d in splits[name])
    test = splits["test"]
    order = list(range(len(test)))
    random.Random(args.seed).shuffle(order)  # order[j] = the pair whose document is line j
    line_of = {pair: j for j, pair in enumerate(order)}
    with open(os.path.join(args.out, "test_queries.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.writelines(f"{q}\n" for q, _ in test)
    with open(os.path.join(args.out, "test_docs.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.writelines(f"{test[i][1]}\n" for i in order)
    with open(os.path.join(args.out, "test_qrels.tsv"), "w", encoding="utf-8", newline="\n") as f:
        f.writelines(f"{i}\t{line_of[i]}\n" for i in range(len(test)))

    print(", ".join(f"{k} {v}" for k, v in stats.items()))
    for name in ("train", "valid", "test"):
        pairs = splits[name]
        qw = sum(len(words(q)) for q, _ in pairs) / max(1, len(pairs))
        dw = sum(len(words(d)) for _, d in pairs) / max(1, len(pairs))
        print(f"{name}: {len(pairs)} pairs, {qw:.1f} query words, {dw:.1f} document words on average")
    for f in sorted(os.listdir(args.out)):
        print(f"  {os.path.join(args.out, f)}: {os.path.getsize(os.path.join(args.out, f))} bytes")

    if args.sample:
        count, path = args.sample.split(":", 1)
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.writelines(f"{q}\t{d}\n" for q, d in test[: int(count)])
        print(f"sample: {count} test pairs, {os.path.getsize(path)} bytes in {path}")


if __name__ == "__main__":
    main()
