//! Parameter initialisation schemes (what PyTorch does by default for each
//! layer: the compiler records the scheme per parameter, the runtime draws
//! the numbers from a seeded generator).

use crate::{DType, Storage, Tensor};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

/// How a parameter is initialised when no weights are loaded.
#[derive(Clone, Debug, PartialEq)]
pub enum Init {
    /// Every element equal to a constant.
    Const(f64),
    /// Uniform in `[low, high)`.
    Uniform {
        /// Lower bound.
        low: f64,
        /// Upper bound.
        high: f64,
    },
    /// Normal with mean and standard deviation.
    Normal {
        /// Mean.
        mean: f64,
        /// Standard deviation.
        std: f64,
    },
}

/// A seeded source of initial values: the same seed gives the same weights.
/// (The numbers differ from PyTorch's generator; the distributions are the same.)
pub struct Initializer {
    rng: rand::rngs::StdRng,
}

impl Initializer {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Initializer {
        Initializer {
            rng: rand::rngs::StdRng::seed_from_u64(seed),
        }
    }

    /// A tensor of `dtype` and `shape` drawn from `init`. Integer tensors
    /// take the constant rounded (random schemes make no sense for them and
    /// give zeros).
    pub fn tensor(&mut self, dtype: DType, shape: &[usize], init: &Init) -> Tensor {
        let n: usize = shape.iter().product();
        let values: Vec<f64> = match init {
            Init::Const(c) => vec![*c; n],
            Init::Uniform { low, high } if high > low => {
                (0..n).map(|_| self.rng.random_range(*low..*high)).collect()
            }
            Init::Uniform { low, .. } => vec![*low; n],
            Init::Normal { mean, std } => match Normal::new(*mean, *std) {
                Ok(dist) => (0..n).map(|_| dist.sample(&mut self.rng)).collect(),
                Err(_) => vec![*mean; n],
            },
        };
        let storage = match dtype {
            DType::F32 => Storage::F32(values.iter().map(|&v| v as f32).collect()),
            DType::F64 => Storage::F64(values),
            DType::I32 => Storage::I32(values.iter().map(|&v| v.round() as i32).collect()),
            DType::I64 => Storage::I64(values.iter().map(|&v| v.round() as i64).collect()),
            DType::U8 => Storage::U8(
                values
                    .iter()
                    .map(|&v| v.round().clamp(0.0, 255.0) as u8)
                    .collect(),
            ),
            DType::Bool => Storage::Bool(values.iter().map(|&v| u8::from(v != 0.0)).collect()),
        };
        Tensor::new(shape, storage).expect("one value per element")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_stays_in_bounds_and_is_seeded() {
        let init = Init::Uniform {
            low: -0.5,
            high: 0.5,
        };
        let a = Initializer::new(7).tensor(DType::F32, &[1000], &init);
        let b = Initializer::new(7).tensor(DType::F32, &[1000], &init);
        assert_eq!(a, b);
        let v = a.as_f32().unwrap();
        assert!(v.iter().all(|x| (-0.5..0.5).contains(x)));
        let mean: f32 = v.iter().sum::<f32>() / 1000.0;
        assert!(mean.abs() < 0.05, "mean {mean}");
    }

    #[test]
    fn normal_has_the_requested_moments() {
        let t = Initializer::new(1).tensor(
            DType::F64,
            &[20000],
            &Init::Normal {
                mean: 1.0,
                std: 2.0,
            },
        );
        let Storage::F64(v) = t.storage() else {
            panic!("f64")
        };
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!(
            (mean - 1.0).abs() < 0.05 && (var.sqrt() - 2.0).abs() < 0.05,
            "{mean} {var}"
        );
    }
}
