//! Host tensors: an element type, a shape and row-major storage.

use crate::DType;

/// Row-major element storage of one of the supported types.
#[derive(Clone, Debug, PartialEq)]
pub enum Storage {
    /// `f32` elements.
    F32(Vec<f32>),
    /// `f64` elements.
    F64(Vec<f64>),
    /// `i32` elements.
    I32(Vec<i32>),
    /// `i64` elements.
    I64(Vec<i64>),
    /// `u8` elements.
    U8(Vec<u8>),
    /// `bool` elements, one byte each (0 or 1).
    Bool(Vec<u8>),
}

/// A dense host tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    storage: Storage,
}

impl Tensor {
    /// A tensor of zeros.
    pub fn zeros(dtype: DType, shape: &[usize]) -> Tensor {
        let n = shape.iter().product();
        let storage = match dtype {
            DType::F32 => Storage::F32(vec![0.0; n]),
            DType::F64 => Storage::F64(vec![0.0; n]),
            DType::I32 => Storage::I32(vec![0; n]),
            DType::I64 => Storage::I64(vec![0; n]),
            DType::U8 => Storage::U8(vec![0; n]),
            DType::Bool => Storage::Bool(vec![0; n]),
        };
        Tensor {
            shape: shape.to_vec(),
            storage,
        }
    }

    /// A tensor from storage; `None` if the element count does not match the shape.
    pub fn new(shape: &[usize], storage: Storage) -> Option<Tensor> {
        let t = Tensor {
            shape: shape.to_vec(),
            storage,
        };
        (t.storage_len() == t.numel()).then_some(t)
    }

    /// An `f32` tensor; `None` if `data` does not fit `shape`.
    pub fn from_f32(shape: &[usize], data: Vec<f32>) -> Option<Tensor> {
        Tensor::new(shape, Storage::F32(data))
    }

    fn storage_len(&self) -> usize {
        match &self.storage {
            Storage::F32(v) => v.len(),
            Storage::F64(v) => v.len(),
            Storage::I32(v) => v.len(),
            Storage::I64(v) => v.len(),
            Storage::U8(v) | Storage::Bool(v) => v.len(),
        }
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        match &self.storage {
            Storage::F32(_) => DType::F32,
            Storage::F64(_) => DType::F64,
            Storage::I32(_) => DType::I32,
            Storage::I64(_) => DType::I64,
            Storage::U8(_) => DType::U8,
            Storage::Bool(_) => DType::Bool,
        }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The storage.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The elements as `f32`, if that is the element type.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.storage {
            Storage::F32(v) => Some(v),
            _ => None,
        }
    }

    /// Mutable `f32` elements, if that is the element type.
    pub fn as_f32_mut(&mut self) -> Option<&mut [f32]> {
        match &mut self.storage {
            Storage::F32(v) => Some(v),
            _ => None,
        }
    }

    /// The elements as little-endian bytes (the safetensors encoding).
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match &self.storage {
            Storage::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Storage::F64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Storage::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Storage::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Storage::U8(v) | Storage::Bool(v) => v.clone(),
        }
    }

    /// Decodes little-endian bytes; `None` if the length does not match.
    pub fn from_le_bytes(dtype: DType, shape: &[usize], bytes: &[u8]) -> Option<Tensor> {
        let n: usize = shape.iter().product();
        if bytes.len() != n.checked_mul(dtype.size_bytes())? {
            return None;
        }
        fn chunks<const W: usize, T>(b: &[u8], f: fn([u8; W]) -> T) -> Vec<T> {
            b.chunks_exact(W)
                .map(|c| f(c.try_into().expect("exact chunks")))
                .collect()
        }
        let storage = match dtype {
            DType::F32 => Storage::F32(chunks(bytes, f32::from_le_bytes)),
            DType::F64 => Storage::F64(chunks(bytes, f64::from_le_bytes)),
            DType::I32 => Storage::I32(chunks(bytes, i32::from_le_bytes)),
            DType::I64 => Storage::I64(chunks(bytes, i64::from_le_bytes)),
            DType::U8 => Storage::U8(bytes.to_vec()),
            DType::Bool => Storage::Bool(bytes.to_vec()),
        };
        Tensor::new(shape, storage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_for_every_dtype() {
        for d in DType::ALL {
            let t = Tensor::zeros(d, &[2, 3]);
            let b = t.to_le_bytes();
            assert_eq!(b.len(), 6 * d.size_bytes());
            assert_eq!(Tensor::from_le_bytes(d, &[2, 3], &b), Some(t));
        }
        assert_eq!(Tensor::from_le_bytes(DType::F32, &[2], &[0; 7]), None);
        assert!(Tensor::from_f32(&[2, 2], vec![1.0; 3]).is_none());
    }
}
