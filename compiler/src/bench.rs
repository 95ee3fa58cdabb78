//! Latency measurement of a compiled model, the engine of `netc bench`:
//! warm-up calls, then timed calls until both a minimum count and a
//! minimum wall time are reached; reports the median, min and max latency,
//! samples per second and achieved GFLOP/s (a multiply-add counts 2).
//! Training steps (`netc bench --train`) are timed the same way.

use crate::ir::Graph;
use crate::session::{bind_symbols, CompiledModel, RunError};
use crate::train::trainer::Trainer;
use netc_runtime::train::data::DataSet;
use netc_runtime::Tensor;
use std::time::{Duration, Instant};

/// How long and how often to measure.
#[derive(Clone, Copy, Debug)]
pub struct BenchConfig {
    /// Untimed calls before measuring.
    pub warmup: usize,
    /// At least this many timed calls.
    pub min_reps: usize,
    /// Keep calling until at least this much time was spent measuring.
    pub min_time: Duration,
}

impl Default for BenchConfig {
    fn default() -> BenchConfig {
        BenchConfig {
            warmup: 2,
            min_reps: 5,
            min_time: Duration::from_secs(2),
        }
    }
}

/// The measured latency of one configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Timing {
    /// Timed calls.
    pub reps: usize,
    /// Median latency in milliseconds.
    pub median_ms: f64,
    /// Fastest call in milliseconds.
    pub min_ms: f64,
    /// Slowest call in milliseconds.
    pub max_ms: f64,
    /// Every timed call in milliseconds, in call order.
    pub times_ms: Vec<f64>,
}

impl Timing {
    /// Samples per second at the median latency for a batch of `batch`.
    pub fn samples_per_s(&self, batch: usize) -> f64 {
        batch as f64 / (self.median_ms / 1e3)
    }
}

/// Times `model` on `inputs` as `config` says.
pub fn measure(
    model: &mut CompiledModel,
    inputs: &[(&str, &Tensor)],
    config: BenchConfig,
) -> Result<Timing, RunError> {
    time_calls(config, || model.run(inputs).map(|_| ()))
}

/// Times training steps of `trainer` on the first `batch` samples of
/// `data` (forward, loss, backward and optimizer update, as `netc train`
/// runs them) as `config` says.
pub fn measure_training(
    trainer: &mut Trainer,
    data: &DataSet,
    batch: usize,
    config: BenchConfig,
) -> Result<Timing, RunError> {
    let indices: Vec<usize> = (0..batch.min(data.len())).collect();
    time_calls(config, || {
        trainer.step(data, &indices, &mut |_| {}).map(|_| ())
    })
}

/// Calls `f` `config.warmup` times untimed, then times calls until both
/// `config.min_reps` calls and `config.min_time` are reached.
pub fn time_calls(
    config: BenchConfig,
    mut f: impl FnMut() -> Result<(), RunError>,
) -> Result<Timing, RunError> {
    for _ in 0..config.warmup {
        f()?;
    }
    let mut times: Vec<f64> = Vec::new();
    let start = Instant::now();
    while times.len() < config.min_reps.max(1) || start.elapsed() < config.min_time {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let in_order = times.clone();
    times.sort_by(f64::total_cmp);
    let mid = times.len() / 2;
    let median_ms = if times.len() % 2 == 1 {
        times[mid]
    } else {
        (times[mid - 1] + times[mid]) / 2.0
    };
    Ok(Timing {
        reps: times.len(),
        median_ms,
        min_ms: times[0],
        max_ms: times[times.len() - 1],
        times_ms: in_order,
    })
}

/// The forward FLOPs of `g` for inputs of the given shapes (the symbols
/// they bind, e.g. the batch, are substituted in every node's count).
pub fn forward_flops(g: &Graph, input_shapes: &[(&str, &[usize])]) -> Result<f64, RunError> {
    let bound = bind_symbols(g, input_shapes)?;
    Ok(g.nodes
        .iter()
        .filter(|n| !n.train_only)
        .map(|n| {
            n.flops
                .eval(&|s| bound.get(&s).copied())
                .as_known()
                .unwrap_or(0)
        })
        .sum::<i64>() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::CompileOptions;
    use crate::testing::program;

    #[test]
    fn measures_the_requested_calls_and_orders_the_statistics() {
        let g = program("model m() { input x: f32[N, 64]  output y = relu(x) * 2.0 }").unwrap();
        let x = Tensor::from_f32(&[4, 64], vec![1.0; 256]).unwrap();
        let mut m = CompiledModel::new(g, &[("x", x.shape())], CompileOptions::default()).unwrap();
        let config = BenchConfig {
            warmup: 1,
            min_reps: 7,
            min_time: Duration::ZERO,
        };
        let t = measure(&mut m, &[("x", &x)], config).unwrap();
        assert_eq!(t.reps, 7);
        assert!(t.min_ms <= t.median_ms && t.median_ms <= t.max_ms, "{t:?}");
        assert!(t.samples_per_s(4) > 0.0);
    }

    #[test]
    fn forward_flops_scale_with_the_batch() {
        // linear 8 -> 3 with bias: 2·8·3 multiply-add FLOPs (+ bias) per row.
        let g = program("model m() { input x: f32[N, 8]  output y = x |> fc: linear(3) }").unwrap();
        let one = forward_flops(&g, &[("x", &[1, 8])]).unwrap();
        let five = forward_flops(&g, &[("x", &[5, 8])]).unwrap();
        assert!(one >= 48.0, "{one}");
        assert_eq!(five, 5.0 * one);
    }
}
