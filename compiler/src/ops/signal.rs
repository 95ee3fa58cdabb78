//! Signal pre- and post-processing: the EEG feature pipeline (FIR band-pass
//! filters, differential entropy, electrode-grid placement) and VGGish's
//! frontend (framing, periodic Hann window, DFT magnitude, mel filterbank)
//! and postprocess (8-bit quantisation).
//!
//! Everything that is *designed* (filter taps, windows, DFT and mel matrices)
//! is computed here at compile time and stored in the graph as a constant
//! tensor, then applied with ordinary ops (`conv1d`, `matmul`, `mul`), so a
//! backend needs nothing signal-specific for them. The designs reproduce
//! `scipy.signal.firwin` and torchvggish's `mel_features` (the TF VGGish
//! original); `tests/fixtures/signal_reference.py` regenerates the reference
//! numbers the tests compare against. See `docs/ops/signal.md`.

use super::util::{at_least, axis, expect_float, numel};
use super::Builtin;
use crate::diag::Diagnostic;
use crate::elab::{CallCtx, OpResult, Value};
use crate::ir::{Attr, Dim, Op, TensorType, ValueId};
use netc_runtime::DType;
use std::f64::consts::PI;

/// The family's built-ins.
pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "fir_bandpass",
        build: fir_bandpass,
    },
    Builtin {
        name: "fir_filterbank",
        build: fir_filterbank,
    },
    Builtin {
        name: "differential_entropy",
        build: differential_entropy,
    },
    Builtin {
        name: "grid_map",
        build: grid_map,
    },
    Builtin {
        name: "frame",
        build: frame,
    },
    Builtin {
        name: "periodic_hann",
        build: periodic_hann,
    },
    Builtin {
        name: "rfft_magnitude",
        build: rfft_magnitude,
    },
    Builtin {
        name: "mel_filterbank",
        build: mel_filterbank,
    },
    Builtin {
        name: "quantize_u8",
        build: quantize_u8,
    },
];

/// The most elements one designed constant may have (2^24): DFT matrices of
/// a few thousand points, filter banks of many long filters.
const MAX_CONST: i64 = 1 << 24;

/// The default FIR length: 129 taps (1 s + 1 sample at 128 Hz).
const DEFAULT_TAPS: i64 = 129;

// ---------------------------------------------------------------------------
// Designs (pure functions, tested against scipy / mel_features).
// ---------------------------------------------------------------------------

/// `sin(pi x) / (pi x)`, as `numpy.sinc`.
fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let y = PI * x;
        y.sin() / y
    }
}

/// The symmetric Hamming window of `n` points,
/// `0.54 - 0.46 cos(2 pi k / (n - 1))` (scipy's `hamming(n, sym=True)`).
pub fn hamming(n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![1.0];
    }
    (0..n)
        .map(|k| 0.54 - 0.46 * (2.0 * PI * k as f64 / (n - 1) as f64).cos())
        .collect()
}

/// A linear-phase band-pass FIR filter of `taps` (odd) coefficients by the
/// window method, exactly as `scipy.signal.firwin(taps, [low, high],
/// pass_zero=False, window="hamming", scale=True, fs=rate)`:
/// the ideal band-pass impulse response `h[m] = r sinc(r m) - l sinc(l m)`
/// (`l`, `r` the band edges as fractions of Nyquist, `m = k - (taps-1)/2`),
/// times a Hamming window, scaled to unit gain at the band centre.
pub fn firwin_bandpass(taps: usize, low: f64, high: f64, rate: f64) -> Vec<f64> {
    let nyq = rate / 2.0;
    let (l, r) = (low / nyq, high / nyq);
    let alpha = (taps as f64 - 1.0) / 2.0;
    let win = hamming(taps);
    let mut h: Vec<f64> = (0..taps)
        .map(|k| {
            let m = k as f64 - alpha;
            (r * sinc(r * m) - l * sinc(l * m)) * win[k]
        })
        .collect();
    let centre = 0.5 * (l + r);
    let gain: f64 = h
        .iter()
        .enumerate()
        .map(|(k, v)| v * (PI * (k as f64 - alpha) * centre).cos())
        .sum();
    if gain != 0.0 {
        for v in &mut h {
            *v /= gain;
        }
    }
    h
}

/// The "periodic" Hann window of `n` points, `0.5 - 0.5 cos(2 pi k / n)`
/// (`mel_features.periodic_hann`).
pub fn periodic_hann_window(n: usize) -> Vec<f64> {
    (0..n)
        .map(|k| 0.5 - 0.5 * (2.0 * PI / n as f64 * k as f64).cos())
        .collect()
}

/// The real-DFT matrices `[length, n/2 + 1]` (row-major): `cos(2 pi l k / n)`
/// and `-sin(2 pi l k / n)`, so that `x @ C` and `x @ S` are the real and
/// imaginary parts of `numpy.fft.rfft(x, n)` for `x` of `length <= n`
/// samples (the missing samples are the zero padding).
pub fn rdft_matrices(length: usize, n: usize) -> (Vec<f64>, Vec<f64>) {
    let bins = n / 2 + 1;
    let mut cos = Vec::with_capacity(length * bins);
    let mut sin = Vec::with_capacity(length * bins);
    for l in 0..length {
        for k in 0..bins {
            // Reduce l*k modulo n first: exact angles for large products.
            let phase = 2.0 * PI * ((l * k) % n) as f64 / n as f64;
            cos.push(phase.cos());
            sin.push(-phase.sin());
        }
    }
    (cos, sin)
}

/// HTK mel scale, `1127 ln(1 + f / 700)`.
fn hertz_to_mel(f: f64) -> f64 {
    1127.0 * (1.0 + f / 700.0).ln()
}

