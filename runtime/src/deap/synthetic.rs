//! Synthetic DEAP-shaped subjects with a known class structure, for testing
//! an emotion-recognition pipeline without the licensed recordings.
//!
//! A subject has the release's layout: `[trials, 40 channels, samples]`
//! (32 EEG channels in DEAP's order, [`EEG_CHANNELS`], then 8 peripheral
//! ones), a baseline of `baseline_s` seconds followed by `trial_s` seconds
//! at `rate` Hz, and ratings `[trials, 4]` (valence, arousal, dominance,
//! liking). Everything is drawn from a splitmix64 generator keyed by
//! `(seed, subject, trial, channel)`, so a subject is the same whatever
//! the thread count.
//!
//! # Ratings
//! Each rating lies in [1, 9] and is never 5: exactly half the trials
//! (rounded down) are high (> 5) in valence, and independently half in
//! arousal; a high rating is uniform in (5.08, 9], a low one in [1, 4.92).
//! Dominance and liking are drawn the same way but carry no signal.
//!
//! # EEG model (µV)
//! Each EEG channel is `g_c · (pink + Σ_bands e_b(t) · a_b · Σ_k w_k sin(2π f_k t + φ_k))`:
//! - `pink`: 1/f background noise of RMS `background_uv`, white noise
//!   through Paul Kellet's six first-order sections, started in its
//!   stationary state;
//! - bands theta 4-8, alpha 8-14, beta 14-31, gamma 31-45 Hz, each three
//!   sinusoids at frequencies drawn per subject and channel (0.5 Hz inside
//!   the band edges), random phases per trial, made by a recursive
//!   oscillator; the band's neutral RMS is `band_uv[b]`;
//! - `e_b(t) = 1 + 0.4 sin(2π f t + φ)`, f in [0.05, 0.25] Hz: a slow
//!   envelope so one-second segment powers vary;
//! - `a_b` multiplies the neutral amplitude by log-normal gains: per subject
//!   and channel (`g_c`, σ = 0.2 on the log amplitude) and per band
//!   (σ = 0.15), per trial and band shared by all channels (σ = 0.25), per
//!   trial, channel and band (σ = 0.15). These apply to baseline and trial
//!   alike, as a subject's state does.
//!
//! # Class structure (the trial part only; the baseline is neutral)
//! With `s_v = ±(0.5 + 0.5 |valence - 5| / 4)` (+ for high valence) and
//! `s_a` likewise for arousal, a band's log power changes by
//! `effect · (s_v · k_v + s_a · k_a)` (its amplitude by half that in log):
//! - valence: alpha `k_v = +1` on the left frontal channels Fp1 AF3 F3 F7
//!   FC5 FC1, `-1` on the right frontal Fp2 AF4 F4 F8 FC6 FC2 (a frontal
//!   alpha asymmetry), theta `+0.5` on the parietal P3 P7 Pz P4 P8;
//! - arousal: beta and gamma `k_a = +1` on the central and temporal C3 T7
//!   CP5 Cz C4 T8 CP6, alpha `-1` on the parietal and occipital P3 P7 PO3
//!   O1 Oz Pz P4 P8 PO4 O2.
//!
//! So the classes are separated by at least `effect` in log band power on
//! those channels, against trial-to-trial jitter and segment noise: with
//! the default 0.5 a band-power classifier is well above chance without
//! being perfect. The signs are a stand-in for the literature, not a claim
//! about it. Unlike the release (band-passed 4-45 Hz), the background
//! keeps its low frequencies.
//!
//! # Peripheral channels (arbitrary units)
//! hEOG (slow pink drift), vEOG (pink drift and blinks every 2-6 s), zEMG
//! and tEMG (white noise under a slow envelope), GSR (a slow wave on an
//! offset), respiration (about 0.25 Hz), plethysmograph (a 60-90 bpm pulse
//! with its second harmonic), temperature (a slow drift). They carry no
//! class information.

use super::DeapSubject;
use rayon::prelude::*;

/// DEAP's 32 EEG channels in the order of the release (Geneva order).
pub const EEG_CHANNELS: [&str; 32] = [
    "Fp1", "AF3", "F3", "F7", "FC5", "FC1", "C3", "T7", "CP5", "CP1", "P3", "P7", "PO3", "O1",
    "Oz", "Pz", "Fp2", "AF4", "Fz", "F4", "F8", "FC6", "FC2", "Cz", "C4", "T8", "CP6", "CP2", "P4",
    "P8", "PO4", "O2",
];

