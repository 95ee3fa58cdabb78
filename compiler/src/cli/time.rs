//! `netc time`: per-layer forward time of a compiled model at one batch
//! size, like `caffe time`: seeded random inputs and default-initialised
//! weights, one warm-up run, then the median of `--reps` profiled runs per
//! layer (a fused group counts as its head layer). Prints the layers by
//! time, most expensive first, with each one's share of the total and its
//! achieved GFLOP/s, then the total.

use super::bench::{input_shapes, model_inputs, random_data, shape_refs};
use super::options::{CompileFlags, ModelArgs};
use super::Failure;
use netc::session::{CompiledModel, LayerTime};
use netc::train::trainer::{TrainConfig, Trainer};
use netc_runtime::Tensor;

/// The arguments of `netc time`.
#[derive(clap::Args)]
pub struct TimeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The batch size (the input symbol `N`).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Profiled runs after the warm-up; each layer's median is reported.
    #[arg(long, default_value_t = 10)]
    reps: usize,
    /// Print only the K most expensive layers (the total still covers all).
    #[arg(long, value_name = "K")]
    top: Option<usize>,
    /// Time a training step (forward, loss, backward; not the optimizer
    /// update) of the model's `train` section on seeded random data.
    #[arg(long)]
    train: bool,
    #[command(flatten)]
    flags: CompileFlags,
}

/// Runs `netc time`.
pub fn time(args: &TimeArgs) -> Result<(), Failure> {
    let options = args.flags.options()?;
    if args.batch == 0 {
        return Err(Failure::Usage("`--batch 0`: batches are at least 1".into()));
    }
    let loaded = super::options::load(&args.model)?;
    let mut sizes = loaded.sizes.clone();
    if loaded.graph.find_symbol("N").is_some() || args.batch != 1 {
        sizes.push(("N".into(), args.batch as i64));
    }
    let shapes = input_shapes(&loaded.graph, &sizes)?;
    let name = loaded.graph.name.clone();
    let reps = args.reps.max(1);
    if args.train {
        let config = TrainConfig {
            options,
            batch: args.batch,
            seed: 0,
            lr: None,
        };
        let mut trainer =
            Trainer::new(loaded.graph, config).map_err(|e| Failure::run(e, &loaded.sources))?;
        let data = random_data(&trainer, args.batch)?;
        let indices: Vec<usize> = (0..args.batch).collect();
        let mut layers = trainer
            .profile(&data, &indices, reps)
            .map_err(Failure::error)?;
        layers.sort_by(|a, b| b.median_ms.total_cmp(&a.median_ms));
        println!(
            "{name}: training step, batch {}, {} threads, median of {reps} runs per layer and op",
            args.batch, options.threads
        );
        print!("{}", table(&layers, args.top.unwrap_or(usize::MAX)));
        return Ok(());
    }
    let inputs = model_inputs(&loaded.graph, &shapes);
    let mut model =
        CompiledModel::new(loaded.graph, &shape_refs(&shapes), options).map_err(Failure::error)?;
    model.init_weights(0).map_err(Failure::error)?;
    let refs: Vec<(&str, &Tensor)> = inputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut layers = model.profile(&refs, reps).map_err(Failure::error)?;
    layers.sort_by(|a, b| b.median_ms.total_cmp(&a.median_ms));
    println!(
        "{name}: batch {}, {} threads, median of {reps} runs per layer",
        args.batch, options.threads
    );
    print!("{}", table(&layers, args.top.unwrap_or(usize::MAX)));
    Ok(())
}

/// The table of the first `top` of `layers` (sorted by the caller) and
/// the total over all of them.
fn table(layers: &[LayerTime], top: usize) -> String {
    let total_ms: f64 = layers.iter().map(|l| l.median_ms).sum();
    let total_flops: f64 = layers.iter().map(|l| l.flops).sum();
    let shown = &layers[..top.min(layers.len())];
    let total = format!("total ({} layers)", layers.len());
    let width = shown
        .iter()
        .map(|l| l.layer.len())
        .chain([total.len()])
        .max()
        .unwrap_or(0);
    let op_width = shown
        .iter()
        .map(|l| l.op.len())
        .chain([2])
        .max()
        .unwrap_or(2);
    let gflops = |flops: f64, ms: f64| {
        if flops > 0.0 && ms > 0.0 {
            format!("{:.1}", flops / (ms / 1e3) / 1e9)
        } else {
            "-".into()
        }
    };
    let share = |ms: f64| {
        if total_ms > 0.0 {
            100.0 * ms / total_ms
        } else {
            0.0
        }
    };
    let mut out = format!(
        "{:>4}  {:<width$}  {:<op_width$} {:>10} {:>7} {:>9}\n",
        "rank", "layer", "op", "ms", "share", "GFLOP/s"
    );
    for (i, l) in shown.iter().enumerate() {
        out += &format!(
            "{:>4}  {:<width$}  {:<op_width$} {:>10.3} {:>6.1}% {:>9}\n",
            i + 1,
            l.layer,
            l.op,
            l.median_ms,
            share(l.median_ms),
            gflops(l.flops, l.median_ms)
        );
    }
    out += &format!(
        "{:>4}  {:<width$}  {:<op_width$} {:>10.3} {:>6.1}% {:>9}\n",
        "",
        total,
        "",
        total_ms,
        share(total_ms),
        gflops(total_flops, total_ms)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(name: &str, ms: f64, flops: f64) -> LayerTime {
        LayerTime {
            layer: name.into(),
            op: "conv2d".into(),
            flops,
            median_ms: ms,
        }
    }

    /// Shares are of the total over every layer, also the hidden ones;
    /// GFLOP/s is FLOPs per second (3e9 FLOPs in 1 s is 3.0); layers
    /// without FLOPs show `-`.
    #[test]
    fn table_shows_shares_of_the_full_total_and_rates() {
        let layers = [
            layer("a", 600.0, 6e9),
            layer("b", 300.0, 0.0),
            layer("c", 100.0, 1e9),
        ];
        let t = table(&layers, 2);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        let cells = |i: usize| lines[i].split_whitespace().collect::<Vec<_>>();
        assert_eq!(cells(1), ["1", "a", "conv2d", "600.000", "60.0%", "10.0"]);
        assert_eq!(cells(2), ["2", "b", "conv2d", "300.000", "30.0%", "-"]);
        assert_eq!(
            cells(3),
            ["total", "(3", "layers)", "1000.000", "100.0%", "7.0"]
        );
    }
}