/// The mel weight matrix `[spectrogram_bins, mel_bins]` (row-major) of
/// `mel_features.spectrogram_to_mel_matrix`: triangular bands, linear in mel,
/// with edges equally spaced in mel between `low` and `high` Hz; spectrogram
/// bin `i` is at `i * (rate/2) / (spectrogram_bins - 1)` Hz; the DC bin is
/// zeroed (HTK excludes it).
pub fn mel_matrix(
    spectrogram_bins: usize,
    mel_bins: usize,
    rate: f64,
    low: f64,
    high: f64,
) -> Vec<f64> {
    let nyq = rate / 2.0;
    let step = nyq / (spectrogram_bins.max(2) - 1) as f64;
    let bin_mel: Vec<f64> = (0..spectrogram_bins)
        .map(|i| hertz_to_mel(i as f64 * step))
        .collect();
    let (lo_mel, hi_mel) = (hertz_to_mel(low), hertz_to_mel(high));
    let edge_step = (hi_mel - lo_mel) / (mel_bins + 1) as f64;
    let edges: Vec<f64> = (0..mel_bins + 2)
        .map(|i| lo_mel + i as f64 * edge_step)
        .collect();
    let mut m = vec![0.0; spectrogram_bins * mel_bins];
    for j in 0..mel_bins {
        let (lower, centre, upper) = (edges[j], edges[j + 1], edges[j + 2]);
        for (i, &mel) in bin_mel.iter().enumerate().skip(1) {
            let up = (mel - lower) / (centre - lower);
            let down = (upper - mel) / (upper - centre);
            m[i * mel_bins + j] = up.min(down).max(0.0);
        }
    }
    m
}

// ---------------------------------------------------------------------------
// Shared checks.
// ---------------------------------------------------------------------------

/// A size argument that must lie in `lo..=hi`.
fn size_in(
    c: &mut CallCtx,
    pos: Option<usize>,
    name: &'static str,
    v: i64,
    lo: i64,
    hi: i64,
) -> Result<usize, Diagnostic> {
    if v < lo || v > hi {
        return Err(c.arg_error(
            pos,
            name,
            format!("`{name}` of `{}` is {v}, outside {lo}..={hi}", c.op_name()),
            format!("use a value between {lo} and {hi}"),
        ));
    }
    Ok(v as usize)
}

/// A dense float input of rank at least `min_rank`.
fn float_input(
    c: &mut CallCtx,
    x: ValueId,
    min_rank: usize,
    layout: &str,
) -> Result<TensorType, Diagnostic> {
    let t = expect_float(c, x)?;
    if t.rank() < min_rank {
        return Err(c.shape_error(
            format!(
                "`{}` expects an input of rank >= {min_rank} ({layout}), got {}",
                c.op_name(),
                c.type_text(&t)
            ),
            &[("the input", x)],
            format!("the input must be {layout}"),
        ));
    }
    Ok(t)
}

/// The last size of `x`, which must be known.
fn last_known(c: &CallCtx, x: ValueId, t: &TensorType, what: &str) -> Result<i64, Diagnostic> {
    c.known(x, t.rank() - 1, what)
}

fn dims_value(dims: &[Dim]) -> Value {
    Value::list(dims.iter().cloned().map(Value::from_dim).collect())
}

fn tensor_of(c: &CallCtx, v: Value) -> Result<ValueId, Diagnostic> {
    match v {
        Value::Tensor(t) => Ok(t),
        _ => Err(c.error(
            format!("`{}`: internal op did not return a tensor", c.op_name()),
            "please report this",
        )),
    }
}

/// `x @ m` for a constant matrix `m` over the last dim of `x` (rank >= 1;
/// a rank-1 `x` is treated as one row).
fn apply_matrix(c: &mut CallCtx, x: ValueId, m: ValueId) -> Result<ValueId, Diagnostic> {
    if c.ty(x).rank() == 1 {
        let row = c.call(
            "unsqueeze",
            vec![(None, Value::Tensor(x)), (None, Value::Int(0))],
        )?;
        let y = c.call("matmul", vec![(None, row), (None, Value::Tensor(m))])?;
        let y = c.call("squeeze", vec![(None, y), (None, Value::Int(0))])?;
        return tensor_of(c, y);
    }
    let y = c.call(
        "matmul",
        vec![(None, Value::Tensor(x)), (None, Value::Tensor(m))],
    )?;
    tensor_of(c, y)
}

// ---------------------------------------------------------------------------
// EEG: FIR filters, differential entropy, grid placement.
// ---------------------------------------------------------------------------

/// Reads and checks one band `[low, high]` in Hz.
fn check_band(
    c: &mut CallCtx,
    pos: Option<usize>,
    name: &'static str,
    low: f64,
    high: f64,
    rate: f64,
) -> Result<(), Diagnostic> {
    let nyq = rate / 2.0;
    if !(low > 0.0 && low < high && high < nyq) || low.is_nan() || high.is_nan() {
        return Err(c.arg_error(
            pos,
            name,
            format!("`{}`: the band {low}..{high} Hz is not inside 0..{nyq} Hz (Nyquist at rate {rate})", c.op_name()),
            "a band-pass band needs 0 < low < high < rate / 2",
        ));
    }
    Ok(())
}

/// Filters every row of `x [..., T]` with each of `filters` (each `taps`
/// long): returns `[..., B, T]` ('same' zero padding) via one `conv1d` of
/// the rows `[R, 1, T]` with the constant bank `[B, 1, taps]`.
fn filter_rows(
    c: &mut CallCtx,
    x: ValueId,
    t: &TensorType,
    filters: Vec<f64>,
    bands: usize,
    taps: usize,
    desc: String,
) -> Result<ValueId, Diagnostic> {
    let rank = t.rank();
    let time = t.shape[rank - 1].clone();
    let lead = &t.shape[..rank - 1];
    let rows = lead
        .iter()
        .try_fold(Dim::known(1), |acc, d| acc.mul(d))
        .ok_or_else(|| {
            c.shape_error(
                format!(
                    "`{}`: the leading dims of {} multiply two symbolic sizes",
                    c.op_name(),
                    c.type_text(t)
                ),
                &[("the input", x)],
                "keep at most one symbolic size among the dims before time",
            )
        })?;
    let rows_in = c.call(
        "reshape",
        vec![
            (None, Value::Tensor(x)),
            (
                None,
                dims_value(&[rows.clone(), Dim::known(1), time.clone()]),
            ),
        ],
    )?;
    let rows_in = tensor_of(c, rows_in)?;
    let w = c.constant(
        desc,
        TensorType::known(t.dtype, &[bands as i64, 1, taps as i64]),
        filters,
    );
    let pad = (taps as i64 - 1) / 2;
    let out = TensorType::new(t.dtype, vec![rows, Dim::known(bands as i64), time.clone()]);
    let flops = numel(&out).scale(2 * taps as i64);
    let op = Op::new("conv1d")
        .with("stride", Attr::Ints(vec![1]))
        .with("pad", Attr::Ints(vec![pad]))
        .with("dilation", Attr::Ints(vec![1]))
        .with("groups", Attr::Int(1));
    let y = c.emit(op, &[rows_in, w], vec![out], flops)?[0];
    let mut shape = lead.to_vec();
    shape.push(Dim::known(bands as i64));
    shape.push(time);
    let y = c.call(
        "reshape",
        vec![(None, Value::Tensor(y)), (None, dims_value(&shape))],
    )?;
    tensor_of(c, y)
}

