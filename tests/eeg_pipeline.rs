//! The EEG emotion-recognition pipeline end to end on synthetic DEAP data:
//! a generated subject written as a DEAP `.dat` pickle, read back, turned
//! into differential-entropy cubes by the compiled feature model, then
//! cross-validated with eeg_ccnn, eeg_mlp and eeg_svm by the same protocol
//! code the `deap` example runs.
//!
//! The synthetic subject carries band-power effects of the classes (see
//! `netc_runtime::deap::synthetic`); the test checks that the pipeline finds
//! them: the CCNN must exceed 90% on both tasks.

#[path = "../compiler/examples/deap/protocol.rs"]
#[allow(dead_code)]
mod protocol;

use netc_runtime::deap::{generate_subject, SyntheticSpec};
use netc_runtime::deap::{read_dir, write_subject};
use protocol::{Protocol, Split, MODELS, TASKS};
use std::path::Path;

#[test]
fn synthetic_deap_subject_through_the_whole_protocol() {
    let dir = std::env::temp_dir().join(format!("netc-eeg-pipeline-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = SyntheticSpec::default();
    write_subject(&dir.join("s01.dat"), &generate_subject(&spec, 1)).unwrap();
    let subjects: Vec<(String, _)> = read_dir(&dir, None)
        .unwrap()
        .into_iter()
        .map(|(n, s)| (format!("s{n:02}"), s))
        .collect();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(subjects.len(), 1);

    let protocol = Protocol {
        models: Path::new(env!("CARGO_MANIFEST_DIR")).join("../models"),
        folds: 3,
        epochs: 3,
        batch: 64,
        threads: 2,
        seed: 1,
        split: Split::Segments,
    };
    let results = protocol.run(&subjects, &mut |_| {}).unwrap();
    println!("{}", protocol::results_table(&results));
    println!(
        "features {:.1} s, cross-validation {:.1} s",
        results.feature_secs, results.cv_secs
    );
    for (task, _) in TASKS {
        for model in MODELS {
            let scores = results.get(task, model).unwrap();
            assert_eq!(
                scores.subjects[0].1.len(),
                3,
                "{task} {model}: one score per fold"
            );
        }
        let (ccnn, _) = results.get(task, "eeg_ccnn").unwrap().mean_std();
        assert!(ccnn > 0.9, "{task}: CCNN accuracy {ccnn:.3}");
    }
}

#[test]
fn folds_partition_the_samples_and_keep_trials_together() {
    let trial_of: Vec<usize> = (0..600).map(|s| s / 60).collect();
    for groups in [None, Some(trial_of.as_slice())] {
        let folds = protocol::folds(600, 10, 7, groups);
        let mut seen = vec![0; 600];
        for f in &folds {
            for &i in f {
                seen[i] += 1;
            }
        }
        assert!(seen.iter().all(|&c| c == 1), "every sample held out once");
        assert!(folds.iter().all(|f| f.len() == 60), "equal folds");
        if groups.is_some() {
            for f in &folds {
                assert!(
                    f.iter().all(|&i| trial_of[i] == trial_of[f[0]]),
                    "one trial per fold"
                );
            }
        } else {
            let mixed = folds
                .iter()
                .filter(|f| f.iter().any(|&i| trial_of[i] != trial_of[f[0]]))
                .count();
            assert_eq!(mixed, 10, "segment folds mix trials");
        }
    }
    assert_ne!(
        protocol::folds(600, 10, 7, None),
        protocol::folds(600, 10, 8, None)
    );
}