/// Channels per trial: 32 EEG, then 8 peripheral.
const CHANNELS: usize = 40;

/// The bands (Hz): theta, alpha, beta, gamma.
const BANDS: [(f64, f64); 4] = [(4.0, 8.0), (8.0, 14.0), (14.0, 31.0), (31.0, 45.0)];
const THETA: usize = 0;
const ALPHA: usize = 1;
const BETA: usize = 2;
const GAMMA: usize = 3;

/// Sinusoids per band and channel.
const TONES: usize = 3;

/// Channel indices (into [`EEG_CHANNELS`]) of the regions the classes act on.
const LEFT_FRONTAL: [usize; 6] = [0, 1, 2, 3, 4, 5];
const RIGHT_FRONTAL: [usize; 6] = [16, 17, 19, 20, 21, 22];
const PARIETAL: [usize; 5] = [10, 11, 15, 28, 29];
const CENTRAL_TEMPORAL: [usize; 7] = [6, 7, 8, 23, 24, 25, 26];
const PARIETO_OCCIPITAL: [usize; 10] = [10, 11, 12, 13, 14, 15, 28, 29, 30, 31];

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticSpec {
    /// Seed of everything random.
    pub seed: u64,
    /// Trials per subject (40 in DEAP).
    pub trials: usize,
    /// Sampling rate in Hz (128 in DEAP).
    pub rate: f64,
    /// Seconds of neutral baseline before each trial (3 in DEAP).
    pub baseline_s: usize,
    /// Seconds of stimulus per trial (60 in DEAP).
    pub trial_s: usize,
    /// Class effect: the change of log band power between neutral and an
    /// extreme rating on the channels the class acts on (0 = no signal).
    pub effect: f32,
    /// Neutral RMS amplitude (µV) of the theta, alpha, beta, gamma rhythms.
    pub band_uv: [f32; 4],
    /// RMS amplitude (µV) of the 1/f background.
    pub background_uv: f32,
}

impl Default for SyntheticSpec {
    /// DEAP's sizes (40 trials, 128 Hz, 3 s + 60 s), seed 0, effect 0.5.
    fn default() -> Self {
        SyntheticSpec {
            seed: 0,
            trials: 40,
            rate: 128.0,
            baseline_s: 3,
            trial_s: 60,
            effect: 0.5,
            band_uv: [4.0, 6.0, 2.5, 1.2],
            background_uv: 6.0,
        }
    }
}

impl SyntheticSpec {
    /// Samples per baseline.
    fn baseline_samples(&self) -> usize {
        (self.baseline_s as f64 * self.rate).round() as usize
    }

    /// Samples per channel: baseline and trial.
    pub fn samples(&self) -> usize {
        ((self.baseline_s + self.trial_s) as f64 * self.rate).round() as usize
    }
}

/// A small splitmix64 generator.
struct Rng(u64);

impl Rng {
    /// A generator for the stream named by `keys`.
    fn keyed(keys: &[u64]) -> Rng {
        Rng(keys
            .iter()
            .fold(0x6a09_e667_f3bc_c909, |h, &k| mix(h ^ mix(k))))
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u = 1.0 - self.uniform();
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// Uniform white noise of unit variance.
    fn white(&mut self) -> f64 {
        (2.0 * self.uniform() - 1.0) * 3f64.sqrt()
    }
}

/// splitmix64's output function.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A sinusoid by the recurrence `y[n] = 2 cos(w) y[n-1] - y[n-2]`.
#[derive(Clone, Copy)]
struct Osc {
    c2: f64,
    y1: f64,
    y2: f64,
}

impl Osc {
    /// `sin(2π f n / rate + phase)` for n = 0, 1, ...
    fn new(freq: f64, rate: f64, phase: f64) -> Osc {
        let w = std::f64::consts::TAU * freq / rate;
        Osc {
            c2: 2.0 * w.cos(),
            y1: (phase - w).sin(),
            y2: (phase - 2.0 * w).sin(),
        }
    }

