//! The emotion-recognition protocol of Yang et al. (ICONIP 2018) on DEAP,
//! written against netc's public host API:
//!
//! 1. per subject, the compiled feature model (`models/eeg_de_features.net`)
//!    turns the 32 EEG channels of every trial into one differential-entropy
//!    cube `[bands, 9, 9]` per 1 s segment (60 per trial);
//! 2. each segment inherits its trial's ratings, thresholded at 5 into the
//!    binary valence and arousal tasks;
//! 3. k-fold cross-validation per subject and task trains eeg_ccnn, eeg_svm
//!    and eeg_mlp (their own `train` sections) on k-1 folds and measures the
//!    accuracy on the held-out fold. One [`Trainer`] per model and task is
//!    compiled once and restarted for every fold.
//!
//! The paper splits the segments of a subject into folds at random
//! ([`Split::Segments`]), so neighbouring seconds of one trial can sit on
//! both sides; [`Split::Trials`] keeps each trial's segments together, the
//! harder and more honest estimate of generalisation to unseen trials.

use netc::elab::Value;
use netc::options::CompileOptions;
use netc::session::{load_model, CompiledModel, RunError};
use netc::train::fit::{self, FitOptions, RunState};
use netc::train::trainer::{TrainConfig, Trainer};
use netc_runtime::counter::splitmix64;
use netc_runtime::deap::DeapSubject;
use netc_runtime::train::data::DataSet;
use netc_runtime::{Storage, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// EEG channels of a DEAP subject (the first 32 of its 40).
pub const EEG_CHANNELS: usize = 32;
/// The ratings at or below this are "low", above it "high".
pub const THRESHOLD: f32 = 5.0;
/// The models compared, in the order of the paper's table.
pub const MODELS: [&str; 3] = ["eeg_ccnn", "eeg_mlp", "eeg_svm"];
/// The binary tasks and the rating column each thresholds.
pub const TASKS: [(&str, usize); 2] = [("valence", 0), ("arousal", 1)];

/// How folds are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// Segments shuffled into folds, as the paper does.
    Segments,
    /// Whole trials shuffled into folds.
    Trials,
}

/// The protocol's settings.
#[derive(Clone, Debug)]
pub struct Protocol {
    /// The directory holding the `.net` files.
    pub models: PathBuf,
    /// Folds of the cross-validation.
    pub folds: usize,
    /// Training epochs per fold.
    pub epochs: u64,
    /// Samples per training step.
    pub batch: usize,
    /// Worker threads of the compiled plans.
    pub threads: usize,
    /// Seeds the folds, the weights, shuffling and dropout.
    pub seed: u64,
    /// How folds are drawn.
    pub split: Split,
}

