//! The layout row kernels against index formulas written out per element.

use super::*;

fn ramp(n: usize) -> Vec<f32> {
    (0..n).map(|i| i as f32 * 0.5 - 3.0).collect()
}

#[test]
fn channels_last_and_back_match_the_index_formula() {
    // Sizes not multiples of the tile, several images, split rows.
    let (n, c, p) = (3, 37, 45);
    let x = ramp(n * c * p);
    let k = ChannelsLast {
        c,
        p,
        channels_last: true,
    };
    let mut y = vec![0.0; n * c * p];
    // Rows 1.. only (a thread's piece), then row 0.
    k.rows(1, &[&x], &mut y[c * p..]).unwrap();
    k.rows(0, &[&x], &mut y[..c * p]).unwrap();
    for img in 0..n {
        for ch in 0..c {
            for q in 0..p {
                assert_eq!(
                    y[(img * p + q) * c + ch],
                    x[(img * c + ch) * p + q],
                    "image {img} channel {ch} pixel {q}"
                );
            }
        }
    }
    let back = ChannelsLast {
        channels_last: false,
        ..k
    };
    let mut z = vec![0.0; n * c * p];
    back.rows(0, &[&y], &mut z).unwrap();
    assert_eq!(z, x);
    assert!(k.rows(0, &[&x[..10]], &mut y).is_err());
}

#[test]
fn conv_weight_rows_match_the_index_formula() {
    let (oc, c, kh, kw) = (5, 3, 2, 3);
    let w = ramp(oc * c * kh * kw);
    let at = |o: usize, ch: usize, ty: usize, tx: usize| w[((o * c + ch) * kh + ty) * kw + tx];
    let fwd = ConvWeightRows {
        oc,
        c,
        kh,
        kw,
        flip: false,
    };
    let mut b = vec![0.0; fwd.depth() * fwd.width()];
    fwd.rows(0, &[&w], &mut b).unwrap();
    for ty in 0..kh {
        for tx in 0..kw {
            for ch in 0..c {
                for o in 0..oc {
                    let r = (ty * kw + tx) * c + ch;
                    assert_eq!(b[r * oc + o], at(o, ch, ty, tx));
                }
            }
        }
    }
    let flip = ConvWeightRows { flip: true, ..fwd };
    let mut b = vec![0.0; flip.depth() * flip.width()];
    // Two pieces, as two threads would run them.
    let half = flip.depth() / 2 * c;
    flip.rows(0, &[&w], &mut b[..half]).unwrap();
    flip.rows(flip.depth() / 2, &[&w], &mut b[half..]).unwrap();
    for ty in 0..kh {
        for tx in 0..kw {
            for o in 0..oc {
                for ch in 0..c {
                    let r = (ty * kw + tx) * oc + o;
                    assert_eq!(b[r * c + ch], at(o, ch, kh - 1 - ty, kw - 1 - tx));
                }
            }
        }
    }
}
