//! Nearest-neighbour resizing of `[N, C, *spatial]` tensors (1, 2 or 3
//! spatial dims), as `F.interpolate(mode = "nearest")`: `upsample_nearest`
//! by an integer factor (`nn.Upsample(scale_factor = 2)`, the UNet's
//! upsampler) and `resize_nearest` to an explicit size (torchvision's FPN
//! top-down path, `F.interpolate(x, size = feat_shape, mode = "nearest")`).
//! Output element `o` along a dim reads input element
//! `min(floor(o * float32(in / out)), in - 1)`, as PyTorch computes it (the
//! scale is rounded to f32 first, which differs from exact `o * in / out`
//! for some sizes).

use super::util::at_least;
use super::Builtin;
use crate::diag::Diagnostic;
use crate::elab::{CallCtx, OpResult};
use crate::ir::{Attr, Dim, Op, TensorType, ValueId};

/// The family's built-ins.
pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "upsample_nearest",
        build: upsample_nearest,
    },
    Builtin {
        name: "resize_nearest",
        build: resize_nearest,
    },
];

/// Checks `x` is a dense `[N, C, *spatial]` tensor with 1..=3 known spatial
/// dims; returns its type and the spatial sizes.
fn spatial(c: &mut CallCtx, x: ValueId) -> Result<(TensorType, Vec<i64>), Diagnostic> {
    let t = c.ty(x);
    if t.sparse || !(3..=5).contains(&t.rank()) {
        return Err(c.shape_error(
            format!(
                "`{}` expects a dense [N, C, spatial...] tensor with 1 to 3 spatial dims, got {}",
                c.op_name(),
                c.type_text(&t)
            ),
            &[("the input", x)],
            "resize images as [N, C, H, W] (or [N, C, L] / [N, C, D, H, W])",
        ));
    }
    let mut sizes = Vec::new();
    for a in 2..t.rank() {
        sizes.push(c.known(x, a, "spatial size")?);
    }
    Ok((t, sizes))
}

fn emit_resize(c: &mut CallCtx, x: ValueId, t: TensorType, out_sizes: Vec<i64>) -> OpResult {
    let mut shape = t.shape[..2].to_vec();
    shape.extend(out_sizes.iter().map(|&s| Dim::known(s)));
    let op = Op::new(c.op_name()).with("size", Attr::Ints(out_sizes));
    // Data movement only.
    c.emit1(op, &[x], TensorType::new(t.dtype, shape), Dim::known(0))
}

/// `upsample_nearest(x, scale = 2)`: every spatial dim times `scale` (an
/// integer, or one integer per spatial dim); each input element is repeated.
fn upsample_nearest(c: &mut CallCtx) -> OpResult {
    let x = c.tensor(Some(0), "x")?;
    let (t, sizes) = spatial(c, x)?;
    let scale = c.ints(Some(1), "scale", sizes.len(), Some(2))?;
    at_least(c, Some(1), "scale", &scale, 1)?;
    let out: Vec<i64> = sizes
        .iter()
        .zip(&scale)
        .map(|(s, k)| s.saturating_mul(*k))
        .collect();
    emit_resize(c, x, t, out)
}

/// `resize_nearest(x, size = [h, w])`: resizes the spatial dims to `size`
/// (one integer per spatial dim; a single integer means all of them).
fn resize_nearest(c: &mut CallCtx) -> OpResult {
    let x = c.tensor(Some(0), "x")?;
    let (t, sizes) = spatial(c, x)?;
    let size = c.ints(Some(1), "size", sizes.len(), None)?;
    at_least(c, Some(1), "size", &size, 1)?;
    emit_resize(c, x, t, size)
}

#[cfg(test)]
mod tests {

    fn outputs(text: &str) -> Result<Vec<String>, String> {
        crate::testing::program(text).map(|g| crate::testing::output_types(&g))
    }

    #[test]
    fn upsample_doubles_spatial_dims() {
        let r = outputs(
            "model m { input x: f32[N, 8, 5, 7]\n output y = upsample_nearest(x)\n output z = upsample_nearest(x, scale = [1, 3]) }",
        );
        assert_eq!(
            r.unwrap(),
            vec![
                "f32[N, 8, 10, 14]".to_string(),
                "f32[N, 8, 5, 21]".to_string()
            ]
        );
    }

    #[test]
    fn resize_to_size() {
        let r = outputs(
            "model m { input x: f32[2, 8, 4, 4]\n input f: f32[2, 16, 7, 9]\n output y = resize_nearest(x, size = [f.shape[2], f.shape[3]]) }",
        );
        assert_eq!(r.unwrap(), vec!["f32[2, 8, 7, 9]".to_string()]);
    }

    #[test]
    fn errors() {
        let e = outputs("model m { input x: f32[N, 8] \n output y = upsample_nearest(x) }")
            .unwrap_err();
        assert!(e.contains("expects a dense [N, C, spatial...]"), "{e}");
        let e = outputs(
            "model m { input x: f32[N, 8, 4, 4] \n output y = resize_nearest(x, size = [2, 2, 2]) }",
        )
        .unwrap_err();
        assert!(e.contains("needs 2 values"), "{e}");
        let e =
            outputs("model m { input x: f32[N, 8, 4, 4] \n output y = upsample_nearest(x, 0) }")
                .unwrap_err();
        assert!(e.contains("at least 1"), "{e}");
    }
}
