//! Test support for the kernels' tests: gradients by central finite
//! differences (the backward kernels' independent reference) and the
//! error measure the norm tests compare with.

/// `∂loss/∂v_i` for every element of `v` by central differences with a
/// step of 0.01, divided by the f32 difference actually taken (so values
/// far from zero lose no accuracy to the rounding of `v ± h`).
pub fn central(v: &[f32], loss: impl Fn(&[f32]) -> f64) -> Vec<f64> {
    let mut moved = v.to_vec();
    (0..v.len())
        .map(|i| {
            let (up, down) = (v[i] + 1e-2, v[i] - 1e-2);
            moved[i] = up;
            let lu = loss(&moved);
            moved[i] = down;
            let ld = loss(&moved);
            moved[i] = v[i];
            (lu - ld) / (f64::from(up) - f64::from(down))
        })
        .collect()
}

/// Largest error relative to the reference's largest magnitude.
pub fn max_rel(got: &[f32], want: &[f64]) -> f64 {
    let scale = want.iter().fold(1e-30_f64, |m, v| m.max(v.abs()));
    got.iter()
        .zip(want)
        .map(|(g, w)| (f64::from(*g) - w).abs() / scale)
        .fold(0.0, f64::max)
}
