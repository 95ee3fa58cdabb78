//! Test-only access to `tests/fixtures/optim/optim_reference.safetensors`,
//! PyTorch's optimizer updates and schedules written by
//! `tests/fixtures/optim/make_optim_reference.py`.

use crate::weights::read_safetensors_meta;
use std::collections::HashMap;
use std::path::Path;

/// The reference file's tensors (as f32 or f64 vectors) and metadata.
pub struct Fixture {
    tensors: HashMap<String, crate::Tensor>,
    meta: HashMap<String, String>,
}

impl Fixture {
    /// Loads the reference file.
    pub fn load() -> Fixture {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/optim/optim_reference.safetensors");
        let (tensors, meta) = read_safetensors_meta(&path).expect("optim fixture");
        Fixture {
            tensors: tensors.into_iter().collect(),
            meta,
        }
    }

    /// An f32 tensor's values.
    pub fn f32(&self, name: &str) -> Vec<f32> {
        let t = self
            .tensors
            .get(name)
            .unwrap_or_else(|| panic!("no {name}"));
        t.as_f32()
            .unwrap_or_else(|| panic!("{name} not f32"))
            .to_vec()
    }

    /// An f64 tensor's values.
    pub fn f64(&self, name: &str) -> Vec<f64> {
        match self.tensors.get(name).map(|t| t.storage()) {
            Some(crate::Storage::F64(v)) => v.clone(),
            _ => panic!("no f64 tensor {name}"),
        }
    }

    /// Whether a tensor exists.
    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// A metadata string.
    pub fn meta(&self, key: &str) -> &str {
        self.meta
            .get(key)
            .unwrap_or_else(|| panic!("no metadata {key}"))
    }
}
