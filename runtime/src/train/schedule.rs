//! Per-epoch learning-rate schedules, as PyTorch's `StepLR`,
//! `MultiStepLR` and `CosineAnnealingLR` (closed form), each with an
//! optional linear warm-up, and a warm-up alone.
//!
//! Warm-up of `w` epochs: epoch `e < w` runs at `base_lr * (e + 1) / w`
//! (from `base_lr / w` up to the full rate at epoch `w - 1`); the main
//! schedule then starts at epoch `w` and counts its own epochs from 0. In
//! PyTorch that is `SequentialLR([LinearLR(start_factor=1/w, end_factor=1,
//! total_iters=w-1), main], milestones=[w])`, which the tests compare with.
//! Epochs count from 0.

use std::f64::consts::PI;

/// A schedule that cannot be built.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("schedule {kind}: {message}")]
pub struct ScheduleError {
    /// The schedule kind.
    pub kind: String,
    /// What is wrong, naming the field.
    pub message: String,
}

/// One field of a schedule's constructor.
#[derive(Clone, Debug, PartialEq)]
pub enum Field {
    /// A number (integers given as whole `f64`s).
    Number(f64),
    /// A list of numbers (`multi_step_lr`'s milestones).
    List(Vec<f64>),
}

/// A learning-rate schedule over epochs.
#[derive(Clone, Debug, PartialEq)]
pub enum Schedule {
    /// The base rate at every epoch (no schedule).
    Constant,
    /// `step_lr`: `base * gamma^(e / step_size)` (integer division) after warm-up.
    StepLr {
        /// Epochs between decays (≥ 1).
        step_size: u64,
        /// Decay factor.
        gamma: f64,
        /// Warm-up epochs (0: none).
        warmup: u64,
    },
    /// `multi_step_lr`: `base * gamma^k` after warm-up, `k` the number of
    /// milestones at or before the epoch.
    MultiStep {
        /// The epochs (after warm-up) at which the rate decays, increasing.
        milestones: Vec<u64>,
        /// Decay factor.
        gamma: f64,
        /// Warm-up epochs (0: none).
        warmup: u64,
    },
    /// `cosine`: `eta_min + (base - eta_min) * (1 + cos(pi * e / t_max)) / 2`
    /// after warm-up (past `t_max` the cosine goes on, as PyTorch's does).
    Cosine {
        /// Half-period in epochs (≥ 1).
        t_max: u64,
        /// The lowest rate.
        eta_min: f64,
        /// Warm-up epochs (0: none).
        warmup: u64,
    },
    /// `warmup`: linear warm-up, then the base rate.
    Warmup {
        /// Warm-up epochs (≥ 1).
        epochs: u64,
    },
}

impl Schedule {
    /// Builds a schedule from the kind and fields of `compiler/src/ops/train.rs`
    /// (integers given as whole `f64`s): `step_lr(step_size, gamma = 0.1,
    /// warmup = 0)`, `multi_step_lr(milestones, gamma = 0.1, warmup = 0)`,
    /// `cosine(t_max, eta_min = 0, warmup = 0)`, `warmup(epochs)`;
    /// `constant` takes no field.
    pub fn from_params(kind: &str, params: &[(&str, Field)]) -> Result<Schedule, ScheduleError> {
        let err = |message: String| ScheduleError {
            kind: kind.to_string(),
            message,
        };
        let names: &[&str] = match kind {
            "step_lr" => &["step_size", "gamma", "warmup"],
            "multi_step_lr" => &["milestones", "gamma", "warmup"],
            "cosine" => &["t_max", "eta_min", "warmup"],
            "warmup" => &["epochs"],
            "constant" => &[],
            _ => {
                return Err(err(
                    "unknown schedule; expected one of step_lr, multi_step_lr, cosine, warmup, constant".into(),
                ))
            }
        };
        for (i, (name, _)) in params.iter().enumerate() {
            if !names.contains(name) {
                return Err(err(format!(
                    "unknown field `{name}`; expected {}",
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                )));
            }
            if params[..i].iter().any(|(n, _)| n == name) {
                return Err(err(format!("field `{name}` given twice")));
            }
        }
        let get = |name: &str| params.iter().find(|(n, _)| *n == name).map(|(_, v)| v);
        let whole = |name: &str, v: f64, min: u64| -> Result<u64, ScheduleError> {
            if v.fract() == 0.0 && v >= min as f64 && v < 2f64.powi(53) {
                Ok(v as u64)
            } else {
                Err(err(format!(
                    "`{name}` must be a whole number ≥ {min}, got {v}"
                )))
            }
        };
        let number = |name: &str| -> Result<Option<f64>, ScheduleError> {
            match get(name) {
                None => Ok(None),
                Some(Field::Number(v)) => Ok(Some(*v)),
                Some(Field::List(_)) => Err(err(format!("`{name}` must be a number, not a list"))),
            }
        };
        let int = |name: &str, default: Option<u64>, min: u64| -> Result<u64, ScheduleError> {
            match number(name)? {
                None => default.ok_or_else(|| err(format!("`{name}` is required"))),
                Some(v) => whole(name, v, min),
            }
        };
        let float = |name: &str, default: f64| -> Result<f64, ScheduleError> {
            match number(name)? {
                None => Ok(default),
                Some(v) if v.is_finite() && v >= 0.0 => Ok(v),
                Some(v) => Err(err(format!("`{name}` must be finite and ≥ 0, got {v}"))),
            }
        };
        let milestones = || -> Result<Vec<u64>, ScheduleError> {
            let list = match get("milestones") {
                None => return Err(err("`milestones` is required".into())),
                Some(Field::Number(v)) => vec![*v],
                Some(Field::List(l)) => l.clone(),
            };
            let epochs = list
                .iter()
                .map(|&v| whole("milestones", v, 1))
                .collect::<Result<Vec<u64>, _>>()?;
            if epochs.is_empty() || epochs.windows(2).any(|w| w[0] >= w[1]) {
                return Err(err(format!(
                    "`milestones` must be a non-empty, increasing list, got {epochs:?}"
                )));
            }
            Ok(epochs)
        };
        Ok(match kind {
            "step_lr" => Schedule::StepLr {
                step_size: int("step_size", None, 1)?,
                gamma: float("gamma", 0.1)?,
                warmup: int("warmup", Some(0), 0)?,
            },
            "multi_step_lr" => Schedule::MultiStep {
                milestones: milestones()?,
                gamma: float("gamma", 0.1)?,
                warmup: int("warmup", Some(0), 0)?,
            },
            "cosine" => Schedule::Cosine {
                t_max: int("t_max", None, 1)?,
                eta_min: float("eta_min", 0.0)?,
                warmup: int("warmup", Some(0), 0)?,
            },
            "warmup" => Schedule::Warmup {
                epochs: int("epochs", None, 1)?,
            },
            _ => Schedule::Constant,
        })
    }

