//! Reading NumPy `.npy` files (format versions 1-3, C order, little-endian
//! or byte-sized element types), for model inputs given on the command line.

use crate::{DType, Tensor};
use std::path::Path;

/// Why an `.npy` file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not an `.npy` file netc can read.
    #[error("{path} is not a readable .npy file: {reason}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// Reads an `.npy` file into a tensor.
pub fn read_npy(path: &Path) -> Result<Tensor, NpyError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| NpyError::Io {
        path: shown.clone(),
        source,
    })?;
    parse_npy(&bytes).map_err(|reason| NpyError::Format {
        path: shown,
        reason,
    })
}

/// Parses the bytes of an `.npy` file.
pub fn parse_npy(bytes: &[u8]) -> Result<Tensor, String> {
    let magic = b"\x93NUMPY";
    if bytes.len() < 10 || &bytes[..6] != magic {
        return Err("missing the \\x93NUMPY magic".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!("unsupported format version {v}")),
    };
    let header = bytes
        .get(start..start.saturating_add(header_len))
        .ok_or("the header is truncated")?;
    let header = std::str::from_utf8(header).map_err(|_| "the header is not text")?;
    let descr = dict_value(header, "descr").ok_or("the header has no 'descr'")?;
    let dtype = match descr.trim_matches(|c| c == '\'' || c == '"') {
        "<f4" => DType::F32,
        "<f8" => DType::F64,
        "<i4" => DType::I32,
        "<i8" => DType::I64,
        "|u1" => DType::U8,
        "|b1" => DType::Bool,
        other => {
            return Err(format!(
            "element type {other} is not supported (use little-endian f4, f8, i4, i8, u1 or b1)"
        ))
        }
    };
    if dict_value(header, "fortran_order").map(str::trim) != Some("False") {
        return Err(
            "Fortran-order arrays are not supported (save with np.ascontiguousarray)".into(),
        );
    }
    let shape_text = dict_value(header, "shape").ok_or("the header has no 'shape'")?;
    let shape: Vec<usize> = shape_text
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| format!("bad shape entry `{s}`")))
        .collect::<Result<_, _>>()?;
    let data = &bytes[start + header_len..];
    Tensor::from_le_bytes(dtype, &shape, data).ok_or_else(|| {
        format!(
            "{} data bytes do not hold a {dtype} array of shape {shape:?}",
            data.len()
        )
    })
}

/// The raw text of `'key': value` in a Python dict literal (values here are
/// strings, `True`/`False` or tuples, which contain no top-level commas
/// except inside parentheses).
fn dict_value<'h>(header: &'h str, key: &str) -> Option<&'h str> {
    let at = header.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = header[at..].trim_start().strip_prefix(':')?.trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else {
        rest.find([',', '}']).unwrap_or(rest.len())
    };
    Some(&rest[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((header.len() as u16).to_le_bytes());
        out.extend(header.as_bytes());
        out.extend(data);
        out
    }

    #[test]
    fn reads_f32_matrices_scalars_and_vectors() {
        let data: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let t = parse_npy(&npy("<f4", "(2, 3)", &data)).unwrap();
        assert_eq!(t.shape(), &[2, 3]);
        assert_eq!(t.as_f32().unwrap()[5], 6.0);
        let t = parse_npy(&npy("<i8", "(1,)", &7i64.to_le_bytes())).unwrap();
        assert_eq!((t.dtype(), t.shape()), (DType::I64, &[1usize][..]));
        let t = parse_npy(&npy("<f8", "()", &2.5f64.to_le_bytes())).unwrap();
        assert_eq!(t.shape(), &[] as &[usize]);
    }

    #[test]
    fn bad_files_get_reasons() {
        assert!(parse_npy(b"PK\x03\x04").unwrap_err().contains("magic"));
        assert!(parse_npy(&npy(">f4", "(1,)", &[0; 4]))
            .unwrap_err()
            .contains(">f4"));
        assert!(parse_npy(&npy("<f4", "(2, 3)", &[0; 20]))
            .unwrap_err()
            .contains("do not hold"));
        let mut f = npy("<f4", "(1,)", &[0; 4]);
        f.truncate(20);
        assert!(parse_npy(&f).unwrap_err().contains("truncated"));
    }
}
