//! `resize_nearest` and `upsample_nearest` compiled against the reference
//! interpreter: 1, 2 and 3 spatial dims, up and down, channels first and
//! last, 1 and 2 threads; and `resize_nearest_grad` likewise, channels
//! first.

use super::super::oracle::{assert_close, check, compiled, data, make_nhwc, reference, to_nhwc};
use super::super::train_oracle::{append, check_rel};
use crate::ir::Op;
use crate::testing::model;

#[test]
fn resizes_equal_the_interpreter() {
    for (shape, call) in [
        (vec![2, 3, 4, 5], "resize_nearest(x, size = [7, 3])"),
        (vec![1, 2, 9, 6], "resize_nearest(x, size = [4, 11])"),
        (vec![2, 3, 4, 5], "upsample_nearest(x, scale = [2, 3])"),
        (vec![3, 2, 7], "resize_nearest(x, size = 10)"),
        (vec![1, 2, 3, 4, 5], "upsample_nearest(x)"),
        (vec![1, 2, 5, 4, 3], "resize_nearest(x, size = [2, 7, 3])"),
    ] {
        let dims = format!("{shape:?}");
        let g = model(&format!("input x: f32{dims}\noutput y = {call}")).unwrap();
        let x = data(shape.iter().product(), 0.2, 5.0);
        check(&g, &[], &[("x", shape.clone(), x.clone())], 0.0);
        if let [b, c, h, w] = shape[..] {
            let want = reference(&g, &[("x", shape.clone(), x.clone())], &[]);
            let out = g.ty(g.outputs[0].1).known_shape().unwrap();
            let (oh, ow) = (out[2] as usize, out[3] as usize);
            let mut nhwc = g.clone();
            let name = nhwc.nodes[0].op.name;
            make_nhwc(&mut nhwc, name);
            let xl = to_nhwc(&x, b, c, h, w);
            let wl = to_nhwc(&want[0], b, c, oh, ow);
            for threads in [1, 2] {
                let got = compiled(&nhwc, &[], &[&xl], &[], threads);
                assert_close(&got[0], &wl, 0.0, &format!("nhwc {call}"));
            }
        }
    }
}

#[test]
fn resize_grads_equal_the_interpreter() {
    for (x_shape, dy_shape) in [
        (vec![2, 3, 4, 5], vec![2, 3, 8, 10]),
        (vec![1, 2, 4, 5], vec![1, 2, 7, 3]),
        (vec![3, 2, 7], vec![3, 2, 10]),
        (vec![1, 2, 2, 3, 2], vec![1, 2, 4, 5, 3]),
    ] {
        let (xd, dyd) = (format!("{x_shape:?}"), format!("{dy_shape:?}"));
        let mut g = model(&format!("input dy: f32{dyd}\noutput y = relu(dy)")).unwrap();
        let dy = g.inputs[0].1;
        append(
            &mut g,
            Op::new("resize_nearest_grad"),
            vec![dy],
            std::slice::from_ref(&x_shape),
        );
        let n: usize = dy_shape.iter().product();
        let inputs = vec![("dy", dy_shape.clone(), data(n, 0.6, 1.0))];
        check_rel(&g, &inputs, 1e-6, &format!("{dyd} back to {xd}"));
    }
}
