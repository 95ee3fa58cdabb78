//! The reference interpreter's value: a row-major f64 array. Every dtype is
//! held as f64 (integers and booleans exactly), which keeps the reference
//! semantics simple and precise enough for finite-difference checks.

/// A dense row-major array of f64.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Elements, row-major.
    pub data: Vec<f64>,
}

impl Array {
    /// An array of zeros.
    pub fn zeros(shape: &[usize]) -> Array {
        Array {
            shape: shape.to_vec(),
            data: vec![0.0; shape.iter().product()],
        }
    }

    /// An array from data; panics in tests if the sizes disagree.
    pub fn new(shape: &[usize], data: Vec<f64>) -> Array {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "array data does not fit its shape"
        );
        Array {
            shape: shape.to_vec(),
            data,
        }
    }

    /// Row-major strides.
    pub fn strides(&self) -> Vec<usize> {
        strides(&self.shape)
    }
}

/// Row-major strides of a shape.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// The multi-index of flat position `flat` in `shape`.
pub fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for i in (0..shape.len()).rev() {
        if shape[i] > 0 {
            idx[i] = flat % shape[i];
            flat /= shape[i];
        }
    }
    idx
}

/// The flat position of the broadcast source element for output index `idx`.
pub fn broadcast_index(idx: &[usize], src_shape: &[usize]) -> usize {
    let offset = idx.len() - src_shape.len();
    let st = strides(src_shape);
    src_shape
        .iter()
        .enumerate()
        .map(|(i, &d)| if d == 1 { 0 } else { idx[i + offset] * st[i] })
        .sum()
}