    fn next(&mut self) -> f64 {
        let y = self.c2 * self.y1 - self.y2;
        self.y2 = self.y1;
        self.y1 = y;
        y
    }
}

/// Paul Kellet's pink-noise filter: poles and gains of its six sections,
/// and the weights of the current and previous white sample.
const KELLET_POLE: [f64; 6] = [0.99886, 0.99332, 0.96900, 0.86650, 0.55000, -0.7616];
const KELLET_GAIN: [f64; 6] = [
    0.0555179, 0.0750759, 0.1538520, 0.3104856, 0.5329522, -0.0168980,
];
const KELLET_NOW: f64 = 0.5362;
const KELLET_PREV: f64 = 0.115926;

/// 1/f noise of unit variance from unit white noise.
struct Pink {
    state: [f64; 6],
    prev: f64,
    scale: f64,
}

impl Pink {
    /// A filter in its stationary state, scaled to RMS `rms`.
    fn new(rng: &mut Rng, rms: f64) -> Pink {
        let (chol, var) = kellet_stats();
        let z: [f64; 6] = std::array::from_fn(|_| rng.normal());
        let state = std::array::from_fn(|i| (0..=i).map(|j| chol[i][j] * z[j]).sum());
        Pink {
            state,
            prev: 0.0,
            scale: rms / var.sqrt(),
        }
    }

