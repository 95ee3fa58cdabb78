//! Reading the DEAP dataset's "preprocessed python" release: one `sXX.dat`
//! per subject, each a pickled dict with `data`, a float array
//! `[40 trials, 40 channels, 8064 samples]` (32 EEG channels first, then 8
//! peripheral ones; 3 s baseline + 60 s at 128 Hz), and `labels`,
//! `[40 trials, 4]` (valence, arousal, dominance, liking, rated 1-9).
//!
//! The release is a Python 2 pickle (protocol 2; users load it with
//! `pickle.load(f, encoding='latin1')`); Python 2's protocols 0 and 1 and
//! files re-pickled by Python 3 with protocol 1, 2 or 4 are read too. The
//! pickle is run by a small, closed virtual machine (the private `pickle`
//! module) that only builds numpy arrays, so reading an untrusted file
//! executes nothing. Only the layout is checked (rank,
//! matching trial counts, four ratings), not the sizes 40/40/8064, so cut
//! down files read as well.
//!
//! [`write_subject`] writes subjects in the release's exact form, and
//! [`generate_subject`] makes synthetic DEAP-shaped subjects with a known
//! class structure (the licensed data cannot be shipped).

mod pickle;
mod synthetic;
mod write;

use pickle::Value;
use std::path::{Path, PathBuf};
pub use synthetic::{generate_subject, SyntheticSpec, EEG_CHANNELS};
pub use write::{subject_bytes, write_subject};

/// One subject's trials and ratings.
#[derive(Debug, Clone, PartialEq)]
pub struct DeapSubject {
    /// The signals, `[trials, channels, samples]` in C order (converted to
    /// `f32` if the file holds `f64`).
    pub data: Vec<f32>,
    /// Number of trials (40 in the release).
    pub trials: usize,
    /// Number of channels (40 in the release: 32 EEG, then 8 peripheral).
    pub channels: usize,
    /// Samples per channel (8064 in the release: 63 s at 128 Hz).
    pub samples: usize,
    /// The ratings, `[trials, 4]`: valence, arousal, dominance, liking.
    pub labels: Vec<f32>,
}

impl DeapSubject {
    /// The signals of trial `t`, `[channels, samples]`, or `None` past the
    /// last trial.
    pub fn trial(&self, t: usize) -> Option<&[f32]> {
        let n = self.channels * self.samples;
        self.data.get(t.checked_mul(n)?..(t + 1).checked_mul(n)?)
    }
}

/// Why DEAP files cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum DeapError {
    /// A file or directory could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file is not a DEAP subject file netc can read.
    #[error("{path} is not a readable DEAP subject file: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A subject cannot be written as a DEAP file.
    #[error("cannot write {path} as a DEAP subject file: {reason}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A directory holds no `sXX.dat` files.
    #[error("{dir} holds no DEAP subject files (sXX.dat)")]
    NoSubjects {
        /// The directory.
        dir: PathBuf,
    },
}

/// Reads one subject file (`sXX.dat`).
pub fn read_subject(path: &Path) -> Result<DeapSubject, DeapError> {
    let bytes = std::fs::read(path).map_err(|source| DeapError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_subject(&bytes).map_err(|reason| DeapError::Format {
        path: path.to_path_buf(),
        reason,
    })
}

/// Reads the subjects `sXX.dat` of a directory, with their numbers: the
/// listed ones in the order given, or with `None` every `s<number>.dat`
/// there, by number.
pub fn read_dir(
    dir: &Path,
    subjects: Option<&[usize]>,
) -> Result<Vec<(usize, DeapSubject)>, DeapError> {
    let numbers = match subjects {
        Some(list) => list.to_vec(),
        None => {
            let io = |source| DeapError::Io {
                path: dir.to_path_buf(),
                source,
            };
            let mut found = Vec::new();
            for entry in std::fs::read_dir(dir).map_err(io)? {
                let name = entry.map_err(io)?.file_name();
                let number = name
                    .to_str()
                    .and_then(|n| n.strip_prefix('s')?.strip_suffix(".dat"))
                    .filter(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()))
                    .and_then(|n| n.parse::<usize>().ok());
                found.extend(number);
            }
            found.sort_unstable();
            found.dedup();
            if found.is_empty() {
                return Err(DeapError::NoSubjects {
                    dir: dir.to_path_buf(),
                });
            }
            found
        }
    };
    numbers
        .into_iter()
        .map(|n| Ok((n, read_subject(&dir.join(format!("s{n:02}.dat")))?)))
        .collect()
}

