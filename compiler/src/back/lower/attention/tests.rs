//! `attention`, `timestep_embedding` and `layer_norm` compiled (f32)
//! against the reference interpreter (f64), on 1 and 2 threads:
//! self-attention, cross-attention through projections with a scale,
//! embeddings of integer timesteps both ways round, layer norms over one
//! and two trailing dims with and without the affine terms.

use super::super::oracle::{check, data};
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
