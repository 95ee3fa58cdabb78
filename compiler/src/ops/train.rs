//! Optimizer and learning-rate schedule constructors for `train` sections.
//! They build records that the elaborator turns into the graph's
//! [`crate::ir::TrainSpec`], with every hyper-parameter's default filled in
//! (PyTorch's defaults).

use super::Builtin;
use crate::elab::{CallCtx, OpResult, Value};
use std::rc::Rc;

/// The family's built-ins.
pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "sgd",
        build: sgd,
    },
    Builtin {
        name: "adam",
        build: |c| adam(c, "adam", 0.0),
    },
    Builtin {
        name: "adamw",
        build: |c| adam(c, "adamw", 1e-2),
    },
    Builtin {
        name: "step_lr",
        build: step_lr,
    },
    Builtin {
        name: "multi_step_lr",
        build: multi_step_lr,
    },
    Builtin {
        name: "cosine",
        build: cosine,
    },
    Builtin {
        name: "warmup",
        build: warmup,
    },
];

fn record<'k>(kind_key: &'k str, kind: &str, mut fields: Vec<(&'k str, Value)>) -> Value {
    fields.insert(0, (kind_key, Value::Str(Rc::from(kind))));
    Value::record(fields)
}

/// `sgd(lr, momentum = 0, dampening = 0, nesterov = false, weight_decay = 0, lazy = false)`.
fn sgd(c: &mut CallCtx) -> OpResult {
    let lr = c.float(Some(0), "lr", None)?;
    let momentum = c.float(None, "momentum", Some(0.0))?;
    let dampening = c.float(None, "dampening", Some(0.0))?;
    let nesterov = c.bool(None, "nesterov", Some(false))?;
    let wd = c.float(None, "weight_decay", Some(0.0))?;
    let lazy = c.bool(None, "lazy", Some(false))?;
    c.check_range(Some(0), "lr", lr, 0.0, f64::MAX)?;
    c.check_range(None, "momentum", momentum, 0.0, 1.0)?;
    c.check_range(None, "weight_decay", wd, 0.0, f64::MAX)?;
    if nesterov && (momentum == 0.0 || dampening != 0.0) {
        return Err(c.error(
            "Nesterov momentum needs momentum > 0 and dampening = 0",
            "set `momentum = 0.9`",
        ));
    }
    Ok(record(
        "optimizer_kind",
        "sgd",
        vec![
            ("lr", Value::Float(lr)),
            ("momentum", Value::Float(momentum)),
            ("dampening", Value::Float(dampening)),
            ("nesterov", Value::Bool(nesterov)),
            ("weight_decay", Value::Float(wd)),
            ("lazy", Value::Bool(lazy)),
        ],
    ))
}

/// `adam(lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0, lazy = false)`;
/// `adamw` has decoupled weight decay, default 0.01.
fn adam(c: &mut CallCtx, kind: &str, default_wd: f64) -> OpResult {
    let lr = c.float(Some(0), "lr", Some(1e-3))?;
    let b1 = c.float(None, "beta1", Some(0.9))?;
    let b2 = c.float(None, "beta2", Some(0.999))?;
    let eps = c.float(None, "eps", Some(1e-8))?;
    let wd = c.float(None, "weight_decay", Some(default_wd))?;
    let lazy = c.bool(None, "lazy", Some(false))?;
    c.check_range(Some(0), "lr", lr, 0.0, f64::MAX)?;
    c.check_range(None, "beta1", b1, 0.0, 0.999_999)?;
    c.check_range(None, "beta2", b2, 0.0, 0.999_999_999)?;
    c.check_range(None, "eps", eps, 0.0, 1.0)?;
    c.check_range(None, "weight_decay", wd, 0.0, f64::MAX)?;
    Ok(record(
        "optimizer_kind",
        kind,
        vec![
            ("lr", Value::Float(lr)),
            ("beta1", Value::Float(b1)),
            ("beta2", Value::Float(b2)),
            ("eps", Value::Float(eps)),
            ("weight_decay", Value::Float(wd)),
            ("lazy", Value::Bool(lazy)),
        ],
    ))
}

/// `step_lr(step_size, gamma = 0.1, warmup = 0)`: multiply the rate by
/// `gamma` every `step_size` epochs, after `warmup` epochs of linear warm-up.
fn step_lr(c: &mut CallCtx) -> OpResult {
    let step = c.int(Some(0), "step_size", None)?;
    let gamma = c.float(None, "gamma", Some(0.1))?;
    let warm = c.int(None, "warmup", Some(0))?;
    super::util::at_least(c, Some(0), "step_size", &[step], 1)?;
    super::util::at_least(c, None, "warmup", &[warm], 0)?;
    Ok(record(
        "schedule_kind",
        "step_lr",
        vec![
            ("step_size", Value::Int(step)),
            ("gamma", Value::Float(gamma)),
            ("warmup", Value::Int(warm)),
        ],
    ))
}

/// `multi_step_lr(milestones, gamma = 0.1, warmup = 0)`: multiply the rate
/// by `gamma` at each milestone epoch (counted after the warm-up), as
/// PyTorch's `MultiStepLR`; the milestones must increase.
fn multi_step_lr(c: &mut CallCtx) -> OpResult {
    let milestones = c.int_list(Some(0), "milestones", None)?;
    let gamma = c.float(None, "gamma", Some(0.1))?;
    let warm = c.int(None, "warmup", Some(0))?;
    super::util::at_least(c, Some(0), "milestones", &milestones, 1)?;
    super::util::at_least(c, None, "warmup", &[warm], 0)?;
    if milestones.is_empty() || milestones.windows(2).any(|w| w[0] >= w[1]) {
        return Err(c.arg_error(
            Some(0),
            "milestones",
            format!("`milestones` of `multi_step_lr` must be a non-empty, increasing list of epochs, got {milestones:?}"),
            "list each epoch once, in order, e.g. `[16, 22]`",
        ));
    }
    Ok(record(
        "schedule_kind",
        "multi_step_lr",
        vec![
            (
                "milestones",
                Value::list(milestones.into_iter().map(Value::Int).collect()),
            ),
            ("gamma", Value::Float(gamma)),
            ("warmup", Value::Int(warm)),
        ],
    ))
}

/// `cosine(t_max, eta_min = 0, warmup = 0)`: cosine annealing over `t_max` epochs.
fn cosine(c: &mut CallCtx) -> OpResult {
    let t_max = c.int(Some(0), "t_max", None)?;
    let eta_min = c.float(None, "eta_min", Some(0.0))?;
    let warm = c.int(None, "warmup", Some(0))?;
    super::util::at_least(c, Some(0), "t_max", &[t_max], 1)?;
    super::util::at_least(c, None, "warmup", &[warm], 0)?;
    Ok(record(
        "schedule_kind",
        "cosine",
        vec![
            ("t_max", Value::Int(t_max)),
            ("eta_min", Value::Float(eta_min)),
            ("warmup", Value::Int(warm)),
        ],
    ))
}

/// `warmup(epochs)`: linear warm-up, then the optimizer's rate.
fn warmup(c: &mut CallCtx) -> OpResult {
    let n = c.int(Some(0), "epochs", None)?;
    super::util::at_least(c, Some(0), "epochs", &[n], 1)?;
    Ok(record(
        "schedule_kind",
        "warmup",
        vec![("epochs", Value::Int(n))],
    ))
}