/// Parses the bytes of a subject file; the error says what is wrong.
pub fn parse_subject(bytes: &[u8]) -> Result<DeapSubject, String> {
    let top = pickle::load(bytes)?;
    let items = top.dict_items().ok_or_else(|| {
        format!(
            "the pickle holds a {}, not a dict of 'data' and 'labels'",
            top.kind()
        )
    })?;
    let entry = |key: &str| -> Result<(Vec<usize>, Vec<f32>), String> {
        let value = items
            .iter()
            .rev()
            .find(|(k, _)| k.text().as_deref() == Some(key))
            .map(|(_, v)| v)
            .ok_or_else(|| {
                let keys: Vec<String> = items
                    .iter()
                    .map(|(k, _)| match k.text() {
                        Some(t) => format!("'{t}'"),
                        None => k.kind().to_string(),
                    })
                    .collect();
                format!("it has no '{key}' (its keys: {})", keys.join(", "))
            })?;
        array_f32(value).map_err(|e| format!("'{key}' {e}"))
    };
    let (data_shape, data) = entry("data")?;
    let (label_shape, labels) = entry("labels")?;
    let &[trials, channels, samples] = data_shape.as_slice() else {
        return Err(format!(
            "'data' has shape {data_shape:?}, not [trials, channels, samples]"
        ));
    };
    if label_shape != [trials, 4] {
        return Err(format!(
            "'labels' has shape {label_shape:?}, not [{trials}, 4] for 'data' of shape {data_shape:?}"
        ));
    }
    Ok(DeapSubject {
        data,
        trials,
        channels,
        samples,
        labels,
    })
}

/// A built numpy float array as its shape and `f32` values in C order.
fn array_f32(value: &Value<'_>) -> Result<(Vec<usize>, Vec<f32>), String> {
    let Value::Array(a) = value else {
        return Err(format!("is a {}, not a numpy array", value.kind()));
    };
    let a = a.borrow();
    if !a.built {
        return Err("is a numpy array without contents".into());
    }
    let name = a.dtype.trim_start_matches(['<', '>', '=', '|']);
    let size = match name {
        "f4" | "float32" => 4,
        "f8" | "float64" => 8,
        other => {
            return Err(format!(
                "has dtype {other}; DEAP files hold float32 or float64"
            ))
        }
    };
    let big = match (a.dtype.chars().next(), a.byteorder) {
        (Some('>'), _) | (_, '>') => true,
        (Some('<'), _) | (_, '<') => false,
        _ => cfg!(target_endian = "big"),
    };
    let count = a
        .shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|n| n.checked_mul(size).is_some())
        .ok_or_else(|| format!("has the impossible shape {:?}", a.shape))?;
    if a.raw.len() != count * size {
        return Err(format!(
            "holds {} bytes, but shape {:?} of {name} needs {}",
            a.raw.len(),
            a.shape,
            count * size
        ));
    }
    let values: Vec<f32> = if size == 4 {
        a.raw
            .chunks_exact(4)
            .map(|c| {
                let b = [c[0], c[1], c[2], c[3]];
                if big {
                    f32::from_be_bytes(b)
                } else {
                    f32::from_le_bytes(b)
                }
            })
            .collect()
    } else {
        a.raw
            .chunks_exact(8)
            .map(|c| {
                let b = [c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]];
                (if big {
                    f64::from_be_bytes(b)
                } else {
                    f64::from_le_bytes(b)
                }) as f32
            })
            .collect()
    };
    let values = if a.fortran && a.shape.len() > 1 {
        fortran_to_c(&a.shape, &values)
    } else {
        values
    };
    Ok((a.shape.clone(), values))
}

/// Reorders column-major values into row-major order.
fn fortran_to_c(shape: &[usize], values: &[f32]) -> Vec<f32> {
    let mut c_strides = vec![1usize; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        c_strides[d] = c_strides[d + 1] * shape[d + 1];
    }
    let mut out = vec![0f32; values.len()];
    let mut index = vec![0usize; shape.len()];
    for &v in values {
        let at: usize = index.iter().zip(&c_strides).map(|(i, s)| i * s).sum();
        out[at] = v;
        // The first index runs fastest in Fortran order.
        for (i, &n) in index.iter_mut().zip(shape) {
            *i += 1;
            if *i < n {
                break;
            }
            *i = 0;
        }
    }
    out
}
