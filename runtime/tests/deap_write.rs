//! The DEAP writer against the bytes Python 2.7's cPickle wrote for the same
//! arrays (tests/fixtures/deap/make_cpickle_fixture.py), a round trip
//! through the reader, and its errors.

use netc_runtime::deap::{
    parse_subject, read_subject, subject_bytes, write_subject, DeapError, DeapSubject,
};
use std::path::Path;

/// The arrays of make_cpickle_fixture.py, from the same formulas.
fn fixture_subject() -> DeapSubject {
    let (trials, channels, samples) = (2, 3, 20);
    let mut data = Vec::new();
    for t in 0..trials {
        for c in 0..channels {
            for s in 0..samples {
                let v = ((7 * t + 13 * c + 5 * s) % 97) as i32 - 48;
                data.push(v as f32 / 64.0);
            }
        }
    }
    let labels = (0..8).map(|i| 1.0 + ((i * 3) % 65) as f32 / 8.0).collect();
    DeapSubject {
        data,
        trials,
        channels,
        samples,
        labels,
    }
}

#[test]
fn bytes_equal_python2_cpickle() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/deap/cpickle_py2.dat");
    let want = std::fs::read(path).unwrap();
    let got = subject_bytes(&fixture_subject()).unwrap();
    if got != want {
        let at = got.iter().zip(&want).position(|(a, b)| a != b);
        panic!(
            "writer bytes differ from cPickle's: lengths {} vs {}, first difference at {at:?}",
            got.len(),
            want.len()
        );
    }
}

#[test]
fn written_file_reads_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s01.dat");
    // Values exact in f32 but not short binary fractions, and a data array
    // small enough for a SHORT_BINSTRING as well as one needing BINSTRING.
    for (trials, channels, samples) in [(1, 1, 3), (3, 40, 17)] {
        let n = trials * channels * samples;
        let s = DeapSubject {
            data: (0..n).map(|i| (i as f32 * 0.37).sin() * 1e3).collect(),
            trials,
            channels,
            samples,
            labels: (0..trials * 4).map(|i| 1.0 + i as f32 * 0.731).collect(),
        };
        write_subject(&path, &s).unwrap();
        assert_eq!(read_subject(&path).unwrap(), s);
        assert_eq!(parse_subject(&subject_bytes(&s).unwrap()).unwrap(), s);
    }
    // Only the file itself is left: the temporary one was renamed.
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1);
}

#[test]
fn inconsistent_subject_is_an_error() {
    let mut s = fixture_subject();
    s.data.pop();
    let e = subject_bytes(&s).unwrap_err();
    assert!(
        e.contains("'data' of shape [2, 3, 20] needs 120 values but holds 119"),
        "{e}"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s01.dat");
    match write_subject(&path, &s) {
        Err(DeapError::Write { path: p, reason }) => {
            assert_eq!(p, path);
            assert!(reason.contains("119"), "{reason}");
        }
        other => panic!("expected a write error, got {other:?}"),
    }
    assert!(!path.exists());
}
