//! Training checkpoints: ONE safetensors file holding
//! - the weights under their parameter paths, so the file also loads as a
//!   weights file (`weights::load_checked` ignores the rest);
//! - the optimizer state as `optimizer.<suffix>.<parameter path>` tensors
//!   (f32, the parameter's shape; suffixes as [`OptimizerSpec::state_names`]);
//! - header metadata strings: `format = netc-checkpoint`, `epoch` (epochs
//!   completed), `step` (optimizer steps taken), `optimizer` (its kind),
//!   `rng` (u64 generator states as comma-separated decimals, e.g. the
//!   sampler's `seed,epoch,position`), plus free-form extra entries (e.g.
//!   the loss history as JSON, to draw a resumed run's full curve).
//!
//! Writing is atomic (temporary file in the same directory, fsync, rename):
//! an interrupted write leaves the previous checkpoint intact.
//!
//! [`OptimizerSpec::state_names`]: crate::train::optim::OptimizerSpec::state_names

use crate::train::optim::{OptimError, Optimizer, StateTensor};
use crate::weights::{
    read_safetensors_meta, write_safetensors_atomic, WeightError, CHECKPOINT_FORMAT,
    CHECKPOINT_STATE_PREFIX,
};
use crate::{Storage, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Metadata keys the checkpoint format reserves.
const RESERVED: [&str; 5] = ["format", "epoch", "step", "optimizer", "rng"];

/// What can go wrong writing or reading a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file could not be read or written, or is not safetensors.
    #[error(transparent)]
    File(#[from] WeightError),
    /// The checkpoint's content does not fit.
    #[error("checkpoint {}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the tensor or metadata key.
        message: String,
    },
}

/// What a checkpoint records besides tensors (the step count comes from the
/// optimizer).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CheckpointMeta {
    /// Epochs completed.
    pub epoch: u64,
    /// Generator states to resume exactly (e.g. `Sampler::state`).
    pub rng: Vec<u64>,
    /// Free-form entries; keys must not be format, epoch, step, optimizer or rng.
    pub extra: BTreeMap<String, String>,
}

/// A checkpoint read back.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// The file.
    pub path: PathBuf,
    /// Epoch, rng states and extra entries.
    pub meta: CheckpointMeta,
    /// Optimizer steps taken.
    pub step: u64,
    /// The optimizer kind (`sgd`, `adam`, `adamw`).
    pub optimizer: String,
    /// The weights, sorted by parameter path.
    pub weights: Vec<(String, Tensor)>,
    /// Optimizer state: (suffix, parameter path, tensor), sorted.
    pub state: Vec<(String, String, Tensor)>,
}

/// Writes a checkpoint atomically. `weights` are all the model's tensors;
/// `param_names[i]` is the path of the optimizer's parameter `i` and must be
/// one of `weights` (its state tensors take that weight's shape).
pub fn save(
    path: &Path,
    weights: &[(&str, &Tensor)],
    optimizer: &Optimizer,
    param_names: &[&str],
    meta: &CheckpointMeta,
) -> Result<(), CheckpointError> {
    let invalid = |message: String| CheckpointError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    if param_names.len() != optimizer.param_lens().len() {
        return Err(invalid(format!(
            "{} parameter names for an optimizer of {} parameters",
            param_names.len(),
            optimizer.param_lens().len()
        )));
    }
    if let Some((name, _)) = weights
        .iter()
        .find(|(n, _)| n.starts_with(CHECKPOINT_STATE_PREFIX))
    {
        return Err(invalid(format!(
            "weight `{name}` clashes with the optimizer-state prefix `{CHECKPOINT_STATE_PREFIX}`"
        )));
    }
    if let Some(key) = meta.extra.keys().find(|k| RESERVED.contains(&k.as_str())) {
        return Err(invalid(format!(
            "extra metadata `{key}` is a reserved key ({})",
            RESERVED.join(", ")
        )));
    }
    let mut state = Vec::new();
    for t in optimizer.state_tensors() {
        let pname = param_names[t.param];
        let w = weights
            .iter()
            .find(|(n, _)| *n == pname)
            .map(|(_, w)| *w)
            .ok_or_else(|| {
                invalid(format!(
                    "optimizer parameter `{pname}` is not among the weights"
                ))
            })?;
        let name = format!("{CHECKPOINT_STATE_PREFIX}{}.{pname}", t.suffix);
        let tensor = Tensor::from_f32(w.shape(), t.data.to_vec()).ok_or_else(|| {
            invalid(format!(
                "`{name}` has {} elements, weight `{pname}` has shape {:?}",
                t.data.len(),
                w.shape()
            ))
        })?;
        state.push((name, tensor));
    }
    let mut all: Vec<(&str, &Tensor)> = weights.to_vec();
    all.extend(state.iter().map(|(n, t)| (n.as_str(), t)));
    let rng: Vec<String> = meta.rng.iter().map(u64::to_string).collect();
    let mut header: HashMap<String, String> = meta.extra.clone().into_iter().collect();
    for (k, v) in [
        ("format", CHECKPOINT_FORMAT.to_string()),
        ("epoch", meta.epoch.to_string()),
        ("step", optimizer.step_count().to_string()),
        ("optimizer", optimizer.spec().kind().to_string()),
        ("rng", rng.join(",")),
    ] {
        header.insert(k.to_string(), v);
    }
    write_safetensors_atomic(path, &all, Some(header))?;
    Ok(())
}

