//! Packing kernels against a direct transcription of the panel layouts
//! (the conv definition's index arithmetic), over strides, padding,
//! dilation, groups and odd sizes, for whole batches and split ranges.

use super::*;
use crate::back::jit::Jit;

/// The panel of image `img` by definition: element (row, col) of the
/// layout in the module docs, 0 in the padding.
fn reference(p: &Im2col, x: &[f32], img: usize) -> Vec<f32> {
    let at = |c: usize, ih: i64, iw: i64| -> f32 {
        if ih < 0 || iw < 0 || ih >= p.h as i64 || iw >= p.w as i64 {
            return 0.0;
        }
        let (ih, iw) = (ih as usize, iw as usize);
        match p.layout {
            Layout::Nchw => x[((img * p.c + c) * p.h + ih) * p.w + iw],
            Layout::Nhwc => x[((img * p.h + ih) * p.w + iw) * p.c + c],
        }
    };
    let pos = |o: usize, k: usize, a: usize| {
        (o * p.stride[a] + k * p.dilation[a]) as i64 - p.pad[a] as i64
    };
    let mut col = Vec::with_capacity(p.panel_len());
    match p.layout {
        Layout::Nchw => {
            for c in 0..p.c {
                for i in 0..p.kh {
                    for j in 0..p.kw {
                        for oh in 0..p.oh {
                            for ow in 0..p.ow {
                                col.push(at(c, pos(oh, i, 0), pos(ow, j, 1)));
                            }
                        }
                    }
                }
            }
        }
        Layout::Nhwc => {
            let cg = p.c / p.groups;
            for oh in 0..p.oh {
                for ow in 0..p.ow {
                    for g in 0..p.groups {
                        for i in 0..p.kh {
                            for j in 0..p.kw {
                                for c in 0..cg {
                                    col.push(at(g * cg + c, pos(oh, i, 0), pos(ow, j, 1)));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    col
}

/// (channels, groups, [h, w], [kh, kw], stride, pad, dilation)
type Shape = (usize, usize, [usize; 2], [usize; 2], usize, usize, usize);

fn case(layout: Layout, (c, groups, hw, k, s, pad, d): Shape) -> Im2col {
    let out = |a: usize| (hw[a] + 2 * pad - d * (k[a] - 1) - 1) / s + 1;
    Im2col {
        flip: false,
        layout,
        c,
        groups,
        h: hw[0],
        w: hw[1],
        kh: k[0],
        kw: k[1],
        stride: [s, s],
        pad: [pad, pad],
        dilation: [d, d],
        oh: out(0),
        ow: out(1),
    }
}

#[test]
fn panels_match_the_layout_definition() {
    let mut jit = Jit::new().unwrap();
    let mut cases = Vec::new();
    for layout in [Layout::Nchw, Layout::Nhwc] {
        for &(c, groups, hw, k, s, pad, d) in &[
            (3, 1, [7, 9], [3, 3], 1, 1, 1),
            (3, 1, [7, 9], [3, 3], 2, 0, 1),
            (4, 2, [6, 5], [3, 2], 1, 3, 2),
            (5, 5, [9, 9], [3, 3], 2, 1, 1),
            (3, 1, [12, 11], [7, 7], 2, 3, 1),
            (9, 1, [1, 13], [1, 3], 1, 1, 1),
            (6, 3, [4, 4], [1, 1], 1, 0, 1),
            (2, 1, [3, 3], [3, 3], 3, 2, 2),
        ] {
            cases.push(case(layout, (c, groups, hw, k, s, pad, d)));
        }
    }
    for p in cases {
        let id = jit.kernel(&p).unwrap();
        let code = jit.code(id).unwrap();
        let images = 2;
        let x: Vec<f32> = (0..p.input_len(images))
            .map(|i| (i as f32 * 0.37).sin() + 1.5)
            .collect();
        let ins = [x.as_ptr()];
        let u = p.units();
        for img in 0..images {
            let want = reference(&p, &x, img);
            // Whole range, then two pieces split unevenly.
            for cut in [u, u / 3] {
                let mut got = vec![f32::NAN; p.panel_len()];
                for (lo, hi) in [(0, cut), (cut, u)] {
                    // SAFETY: `x` holds `images` images; `got` is one
                    // image's panel, written relative to its start.
                    unsafe {
                        code(
                            (img * u + lo) as i64,
                            (img * u + hi) as i64,
                            ins.as_ptr(),
                            got.as_mut_ptr(),
                        )
                    };
                }
                assert_eq!(got, want, "{p:?} image {img} cut {cut}");
            }
        }
    }
}