/// Reads `rate` and `taps` (odd, >= 3).
fn rate_and_taps(c: &mut CallCtx, rate_pos: Option<usize>) -> Result<(f64, usize), Diagnostic> {
    let rate = c.float(rate_pos, "rate", None)?;
    if !(rate > 0.0 && rate.is_finite()) {
        return Err(c.arg_error(
            rate_pos,
            "rate",
            format!(
                "`rate` of `{}` must be a positive sampling rate in Hz, got {rate}",
                c.op_name()
            ),
            "e.g. `rate = 128`",
        ));
    }
    let taps = c.int(None, "taps", Some(DEFAULT_TAPS))?;
    let taps = size_in(c, None, "taps", taps, 3, 1 << 16)?;
    if taps.is_multiple_of(2) {
        return Err(c.arg_error(
            None,
            "taps",
            format!(
                "`taps` of `{}` is {taps}; a linear-phase band-pass filter needs an odd length",
                c.op_name()
            ),
            format!("use {} or {}", taps - 1, taps + 1),
        ));
    }
    Ok((rate, taps))
}

/// `fir_bandpass(x, low, high, rate, taps = 129)`: `[..., T] -> [..., T]`.
fn fir_bandpass(c: &mut CallCtx) -> OpResult {
    let x = c.tensor(Some(0), "x")?;
    let low = c.float(Some(1), "low", None)?;
    let high = c.float(Some(2), "high", None)?;
    let (rate, taps) = rate_and_taps(c, Some(3))?;
    check_band(c, Some(2), "high", low, high, rate)?;
    let t = float_input(c, x, 1, "[..., time]")?;
    let h = firwin_bandpass(taps, low, high, rate);
    let desc =
        format!("fir_bandpass(low={low}, high={high}, rate={rate}, taps={taps}, window=hamming)");
    let y = filter_rows(c, x, &t, h, 1, taps, desc)?;
    let y = c.call(
        "reshape",
        vec![(None, Value::Tensor(y)), (None, dims_value(&t.shape))],
    )?;
    Ok(y)
}

/// `fir_filterbank(x, bands, rate, taps = 129, dim = 1)`: `[..., T]` ->
/// the input with a band axis of size `len(bands)` inserted at `dim`
/// (`[N, C, T] -> [N, B, C, T]`).
fn fir_filterbank(c: &mut CallCtx) -> OpResult {
    let x = c.tensor(Some(0), "x")?;
    let bands_v = c.value(Some(1), "bands");
    let (rate, taps) = rate_and_taps(c, Some(2))?;
    let dim = c.int(None, "dim", Some(1))?;
    let t = float_input(c, x, 1, "[..., time]")?;
    let bad = |c: &mut CallCtx| {
        c.arg_error(
            Some(1),
            "bands",
            "`fir_filterbank` needs `bands` as a list of [low, high] pairs in Hz",
            "e.g. `bands = [[4, 8], [8, 14], [14, 31], [31, 45]]`",
        )
    };
    let items = match bands_v {
        Some(Value::List(items)) if !items.is_empty() => items,
        _ => return Err(bad(c)),
    };
    let num = |v: &Value| match v {
        Value::Int(n) => Some(*n as f64),
        Value::Float(f) => Some(*f),
        _ => None,
    };
    let mut bands = Vec::new();
    for item in items.iter() {
        match item {
            Value::List(p) if p.len() == 2 => match (num(&p[0]), num(&p[1])) {
                (Some(lo), Some(hi)) => bands.push((lo, hi)),
                _ => return Err(bad(c)),
            },
            _ => return Err(bad(c)),
        }
    }
    for &(lo, hi) in &bands {
        check_band(c, Some(1), "bands", lo, hi, rate)?;
    }
    if (bands.len() as i64).saturating_mul(taps as i64) > MAX_CONST {
        return Err(c.arg_error(
            Some(1),
            "bands",
            format!(
                "`fir_filterbank`: {} bands of {taps} taps is too large a constant",
                bands.len()
            ),
            "use fewer bands or shorter filters",
        ));
    }
    // The band axis goes at `dim` of the output, which has rank + 1 dims, but
    // never after the time axis.
    let rank = t.rank();
    let at = axis(c, None, "dim", dim, rank + 1)?;
    if at == rank {
        return Err(c.arg_error(
            None,
            "dim",
            "`fir_filterbank`: the band axis cannot come after the time axis",
            format!("use a dim in 0..{}", rank - 1),
        ));
    }
    let mut taps_all = Vec::with_capacity(bands.len() * taps);
    for &(lo, hi) in &bands {
        taps_all.extend(firwin_bandpass(taps, lo, hi, rate));
    }
    let listed: Vec<String> = bands.iter().map(|(l, h)| format!("{l}-{h}")).collect();
    let desc = format!(
        "fir_filterbank(bands=[{}], rate={rate}, taps={taps}, window=hamming)",
        listed.join(", ")
    );
    let y = filter_rows(c, x, &t, taps_all, bands.len(), taps, desc)?; // [..., B, T]
    if at == rank - 1 {
        return Ok(Value::Tensor(y));
    }
    // Move the band axis (at rank - 1) to `at`.
    let mut perm: Vec<Value> = (0..rank as i64 + 1)
        .filter(|&i| i != rank as i64 - 1)
        .map(Value::Int)
        .collect();
    perm.insert(at, Value::Int(rank as i64 - 1));
    c.call(
        "permute",
        vec![(None, Value::Tensor(y)), (None, Value::list(perm))],
    )
}