/// Reads a checkpoint, checking its format and metadata.
pub fn load(path: &Path) -> Result<Checkpoint, CheckpointError> {
    let invalid = |message: String| CheckpointError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let (tensors, mut header) = read_safetensors_meta(path)?;
    match header.get("format") {
        Some(f) if f == CHECKPOINT_FORMAT => {}
        other => {
            return Err(invalid(format!(
                "not a netc checkpoint (metadata format = {}); a plain weights file cannot resume training",
                other.map_or("absent".to_string(), |f| format!("`{f}`"))
            )))
        }
    }
    let mut take = |key: &str| {
        header
            .remove(key)
            .ok_or_else(|| invalid(format!("metadata `{key}` is missing")))
    };
    let number = |key: &str, text: &str| {
        text.parse::<u64>()
            .map_err(|_| invalid(format!("metadata `{key}` = `{text}` is not a u64")))
    };
    let epoch = number("epoch", &take("epoch")?)?;
    let step = number("step", &take("step")?)?;
    let optimizer = take("optimizer")?;
    let rng_text = take("rng")?;
    let rng = rng_text
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| number("rng", s))
        .collect::<Result<Vec<u64>, _>>()?;
    header.remove("format");
    let mut weights = Vec::new();
    let mut state = Vec::new();
    for (name, t) in tensors {
        let Some(rest) = name.strip_prefix(CHECKPOINT_STATE_PREFIX) else {
            weights.push((name, t));
            continue;
        };
        let (suffix, param) = rest
            .split_once('.')
            .filter(|(s, p)| !s.is_empty() && !p.is_empty())
            .ok_or_else(|| {
                invalid(format!(
                    "optimizer tensor `{name}` is not named optimizer.<state>.<parameter path>"
                ))
            })?;
        if !matches!(t.storage(), Storage::F32(_)) {
            return Err(invalid(format!(
                "optimizer tensor `{name}` is {}, not f32",
                t.dtype()
            )));
        }
        state.push((suffix.to_string(), param.to_string(), t));
    }
    state.sort_by(|a, b| (&a.1, &a.0).cmp(&(&b.1, &b.0)));
    Ok(Checkpoint {
        path: path.to_path_buf(),
        meta: CheckpointMeta {
            epoch,
            rng,
            extra: header.into_iter().collect(),
        },
        step,
        optimizer,
        weights,
        state,
    })
}