    /// The learning rate of epoch `epoch` (from 0) for base rate `base_lr`.
    pub fn lr(&self, base_lr: f64, epoch: u64) -> f64 {
        let warmup = match self {
            Schedule::Constant => 0,
            Schedule::StepLr { warmup, .. }
            | Schedule::MultiStep { warmup, .. }
            | Schedule::Cosine { warmup, .. } => *warmup,
            Schedule::Warmup { epochs } => *epochs,
        };
        if epoch < warmup {
            return base_lr * (epoch + 1) as f64 / warmup as f64;
        }
        let e = epoch - warmup;
        match self {
            Schedule::Constant | Schedule::Warmup { .. } => base_lr,
            Schedule::StepLr {
                step_size, gamma, ..
            } => base_lr * gamma.powf((e / step_size) as f64),
            Schedule::MultiStep {
                milestones, gamma, ..
            } => base_lr * gamma.powi(milestones.partition_point(|&m| m <= e) as i32),
            Schedule::Cosine { t_max, eta_min, .. } => {
                eta_min + (base_lr - eta_min) * (1.0 + (PI * e as f64 / *t_max as f64).cos()) / 2.0
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::fixture::Fixture;

    #[test]
    fn schedules_match_pytorch_lr_schedulers_over_12_epochs() {
        let fx = Fixture::load();
        let base: f64 = fx.meta("schedule.base_lr").parse().unwrap();
        for name in [
            "step",
            "step_warm",
            "multi_step",
            "multi_step_warm",
            "cosine",
            "cosine_warm",
            "warmup",
        ] {
            let spec = fx.meta(&format!("schedule.{name}.spec"));
            let (kind, fields) = spec.split_once(';').unwrap();
            // "name=value" or, for a list, "name=v1|v2|...".
            let fields: Vec<(&str, Field)> = fields
                .split(',')
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap();
                    let nums: Vec<f64> = v.split('|').map(|x| x.parse().unwrap()).collect();
                    let field = if v.contains('|') {
                        Field::List(nums)
                    } else {
                        Field::Number(nums[0])
                    };
                    (k, field)
                })
                .collect();
            let s = Schedule::from_params(kind, &fields).unwrap();
            let want = fx.f64(&format!("schedule.{name}"));
            assert_eq!(want.len(), 12);
            for (e, w) in want.iter().enumerate() {
                let got = s.lr(base, e as u64);
                assert!(
                    (got - w).abs() <= 1e-12,
                    "{name} epoch {e}: netc {got}, torch {w}"
                );
            }
        }
    }

    #[test]
    fn bad_schedules_are_named() {
        let num = Field::Number;
        let e = Schedule::from_params("step_lr", &[("gamma", num(0.5))]).unwrap_err();
        assert_eq!(e.to_string(), "schedule step_lr: `step_size` is required");
        let e = Schedule::from_params("cosine", &[("t_max", num(2.5))]).unwrap_err();
        assert!(
            e.to_string().contains("`t_max` must be a whole number"),
            "{e}"
        );
        let e = Schedule::from_params(
            "multi_step_lr",
            &[("milestones", Field::List(vec![5.0, 3.0]))],
        )
        .unwrap_err();
        assert!(e.to_string().contains("increasing list, got [5, 3]"), "{e}");
        let e = Schedule::from_params(
            "multi_step_lr",
            &[("milestones", num(4.0)), ("gamma", Field::List(vec![0.5]))],
        )
        .unwrap_err();
        assert!(e.to_string().contains("`gamma` must be a number"), "{e}");
        let e = Schedule::from_params("multi_step_lr", &[]).unwrap_err();
        assert!(e.to_string().contains("`milestones` is required"), "{e}");
        let e = Schedule::from_params("warmup", &[("epochs", num(3.0)), ("gamma", num(1.0))])
            .unwrap_err();
        assert!(e.to_string().contains("unknown field `gamma`"), "{e}");
        let e = Schedule::from_params("onecycle", &[]).unwrap_err();
        assert!(e.to_string().contains("unknown schedule"), "{e}");
        assert_eq!(
            Schedule::from_params("constant", &[]).unwrap().lr(0.3, 7),
            0.3
        );
    }
}
