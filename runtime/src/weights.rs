//! Weight files in the safetensors format: tensor names are parameter paths.
//! Loading against the model's expected tensors reports every missing,
//! unexpected and mis-shaped tensor at once and never loads half a file;
//! saving is atomic (write a temporary file, fsync, rename, fsync the
//! directory), so a crash never leaves a truncated checkpoint behind.

use crate::{DType, Tensor};
use safetensors::tensor::TensorView;
use safetensors::{Dtype as StDtype, SafeTensors};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A tensor the model expects (or a file holds): name, element type, shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    /// The parameter path.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<usize>,
}

impl std::fmt::Display for TensorSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dims: Vec<String> = self.shape.iter().map(|d| d.to_string()).collect();
        write!(f, "{} {}[{}]", self.name, self.dtype, dims.join(", "))
    }
}

/// What can go wrong with a weight file.
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The bytes are not a safetensors file, or hold an unsupported type.
    #[error("{path} is not a usable safetensors file: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The file's tensors do not match the model's.
    #[error("{}", mismatch_text(path, missing, unexpected, misshaped))]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// Expected but absent.
        missing: Vec<TensorSpec>,
        /// Present but not expected.
        unexpected: Vec<TensorSpec>,
        /// Present with another type or shape: (expected, found).
        misshaped: Vec<(TensorSpec, TensorSpec)>,
    },
}

fn mismatch_text(
    path: &Path,
    missing: &[TensorSpec],
    unexpected: &[TensorSpec],
    misshaped: &[(TensorSpec, TensorSpec)],
) -> String {
    let mut s = format!(
        "{} does not match the model; nothing was loaded:",
        path.display()
    );
    for m in missing {
        let _ = write!(s, "\n  missing:    {m}");
    }
    for u in unexpected {
        let _ = write!(s, "\n  unexpected: {u}");
    }
    for (want, got) in misshaped {
        let dims: Vec<String> = got.shape.iter().map(|d| d.to_string()).collect();
        let _ = write!(
            s,
            "\n  mis-shaped: {want} expected, file has {}[{}]",
            got.dtype,
            dims.join(", ")
        );
    }
    s
}

fn to_st(d: DType) -> StDtype {
    match d {
        DType::F32 => StDtype::F32,
        DType::F64 => StDtype::F64,
        DType::I32 => StDtype::I32,
        DType::I64 => StDtype::I64,
        DType::U8 => StDtype::U8,
        DType::Bool => StDtype::BOOL,
    }
}

fn from_st(d: StDtype) -> Option<DType> {
    Some(match d {
        StDtype::F32 => DType::F32,
        StDtype::F64 => DType::F64,
        StDtype::I32 => DType::I32,
        StDtype::I64 => DType::I64,
        StDtype::U8 => DType::U8,
        StDtype::BOOL => DType::Bool,
        _ => return None,
    })
}

/// The `format` metadata value of a training checkpoint
/// (`crate::train::checkpoint`): [`load_checked`] ignores its optimizer
/// state, the tensors named [`CHECKPOINT_STATE_PREFIX`]`<suffix>.<path>`.
pub const CHECKPOINT_FORMAT: &str = "netc-checkpoint";

/// The name prefix of a checkpoint's optimizer-state tensors.
pub const CHECKPOINT_STATE_PREFIX: &str = "optimizer.";

/// Reads every tensor of a safetensors file, sorted by name.
pub fn read_safetensors(path: &Path) -> Result<Vec<(String, Tensor)>, WeightError> {
    read_safetensors_meta(path).map(|(tensors, _)| tensors)
}

/// A file's named tensors and its header's `__metadata__` strings.
pub type TensorsAndMeta = (Vec<(String, Tensor)>, HashMap<String, String>);

/// Reads every tensor of a safetensors file, sorted by name, and the
/// header's `__metadata__` strings (empty when the file has none).
pub fn read_safetensors_meta(path: &Path) -> Result<TensorsAndMeta, WeightError> {
    let bytes = std::fs::read(path).map_err(|source| WeightError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let format = |reason: String| WeightError::Format {
        path: path.to_path_buf(),
        reason,
    };
    let st = SafeTensors::deserialize(&bytes).map_err(|e| format(e.to_string()))?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let dtype = from_st(view.dtype()).ok_or_else(|| {
            format(format!(
                "tensor `{name}` has unsupported type {:?}",
                view.dtype()
            ))
        })?;
        let t = Tensor::from_le_bytes(dtype, view.shape(), view.data()).ok_or_else(|| {
            format(format!(
                "tensor `{name}` has {} bytes, not {:?} x {dtype}",
                view.data().len(),
                view.shape()
            ))
        })?;
        out.push((name, t));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| format(e.to_string()))?;
    Ok((out, header.metadata().clone().unwrap_or_default()))
}

