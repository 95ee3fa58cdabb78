//! `attention`, `timestep_embedding` and `layer_norm` compiled (f32)
//! against the reference interpreter (f64), on 1 and 2 threads:
//! self-attention, cross-attention through projections with a scale,
//! embeddings of integer timesteps both ways round, layer norms over one
//! and two trailing dims with and without the affine terms; and the
//! attention's gradient.

use super::super::oracle::{check, data};
use super::super::train_oracle::{append, check_rel};
use crate::ir::{Attr, Op};
use crate::testing::model;

#[test]
fn transformer_ops_equal_the_interpreter() {
    let g = model(
        "input x: f32[2, 6, 8]\n\
         input ctx: f32[2, 4, 12]\n\
         input t: i64[3]\n\
         output self_attn = attention(x, x, x, 2)\n\
         output cross = attention(x |> q: linear(8), ctx |> k: linear(8), ctx |> v: linear(6), 2, scale = 0.3)\n\
         output temb = timestep_embedding(t, 9, flip_sin_to_cos = false, shift = 1)\n\
         output temb_flip = timestep_embedding(t, 8, scale = 2)\n\
         output ln = x |> ln: layer_norm\n\
         output ln_plain = x |> ln2: layer_norm([6, 8], affine = false)",
    )
    .unwrap();
    check(
        &g,
        &[],
        &[
            ("x", vec![2, 6, 8], data(96, 0.4, 3.0)),
            ("ctx", vec![2, 4, 12], data(96, 1.7, 2.0)),
            ("t", vec![3], vec![0.0, 17.0, 999.0]),
        ],
        2e-5,
    );
}

/// `attention_grad` (training plans) against the interpreter's
/// definition, itself checked by finite differences: self-attention with
/// 2 heads, and cross-attention with a value width other than the keys'
/// and more keys than queries; the UNet's cross-attention (heads of 8
/// channels over 77 context tokens, the AVX-512 kernels' unrolled width).
#[test]
fn attention_grads_equal_the_interpreter() {
    for (l, s, c, cv, heads) in [(6, 6, 8, 8, 2), (5, 9, 8, 4, 4), (21, 77, 64, 64, 8)] {
        let mut g = model(&format!(
            "input dout: f32[2, {l}, {cv}]\ninput q: f32[2, {l}, {c}]\n\
             input k: f32[2, {s}, {c}]\ninput v: f32[2, {s}, {cv}]\noutput y = relu(q)"
        ))
        .unwrap();
        let ins: Vec<_> = g.inputs.iter().map(|(_, v)| *v).collect();
        let op = Op::new("attention_grad")
            .with("heads", Attr::Int(heads))
            .with("scale", Attr::Float(0.4));
        append(
            &mut g,
            op,
            ins,
            &[vec![2, l, c], vec![2, s, c], vec![2, s, cv]],
        );
        let inputs = vec![
            ("dout", vec![2, l, cv], data(2 * l * cv, 0.5, 1.0)),
            ("q", vec![2, l, c], data(2 * l * c, 1.5, 1.5)),
            ("k", vec![2, s, c], data(2 * s * c, 2.5, 1.5)),
            ("v", vec![2, s, cv], data(2 * s * cv, 3.5, 1.0)),
        ];
        check_rel(&g, &inputs, 1e-5, &format!("L {l} S {s} C {c} Cv {cv}"));
    }
}