    fn next(&mut self, white: f64) -> f64 {
        let mut y = KELLET_NOW * white + KELLET_PREV * self.prev;
        for ((s, a), g) in self.state.iter_mut().zip(KELLET_POLE).zip(KELLET_GAIN) {
            *s = a * *s + g * white;
            y += *s;
        }
        self.prev = white;
        y * self.scale
    }
}

/// The Cholesky factor of the stationary covariance of Kellet's section
/// states (`g_i g_j / (1 - a_i a_j)` for unit white noise) and the output
/// variance.
fn kellet_stats() -> ([[f64; 6]; 6], f64) {
    let cov = |i: usize, j: usize| {
        KELLET_GAIN[i] * KELLET_GAIN[j] / (1.0 - KELLET_POLE[i] * KELLET_POLE[j])
    };
    let mut l = [[0.0; 6]; 6];
    for i in 0..6 {
        for j in 0..=i {
            let s = cov(i, j) - (0..j).map(|k| l[i][k] * l[j][k]).sum::<f64>();
            l[i][j] = if i == j {
                s.max(0.0).sqrt()
            } else {
                s / l[j][j]
            };
        }
    }
    // y(n) = Σ_m h_m w(n - m): h_m = Σ g_i a_i^m, plus the direct weights at
    // m = 0 and m = 1.
    let sum_ij: f64 = (0..6).flat_map(|i| (0..6).map(move |j| cov(i, j))).sum();
    let g0: f64 = KELLET_GAIN.iter().sum();
    let g1: f64 = KELLET_GAIN
        .iter()
        .zip(KELLET_POLE)
        .map(|(g, a)| g * a)
        .sum();
    let var = sum_ij
        + 2.0 * KELLET_NOW * g0
        + KELLET_NOW * KELLET_NOW
        + 2.0 * KELLET_PREV * g1
        + KELLET_PREV * KELLET_PREV;
    (l, var)
}

/// Per-subject draws of one EEG channel.
struct ChannelTraits {
    gain: f64,
    /// Tone frequencies (Hz) per band.
    freqs: [[f64; TONES]; 4],
    /// Tone amplitudes (µV peak) per band at neutral power.
    amps: [[f64; TONES]; 4],
}

/// Per-trial draws shared by the channels.
struct TrialTraits {
    /// Signed class strengths `s_v`, `s_a`.
    valence: f64,
    arousal: f64,
    /// Log-normal amplitude jitter per band.
    band_jitter: [f64; 4],
}

/// The log-power weights `(k_v, k_a)` of EEG channel `c` in band `b`.
fn class_weights(c: usize, b: usize) -> (f64, f64) {
    let mut kv = 0.0;
    let mut ka = 0.0;
    if b == ALPHA && LEFT_FRONTAL.contains(&c) {
        kv += 1.0;
    }
    if b == ALPHA && RIGHT_FRONTAL.contains(&c) {
        kv -= 1.0;
    }
    if b == THETA && PARIETAL.contains(&c) {
        kv += 0.5;
    }
    if (b == BETA || b == GAMMA) && CENTRAL_TEMPORAL.contains(&c) {
        ka += 1.0;
    }
    if b == ALPHA && PARIETO_OCCIPITAL.contains(&c) {
        ka -= 1.0;
    }
    (kv, ka)
}

/// A rating in [1, 9], never 5: high in (5.08, 9], low in [1, 4.92).
fn rating(rng: &mut Rng, high: bool) -> f64 {
    let d = 4.0 * (0.02 + 0.98 * rng.uniform());
    if high {
        9f64.min(5.0 + d)
    } else {
        1f64.max(5.0 - d)
    }
}

/// Half of `n` flags set (rounded down), in random order.
fn balanced(rng: &mut Rng, n: usize) -> Vec<bool> {
    let mut v: Vec<bool> = (0..n).map(|i| i < n / 2).collect();
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

/// Stream names of the generator, so no two draws share a stream.
const STREAM_RATINGS: u64 = 1;
const STREAM_CHANNELS: u64 = 2;
const STREAM_TRIALS: u64 = 3;
const STREAM_SIGNAL: u64 = 4;

/// Generates subject number `subject` of `spec` (see the module doc for the
/// model); the same `(spec, subject)` always gives the same subject.
pub fn generate_subject(spec: &SyntheticSpec, subject: u32) -> DeapSubject {
    let key = [spec.seed, u64::from(subject)];
    let trials = spec.trials;
    let samples = spec.samples();

    let mut rng = Rng::keyed(&[key[0], key[1], STREAM_RATINGS]);
    let high_v = balanced(&mut rng, trials);
    let high_a = balanced(&mut rng, trials);
    let mut labels = Vec::with_capacity(trials * 4);
    for t in 0..trials {
        let dominance = rng.uniform() < 0.5;
        let liking = rng.uniform() < 0.5;
        for high in [high_v[t], high_a[t], dominance, liking] {
            labels.push(rating(&mut rng, high) as f32);
        }
    }
    let strength = |r: f32| {
        let d = f64::from(r) - 5.0;
        d.signum() * (0.5 + 0.5 * d.abs() / 4.0)
    };

    let mut rng = Rng::keyed(&[key[0], key[1], STREAM_CHANNELS]);
    let nyquist = spec.rate / 2.0;
    let channels: Vec<ChannelTraits> = (0..EEG_CHANNELS.len())
        .map(|_| {
            let gain = (0.2 * rng.normal()).exp();
            let mut freqs = [[0.0; TONES]; 4];
            let mut amps = [[0.0; TONES]; 4];
            for (b, &(lo, hi)) in BANDS.iter().enumerate() {
                let band_gain = (0.15 * rng.normal()).exp();
                let hi = (hi - 0.5).min(nyquist * 0.95);
                let w: [f64; TONES] = std::array::from_fn(|_| rng.range(0.5, 1.0));
                let norm = w.iter().map(|x| x * x).sum::<f64>().sqrt();
                for k in 0..TONES {
                    freqs[b][k] = rng.range(lo + 0.5, hi.max(lo + 0.5));
                    // Peak amplitude: the band's RMS is band_uv.
                    amps[b][k] =
                        f64::from(spec.band_uv[b]) * band_gain * std::f64::consts::SQRT_2 * w[k]
                            / norm;
                }
            }
            ChannelTraits { gain, freqs, amps }
        })
        .collect();

    let mut rng = Rng::keyed(&[key[0], key[1], STREAM_TRIALS]);
    let trial_traits: Vec<TrialTraits> = (0..trials)
        .map(|t| TrialTraits {
            valence: strength(labels[4 * t]),
            arousal: strength(labels[4 * t + 1]),
            band_jitter: std::array::from_fn(|_| (0.25 * rng.normal()).exp()),
        })
        .collect();

    let mut data = vec![0f32; trials * CHANNELS * samples];
    if samples > 0 {
        data.par_chunks_mut(samples)
            .enumerate()
            .for_each(|(i, out)| {
                let (t, c) = (i / CHANNELS, i % CHANNELS);
                let mut rng = Rng::keyed(&[key[0], key[1], STREAM_SIGNAL, t as u64, c as u64]);
                match channels.get(c) {
                    Some(ch) => eeg(spec, c, ch, &trial_traits[t], &mut rng, out),
                    None => peripheral(spec, c - EEG_CHANNELS.len(), &mut rng, out),
                }
            });
    }
    DeapSubject {
        data,
        trials,
        channels: CHANNELS,
        samples,
        labels,
    }
}

/// One EEG channel of one trial into `out`.
fn eeg(
    spec: &SyntheticSpec,
    c: usize,
    ch: &ChannelTraits,
    trial: &TrialTraits,
    rng: &mut Rng,
    out: &mut [f32],
) {
    let rate = spec.rate;
    let mut pink = Pink::new(rng, f64::from(spec.background_uv));
    let mut tones = [[Osc::new(0.0, rate, 0.0); TONES]; 4];
    let mut envelopes = [Osc::new(0.0, rate, 0.0); 4];
    let mut base_gain = [0.0; 4];
    let mut trial_gain = [0.0; 4];
    for b in 0..4 {
        for (tone, &freq) in tones[b].iter_mut().zip(&ch.freqs[b]) {
            let phase = rng.range(0.0, std::f64::consts::TAU);
            *tone = Osc::new(freq, rate, phase);
        }
        let phase = rng.range(0.0, std::f64::consts::TAU);
        envelopes[b] = Osc::new(rng.range(0.05, 0.25), rate, phase);
        let jitter = trial.band_jitter[b] * (0.15 * rng.normal()).exp();
        let (kv, ka) = class_weights(c, b);
        let log_power = f64::from(spec.effect) * (trial.valence * kv + trial.arousal * ka);
        base_gain[b] = ch.gain * jitter;
        trial_gain[b] = base_gain[b] * (0.5 * log_power).exp();
    }
    let baseline = spec.baseline_samples().min(out.len());
    for (n, o) in out.iter_mut().enumerate() {
        let gain = if n < baseline {
            &base_gain
        } else {
            &trial_gain
        };
        let mut v = ch.gain * pink.next(rng.white());
        for b in 0..4 {
            let mut s = 0.0;
            for (tone, amp) in tones[b].iter_mut().zip(ch.amps[b]) {
                s += amp * tone.next();
            }
            v += gain[b] * (1.0 + 0.4 * envelopes[b].next()) * s;
        }
        *o = v as f32;
    }
}

/// Peripheral channel `p` (0 = hEOG ... 7 = temperature) of one trial.
fn peripheral(spec: &SyntheticSpec, p: usize, rng: &mut Rng, out: &mut [f32]) {
    let rate = spec.rate;
    let slow = rng.range(0.01, 0.05);
    let mut wave = Osc::new(slow, rate, rng.range(0.0, std::f64::consts::TAU));
    let mut pink = Pink::new(rng, 1.0);
    match p {
        // hEOG: slow eye movements.
        0 => out
            .iter_mut()
            .for_each(|o| *o = (30.0 * pink.next(rng.white())) as f32),
        // vEOG: drift plus blinks (a 0.3 s raised-cosine bump of ~150 µV).
        1 => {
            let width = (0.3 * rate).max(1.0);
            let mut next_blink = rng.range(0.0, 4.0) * rate;
            let mut blink_amp = 150.0;
            for (n, o) in out.iter_mut().enumerate() {
                let x = n as f64 - next_blink;
                if x >= width {
                    next_blink += rng.range(2.0, 6.0) * rate;
                    blink_amp = rng.range(100.0, 200.0);
                }
                let bump = if (0.0..width).contains(&x) {
                    0.5 * (1.0 - (std::f64::consts::TAU * x / width).cos())
                } else {
                    0.0
                };
                *o = (20.0 * pink.next(rng.white()) + blink_amp * bump) as f32;
            }
        }
        // zEMG, tEMG: broadband muscle noise under a slow envelope.
        2 | 3 => out
            .iter_mut()
            .for_each(|o| *o = (5.0 * (1.0 + 0.5 * wave.next()) * rng.white()) as f32),
        // GSR: a slow wave on an offset.
        4 => {
            let offset = rng.range(1000.0, 5000.0);
            out.iter_mut().for_each(|o| {
                *o = (offset + 200.0 * wave.next() + 5.0 * pink.next(rng.white())) as f32
            })
        }
        // Respiration: about 15 breaths a minute.
        5 => {
            let mut breath = Osc::new(
                rng.range(0.2, 0.33),
                rate,
                rng.range(0.0, std::f64::consts::TAU),
            );
            let offset = rng.range(-500.0, 500.0);
            out.iter_mut().for_each(|o| {
                *o = (offset + 800.0 * breath.next() + 20.0 * pink.next(rng.white())) as f32
            })
        }
        // Plethysmograph: a 60-90 bpm pulse and its second harmonic.
        6 => {
            let f = rng.range(1.0, 1.5);
            let phase = rng.range(0.0, std::f64::consts::TAU);
            let mut beat = Osc::new(f, rate, phase);
            let mut second = Osc::new(2.0 * f, rate, 2.0 * phase + 1.0);
            out.iter_mut().for_each(|o| {
                *o = (1000.0 * beat.next() + 400.0 * second.next() + 10.0 * pink.next(rng.white()))
                    as f32
            })
        }
        // Temperature: a slow drift around a skin temperature.
        _ => {
            let offset = rng.range(28.0, 34.0);
            out.iter_mut().for_each(|o| {
                *o = (offset + 0.2 * wave.next() + 0.01 * pink.next(rng.white())) as f32
            })
        }
    }
}