/// Loads the tensors `expected` from a file, in the order of `expected`.
/// Any missing, unexpected or mis-shaped tensor fails the whole load with a
/// [`WeightError::Mismatch`] that lists them all. A training checkpoint
/// (metadata `format` = [`CHECKPOINT_FORMAT`]) loads as its weights: its
/// optimizer-state tensors are ignored.
pub fn load_checked(path: &Path, expected: &[TensorSpec]) -> Result<Vec<Tensor>, WeightError> {
    let (tensors, meta) = read_safetensors_meta(path)?;
    let checkpoint = meta.get("format").is_some_and(|f| f == CHECKPOINT_FORMAT);
    let mut found: HashMap<String, Tensor> = tensors
        .into_iter()
        .filter(|(name, _)| !(checkpoint && name.starts_with(CHECKPOINT_STATE_PREFIX)))
        .collect();
    let mut missing = Vec::new();
    let mut misshaped = Vec::new();
    let mut out = Vec::with_capacity(expected.len());
    for spec in expected {
        match found.remove(&spec.name) {
            None => missing.push(spec.clone()),
            Some(t) if t.dtype() != spec.dtype || t.shape() != spec.shape.as_slice() => {
                let got = TensorSpec {
                    name: spec.name.clone(),
                    dtype: t.dtype(),
                    shape: t.shape().to_vec(),
                };
                misshaped.push((spec.clone(), got));
            }
            Some(t) => out.push(t),
        }
    }
    let mut unexpected: Vec<TensorSpec> = found
        .into_iter()
        .map(|(name, t)| TensorSpec {
            name,
            dtype: t.dtype(),
            shape: t.shape().to_vec(),
        })
        .collect();
    unexpected.sort_by(|a, b| a.name.cmp(&b.name));
    if missing.is_empty() && unexpected.is_empty() && misshaped.is_empty() {
        Ok(out)
    } else {
        Err(WeightError::Mismatch {
            path: path.to_path_buf(),
            missing,
            unexpected,
            misshaped,
        })
    }
}

/// Writes tensors to a safetensors file atomically: the file either keeps
/// its old content or has the complete new one.
pub fn write_safetensors_atomic(
    path: &Path,
    tensors: &[(&str, &Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<(), WeightError> {
    let io = |source| WeightError::Io {
        path: path.to_path_buf(),
        source,
    };
    let buffers: Vec<(String, DType, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, t)| {
            (
                n.to_string(),
                t.dtype(),
                t.shape().to_vec(),
                t.to_le_bytes(),
            )
        })
        .collect();
    let views = buffers
        .iter()
        .map(|(n, d, s, b)| {
            TensorView::new(to_st(*d), s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| WeightError::Format {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bytes = safetensors::serialize(views, metadata).map_err(|e| WeightError::Format {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    crate::fsutil::write_atomic(path, &bytes).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, shape: &[usize]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            dtype: DType::F32,
            shape: shape.to_vec(),
        }
    }

    #[test]
    fn save_then_load_round_trips_in_expected_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let a = Tensor::from_f32(&[2], vec![1.0, 2.0]).unwrap();
        let b = Tensor::zeros(DType::I64, &[]);
        write_safetensors_atomic(&path, &[("b", &b), ("a", &a)], None).unwrap();
        let expected = [
            spec("a", &[2]),
            TensorSpec {
                name: "b".into(),
                dtype: DType::I64,
                shape: vec![],
            },
        ];
        let loaded = load_checked(&path, &expected).unwrap();
        assert_eq!(loaded, vec![a, b]);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
    }

    #[test]
    fn mismatches_are_all_named_and_nothing_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let t = Tensor::from_f32(&[3], vec![0.0; 3]).unwrap();
        write_safetensors_atomic(&path, &[("fc.weight", &t), ("extra", &t)], None).unwrap();
        let err =
            load_checked(&path, &[spec("fc.weight", &[2]), spec("fc.bias", &[2])]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("missing:    fc.bias f32[2]"), "{text}");
        assert!(text.contains("unexpected: extra f32[3]"), "{text}");
        assert!(
            text.contains("mis-shaped: fc.weight f32[2] expected, file has f32[3]"),
            "{text}"
        );
    }

    #[test]
    fn corrupt_files_get_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.safetensors");
        std::fs::write(&path, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json").unwrap();
        let err = read_safetensors(&path).unwrap_err().to_string();
        assert!(
            err.contains("bad.safetensors is not a usable safetensors file"),
            "{err}"
        );
        let err = read_safetensors(&dir.path().join("absent.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("absent.safetensors"), "{err}");
    }
}
