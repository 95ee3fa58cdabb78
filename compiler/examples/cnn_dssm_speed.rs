//! Per-layer times of the CNN-DSSM at the reference sizes (30000
//! trigrams, 20 words, 8 trigrams per word, 1 + 4 documents): the
//! `cnn_dssm` forward of models/dssm.net, and one training step of its two
//! towers (loss `sum(y · r)`: the scoring's backward aside) with the
//! `amax` and `bag_conv1d` gradients. Inputs are random CSR bags.
//!
//! ```text
//! cargo run --release --example cnn_dssm_speed -- [BATCH [THREADS]]
//! ```

use netc::grad::training_graph;
use netc::options::CompileOptions;
use netc::session::{load_model, CompiledModel, LayerTime};
use netc_runtime::{Storage, Tensor};
use std::error::Error;
use std::path::PathBuf;

const TRIGRAMS: usize = 30000;
const WORDS: usize = 20;
const PER_WORD: usize = 8;
const DOCS: usize = 5;

/// The towers of `cnn_dssm` with a loss the back end can differentiate.
const TOWERS: &str = "
block tower(x) {
    h = x |> conv: bag_conv1d(300, 3, pad = 1, nnz = 8) |> tanh
    return amax(h, dim = -2) |> fc: linear(128) |> tanh
}
model towers() {
    input q: sparse f32[N, 20, 30000]
    input docs: sparse f32[N, 5, 20, 30000]
    output yq = q_tower: tower(q)
    output yd = d_tower: tower(docs)
}
train towers {
    label rq: f32[N, 128]
    label rd: f32[N, 5, 128]
    loss = sum(yq * rq) + sum(yd * rd)
    optimizer = sgd(lr = 0.1)
}
";

/// `name.indices`, `name.offsets`, `name.values` of `bags` bags of
/// [`PER_WORD`] ids each.
fn csr(name: &str, bags: usize, seed: u64) -> Vec<(String, Tensor)> {
    let mut s = seed | 1;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let ids: Vec<i64> = (0..bags * PER_WORD)
        .map(|_| (next() % TRIGRAMS as u64) as i64)
        .collect();
    let offsets: Vec<i64> = (0..=bags).map(|b| (b * PER_WORD) as i64).collect();
    let n = ids.len();
    vec![
        (
            format!("{name}.indices"),
            Tensor::new(&[n], Storage::I64(ids)).expect("indices"),
        ),
        (
            format!("{name}.offsets"),
            Tensor::new(&[bags + 1], Storage::I64(offsets)).expect("offsets"),
        ),
        (
            format!("{name}.values"),
            Tensor::from_f32(&[n], vec![1.0; n]).expect("values"),
        ),
    ]
}

fn report(what: &str, times: &[LayerTime]) {
    let total: f64 = times.iter().map(|t| t.median_ms).sum();
    println!("{what}: {total:.2} ms per run");
    let mut sorted: Vec<&LayerTime> = times.iter().collect();
    sorted.sort_by(|a, b| b.median_ms.total_cmp(&a.median_ms));
    for t in sorted.iter().take(8) {
        println!("  {:8.2} ms  {} ({})", t.median_ms, t.layer, t.op);
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let batch: usize = args.next().map_or(Ok(64), |a| a.parse())?;
    let threads: usize = args.next().map_or(Ok(2), |a| a.parse())?;
    let options = CompileOptions {
        threads,
        ..Default::default()
    };
    let mut tensors = csr("q", batch * WORDS, 7);
    tensors.extend(csr("docs", batch * DOCS * WORDS, 11));
    let q = [batch, WORDS, TRIGRAMS];
    let d = [batch, DOCS, WORDS, TRIGRAMS];

    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/dssm.net");
    let g = load_model(&file, Some("cnn_dssm"), &[])?;
    let mut m = CompiledModel::new(g, &[("q", &q), ("docs", &d)], options)?;
    m.init_weights(0)?;
    let given: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    report(
        &format!("cnn_dssm forward, batch {batch}, {threads} threads"),
        &m.profile(&given, 5)?,
    );

    let path = std::env::temp_dir().join("cnn_dssm_towers.net");
    std::fs::write(&path, TOWERS)?;
    let g = load_model(&path, Some("towers"), &[])?;
    let t = training_graph(&g)?.graph;
    let rq = Tensor::from_f32(&[batch, 128], vec![0.01; batch * 128]).ok_or("rq")?;
    let rd = Tensor::from_f32(&[batch, DOCS, 128], vec![0.01; batch * DOCS * 128]).ok_or("rd")?;
    let shapes: [(&str, &[usize]); 4] = [
        ("q", &q),
        ("docs", &d),
        ("rq", &[batch, 128]),
        ("rd", &[batch, DOCS, 128]),
    ];
    let mut m = CompiledModel::new(t, &shapes, options)?;
    m.init_weights(0)?;
    let mut given: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    given.push(("rq", &rq));
    given.push(("rd", &rd));
    report(
        &format!("towers' training step, batch {batch}, {threads} threads"),
        &m.profile(&given, 3)?,
    );
    Ok(())
}
