//! Writing DEAP subject files (`sXX.dat`) in the form of the release: the
//! bytes Python 2.7's `cPickle.dump({'labels': l, 'data': d}, f, 2)` emits
//! for two C-ordered little-endian float64 numpy arrays. Python 2 orders
//! that dict 'labels' first; cPickle numbers its memo from 1, memoizes the
//! globals, the dict, the keys, the arrays and the shared `dtype('f8')`
//! (fetched again with BINGET for the second array), not the tuples or
//! short strings, and stores the raw array bytes as a Python 2 `str`
//! (SHORT_BINSTRING below 256 bytes, BINSTRING up to 2^31 - 1).

use super::{DeapError, DeapSubject};
use std::path::Path;

/// The largest string a BINSTRING holds (its length is a signed 32-bit int).
const MAX_BINSTRING: usize = i32::MAX as usize;

/// The pickle opcodes the writer emits.
mod op {
    pub const PROTO: u8 = 0x80;
    pub const EMPTY_DICT: u8 = b'}';
    pub const MARK: u8 = b'(';
    pub const BINPUT: u8 = b'q';
    pub const BINGET: u8 = b'h';
    pub const GLOBAL: u8 = b'c';
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const BININT: u8 = b'J';
    pub const SHORT_BINSTRING: u8 = b'U';
    pub const BINSTRING: u8 = b'T';
    pub const TUPLE: u8 = b't';
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const REDUCE: u8 = b'R';
    pub const BUILD: u8 = b'b';
    pub const NONE: u8 = b'N';
    pub const NEWFALSE: u8 = 0x89;
    pub const SETITEMS: u8 = b'u';
    pub const STOP: u8 = b'.';
}

/// Memo indices of the objects the second array refers to again.
const MEMO_RECONSTRUCT: u8 = 3;
const MEMO_NDARRAY: u8 = 4;
const MEMO_DTYPE: u8 = 7;

