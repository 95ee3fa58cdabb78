//! The text pipeline (normalisation, trigrams, hashing, vocabulary order,
//! CSR bags, word-id matrices) against an independent Python reference:
//! `tests/fixtures/text/make_text_reference.py` writes the expected
//! tensors into a safetensors file (the texts in its metadata) and the
//! expected trigram vocabulary file.

use netc_runtime::text::bags::{text_bags, word_bags, SparseBags, WordIdMatrix};
use netc_runtime::text::vocab::{BuildOptions, TrigramIds, WordIds};
use netc_runtime::weights::read_safetensors_meta;
use netc_runtime::Tensor;
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/text")
        .join(name)
}

fn tensor<'a>(all: &'a [(String, Tensor)], name: &str) -> &'a Tensor {
    &all.iter().find(|(n, _)| n == name).expect(name).1
}

#[test]
fn bags_and_ids_match_the_python_reference() {
    let (tensors, meta) =
        read_safetensors_meta(&fixture("text_reference.safetensors")).expect("fixture");
    let texts: Vec<&str> = meta["texts"].split('\n').collect();
    assert_eq!(texts.len(), 9);
    let hashed = TrigramIds::hashed_default();

    let q = text_bags(&texts, &hashed);
    let want = SparseBags::from_tensors("q", 30_000, &tensors).expect("valid q");
    assert_eq!(q.bags, want);
    // The file's tensors are already canonical: compare them raw too.
    for (name, t) in q.bags.to_tensors("q") {
        assert_eq!(&t, tensor(&tensors, &name), "{name}");
    }

    let w = word_bags(&texts, &hashed, 4);
    assert_eq!(w.bags.rows(), 36);
    assert_eq!(
        w.bags,
        SparseBags::from_tensors("w", 30_000, &tensors).expect("valid w")
    );

    let ids = WordIdMatrix::build(&texts, &WordIds::hashed(1000).expect("dim"), 4);
    let (_, t) = ids.to_tensor("ids", &[9]).expect("shape");
    assert_eq!(&t, tensor(&tensors, "ids"));
}

#[test]
fn trigram_vocabulary_matches_the_python_reference() {
    let (_, meta) = read_safetensors_meta(&fixture("text_reference.safetensors")).expect("fixture");
    let texts: Vec<&str> = meta["texts"].split('\n').collect();
    let built = TrigramIds::build(texts, BuildOptions::default()).expect("vocabulary");
    let loaded = TrigramIds::load(&fixture("trigrams.txt")).expect("reference file");
    assert_eq!(built, loaded);
    assert_eq!(built.dim(), 83);
}
