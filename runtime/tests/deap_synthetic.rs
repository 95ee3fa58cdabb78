//! The synthetic DEAP generator: determinism, the rating design and the
//! signal physics its documentation promises, measured here with a plain
//! Goertzel DFT independent of the generator's oscillators.

use netc_runtime::deap::{generate_subject, DeapSubject, SyntheticSpec, EEG_CHANNELS};

const LEFT_FRONTAL: [&str; 6] = ["Fp1", "AF3", "F3", "F7", "FC5", "FC1"];
const RIGHT_FRONTAL: [&str; 6] = ["Fp2", "AF4", "F4", "F8", "FC6", "FC2"];
const CENTRAL_TEMPORAL: [&str; 7] = ["C3", "T7", "CP5", "Cz", "C4", "T8", "CP6"];
const OCCIPITAL: [&str; 5] = ["PO3", "O1", "Oz", "PO4", "O2"];

fn channel(name: &str) -> usize {
    EEG_CHANNELS.iter().position(|&c| c == name).unwrap()
}

/// Power of a Hann-windowed block at DFT bin `k` (Goertzel).
fn bin_power(x: &[f32], k: usize) -> f64 {
    let n = x.len();
    let w = std::f64::consts::TAU * k as f64 / n as f64;
    let c2 = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for (i, &v) in x.iter().enumerate() {
        let hann = 0.5 - 0.5 * (std::f64::consts::TAU * i as f64 / n as f64).cos();
        let s = f64::from(v) * hann + c2 * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    s1 * s1 + s2 * s2 - c2 * s1 * s2
}

/// Mean power per 1 s block in [lo, hi) Hz over `x`.
fn band_power(x: &[f32], rate: usize, lo: usize, hi: usize) -> f64 {
    let blocks: Vec<&[f32]> = x.chunks_exact(rate).collect();
    let total: f64 = blocks
        .iter()
        .map(|b| (lo..hi).map(|k| bin_power(b, k)).sum::<f64>())
        .sum();
    total / blocks.len() as f64
}

/// ln(band power in the trial part) - ln(band power in the baseline),
/// averaged over `names`, for trial `t`.
fn change(
    s: &DeapSubject,
    spec: &SyntheticSpec,
    t: usize,
    names: &[&str],
    band: (usize, usize),
) -> f64 {
    let rate = spec.rate as usize;
    let base = spec.baseline_s * rate;
    let trial = s.trial(t).unwrap();
    let sum: f64 = names
        .iter()
        .map(|name| {
            let x = &trial[channel(name) * s.samples..][..s.samples];
            let p_trial = band_power(&x[base..], rate, band.0, band.1);
            let p_base = band_power(&x[..base], rate, band.0, band.1);
            p_trial.ln() - p_base.ln()
        })
        .sum();
    sum / names.len() as f64
}

/// Mean of `f(t)` over the trials whose rating `k` is high minus over the
/// low ones.
fn high_minus_low(s: &DeapSubject, k: usize, f: impl Fn(usize) -> f64) -> f64 {
    let (mut hi, mut lo) = (Vec::new(), Vec::new());
    for t in 0..s.trials {
        if s.labels[4 * t + k] > 5.0 {
            &mut hi
        } else {
            &mut lo
        }
        .push(f(t));
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    mean(&hi) - mean(&lo)
}

fn spec(effect: f32) -> SyntheticSpec {
    SyntheticSpec {
        seed: 11,
        trial_s: 20,
        effect,
        ..SyntheticSpec::default()
    }
}

#[test]
fn default_is_deap_sized_and_deterministic() {
    let spec = SyntheticSpec::default();
    let start = std::time::Instant::now();
    let a = generate_subject(&spec, 1);
    eprintln!("one full subject: {:?}", start.elapsed());
    assert_eq!((a.trials, a.channels, a.samples), (40, 40, 8064));
    assert_eq!(a.data.len(), 40 * 40 * 8064);
    assert_eq!(a.labels.len(), 160);
    assert!(a.data.iter().all(|v| v.is_finite()));
    let small = SyntheticSpec {
        trials: 4,
        trial_s: 2,
        ..spec
    };
    let b = generate_subject(&small, 2);
    assert_eq!(b, generate_subject(&small, 2));
    assert_ne!(b.data, generate_subject(&small, 3).data);
    assert_ne!(
        b.data,
        generate_subject(
            &SyntheticSpec {
                seed: 1,
                ..small.clone()
            },
            2
        )
        .data
    );
    // The ratings do not depend on the signal length.
    let longer = SyntheticSpec {
        trial_s: 3,
        ..small.clone()
    };
    assert_eq!(b.labels, generate_subject(&longer, 2).labels);
}

#[test]
fn ratings_are_balanced_independent_and_never_five() {
    let spec = SyntheticSpec {
        trial_s: 1,
        baseline_s: 0,
        ..SyntheticSpec::default()
    };
    let mut both_high = 0;
    for subject in 1..=10 {
        let s = generate_subject(&spec, subject);
        assert!(s
            .labels
            .iter()
            .all(|&r| (1.0..=9.0).contains(&r) && r != 5.0));
        let high = |k: usize| (0..40).filter(|t| s.labels[4 * t + k] > 5.0).count();
        assert_eq!((high(0), high(1)), (20, 20), "subject {subject}");
        both_high += (0..40)
            .filter(|t| s.labels[4 * t] > 5.0 && s.labels[4 * t + 1] > 5.0)
            .count();
    }
    // Independent valence and arousal: a quarter of 400 trials, ± 3 sd.
    assert!(
        (70..=130).contains(&both_high),
        "{both_high} of 400 trials high in both"
    );
}

#[test]
fn valence_shows_as_frontal_alpha_asymmetry() {
    let asym = |s: &DeapSubject, spec: &SyntheticSpec| {
        high_minus_low(s, 0, |t| {
            change(s, spec, t, &LEFT_FRONTAL, (8, 14)) - change(s, spec, t, &RIGHT_FRONTAL, (8, 14))
        })
    };
    let with = spec(0.5);
    let s = generate_subject(&with, 1);
    let d = asym(&s, &with);
    // The model: 2 x effect x (2 x mean |s_v| = 1.5) = 1.5 in log power.
    eprintln!("alpha asymmetry, high - low valence: {d:.3}");
    assert!(d > 0.9 && d < 2.1, "{d}");
    let without = spec(0.0);
    let d0 = asym(&generate_subject(&without, 1), &without);
    eprintln!("... with effect 0: {d0:.3}");
    assert!(d0.abs() < 0.3, "{d0}");
}

#[test]
fn arousal_raises_beta_and_lowers_occipital_alpha() {
    let with = spec(0.5);
    let s = generate_subject(&with, 1);
    let beta = high_minus_low(&s, 1, |t| change(&s, &with, t, &CENTRAL_TEMPORAL, (15, 30)));
    let alpha = high_minus_low(&s, 1, |t| change(&s, &with, t, &OCCIPITAL, (8, 14)));
    // The model: ± effect x 1.5 = 0.75 in log power.
    eprintln!("arousal, high - low: beta {beta:.3}, occipital alpha {alpha:.3}");
    assert!(beta > 0.45, "{beta}");
    assert!(alpha < -0.45, "{alpha}");
    // Valence does not move central beta.
    let beta_v = high_minus_low(&s, 0, |t| change(&s, &with, t, &CENTRAL_TEMPORAL, (15, 30)));
    assert!(beta_v.abs() < 0.25, "{beta_v}");
}

#[test]
fn background_is_one_over_f() {
    let spec = SyntheticSpec {
        trials: 4,
        trial_s: 30,
        band_uv: [0.0; 4],
        ..spec(0.5)
    };
    let s = generate_subject(&spec, 1);
    let (mut p2, mut p40) = (0.0, 0.0);
    for t in 0..s.trials {
        for c in 0..EEG_CHANNELS.len() {
            let x = &s.trial(t).unwrap()[c * s.samples..][..s.samples];
            p2 += band_power(x, 128, 2, 3);
            p40 += band_power(x, 128, 40, 41);
        }
    }
    eprintln!("background power 2 Hz / 40 Hz: {:.1}", p2 / p40);
    // 1/f: 20 times; the bound leaves room for estimation noise only.
    assert!(p2 > 8.0 * p40, "{p2} vs {p40}");
}