/// Writes `s` to `path` as a DEAP subject file, atomically (a temporary
/// file in the same directory, fsync, rename, fsync of the directory).
pub fn write_subject(path: &Path, s: &DeapSubject) -> Result<(), DeapError> {
    let bytes = subject_bytes(s).map_err(|reason| DeapError::Write {
        path: path.to_path_buf(),
        reason,
    })?;
    crate::fsutil::write_atomic(path, &bytes).map_err(|source| DeapError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The bytes of `s` as a DEAP subject file: `labels` float64
/// `[trials, 4]` and `data` float64 `[trials, channels, samples]`. Fails
/// if the vectors do not match the sizes or an array needs more than
/// 2^31 - 1 bytes (a Python 2 string cannot hold it).
pub fn subject_bytes(s: &DeapSubject) -> Result<Vec<u8>, String> {
    let data_shape = [s.trials, s.channels, s.samples];
    let label_shape = [s.trials, 4];
    let data_bytes = checked_bytes("data", &data_shape, s.data.len())?;
    let label_bytes = checked_bytes("labels", &label_shape, s.labels.len())?;
    let mut out = Vec::with_capacity(data_bytes + label_bytes + 512);
    out.extend_from_slice(&[op::PROTO, 2, op::EMPTY_DICT, op::BINPUT, 1, op::MARK]);
    // 'labels' (memo 2), the first array: globals at 3 and 4, the array
    // at 5, numpy.dtype at 6, dtype('f8') at 7.
    short_string(&mut out, b"labels");
    put(&mut out, 2);
    global(&mut out, "numpy.core.multiarray", "_reconstruct");
    put(&mut out, MEMO_RECONSTRUCT);
    global(&mut out, "numpy", "ndarray");
    put(&mut out, MEMO_NDARRAY);
    reconstruct_args(&mut out);
    put(&mut out, 5);
    state_head(&mut out, &label_shape);
    global(&mut out, "numpy", "dtype");
    put(&mut out, 6);
    short_string(&mut out, b"f8");
    out.extend_from_slice(&[op::BININT1, 0, op::BININT1, 1, op::TUPLE3, op::REDUCE]);
    put(&mut out, MEMO_DTYPE);
    out.push(op::MARK);
    out.extend_from_slice(&[op::BININT1, 3]);
    short_string(&mut out, b"<");
    out.extend_from_slice(&[op::NONE, op::NONE, op::NONE, op::BININT]);
    out.extend_from_slice(&(-1i32).to_le_bytes());
    out.push(op::BININT);
    out.extend_from_slice(&(-1i32).to_le_bytes());
    out.extend_from_slice(&[op::BININT1, 0, op::TUPLE, op::BUILD]);
    state_tail(&mut out, &s.labels);
    // 'data' (memo 8), the second array (memo 9) reusing the memo.
    short_string(&mut out, b"data");
    put(&mut out, 8);
    out.extend_from_slice(&[op::BINGET, MEMO_RECONSTRUCT, op::BINGET, MEMO_NDARRAY]);
    reconstruct_args(&mut out);
    put(&mut out, 9);
    state_head(&mut out, &data_shape);
    out.extend_from_slice(&[op::BINGET, MEMO_DTYPE]);
    state_tail(&mut out, &s.data);
    out.extend_from_slice(&[op::SETITEMS, op::STOP]);
    Ok(out)
}

/// The float64 byte size of an array of `shape` holding `len` values, or
/// why it cannot be written.
fn checked_bytes(key: &str, shape: &[usize], len: usize) -> Result<usize, String> {
    let count = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| format!("'{key}' has the impossible shape {shape:?}"))?;
    if let Some(d) = shape.iter().find(|&&d| d > MAX_BINSTRING) {
        return Err(format!(
            "'{key}' of shape {shape:?} has the dimension {d}, beyond a pickle BININT"
        ));
    }
    if count != len {
        return Err(format!(
            "'{key}' of shape {shape:?} needs {count} values but holds {len}"
        ));
    }
    match count.checked_mul(8) {
        Some(n) if n <= MAX_BINSTRING => Ok(n),
        _ => Err(format!(
            "'{key}' of shape {shape:?} needs {count} x 8 bytes of float64, more than the \
             {MAX_BINSTRING} a Python 2 pickle string (BINSTRING) holds; split the subject"
        )),
    }
}

fn put(out: &mut Vec<u8>, index: u8) {
    out.extend_from_slice(&[op::BINPUT, index]);
}

fn short_string(out: &mut Vec<u8>, s: &[u8]) {
    out.push(op::SHORT_BINSTRING);
    out.push(s.len() as u8);
    out.extend_from_slice(s);
}

fn global(out: &mut Vec<u8>, module: &str, name: &str) {
    out.push(op::GLOBAL);
    out.extend_from_slice(format!("{module}\n{name}\n").as_bytes());
}

/// `(ndarray, (0,), 'b')`, then REDUCE: `_reconstruct`'s arguments.
fn reconstruct_args(out: &mut Vec<u8>) {
    out.extend_from_slice(&[op::BININT1, 0, op::TUPLE1]);
    short_string(out, b"b");
    out.extend_from_slice(&[op::TUPLE3, op::REDUCE]);
}

/// The start of `__setstate__`'s tuple: MARK, version 1, the shape.
fn state_head(out: &mut Vec<u8>, shape: &[usize]) {
    out.extend_from_slice(&[op::MARK, op::BININT1, 1]);
    for &d in shape {
        int(out, d);
    }
    out.push(match shape.len() {
        1 => op::TUPLE1,
        2 => op::TUPLE2,
        _ => op::TUPLE3,
    });
}

/// The end of `__setstate__`'s tuple: C order, the raw little-endian
/// float64 bytes, TUPLE, BUILD.
fn state_tail(out: &mut Vec<u8>, values: &[f32]) {
    out.push(op::NEWFALSE);
    let n = values.len() * 8;
    if n < 256 {
        out.extend_from_slice(&[op::SHORT_BINSTRING, n as u8]);
    } else {
        out.push(op::BINSTRING);
        // `checked_bytes` bounded n by i32::MAX.
        out.extend_from_slice(&(n as u32).to_le_bytes());
    }
    out.extend(values.iter().flat_map(|&v| f64::from(v).to_le_bytes()));
    out.extend_from_slice(&[op::TUPLE, op::BUILD]);
}

/// A non-negative int as cPickle's BININT1, BININT2 or BININT (the caller
/// keeps it below 2^31: a dimension of an array under 2^31 bytes).
fn int(out: &mut Vec<u8>, n: usize) {
    if n < 256 {
        out.extend_from_slice(&[op::BININT1, n as u8]);
    } else if n < 65536 {
        out.push(op::BININT2);
        out.extend_from_slice(&(n as u16).to_le_bytes());
    } else {
        out.push(op::BININT);
        out.extend_from_slice(&(n as u32).to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_beyond_a_binstring_are_refused() {
        // 2^28 values of 8 bytes: one byte more than a BINSTRING holds.
        let e = checked_bytes("data", &[1, 1, 1 << 28], 1 << 28).unwrap_err();
        assert!(e.contains("BINSTRING"), "{e}");
        assert!(e.contains("[1, 1, 268435456]"), "{e}");
        // One value less fits.
        assert_eq!(
            checked_bytes("data", &[1, 1, (1 << 28) - 1], (1 << 28) - 1),
            Ok(((1 << 28) - 1) * 8)
        );
    }
}