/// `differential_entropy(x, segment, dim = -1)`: splits `dim` into
/// non-overlapping segments and gives `0.5 ln(2 pi e var)` of each
/// (population variance): `[..., T] -> [..., T / segment]`.
fn differential_entropy(c: &mut CallCtx) -> OpResult {
    let x = c.tensor(Some(0), "x")?;
    let segment = c.int(Some(1), "segment", None)?;
    let d = c.int(Some(2), "dim", Some(-1))?;
    at_least(c, Some(1), "segment", &[segment], 2)?;
    let t = float_input(c, x, 1, "[..., time]")?;
    let a = axis(c, Some(2), "dim", d, t.rank())?;
    let len = t.shape[a].clone();
    let Some(count) = len.div_exact(segment) else {
        return Err(c.shape_error(
            format!(
                "`differential_entropy`: dim {a} of {} (size {}) does not split into segments of {segment}",
                c.type_text(&t),
                c.dim_text(&len)
            ),
            &[("the input", x)],
            format!("cut the signal to a multiple of {segment} samples first, e.g. with `slice(x, {a}, 0, ...)`"),
        ));
    };
    let mut shape = t.shape.clone();
    shape[a] = count;
    let out = TensorType::new(t.dtype, shape);
    // Per sample: accumulate the sum, subtract the mean, square-accumulate
    // (4); per segment: two divisions, scale and log (4).
    let flops = numel(&t).scale(4).add(&numel(&out).scale(4));
    let op = Op::new("differential_entropy")
        .with("dim", Attr::Int(a as i64))
        .with("segment", Attr::Int(segment));
    c.emit1(op, &[x], out, flops)
}

/// `grid_map(x, positions, grid = 9)`: places the `C` values of the last dim
/// at `positions[c] = [row, col]` of a `grid x grid` map, zeros elsewhere:
/// `[..., C] -> [..., grid, grid]`.
fn grid_map(c: &mut CallCtx) -> OpResult {
    let x = c.tensor(Some(0), "x")?;
    let pos_v = c.value(Some(1), "positions");
    let grid = c.int(Some(2), "grid", Some(9))?;
    let grid = size_in(c, Some(2), "grid", grid, 1, 4096)? as i64;
    let t = float_input(c, x, 1, "[..., channels]")?;
    let channels = last_known(c, x, &t, "channel count")?;
    let bad = |c: &mut CallCtx| {
        c.arg_error(
            Some(1),
            "positions",
            "`grid_map` needs `positions` as a list of [row, col] pairs, one per channel",
            "e.g. `positions = [[0, 3], [1, 3], ...]`",
        )
    };
    let items = match pos_v {
        Some(Value::List(items)) => items,
        _ => return Err(bad(c)),
    };
    let mut cells = Vec::with_capacity(items.len());
    let mut seen = std::collections::HashMap::new();
    for (i, item) in items.iter().enumerate() {
        let (r, col) = match item {
            Value::List(p) if p.len() == 2 => match (&p[0], &p[1]) {
                (Value::Int(r), Value::Int(col)) => (*r, *col),
                _ => return Err(bad(c)),
            },
            _ => return Err(bad(c)),
        };
        if !(0..grid).contains(&r) || !(0..grid).contains(&col) {
            return Err(c.arg_error(
                Some(1),
                "positions",
                format!(
                    "`grid_map`: position {i} is [{r}, {col}], outside the {grid} x {grid} grid"
                ),
                format!("rows and columns run 0..{}", grid - 1),
            ));
        }
        let cell = r * grid + col;
        if let Some(&j) = seen.get(&cell) {
            return Err(c.arg_error(
                Some(1),
                "positions",
                format!("`grid_map`: channels {j} and {i} are both placed at [{r}, {col}]"),
                "every channel needs its own cell",
            ));
        }
        seen.insert(cell, i);
        cells.push(cell);
    }
    if cells.len() as i64 != channels {
        return Err(c.shape_error(
            format!(
                "`grid_map`: {} positions for an input with {channels} channels in its last dim ({})",
                cells.len(),
                c.type_text(&t)
            ),
            &[("the input", x)],
            "give exactly one [row, col] per channel, in the channel order of the input",
        ));
    }
    let mut shape = t.shape[..t.rank() - 1].to_vec();
    shape.push(Dim::known(grid));
    shape.push(Dim::known(grid));
    let op = Op::new("grid_map")
        .with("grid", Attr::Int(grid))
        .with("cells", Attr::Ints(cells));
    c.emit1(op, &[x], TensorType::new(t.dtype, shape), Dim::known(0))
}

// ---------------------------------------------------------------------------
// VGGish frontend and postprocess.
// ---------------------------------------------------------------------------