impl Checkpoint {
    /// Restores an optimizer's step count and state; `param_names[i]` is the
    /// path of its parameter `i`. The kind must match, and every state
    /// tensor must be present with the right size; otherwise the error names
    /// the tensor and the optimizer is unchanged.
    pub fn restore_optimizer(
        &self,
        optimizer: &mut Optimizer,
        param_names: &[&str],
    ) -> Result<(), CheckpointError> {
        let invalid = |message: String| CheckpointError::Invalid {
            path: self.path.clone(),
            message,
        };
        let kind = optimizer.spec().kind();
        if self.optimizer != kind {
            return Err(invalid(format!(
                "saved by optimizer {}, cannot resume optimizer {kind}",
                self.optimizer
            )));
        }
        if param_names.len() != optimizer.param_lens().len() {
            return Err(invalid(format!(
                "{} parameter names for an optimizer of {} parameters",
                param_names.len(),
                optimizer.param_lens().len()
            )));
        }
        let names = optimizer.spec().state_names();
        let mut views = Vec::with_capacity(self.state.len());
        for (suffix, param, t) in &self.state {
            let full = format!("{CHECKPOINT_STATE_PREFIX}{suffix}.{param}");
            let i = param_names.iter().position(|n| n == param).ok_or_else(|| {
                invalid(format!("`{full}`: `{param}` is not a trained parameter"))
            })?;
            let data = t.as_f32().unwrap_or_default();
            let want = optimizer.param_lens()[i];
            if !names.contains(&suffix.as_str()) {
                return Err(invalid(format!(
                    "`{full}` is not state of optimizer {kind}, which keeps {}",
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                )));
            }
            if data.len() != want {
                return Err(invalid(format!(
                    "`{full}` has {} elements, parameter `{param}` has {want}",
                    data.len()
                )));
            }
            views.push(StateTensor {
                suffix,
                param: i,
                data: std::borrow::Cow::Borrowed(data),
            });
        }
        for (i, p) in param_names.iter().enumerate() {
            for s in names {
                if !views.iter().any(|v| v.param == i && v.suffix == *s) {
                    return Err(invalid(format!(
                        "tensor `{CHECKPOINT_STATE_PREFIX}{s}.{p}` is missing"
                    )));
                }
            }
        }
        optimizer
            .load_state(self.step, &views)
            .map_err(|e: OptimError| invalid(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::optim::{Hyper, OptimizerSpec};
    use crate::weights::{load_checked, TensorSpec};
    use crate::DType;

    struct Model {
        w: Tensor,
        b: Tensor,
        stat: Tensor,
    }

    fn model() -> Model {
        Model {
            w: Tensor::from_f32(&[2, 3], vec![0.5, -1.0, 2.0, 0.25, 3.0, -0.5]).unwrap(),
            b: Tensor::from_f32(&[2], vec![0.1, -0.2]).unwrap(),
            stat: Tensor::new(&[], Storage::I64(vec![7])).unwrap(),
        }
    }

    /// An Adam optimizer over `fc.w` and `fc.b` after two steps.
    fn trained(m: &mut Model) -> Optimizer {
        let spec = OptimizerSpec::from_params("adam", &[("lr", Hyper::Float(0.1))]).unwrap();
        let mut opt = Optimizer::new(spec, &[6, 2]);
        for step in 0..2 {
            let g = step as f32 + 1.0;
            let (w, b) = (m.w.as_f32_mut().unwrap(), m.b.as_f32_mut().unwrap());
            opt.step(
                &mut [w, b],
                &[&[g, -g, 0.5, 1.0, 2.0, -3.0], &[g, 0.3]],
                0.1,
            )
            .unwrap();
        }
        opt
    }

    fn weights(m: &Model) -> [(&str, &Tensor); 3] {
        [("fc.w", &m.w), ("fc.b", &m.b), ("bn.count", &m.stat)]
    }

    fn meta() -> CheckpointMeta {
        CheckpointMeta {
            epoch: 3,
            rng: vec![42, 3, 0, u64::MAX],
            extra: [("loss_history".to_string(), "[2.5, 1.25]".to_string())].into(),
        }
    }

    #[test]
    fn round_trips_weights_state_and_metadata_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ckpt.safetensors");
        let mut m = model();
        let opt = trained(&mut m);
        std::fs::write(&path, b"an older checkpoint").unwrap();
        save(&path, &weights(&m), &opt, &["fc.w", "fc.b"], &meta()).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["ckpt.safetensors"], "no temporary file is left");

        let c = load(&path).unwrap();
        assert_eq!(
            (c.meta.clone(), c.step, c.optimizer.as_str()),
            (meta(), 2, "adam")
        );
        let want: Vec<(String, Tensor)> = weights(&m)
            .iter()
            .map(|(n, t)| (n.to_string(), (*t).clone()))
            .collect();
        let mut want_sorted = want.clone();
        want_sorted.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(c.weights, want_sorted);
        let state: Vec<(&str, &str, &[usize])> = c
            .state
            .iter()
            .map(|(s, p, t)| (s.as_str(), p.as_str(), t.shape()))
            .collect();
        assert_eq!(
            state,
            [
                ("exp_avg", "fc.b", &[2][..]),
                ("exp_avg_sq", "fc.b", &[2][..]),
                ("exp_avg", "fc.w", &[2, 3][..]),
                ("exp_avg_sq", "fc.w", &[2, 3][..])
            ]
        );

        // The restored optimizer continues exactly as the original.
        let spec = *opt.spec();
        let mut fresh = Optimizer::new(spec, &[6, 2]);
        c.restore_optimizer(&mut fresh, &["fc.w", "fc.b"]).unwrap();
        assert_eq!(fresh.step_count(), 2);
        assert_eq!(fresh.state_tensors(), opt.state_tensors());

        let sgd = OptimizerSpec::from_params("sgd", &[("lr", Hyper::Float(0.1))]).unwrap();
        let e = c
            .restore_optimizer(&mut Optimizer::new(sgd, &[6, 2]), &["fc.w", "fc.b"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("saved by optimizer adam, cannot resume optimizer sgd"),
            "{e}"
        );
        let mut wrong = Optimizer::new(spec, &[6, 3]);
        let e = c
            .restore_optimizer(&mut wrong, &["fc.w", "fc.b"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`optimizer.exp_avg.fc.b` has 2 elements, parameter `fc.b` has 3"),
            "{e}"
        );
        let mut three = Optimizer::new(spec, &[6, 2, 1]);
        let e = c
            .restore_optimizer(&mut three, &["fc.w", "fc.b", "fc.c"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tensor `optimizer.exp_avg.fc.c` is missing"),
            "{e}"
        );
    }

    #[test]
    fn load_checked_accepts_a_checkpoint_but_plain_files_stay_strict() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ckpt.safetensors");
        let mut m = model();
        let opt = trained(&mut m);
        save(&path, &weights(&m), &opt, &["fc.w", "fc.b"], &meta()).unwrap();
        let spec = |name: &str, dtype, shape: &[usize]| TensorSpec {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
        };
        let expected = [
            spec("fc.w", DType::F32, &[2, 3]),
            spec("fc.b", DType::F32, &[2]),
            spec("bn.count", DType::I64, &[]),
        ];
        let got = load_checked(&path, &expected).unwrap();
        assert_eq!(got, [m.w.clone(), m.b.clone(), m.stat.clone()]);

        // The same tensors without the checkpoint metadata: the optimizer
        // state is unexpected again.
        let plain = dir.path().join("plain.safetensors");
        let c = load(&path).unwrap();
        let mut all: Vec<(String, Tensor)> = c.weights.clone();
        all.extend(
            c.state
                .iter()
                .map(|(s, p, t)| (format!("optimizer.{s}.{p}"), t.clone())),
        );
        let refs: Vec<(&str, &Tensor)> = all.iter().map(|(n, t)| (n.as_str(), t)).collect();
        write_safetensors_atomic(&plain, &refs, None).unwrap();
        let e = load_checked(&plain, &expected).unwrap_err().to_string();
        assert!(
            e.contains("unexpected: optimizer.exp_avg.fc.b f32[2]"),
            "{e}"
        );
        let e = load(&plain).unwrap_err().to_string();
        assert!(
            e.contains("not a netc checkpoint (metadata format = absent)"),
            "{e}"
        );
    }

    #[test]
    fn corrupt_or_incomplete_checkpoints_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ckpt.safetensors");
        let mut m = model();
        let opt = trained(&mut m);
        save(&path, &weights(&m), &opt, &["fc.w", "fc.b"], &meta()).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(
            e.contains("ckpt.safetensors is not a usable safetensors file"),
            "{e}"
        );

        let bad = dir.path().join("bad.safetensors");
        let mut header: HashMap<String, String> = [("format", "netc-checkpoint"), ("epoch", "x")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        write_safetensors_atomic(&bad, &[("fc.b", &m.b)], Some(header.clone())).unwrap();
        let e = load(&bad).unwrap_err().to_string();
        assert!(e.contains("metadata `epoch` = `x` is not a u64"), "{e}");
        header.insert("epoch".into(), "1".into());
        write_safetensors_atomic(&bad, &[("fc.b", &m.b)], Some(header)).unwrap();
        let e = load(&bad).unwrap_err().to_string();
        assert!(e.contains("metadata `step` is missing"), "{e}");

        let mut reserved = meta();
        reserved.extra.insert("epoch".into(), "9".into());
        let e = save(&path, &weights(&m), &opt, &["fc.w", "fc.b"], &reserved)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("extra metadata `epoch` is a reserved key"),
            "{e}"
        );
        let e = save(&path, &weights(&m), &opt, &["fc.w", "fc.x"], &meta())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("optimizer parameter `fc.x` is not among the weights"),
            "{e}"
        );
    }
}
