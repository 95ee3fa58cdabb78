//! The DEAP reader against files written by Python's pickle and numpy
//! (tests/fixtures/deap/make_deap_fixtures.py), whose expected values the
//! script computed with numpy (expected.txt): every supported pickle form,
//! Fortran order and big-endian data, the errors for bad files, and
//! truncation at every length.

use netc_runtime::deap::{parse_subject, read_dir, read_subject, DeapError, DeapSubject};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const FILES: [&str; 8] = [
    "s01.dat", "s02.dat", "s03.dat", "s04.dat", "s05.dat", "s06.dat", "s07.dat", "s08.dat",
];

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/deap")
}

/// expected.txt as file -> key -> the values after the key.
fn expected() -> HashMap<String, Vec<(String, Vec<String>)>> {
    let text = std::fs::read_to_string(dir().join("expected.txt")).unwrap();
    let mut out: HashMap<String, Vec<(String, Vec<String>)>> = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let mut words = line.split(' ').map(str::to_string);
        let file = words.next().unwrap();
        let key = words.next().unwrap();
        out.entry(file).or_default().push((key, words.collect()));
    }
    out
}

fn nums(words: &[String]) -> Vec<f64> {
    words.iter().map(|w| w.parse().unwrap()).collect()
}

fn check(name: &str, s: &DeapSubject, want: &[(String, Vec<String>)]) {
    let at = |t: usize, c: usize, k: usize| s.data[(t * s.channels + c) * s.samples + k];
    assert_eq!(s.data.len(), s.trials * s.channels * s.samples, "{name}");
    for (key, values) in want {
        let v = nums(if key == "form" { &[] } else { values });
        match key.as_str() {
            "form" => {}
            "shape" => assert_eq!(
                [s.trials, s.channels, s.samples].map(|n| n as f64).to_vec(),
                v,
                "{name}"
            ),
            // Values are multiples of 1/64, so these sums are exact.
            "data_sum" => assert_eq!(
                s.data.iter().map(|&x| f64::from(x)).sum::<f64>(),
                v[0],
                "{name}"
            ),
            "data_abs_sum" => assert_eq!(
                s.data.iter().map(|&x| f64::from(x).abs()).sum::<f64>(),
                v[0],
                "{name}"
            ),
            "data_first" => assert_eq!(f64::from(s.data[0]), v[0], "{name}"),
            "data_last" => assert_eq!(f64::from(*s.data.last().unwrap()), v[0], "{name}"),
            "probe" => assert_eq!(
                f64::from(at(v[0] as usize, v[1] as usize, v[2] as usize)),
                v[3],
                "{name} at {v:?}"
            ),
            "labels" => assert_eq!(
                s.labels.iter().map(|&x| f64::from(x)).collect::<Vec<_>>(),
                v,
                "{name}"
            ),
            other => panic!("unknown key {other} in expected.txt"),
        }
    }
}

#[test]
fn every_pickle_form_reads_with_numpys_shapes_and_values() {
    let want = expected();
    for name in FILES {
        let s = read_subject(&dir().join(name)).unwrap();
        assert_eq!((s.trials, s.channels, s.samples), (2, 40, 64), "{name}");
        check(name, &s, &want[name]);
        assert_eq!(s.trial(1), Some(&s.data[40 * 64..]), "{name}");
        assert_eq!(s.trial(2), None, "{name}");
    }
}

#[test]
fn read_dir_finds_subjects_by_number_or_as_listed() {
    let all = read_dir(&dir(), None).unwrap();
    assert_eq!(
        all.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6, 7, 8]
    );
    let s2 = read_subject(&dir().join("s02.dat")).unwrap();
    assert_eq!(all[1].1, s2);
    let some = read_dir(&dir(), Some(&[3, 1])).unwrap();
    assert_eq!(some.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [3, 1]);
    assert_eq!(some[1].1, all[0].1);
    let err = read_dir(&dir(), Some(&[9])).unwrap_err();
    assert!(matches!(err, DeapError::Io { .. }), "{err}");
    assert!(err.to_string().contains("s09.dat"), "{err}");
    let empty = tempfile::tempdir().unwrap();
    std::fs::write(empty.path().join("notes.dat"), b"x").unwrap();
    let err = read_dir(empty.path(), None).unwrap_err();
    assert!(matches!(err, DeapError::NoSubjects { .. }), "{err}");
}

#[test]
fn bad_files_get_errors_naming_the_file_and_the_fault() {
    for (name, fault) in [
        ("truncated.dat", "truncated"),
        (
            "wrong_key.dat",
            "has no 'labels' (its keys: 'data', 'label')",
        ),
        ("wrong_shape.dat", "'labels' has shape [2, 3], not [2, 4]"),
        ("wrong_dtype.dat", "'data' has dtype i2"),
        ("unknown_opcode.dat", "unsupported opcode 0x5d"),
        ("unknown_global.dat", "datetime.date"),
    ] {
        let err = read_subject(&dir().join("bad").join(name)).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, DeapError::Format { .. }), "{name}: {text}");
        assert!(
            text.contains(name) && text.contains(fault),
            "{name}: {text}"
        );
    }
}

#[test]
fn every_truncation_of_every_form_is_an_error() {
    for name in FILES {
        let bytes = std::fs::read(dir().join(name)).unwrap();
        assert!(parse_subject(&bytes).is_ok(), "{name}");
        for n in 0..bytes.len() {
            let err = parse_subject(&bytes[..n]).unwrap_err();
            assert!(err.starts_with("truncated"), "{name} cut at {n}: {err}");
        }
    }
}

#[test]
fn corrupted_opcodes_never_panic() {
    let bytes = std::fs::read(dir().join("s02.dat")).unwrap();
    let mut hits = 0;
    for i in 0..400 {
        for v in [
            0u8, 1, 0x7f, 0x80, 0xff, b'(', b't', b'.', b'R', b'b', b'h', b'u',
        ] {
            let mut bad = bytes.clone();
            bad[i] = v;
            hits += usize::from(parse_subject(&bad).is_err());
        }
    }
    assert!(hits > 0);
}

#[test]
fn hostile_pickles_are_refused_without_allocating_or_recursing() {
    let cases: [(&[u8], &str); 9] = [
        (b"(dS'data'\nS'\\x4'\ns.", "bad \\x escape"),
        (b"(dS'data'\nS'ab\ns.", "not quoted"),
        (
            b"\x80\x02c_codecs\nencode\nX\x02\x00\x00\x00\xc4\x80X\x06\x00\x00\x00latin1\x86R.",
            "non-latin1 character 'Ā' at text byte 0",
        ),
        (b"\x80\x02N.", "holds a None, not a dict"),
        (b"\x80\x09}.", "protocol 9"),
        (
            b"\x80\x04\x8e\xff\xff\xff\xff\xff\xff\xff\xff.",
            "truncated",
        ),
        (b"\x80\x02T\xff\xff\xff\x7f", "truncated"),
        (b"\x80\x02h\x05.", "memo entry 5"),
        (b"\x80\x02t.", "without a MARK"),
    ];
    for (bytes, fault) in cases {
        let err = parse_subject(bytes).unwrap_err();
        assert!(err.contains(fault), "{bytes:?}: {err}");
    }
    let mut deep = b"\x80\x02)".to_vec();
    deep.extend(std::iter::repeat_n(0x85u8, 100_000));
    deep.push(b'.');
    assert!(parse_subject(&deep).unwrap_err().contains("deeper than"));
}