/// `frame(x, length, hop, dim = 0)`: overlapping windows along `dim`, as
/// `mel_features.frame`: `[S, ...] -> [F, length, ...]` with
/// `F = 1 + (S - length) // hop` (incomplete frames at the end are dropped).
fn frame(c: &mut CallCtx) -> OpResult {
    let x = c.tensor(Some(0), "x")?;
    let length = c.int(Some(1), "length", None)?;
    let hop = c.int(Some(2), "hop", None)?;
    let d = c.int(None, "dim", Some(0))?;
    at_least(c, Some(1), "length", &[length], 1)?;
    at_least(c, Some(2), "hop", &[hop], 1)?;
    let t = c.ty(x);
    if t.sparse || t.rank() == 0 {
        return Err(c.shape_error(
            format!(
                "`frame` needs a dense tensor of rank >= 1, got {}",
                c.type_text(&t)
            ),
            &[("the input", x)],
            "frame a signal [samples] or [samples, features]",
        ));
    }
    let a = axis(c, None, "dim", d, t.rank())?;
    let size = c.known(x, a, "framed size")?;
    if size < length {
        return Err(c.shape_error(
            format!(
                "`frame`: dim {a} of {} has {size} samples, fewer than one frame of {length}",
                c.type_text(&t)
            ),
            &[("the input", x)],
            format!("give at least {length} samples, or use shorter frames"),
        ));
    }
    let frames = 1 + (size - length) / hop;
    let mut shape = t.shape.clone();
    shape[a] = Dim::known(frames);
    shape.insert(a + 1, Dim::known(length));
    let op = Op::new("frame")
        .with("dim", Attr::Int(a as i64))
        .with("length", Attr::Int(length))
        .with("hop", Attr::Int(hop));
    c.emit1(op, &[x], TensorType::new(t.dtype, shape), Dim::known(0))
}

/// `periodic_hann(length)`: the constant window `f32[length]`.
fn periodic_hann(c: &mut CallCtx) -> OpResult {
    let n = c.int(Some(0), "length", None)?;
    let n = size_in(c, Some(0), "length", n, 1, 1 << 20)?;
    let w = periodic_hann_window(n);
    Ok(Value::Tensor(c.constant(
        format!("periodic_hann({n})"),
        TensorType::known(DType::F32, &[n as i64]),
        w,
    )))
}

/// `rfft_magnitude(x, fft_length = next power of two)`:
/// `|rfft(x, fft_length)|` over the last dim, `[..., L] -> [..., n/2 + 1]`,
/// as two constant matmuls (real and imaginary parts).
fn rfft_magnitude(c: &mut CallCtx) -> OpResult {
    let x = c.tensor(Some(0), "x")?;
    let n = c.opt_int(Some(1), "fft_length")?;
    let t = float_input(c, x, 1, "[..., samples]")?;
    let length = last_known(c, x, &t, "frame length")?;
    let n = match n {
        Some(n) => n,
        None => (length as u64).next_power_of_two() as i64,
    };
    let n = size_in(c, Some(1), "fft_length", n, 1, 1 << 16)?;
    if (n as i64) < length {
        return Err(c.shape_error(
            format!("`rfft_magnitude`: fft_length {n} is shorter than the frames ({} has {length} samples)", c.type_text(&t)),
            &[("the input", x)],
            format!("use fft_length >= {length} (frames are zero-padded, never cut), e.g. {}", (length as u64).next_power_of_two()),
        ));
    }
    let bins = n / 2 + 1;
    if (length).saturating_mul(bins as i64) > MAX_CONST / 2 {
        return Err(c.arg_error(
            Some(1),
            "fft_length",
            format!("`rfft_magnitude`: a {length} x {bins} DFT matrix is too large a constant"),
            "use shorter frames",
        ));
    }
    let (cos, sin) = rdft_matrices(length as usize, n);
    let shape = [length, bins as i64];
    let cm = c.constant(
        format!("rdft_cos(length={length}, n={n})"),
        TensorType::known(t.dtype, &shape),
        cos,
    );
    let sm = c.constant(
        format!("rdft_sin(length={length}, n={n})"),
        TensorType::known(t.dtype, &shape),
        sin,
    );
    let re = apply_matrix(c, x, cm)?;
    let im = apply_matrix(c, x, sm)?;
    let re2 = c.call("square", vec![(None, Value::Tensor(re))])?;
    let im2 = c.call("square", vec![(None, Value::Tensor(im))])?;
    let power = c.call("add", vec![(None, re2), (None, im2)])?;
    c.call("sqrt", vec![(None, power)])
}

/// `mel_filterbank(x, num_bins = 64, rate = 16000, low = 125, high = 7500)`:
/// `[..., K] @ M[K, num_bins]` with the HTK mel matrix of
/// `mel_features.spectrogram_to_mel_matrix` (K spectrogram bins spanning
/// 0..rate/2).
fn mel_filterbank(c: &mut CallCtx) -> OpResult {
    let x = c.tensor(Some(0), "x")?;
    let bins = c.int(Some(1), "num_bins", Some(64))?;
    let rate = c.float(None, "rate", Some(16000.0))?;
    let low = c.float(None, "low", Some(125.0))?;
    let high = c.float(None, "high", Some(7500.0))?;
    let bins = size_in(c, Some(1), "num_bins", bins, 1, 4096)?;
    if !(rate > 0.0 && rate.is_finite()) {
        return Err(c.arg_error(
            None,
            "rate",
            format!("`rate` of `mel_filterbank` must be a positive sampling rate, got {rate}"),
            "e.g. `rate = 16000`",
        ));
    }
    let nyq = rate / 2.0;
    if !(low >= 0.0 && low < high && high <= nyq) {
        return Err(c.arg_error(
            None,
            "high",
            format!("`mel_filterbank`: the band {low}..{high} Hz is not inside 0..{nyq} Hz (Nyquist at rate {rate})"),
            "the mel bands need 0 <= low < high <= rate / 2",
        ));
    }
    let t = float_input(c, x, 1, "[..., spectrogram bins]")?;
    let k = last_known(c, x, &t, "spectrogram bin count")?;
    if k < 2 || k.saturating_mul(bins as i64) > MAX_CONST {
        return Err(c.shape_error(
            format!(
                "`mel_filterbank`: {} has {k} spectrogram bins; need 2..={} for {bins} mel bins",
                c.type_text(&t),
                MAX_CONST / bins as i64
            ),
            &[("the input", x)],
            "the last dim is the fft_length/2 + 1 bins of `rfft_magnitude`",
        ));
    }
    let m = mel_matrix(k as usize, bins, rate, low, high);
    let desc = format!("mel_matrix(spectrogram_bins={k}, mel_bins={bins}, rate={rate}, low={low}, high={high}, htk)");
    let mc = c.constant(desc, TensorType::known(t.dtype, &[k, bins as i64]), m);
    Ok(Value::Tensor(apply_matrix(c, x, mc)?))
}

