//! A counter-based weight generator shared with the fixture script
//! `tests/fixtures/make_model_reference.py`: large weights are never
//! committed, both sides regenerate them bit for bit from
//! `(seed, parameter path, element index)`.
//!
//! Definition (docs/testing.md repeats it; the Python script implements the
//! same arithmetic with numpy `uint64`):
//!
//! ```text
//! fnv1a64(s)    = FNV-1a, 64-bit, over the UTF-8 bytes of s
//!                 (offset 0xcbf29ce484222325, prime 0x100000001b3)
//! splitmix64(x) = z = x + 0x9e3779b97f4a7c15
//!                 z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
//!                 z = (z ^ (z >> 27)) * 0x94d049bb133111eb
//!                 z ^ (z >> 31)                      (all mod 2^64)
//! u(i)          = (splitmix64((seed ^ fnv1a64(path)) + i) >> 40) / 2^24   in [0, 1)
//! value(i)      = lo + (hi - lo) * u(i)    in f64, then rounded to the dtype
//! ```
//!
//! `i` is the row-major element index. The range `[lo, hi)` depends on the
//! tensor's kind, read from its path and shape ([`range`]): every value is
//! exact in f64 and the same in both implementations.

use crate::{DType, Storage, Tensor};

/// FNV-1a (64-bit) of the UTF-8 bytes of `s`.
pub fn fnv1a64(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The SplitMix64 output for state `x` (one step of Steele, Lea and
/// Flood's generator started at `x`).
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The uniform number in `[0, 1)` of element `index` of tensor `path`: 24
/// random bits, so it is exact in f32 and in f64.
pub fn unit(seed: u64, path: &str, index: u64) -> f64 {
    let key = seed ^ fnv1a64(path);
    unit_of_key(key, index)
}

fn unit_of_key(key: u64, index: u64) -> f64 {
    (splitmix64(key.wrapping_add(index)) >> 40) as f64 / (1u64 << 24) as f64
}

/// The value range `[lo, hi)` of a tensor from its path and shape, or
/// `None` for a tensor that is all zeros:
///
/// | kind                                   | range                              |
/// |----------------------------------------|------------------------------------|
/// | `*num_batches_tracked`                 | zeros                              |
/// | `*running_mean`                        | [-0.2, 0.2)                        |
/// | `*running_var`                         | [0.5, 1.5)                         |
/// | `*weight`, rank 1 (norm scale)         | [0.5, 1.5)                         |
/// | `*weight`, rank >= 2 (conv, linear)    | ±sqrt(6 / fan_in), fan_in = numel / `shape[0]` |
/// | `*bias`                                | [-0.1, 0.1)                        |
/// | anything else                          | [-1, 1)                            |
///
/// Weights use the He-uniform bound rather than PyTorch's default
/// 1/sqrt(fan_in) so that deep ReLU stacks keep their signal: with the
/// default scale the activations shrink ~2.4x per layer and the outputs of
/// VGGish would be mostly its biases, which would test little.
pub fn range(path: &str, shape: &[usize]) -> Option<(f64, f64)> {
    let leaf = path.rsplit('.').next().unwrap_or(path);
    match leaf {
        "num_batches_tracked" => None,
        "running_mean" => Some((-0.2, 0.2)),
        "running_var" => Some((0.5, 1.5)),
        "weight" if shape.len() == 1 => Some((0.5, 1.5)),
        "weight" if shape.len() >= 2 => {
            let fan_in: usize = shape[1..].iter().product();
            let bound = (6.0 / fan_in.max(1) as f64).sqrt();
            Some((-bound, bound))
        }
        "bias" => Some((-0.1, 0.1)),
        _ => Some((-1.0, 1.0)),
    }
}

/// Element `index` of tensor `path` of `shape`, in f64 (before rounding
/// to the tensor's dtype): `lo + (hi - lo) * unit(seed, path, index)` with
/// [`range`]'s bounds, or 0.
pub fn value(seed: u64, path: &str, shape: &[usize], index: u64) -> f64 {
    match range(path, shape) {
        Some((lo, hi)) => lo + (hi - lo) * unit(seed, path, index),
        None => 0.0,
    }
}

/// The tensor `path` of `dtype` and `shape` generated from `seed`: element
/// `i` is [`value`]`(seed, path, shape, i)` rounded to `dtype` (integer
/// tensors round half away from zero).
pub fn tensor(seed: u64, path: &str, dtype: DType, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let key = seed ^ fnv1a64(path);
    let bounds = range(path, shape);
    let value = |i: usize| match bounds {
        Some((lo, hi)) => lo + (hi - lo) * unit_of_key(key, i as u64),
        None => 0.0,
    };
    let storage = match dtype {
        DType::F32 => Storage::F32((0..n).map(|i| value(i) as f32).collect()),
        DType::F64 => Storage::F64((0..n).map(value).collect()),
        DType::I32 => Storage::I32((0..n).map(|i| value(i).round() as i32).collect()),
        DType::I64 => Storage::I64((0..n).map(|i| value(i).round() as i64).collect()),
        DType::U8 => Storage::U8(
            (0..n)
                .map(|i| value(i).round().clamp(0.0, 255.0) as u8)
                .collect(),
        ),
        DType::Bool => Storage::Bool((0..n).map(|i| u8::from(value(i) != 0.0)).collect()),
    };
    Tensor::new(shape, storage).expect("one value per element")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published test vectors of both functions.
    #[test]
    fn matches_reference_vectors() {
        assert_eq!(fnv1a64(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64("foobar"), 0x8594_4171_f739_67e8);
        // SplitMix64 seeded with 0 (state advances by the gamma each step).
        assert_eq!(splitmix64(0), 0xe220_a839_7b1d_cdaf);
        assert_eq!(splitmix64(0x9e37_79b9_7f4a_7c15), 0x6e78_9e6a_a1b9_65f4);
    }

    #[test]
    fn values_stay_in_their_range() {
        let t = tensor(3, "conv.weight", DType::F32, &[8, 6, 1, 1]);
        let bound = 1.0f32;
        assert!(t.as_f32().unwrap().iter().all(|v| v.abs() < bound));
        let t = tensor(3, "bn.running_var", DType::F32, &[100]);
        assert!(t.as_f32().unwrap().iter().all(|v| (0.5..1.5).contains(v)));
        let t = tensor(3, "bn.num_batches_tracked", DType::I64, &[]);
        assert_eq!(t.storage(), &Storage::I64(vec![0]));
    }
}
