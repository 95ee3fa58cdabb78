//! Resizing feature maps: nearest-neighbour upsampling by an integer factor
//! (`F.interpolate(x, scale_factor = s, mode = "nearest")`). Data movement
//! only: 0 FLOPs.

use super::util::{at_least, expect_float};
use super::Builtin;
use crate::elab::{CallCtx, OpResult};
use crate::ir::{Attr, Dim, Op, TensorType};

/// The family's built-ins.
pub const BUILTINS: &[Builtin] = &[Builtin {
    name: "upsample_nearest",
    build: upsample_nearest,
}];

/// `upsample_nearest(x, scale = 2)`: `[N, C, H, W] → [N, C, s·H, s·W]`
/// (also `[N, C, L]` and `[N, C, D, H, W]`: every dim after the channels is
/// scaled); each input element is repeated `s` times along each spatial dim.
fn upsample_nearest(c: &mut CallCtx) -> OpResult {
    let x = c.tensor(Some(0), "x")?;
    let scale = c.int(Some(1), "scale", Some(2))?;
    at_least(c, Some(1), "scale", &[scale], 1)?;
    let t = expect_float(c, x)?;
    if !(3..=5).contains(&t.rank()) {
        return Err(c.shape_error(
            format!(
                "`upsample_nearest` expects [N, C, H, W] (or [N, C, L] / [N, C, D, H, W]), got {}",
                c.type_text(&t)
            ),
            &[("the input", x)],
            "spatial dims follow the batch and channel dims",
        ));
    }
    let mut shape = t.shape[..2].to_vec();
    for d in &t.shape[2..] {
        match d.as_known() {
            Some(n) if n.saturating_mul(scale) > crate::elab::MAX_DIM => {
                return Err(c.shape_error(
                    format!(
                        "`upsample_nearest` by {scale} of {} exceeds the largest size 2^40",
                        c.type_text(&t)
                    ),
                    &[("the input", x)],
                    "use a smaller scale",
                ));
            }
            _ => shape.push(d.scale(scale)),
        }
    }
    let out = TensorType::new(t.dtype, shape);
    let op = Op::new("upsample_nearest").with("scale", Attr::Int(scale));
    c.emit1(op, &[x], out, Dim::known(0))
}

#[cfg(test)]
mod tests {
    use crate::elab::elaborate;
    use crate::program::Program;
    use std::path::Path;

    fn run(text: &str) -> Result<Vec<String>, String> {
        let (p, diags) = Program::from_text(Path::new("t.net"), text);
        assert!(diags.is_empty(), "{diags:?}");
        match elaborate(&p, p.model(None).expect("one model"), &[]) {
            Ok(g) => Ok(g
                .outputs
                .iter()
                .map(|(_, v)| g.type_text(g.ty(*v)))
                .collect()),
            Err(ds) => Err(ds
                .into_iter()
                .map(|d| format!("{} | {}", d.message, d.hint.unwrap_or_default()))
                .collect::<Vec<_>>()
                .join("\n")),
        }
    }

    #[test]
    fn upsample_shapes() {
        let out = run("model m { input x: f32[N, 8, 5, 7]  input y: f32[N, 3, 4]
            output a = upsample_nearest(x)
            output b = x |> upsample_nearest(scale = 3)
            output c = upsample_nearest(y, 4) }")
        .unwrap();
        assert_eq!(
            out,
            ["f32[N, 8, 10, 14]", "f32[N, 8, 15, 21]", "f32[N, 3, 16]"]
        );
    }

    #[test]
    fn upsample_errors() {
        let e = run("model m { input x: f32[N, 8]  output a = upsample_nearest(x) }").unwrap_err();
        assert!(e.contains("expects [N, C, H, W]"), "{e}");
        let e = run("model m { input x: f32[N, 8, 4, 4]  output a = upsample_nearest(x, 0) }")
            .unwrap_err();
        assert!(e.contains("at least 1"), "{e}");
        let e = run("model m { input x: i64[N, 8, 4, 4]  output a = upsample_nearest(x) }")
            .unwrap_err();
        assert!(e.contains("dense float tensor"), "{e}");
    }
}