/// What happened, for progress displays.
pub enum Event<'a> {
    /// Features of a subject are ready: its name and the seconds taken.
    Features(&'a str, f64),
    /// A fold starts: subject, task, model, fold (from 1).
    Fold(&'a str, &'a str, &'a str, usize),
    /// One epoch of the current fold finished.
    Epoch,
    /// The current fold's held-out accuracy.
    Accuracy(f64),
}

/// One subject's features and labels.
pub struct SubjectFeatures {
    /// The subject's name (the file stem, e.g. `s01`).
    pub name: String,
    /// The cubes, `[segments, bands, grid, grid]`.
    pub cubes: Tensor,
    /// The trial of each segment.
    pub trial_of: Vec<usize>,
    /// Per task (as [`TASKS`]), the 0/1 label of each segment.
    pub labels: Vec<Vec<i64>>,
}

/// Accuracies of one model on one task: per subject, one per fold.
#[derive(Clone, Debug, Default)]
pub struct Scores {
    /// `(subject, fold accuracies)`.
    pub subjects: Vec<(String, Vec<f64>)>,
}

impl Scores {
    /// Mean and standard deviation: across subjects of their fold means
    /// when there are several subjects (the paper's statistic), across
    /// folds for a single subject.
    pub fn mean_std(&self) -> (f64, f64) {
        let values: Vec<f64> = match self.subjects.as_slice() {
            [(_, folds)] => folds.clone(),
            many => many.iter().map(|(_, f)| mean(f)).collect(),
        };
        let m = mean(&values);
        let var = values.iter().map(|v| (v - m) * (v - m)).sum::<f64>()
            / (values.len().max(2) - 1) as f64;
        (m, var.sqrt())
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// The protocol's results and where the time went.
#[derive(Debug, Default)]
pub struct Results {
    /// `(task, model)` → scores.
    pub scores: HashMap<(String, String), Scores>,
    /// Seconds spent compiling and running the feature model.
    pub feature_secs: f64,
    /// Seconds spent in cross-validation (compiling, training, testing).
    pub cv_secs: f64,
}

impl Results {
    /// The scores of `model` on `task`.
    pub fn get(&self, task: &str, model: &str) -> Option<&Scores> {
        self.scores.get(&(task.to_string(), model.to_string()))
    }
}

/// Compiles the feature model once per trial count and runs it.
pub struct FeatureExtractor {
    file: PathBuf,
    threads: usize,
    compiled: HashMap<(usize, usize), CompiledModel>,
}

impl FeatureExtractor {
    /// An extractor for the feature model in `models`.
    pub fn new(models: &Path, threads: usize) -> FeatureExtractor {
        FeatureExtractor {
            file: models.join("eeg_de_features.net"),
            threads,
            compiled: HashMap::new(),
        }
    }

    /// The cubes of every segment of every trial of `subject`, with labels.
    pub fn extract(
        &mut self,
        name: &str,
        subject: &DeapSubject,
    ) -> Result<SubjectFeatures, RunError> {
        if subject.channels < EEG_CHANNELS {
            return Err(RunError::Inputs(format!(
                "{name} has {} channels; DEAP's first {EEG_CHANNELS} are EEG",
                subject.channels
            )));
        }
        let (trials, samples) = (subject.trials, subject.samples);
        let model = match self.compiled.entry((trials, samples)) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let args = [("samples".to_string(), Value::Int(samples as i64))];
                let graph = load_model(&self.file, None, &args)?;
                let options = CompileOptions {
                    threads: self.threads,
                    ..Default::default()
                };
                let shape = [trials, EEG_CHANNELS, samples];
                e.insert(CompiledModel::new(graph, &[("eeg", &shape)], options)?)
            }
        };
        let mut eeg = Vec::with_capacity(trials * EEG_CHANNELS * samples);
        for t in 0..trials {
            let trial = subject.trial(t).unwrap_or(&[]);
            eeg.extend_from_slice(&trial[..EEG_CHANNELS * samples]);
        }
        let eeg = Tensor::from_f32(&[trials, EEG_CHANNELS, samples], eeg)
            .ok_or_else(|| RunError::Inputs(format!("{name}: EEG does not fit its shape")))?;
        let cubes = model
            .run(&[("eeg", &eeg)])?
            .into_iter()
            .find(|(n, _)| n == "features")
            .map(|(_, t)| t)
            .ok_or_else(|| RunError::Inputs("the feature model has no `features`".into()))?;
        let segments = cubes.shape()[0];
        let per_trial = segments / trials.max(1);
        let trial_of: Vec<usize> = (0..segments).map(|s| s / per_trial.max(1)).collect();
        let labels = TASKS
            .iter()
            .map(|&(_, column)| {
                trial_of
                    .iter()
                    .map(|&t| i64::from(subject.labels[t * 4 + column] > THRESHOLD))
                    .collect()
            })
            .collect();
        Ok(SubjectFeatures {
            name: name.to_string(),
            cubes,
            trial_of,
            labels,
        })
    }
}

/// Splits `n` samples into `k` folds of held-out indices, shuffled with
/// `seed`; with `groups`, whole groups (trials) go to one fold.
pub fn folds(n: usize, k: usize, seed: u64, groups: Option<&[usize]>) -> Vec<Vec<usize>> {
    let units = groups.map_or(n, |g| g.iter().max().map_or(0, |&m| m + 1));
    let mut order: Vec<usize> = (0..units).collect();
    let mut state = seed;
    for i in (1..order.len()).rev() {
        state = splitmix64(state);
        order.swap(i, (state % (i as u64 + 1)) as usize);
    }
    let mut fold_of = vec![0; units];
    for (rank, &u) in order.iter().enumerate() {
        fold_of[u] = rank % k;
    }
    let mut out = vec![Vec::new(); k];
    for i in 0..n {
        let unit = groups.map_or(i, |g| g[i]);
        out[fold_of[unit]].push(i);
    }
    out
}

/// The rows `rows` of the cubes and labels as a data set (`x`, `y`).
fn subset(f: &SubjectFeatures, task: usize, rows: &[usize]) -> Result<DataSet, RunError> {
    let sample = &f.cubes.shape()[1..];
    let row: usize = sample.iter().product();
    let all = f.cubes.as_f32().unwrap_or(&[]);
    let mut x = Vec::with_capacity(rows.len() * row);
    for &r in rows {
        x.extend_from_slice(&all[r * row..(r + 1) * row]);
    }
    let y: Vec<i64> = rows.iter().map(|&r| f.labels[task][r]).collect();
    let mut shape = vec![rows.len()];
    shape.extend_from_slice(sample);
    let bad = |e: String| RunError::Inputs(e);
    let x = Tensor::from_f32(&shape, x).ok_or_else(|| bad("cubes do not fit".into()))?;
    let y = Tensor::new(&[rows.len()], Storage::I64(y)).ok_or_else(|| bad("labels".into()))?;
    DataSet::from_tensors(&f.name, vec![("x".into(), x), ("y".into(), y)], &["x", "y"])
        .map_err(|e| bad(e.to_string()))
}

impl Protocol {
    /// A trainer for `model`, sized for cubes of `bands` bands.
    fn trainer(&self, model: &str, bands: usize) -> Result<Trainer, RunError> {
        let file = self.models.join(format!("{model}.net"));
        let args = [("bands".to_string(), Value::Int(bands as i64))];
        let graph = load_model(&file, Some(model), &args)?;
        let config = TrainConfig {
            options: CompileOptions {
                threads: self.threads,
                ..Default::default()
            },
            batch: self.batch,
            seed: self.seed,
            lr: None,
        };
        Trainer::new(graph, config)
    }

    /// Cross-validates every model on every task of every subject.
    pub fn run(
        &self,
        subjects: &[(String, DeapSubject)],
        report: &mut dyn FnMut(Event),
    ) -> Result<Results, RunError> {
        let mut results = Results::default();
        let started = Instant::now();
        let mut extractor = FeatureExtractor::new(&self.models, self.threads);
        let mut features = Vec::with_capacity(subjects.len());
        for (name, subject) in subjects {
            let t = Instant::now();
            features.push(extractor.extract(name, subject)?);
            report(Event::Features(name, t.elapsed().as_secs_f64()));
        }
        results.feature_secs = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let Some(bands) = features.first().map(|f| f.cubes.shape()[1]) else {
            return Ok(results);
        };
        let options = FitOptions {
            epochs: self.epochs,
            checkpoint: None,
            stop: None,
        };
        for (task_index, &(task, _)) in TASKS.iter().enumerate() {
            for model in MODELS {
                let mut trainer = self.trainer(model, bands)?;
                let scores = results
                    .scores
                    .entry((task.to_string(), model.to_string()))
                    .or_default();
                for f in &features {
                    let groups = (self.split == Split::Trials).then_some(f.trial_of.as_slice());
                    let held_out = folds(f.trial_of.len(), self.folds, self.seed, groups);
                    let mut accuracies = Vec::with_capacity(self.folds);
                    for (k, test_rows) in held_out.iter().enumerate() {
                        report(Event::Fold(&f.name, task, model, k + 1));
                        let mut is_test = vec![false; f.trial_of.len()];
                        for &r in test_rows {
                            is_test[r] = true;
                        }
                        let train_rows: Vec<usize> =
                            (0..is_test.len()).filter(|&r| !is_test[r]).collect();
                        let train = subset(f, task_index, &train_rows)?;
                        let test = subset(f, task_index, test_rows)?;
                        trainer.restart(self.seed ^ splitmix64(k as u64 + 1));
                        let mut state = RunState::default();
                        fit::fit(&mut trainer, &mut state, &train, None, &options, &mut |p| {
                            if let fit::Progress::EpochEnd(_) = p {
                                report(Event::Epoch);
                            }
                        })?;
                        let tally = fit::evaluate(&mut trainer, &test, &mut |_| {})?;
                        let accuracy = tally.accuracy().unwrap_or(0.0);
                        report(Event::Accuracy(accuracy));
                        accuracies.push(accuracy);
                    }
                    scores.subjects.push((f.name.clone(), accuracies));
                }
            }
        }
        results.cv_secs = started.elapsed().as_secs_f64();
        Ok(results)
    }
}

/// The results as JSON: per task and model, mean and std of the accuracy
/// and every fold's accuracy per subject.
pub fn results_json(results: &Results) -> String {
    let mut tasks = Vec::new();
    for (task, _) in TASKS {
        let mut models = Vec::new();
        for model in MODELS {
            let Some(s) = results.get(task, model) else {
                continue;
            };
            let (m, sd) = s.mean_std();
            let subjects: Vec<String> = s
                .subjects
                .iter()
                .map(|(name, folds)| {
                    let folds: Vec<String> = folds.iter().map(|a| format!("{a:.6}")).collect();
                    format!("\"{name}\": [{}]", folds.join(", "))
                })
                .collect();
            models.push(format!(
                "    \"{model}\": {{\"mean\": {m:.6}, \"std\": {sd:.6}, \"folds\": {{{}}}}}",
                subjects.join(", ")
            ));
        }
        tasks.push(format!("  \"{task}\": {{\n{}\n  }}", models.join(",\n")));
    }
    format!(
        "{{\n{},\n  \"seconds\": {{\"features\": {:.3}, \"cross_validation\": {:.3}}}\n}}\n",
        tasks.join(",\n"),
        results.feature_secs,
        results.cv_secs
    )
}

/// The results as a text table: mean ± std accuracy in percent.
pub fn results_table(results: &Results) -> String {
    let mut out = format!("{:<10}", "model");
    for (task, _) in TASKS {
        out += &format!("  {task:>16}");
    }
    out.push('\n');
    for model in MODELS {
        out += &format!("{model:<10}");
        for (task, _) in TASKS {
            let cell = results.get(task, model).map_or("-".to_string(), |s| {
                let (m, sd) = s.mean_std();
                format!("{:.2} ± {:.2}", 100.0 * m, 100.0 * sd)
            });
            out += &format!("  {cell:>16}");
        }
        out.push('\n');
    }
    out
}