/// `quantize_u8(x, min = -2.0, max = 2.0, rounding = "round")`: clamps to
/// `[min, max]`, maps linearly onto `[0, 255]` and rounds: `u8`, same shape.
fn quantize_u8(c: &mut CallCtx) -> OpResult {
    let x = c.tensor(Some(0), "x")?;
    let lo = c.float(Some(1), "min", Some(-2.0))?;
    let hi = c.float(Some(2), "max", Some(2.0))?;
    let rounding = c.choice(None, "rounding", &["round", "truncate"], "round")?;
    if !(lo < hi && lo.is_finite() && hi.is_finite()) {
        return Err(c.arg_error(
            Some(2),
            "max",
            format!("`quantize_u8` needs min < max, got min {lo}, max {hi}"),
            "e.g. `quantize_u8(x, min = -2.0, max = 2.0)`",
        ));
    }
    let t = expect_float(c, x)?;
    let out = TensorType::new(DType::U8, t.shape.clone());
    let flops = numel(&out).scale(4);
    let op = Op::new("quantize_u8")
        .with("min", Attr::Float(lo))
        .with("max", Attr::Float(hi))
        .with("rounding", Attr::Str(rounding.into()));
    c.emit1(op, &[x], out, flops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elab::elaborate;
    use crate::ir::Graph;
    use crate::program::Program;
    use std::path::Path;

    const FIR: &str = include_str!("../../../tests/fixtures/signal/fir.txt");
    const HANN: &str = include_str!("../../../tests/fixtures/signal/hann.txt");
    const RFFT: &str = include_str!("../../../tests/fixtures/signal/rfft.txt");
    const MEL: &str = include_str!("../../../tests/fixtures/signal/mel.txt");
    const FRAME: &str = include_str!("../../../tests/fixtures/signal/frame.txt");
    const DE: &str = include_str!("../../../tests/fixtures/signal/de.txt");
    const DEAP: &str = include_str!("../../../tests/fixtures/signal/deap_positions.txt");

    /// The numbers of record `name` of a fixture file.
    fn record(text: &str, name: &str) -> Vec<f64> {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| {
                panic!("fixture record {name} missing; rerun tests/fixtures/signal_reference.py")
            });
        line.split_whitespace()
            .skip(1)
            .map(|v| v.parse().expect("number"))
            .collect()
    }

    fn close(got: &[f64], want: &[f64], tol: f64, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= tol, "{what}[{i}]: got {g}, want {w}");
        }
    }

    fn model(text: &str) -> Result<Graph, Vec<String>> {
        let (program, diags) = Program::from_text(Path::new("test.net"), text);
        assert!(
            diags.is_empty(),
            "parse errors: {:?}",
            diags.iter().map(|d| &d.message).collect::<Vec<_>>()
        );
        let def = program.model(None).expect("one model");
        elaborate(&program, def, &[]).map_err(|ds| ds.into_iter().map(|d| d.message).collect())
    }

    fn output_type(text: &str) -> String {
        let g = model(text).unwrap_or_else(|e| panic!("errors: {e:?}"));
        let (_, v) = g.outputs[0].clone();
        g.type_text(g.ty(v))
    }

    fn error(text: &str) -> String {
        match model(text) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.join("\n"),
        }
    }

    #[test]
    fn fir_taps_match_scipy_firwin() {
        for (lo, hi) in [(4, 8), (8, 14), (14, 31), (31, 45)] {
            let want = record(FIR, &format!("fir_{lo}_{hi}_129_128"));
            close(
                &firwin_bandpass(129, lo as f64, hi as f64, 128.0),
                &want,
                1e-12,
                "fir",
            );
        }
        let want = record(FIR, "fir_300_3400_31_8000");
        close(
            &firwin_bandpass(31, 300.0, 3400.0, 8000.0),
            &want,
            1e-12,
            "fir 8 kHz",
        );
    }

    #[test]
    fn hann_matches_mel_features() {
        close(
            &periodic_hann_window(400),
            &record(HANN, "hann_400"),
            1e-15,
            "hann 400",
        );
        close(
            &periodic_hann_window(8),
            &record(HANN, "hann_8"),
            1e-15,
            "hann 8",
        );
    }

    #[test]
    fn dft_magnitude_matches_numpy_rfft() {
        for (len, n) in [(400usize, 512usize), (6, 8)] {
            let x: Vec<f64> = (0..len)
                .map(|k| ((k * 7919) % 101) as f64 / 101.0 - 0.5)
                .collect();
            let (cos, sin) = rdft_matrices(len, n);
            let bins = n / 2 + 1;
            let mag: Vec<f64> = (0..bins)
                .map(|k| {
                    let re: f64 = (0..len).map(|l| x[l] * cos[l * bins + k]).sum();
                    let im: f64 = (0..len).map(|l| x[l] * sin[l * bins + k]).sum();
                    (re * re + im * im).sqrt()
                })
                .collect();
            close(
                &mag,
                &record(RFFT, &format!("rfft_{len}_{n}")),
                1e-9,
                "rfft",
            );
        }
    }

    #[test]
    fn mel_matrix_matches_mel_features() {
        let mut lines = MEL.lines().peekable();
        let mut checked = 0;
        while let Some(head) = lines.next() {
            let f: Vec<&str> = head.split_whitespace().collect();
            let parts: Vec<&str> = f[0].split('_').collect();
            let (bins, spec, rate, lo, hi): (usize, usize, f64, f64, f64) = (
                parts[1].parse().unwrap(),
                parts[2].parse().unwrap(),
                parts[3].parse().unwrap(),
                parts[4].parse().unwrap(),
                parts[5].parse().unwrap(),
            );
            let nz: usize = f[3].parse().unwrap();
            let m = mel_matrix(spec, bins, rate, lo, hi);
            let mut want = vec![0.0; spec * bins];
            for _ in 0..nz {
                let e: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
                let (i, j, v): (usize, usize, f64) = (
                    e[0].parse().unwrap(),
                    e[1].parse().unwrap(),
                    e[2].parse().unwrap(),
                );
                want[i * bins + j] = v;
            }
            close(&m, &want, 1e-9, f[0]);
            assert!(m[..bins].iter().all(|v| *v == 0.0), "DC row is zero");
            checked += 1;
        }
        assert_eq!(checked, 2);
    }

    #[test]
    fn differential_entropy_reference() {
        // The op's definition (population variance per segment), checked
        // against numpy on the fixture signal; the runtime implements the same.
        let x = record(DE, "de_input");
        let got: Vec<f64> = x
            .chunks(8)
            .map(|s| {
                let mean = s.iter().sum::<f64>() / 8.0;
                let var = s.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / 8.0;
                0.5 * (2.0 * PI * std::f64::consts::E * var).ln()
            })
            .collect();
        close(&got, &record(DE, "de_output"), 1e-12, "de");
    }

    #[test]
    fn filterbank_shapes() {
        let src = "model m { input eeg: f32[N, 32, 8064]\n output y = fir_filterbank(eeg, [[4, 8], [8, 14], [14, 31], [31, 45]], 128) }";
        assert_eq!(output_type(src), "f32[N, 4, 32, 8064]");
        let src = "model m { input eeg: f32[N, 32, 8064]\n output y = fir_filterbank(eeg, [[4, 8], [8, 14]], rate = 128, taps = 65, dim = 2) }";
        assert_eq!(output_type(src), "f32[N, 32, 2, 8064]");
        let src =
            "model m { input eeg: f32[N, 32, 1000]\n output y = fir_bandpass(eeg, 4, 8, 128) }";
        assert_eq!(output_type(src), "f32[N, 32, 1000]");
        let src = "model m { input s: f32[300]\n output y = fir_bandpass(s, 1.5, 20.0, rate = 100, taps = 31) }";
        assert_eq!(output_type(src), "f32[300]");
    }

    #[test]
    fn filterbank_constant_and_flops() {
        let src = "model m { input eeg: f32[2, 3, 10]\n output y = fir_filterbank(eeg, [[4, 8], [8, 14]], 128, taps = 5) }";
        let g = model(src).unwrap();
        let bank = g
            .consts
            .iter()
            .find(|k| k.desc.starts_with("fir_filterbank"))
            .expect("bank constant");
        assert_eq!(bank.data.len(), 10);
        close(
            &bank.data[..5],
            &firwin_bandpass(5, 4.0, 8.0, 128.0),
            0.0,
            "band 0",
        );
        let conv = g
            .nodes
            .iter()
            .find(|n| n.op.name == "conv1d")
            .expect("conv1d");
        assert_eq!(conv.flops.as_known(), Some(2 * 3 * 2 * 10 * 2 * 5));
        assert_eq!(conv.op.attr("pad"), Some(&Attr::Ints(vec![2])));
    }

    #[test]
    fn filter_errors() {
        let e =
            error("model m { input x: f32[N, 32, 100]\n output y = fir_bandpass(x, 8, 70, 128) }");
        assert!(e.contains("8..70 Hz is not inside 0..64 Hz"), "{e}");
        let e = error("model m { input x: f32[N, 32, 100]\n output y = fir_bandpass(x, 4, 8, 128, taps = 64) }");
        assert!(e.contains("needs an odd length"), "{e}");
        let e = error(
            "model m { input x: f32[N, 32, 100]\n output y = fir_filterbank(x, [4, 8], 128) }",
        );
        assert!(e.contains("list of [low, high] pairs"), "{e}");
        let e = error("model m { input x: f32[N, 32, 100]\n output y = fir_filterbank(x, [[4, 8]], 128, dim = 3) }");
        assert!(e.contains("cannot come after the time axis"), "{e}");
        let e =
            error("model m { input x: i64[N, 32, 100]\n output y = fir_bandpass(x, 4, 8, 128) }");
        assert!(e.contains("dense float tensor"), "{e}");
        let e = error("model m { input x: f32[N, 32, 100]\n output y = fir_bandpass(x, 4, 8, 0) }");
        assert!(e.contains("positive sampling rate"), "{e}");
    }

    #[test]
    fn de_shapes_and_errors() {
        let src =
            "model m { input x: f32[N, 4, 32, 8064]\n output y = differential_entropy(x, 128) }";
        assert_eq!(output_type(src), "f32[N, 4, 32, 63]");
        let src = "model m { input x: f32[T, 8]\n output y = differential_entropy(x, 4, dim = 0) }";
        let e = error(src);
        assert!(e.contains("does not split into segments of 4"), "{e}");
        let src = "model m { input x: f32[8, 64]\n output y = differential_entropy(x, 16, 0) }";
        assert!(error(src).contains("(size 8) does not split into segments of 16"));
        let src = "model m { input x: f32[8, 64]\n output y = differential_entropy(x, 1) }";
        assert!(error(src).contains("must be at least 2"));
    }

    #[test]
    fn grid_map_shapes_and_errors() {
        let src = "model m { input x: f32[N, 4, 3]\n output y = grid_map(x, [[0, 0], [1, 1], [2, 2]], grid = 3) }";
        assert_eq!(output_type(src), "f32[N, 4, 3, 3]");
        let g = model(src).unwrap();
        let node = g.nodes.iter().find(|n| n.op.name == "grid_map").unwrap();
        assert_eq!(node.op.attr("cells"), Some(&Attr::Ints(vec![0, 4, 8])));
        let e = error(
            "model m { input x: f32[N, 3]\n output y = grid_map(x, [[0, 0], [1, 1]], grid = 3) }",
        );
        assert!(
            e.contains("2 positions for an input with 3 channels"),
            "{e}"
        );
        let e = error(
            "model m { input x: f32[N, 2]\n output y = grid_map(x, [[0, 0], [0, 0]], grid = 3) }",
        );
        assert!(e.contains("both placed at [0, 0]"), "{e}");
        let e = error(
            "model m { input x: f32[N, 2]\n output y = grid_map(x, [[0, 0], [3, 0]], grid = 3) }",
        );
        assert!(e.contains("outside the 3 x 3 grid"), "{e}");
    }

    #[test]
    fn deap_positions_fixture_is_a_layout() {
        let p = record(DEAP, "deap_positions");
        assert_eq!(p.len(), 64);
        let mut cells: Vec<i64> = p
            .chunks(2)
            .map(|rc| rc[0] as i64 * 9 + rc[1] as i64)
            .collect();
        cells.sort();
        cells.dedup();
        assert_eq!(cells.len(), 32);
    }

    #[test]
    fn frame_sizes_match_mel_features() {
        for line in FRAME.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let p: Vec<i64> = f[0]
                .split('_')
                .skip(1)
                .map(|v| v.parse().unwrap())
                .collect();
            let src = format!(
                "model m {{ input s: f32[{}]\n output y = frame(s, {}, {}) }}",
                p[0], p[1], p[2]
            );
            assert_eq!(
                output_type(&src),
                format!("f32[{}, {}]", f[1], p[1]),
                "{line}"
            );
        }
        let src = "model m { input s: f32[998, 64]\n output y = frame(s, 96, 96) }";
        assert_eq!(output_type(src), "f32[10, 96, 64]");
        let src = "model m { input s: f32[N, 1000]\n output y = frame(s, 400, 160, dim = 1) }";
        assert_eq!(output_type(src), "f32[N, 4, 400]");
        let e = error("model m { input s: f32[300]\n output y = frame(s, 400, 160) }");
        assert!(e.contains("fewer than one frame of 400"), "{e}");
        let e = error("model m { input s: f32[S]\n output y = frame(s, 400, 160) }");
        assert!(e.contains("known at compile time"), "{e}");
    }

    #[test]
    fn spectrum_shapes() {
        let src = "model m { input f: f32[998, 400]\n output y = rfft_magnitude(f * periodic_hann(400)) }";
        assert_eq!(output_type(src), "f32[998, 257]");
        let src = "model m { input f: f32[6]\n output y = rfft_magnitude(f, 8) }";
        assert_eq!(output_type(src), "f32[5]");
        let src = "model m { input f: f32[N, 998, 257]\n output y = mel_filterbank(f) }";
        assert_eq!(output_type(src), "f32[N, 998, 64]");
        let src = "model m { input f: f32[257]\n output y = mel_filterbank(f, 20, rate = 8000, low = 125, high = 3800) }";
        assert_eq!(output_type(src), "f32[20]");
        let g = model("model m { input f: f32[4, 400]\n output y = rfft_magnitude(f) }").unwrap();
        let mm: i64 = g
            .nodes
            .iter()
            .filter(|n| n.op.name == "matmul")
            .map(|n| n.flops.as_known().unwrap())
            .sum();
        assert_eq!(mm, 2 * 4 * 257 * 2 * 400);
        let e = error("model m { input f: f32[4, 400]\n output y = rfft_magnitude(f, 256) }");
        assert!(
            e.contains("fft_length 256 is shorter than the frames"),
            "{e}"
        );
        let e = error("model m { input f: f32[4, 257]\n output y = mel_filterbank(f, rate = 16000, high = 9000) }");
        assert!(e.contains("not inside 0..8000 Hz"), "{e}");
    }

    #[test]
    fn quantize_shapes_and_errors() {
        let src = "model m { input e: f32[N, 128]\n output q = quantize_u8(clamp(e, -2.0, 2.0)) }";
        assert_eq!(output_type(src), "u8[N, 128]");
        let e = error("model m { input e: f32[N, 128]\n output q = quantize_u8(e, 2.0, -2.0) }");
        assert!(e.contains("needs min < max"), "{e}");
        let e = error(
            "model m { input e: f32[N, 128]\n output q = quantize_u8(e, rounding = \"up\") }",
        );
        assert!(e.contains("not a valid `rounding`"), "{e}");
    }

    fn load_model(file: &str, name: &str) -> Graph {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../models")
            .join(file);
        let (program, diags) = Program::load(&path);
        assert!(
            diags.is_empty(),
            "{file}: {:?}",
            diags.iter().map(|d| &d.message).collect::<Vec<_>>()
        );
        let def = program.model(Some(name)).expect("model");
        elaborate(&program, def, &[]).unwrap_or_else(|e| {
            panic!(
                "{name}: {:?}",
                e.iter().map(|d| &d.message).collect::<Vec<_>>()
            )
        })
    }

    fn outputs(g: &Graph) -> Vec<String> {
        g.outputs
            .iter()
            .map(|(n, v)| format!("{n}: {}", g.type_text(g.ty(*v))))
            .collect()
    }

    #[test]
    fn vggish_models() {
        let g = load_model("vggish.net", "vggish");
        let count: i64 = g
            .params
            .iter()
            .filter(|p| !p.buffer)
            .map(|p| p.ty.known_shape().unwrap().iter().product::<i64>())
            .sum();
        assert_eq!(count, 72_141_184);
        assert_eq!(outputs(&g), ["embedding: f32[N, 128]"]);
        let g = load_model("vggish.net", "vggish_frontend");
        assert_eq!(outputs(&g), ["examples: f32[10, 96, 64]"]);
        let g = load_model("vggish.net", "vggish_postprocess");
        assert_eq!(outputs(&g), ["quantized: u8[N, 128]"]);
        let bufs: Vec<String> = g
            .params
            .iter()
            .map(|p| format!("{} {}", p.path, g.type_text(&p.ty)))
            .collect();
        assert_eq!(
            bufs,
            ["pca_eigen_vectors f32[128, 128]", "pca_means f32[128]"]
        );
    }

    #[test]
    fn eeg_de_features_model() {
        let g = load_model("eeg_de_features.net", "eeg_de_features");
        assert_eq!(outputs(&g), ["features: f32[60*N, 4, 9, 9]"]);
        let node = g.nodes.iter().find(|n| n.op.name == "grid_map").unwrap();
        let want: Vec<i64> = record(DEAP, "deap_positions")
            .chunks(2)
            .map(|rc| rc[0] as i64 * 9 + rc[1] as i64)
            .collect();
        assert_eq!(node.op.attr("cells"), Some(&Attr::Ints(want)));
    }
}
