//! A minimal pickle virtual machine for the DEAP "preprocessed python"
//! files: exactly the opcodes that Python 2's `cPickle` (protocol 2) and
//! Python 3's `pickle` (protocols 2 and 4) emit for a dict of numpy arrays,
//! and only the four globals such a file names (`_reconstruct`, `ndarray`,
//! `dtype` and `_codecs.encode`). Anything else is an error, never code to
//! run.
//!
//! Every length read from the file is checked against the bytes that are
//! left before anything is allocated, each opcode consumes at least one
//! byte (so the machine always stops), tuples nest at most
//! [`MAX_DEPTH`] deep and dicts never nest, so a hostile file can neither
//! hang the reader nor overflow its stack.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// The deepest tuple nesting accepted (a DEAP file nests three deep).
const MAX_DEPTH: u8 = 32;

/// A numpy array after `_reconstruct` and `ndarray.__setstate__`.
#[derive(Debug, Default)]
pub(super) struct Array<'a> {
    /// Whether `__setstate__` (the BUILD opcode) has run.
    pub built: bool,
    /// The dimensions.
    pub shape: Vec<usize>,
    /// The dtype name given to `numpy.dtype`, e.g. `f8`.
    pub dtype: String,
    /// The byte order from the dtype's state: `<`, `>`, `=` or `|`.
    pub byteorder: char,
    /// Whether the raw bytes are in Fortran (column-major) order.
    pub fortran: bool,
    /// The raw element bytes.
    pub raw: Rc<Cow<'a, [u8]>>,
}

/// A numpy dtype object under construction.
#[derive(Debug)]
pub(super) struct Dtype {
    name: String,
    byteorder: char,
}

/// The callables a DEAP pickle may name.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Global {
    Reconstruct,
    Ndarray,
    Dtype,
    Encode,
}

/// A tuple with its nesting depth.
#[derive(Debug)]
pub(super) struct Tuple<'a> {
    items: Vec<Value<'a>>,
    depth: u8,
}

/// One Python object on the pickle stack.
#[derive(Debug, Clone)]
pub(super) enum Value<'a> {
    None,
    Bool(bool),
    Int(i64),
    /// A Python 3 `str` (BINUNICODE and friends).
    Str(&'a str),
    /// A Python 3 `bytes`, or a Python 2 `str` read as latin1.
    Bytes(Rc<Cow<'a, [u8]>>),
    Tuple(Rc<Tuple<'a>>),
    Dict(Rc<RefCell<Vec<(Value<'a>, Value<'a>)>>>),
    Global(Global),
    Dtype(Rc<RefCell<Dtype>>),
    Array(Rc<RefCell<Array<'a>>>),
}

impl<'a> Value<'a> {
    /// What kind of object this is, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Dtype(_) => "numpy dtype",
            Value::Array(_) => "numpy array",
        }
    }

    /// The text of a `str`, or of a Python 2 string decoded as latin1.
    pub fn text(&self) -> Option<Cow<'a, str>> {
        match self {
            Value::Str(s) => Some(Cow::Borrowed(s)),
            Value::Bytes(b) => Some(Cow::Owned(b.iter().map(|&c| char::from(c)).collect())),
            _ => None,
        }
    }

    /// The items of a dict, if this is one.
    pub fn dict_items(&self) -> Option<Vec<(Value<'a>, Value<'a>)>> {
        match self {
            Value::Dict(d) => Some(d.borrow().clone()),
            _ => None,
        }
    }

    fn depth(&self) -> u8 {
        match self {
            Value::Tuple(t) => t.depth,
            _ => 0,
        }
    }
}

/// A cursor over the pickle bytes that never reads past the end.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let left = self.bytes.len() - self.pos;
        if n > left {
            return Err(format!(
                "truncated: {what} at byte {} needs {n} bytes but only {left} are left",
                self.pos
            ));
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A length prefix as `usize` (it is bounded by `take` afterwards).
    fn len_u64(&mut self, what: &str) -> Result<usize, String> {
        let n = self.u64(what)?;
        usize::try_from(n).map_err(|_| format!("{what}: length {n} does not fit in memory"))
    }

    /// A newline-terminated line (the argument of a text opcode).
    fn line_bytes(&mut self, what: &str) -> Result<&'a [u8], String> {
        let rest = &self.bytes[self.pos..];
        let end = rest
            .iter()
            .position(|&c| c == b'\n')
            .ok_or_else(|| format!("truncated: {what} at byte {} has no newline", self.pos))?;
        self.pos += end + 1;
        Ok(&rest[..end])
    }

    /// A newline-terminated line of text.
    fn line(&mut self, what: &str) -> Result<&'a str, String> {
        let at = self.pos;
        std::str::from_utf8(self.line_bytes(what)?)
            .map_err(|_| format!("{what} at byte {at} is not text"))
    }

    /// A newline-terminated decimal number (protocol 0's PUT and GET).
    fn line_index(&mut self, what: &str) -> Result<u32, String> {
        let line = self.line(what)?;
        line.parse()
            .map_err(|_| format!("{what} with the bad index {line:?}"))
    }
}

/// The machine's state: the stack, the mark positions and the memo.
struct Machine<'a> {
    stack: Vec<Value<'a>>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value<'a>>,
}

impl<'a> Machine<'a> {
    fn push(&mut self, v: Value<'a>) {
        self.stack.push(v);
    }

    /// The lowest stack index the current mark allows popping to.
    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self, op: &str) -> Result<Value<'a>, String> {
        if self.stack.len() <= self.floor() {
            return Err(format!("{op} finds too few objects on the stack"));
        }
        self.stack
            .pop()
            .ok_or_else(|| format!("{op} finds an empty stack"))
    }

    fn top(&self, op: &str) -> Result<&Value<'a>, String> {
        if self.stack.len() <= self.floor() {
            return Err(format!("{op} finds an empty stack"));
        }
        self.stack
            .last()
            .ok_or_else(|| format!("{op} finds an empty stack"))
    }

    /// The objects pushed since the last MARK, which is removed.
    fn pop_mark(&mut self, op: &str) -> Result<Vec<Value<'a>>, String> {
        let at = self
            .marks
            .pop()
            .ok_or_else(|| format!("{op} without a MARK"))?;
        Ok(self.stack.split_off(at))
    }

    fn tuple(&mut self, items: Vec<Value<'a>>, op: &str) -> Result<(), String> {
        if items.iter().any(|v| matches!(v, Value::Dict(_))) {
            return Err(format!("{op} puts a dict inside a tuple"));
        }
        let depth = 1 + items.iter().map(Value::depth).max().unwrap_or(0);
        if depth > MAX_DEPTH {
            return Err(format!("{op} nests tuples deeper than {MAX_DEPTH}"));
        }
        self.push(Value::Tuple(Rc::new(Tuple { items, depth })));
        Ok(())
    }

    fn memo_put(&mut self, index: u32, op: &str) -> Result<(), String> {
        let v = self.top(op)?.clone();
        self.memo.insert(index, v);
        Ok(())
    }

    fn memo_get(&mut self, index: u32, op: &str) -> Result<(), String> {
        let v = self
            .memo
            .get(&index)
            .ok_or_else(|| format!("{op} reads memo entry {index}, which was never stored"))?
            .clone();
        self.push(v);
        Ok(())
    }

    fn set_items(&mut self, pairs: Vec<Value<'a>>, op: &str) -> Result<(), String> {
        if !pairs.len().is_multiple_of(2) {
            return Err(format!("{op} has an odd number of keys and values"));
        }
        let Value::Dict(dict) = self.top(op)? else {
            return Err(format!(
                "{op} targets a {}, not a dict",
                self.top(op)?.kind()
            ));
        };
        let dict = dict.clone();
        let mut it = pairs.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            if matches!(k, Value::Dict(_)) || matches!(v, Value::Dict(_)) {
                return Err(format!("{op} nests a dict in a dict"));
            }
            dict.borrow_mut().push((k, v));
        }
        Ok(())
    }
}

/// Which callable a GLOBAL or STACK_GLOBAL names.
fn resolve(module: &str, name: &str) -> Result<Global, String> {
    match (module, name) {
        ("numpy.core.multiarray" | "numpy._core.multiarray", "_reconstruct") => {
            Ok(Global::Reconstruct)
        }
        ("numpy", "ndarray") => Ok(Global::Ndarray),
        ("numpy", "dtype") => Ok(Global::Dtype),
        ("_codecs", "encode") => Ok(Global::Encode),
        _ => Err(format!(
            "refers to {module}.{name}, which a DEAP file does not use \
             (only numpy arrays in a dict are supported)"
        )),
    }
}

/// `callable(*args)` for the REDUCE opcode.
fn reduce<'a>(callable: &Value<'a>, args: &Value<'a>) -> Result<Value<'a>, String> {
    let Value::Global(global) = callable else {
        return Err(format!("REDUCE calls a {}", callable.kind()));
    };
    let Value::Tuple(args) = args else {
        return Err(format!("REDUCE's arguments are a {}", args.kind()));
    };
    let args = &args.items;
    match (global, args.as_slice()) {
        (Global::Reconstruct, [Value::Global(Global::Ndarray), Value::Tuple(_), _]) => {
            Ok(Value::Array(Rc::new(RefCell::new(Array {
                byteorder: '=',
                ..Array::default()
            }))))
        }
        (Global::Dtype, [name, ..]) => {
            let name = name
                .text()
                .ok_or_else(|| format!("numpy.dtype called with a {}", name.kind()))?;
            Ok(Value::Dtype(Rc::new(RefCell::new(Dtype {
                name: name.into_owned(),
                byteorder: '=',
            }))))
        }
        (Global::Encode, [Value::Str(s), encoding]) => {
            let enc = encoding.text().unwrap_or_default().to_ascii_lowercase();
            if !matches!(enc.as_str(), "latin1" | "latin-1" | "iso-8859-1") {
                return Err(format!("_codecs.encode with encoding '{enc}'"));
            }
            latin1(s).map(|b| Value::Bytes(Rc::new(Cow::Owned(b))))
        }
        (g, a) => Err(format!(
            "REDUCE calls {g:?} with {} unexpected arguments",
            a.len()
        )),
    }
}

/// Encodes text whose characters are all below U+0100 as latin1 bytes.
fn latin1(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    // Valid UTF-8: below U+0080 one byte, U+0080..U+00FF are 0xC2/0xC3 and
    // one continuation byte; any other lead byte is a wider character.
    while let Some(b) = bytes.next() {
        match (b, b & 0xFE == 0xC2) {
            (0..=0x7f, _) => out.push(b),
            (_, true) => out.push(((b & 0x03) << 6) | (bytes.next().unwrap_or(0) & 0x3f)),
            _ => {
                let at = s.len() - bytes.len() - 1;
                let c = s.get(at..).and_then(|t| t.chars().next()).unwrap_or('?');
                return Err(format!(
                    "array data holds the non-latin1 character {c:?} at text byte {at}"
                ));
            }
        }
    }
    Ok(out)
}

/// The bytes of a protocol 0 STRING: a quoted Python 2 `repr` whose
/// escapes (`\\`, `\'`, `\n`, `\xNN`, octal ...) are decoded.
fn unrepr(line: &[u8]) -> Result<Vec<u8>, String> {
    let body = match line {
        [q @ (b'\'' | b'"'), body @ .., end] if q == end => body,
        _ => return Err("STRING is not quoted".into()),
    };
    let mut out = Vec::with_capacity(body.len());
    let mut it = body.iter().copied().peekable();
    while let Some(c) = it.next() {
        if c != b'\\' {
            out.push(c);
            continue;
        }
        let e = it.next().ok_or("STRING ends in a lone backslash")?;
        let byte = match e {
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'a' => 7,
            b'b' => 8,
            b'f' => 12,
            b'v' => 11,
            b'x' => {
                let hex = [it.next(), it.next()];
                let digits = hex.map(|d| d.and_then(|d| char::from(d).to_digit(16)));
                match digits {
                    [Some(hi), Some(lo)] => (hi * 16 + lo) as u8,
                    _ => return Err("STRING has a bad \\x escape".into()),
                }
            }
            b'0'..=b'7' => {
                let mut v = u32::from(e - b'0');
                for _ in 0..2 {
                    match it.peek() {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            it.next();
                        }
                        _ => break,
                    }
                }
                (v & 0xff) as u8
            }
            b'\\' | b'\'' | b'"' => e,
            // Unknown escapes stay as written, as in Python.
            other => {
                out.push(b'\\');
                other
            }
        };
        out.push(byte);
    }
    Ok(out)
}

/// `obj.__setstate__(state)` for the BUILD opcode.
fn build<'a>(obj: &Value<'a>, state: Value<'a>) -> Result<(), String> {
    let Value::Tuple(state) = state else {
        return Err(format!("BUILD with a {} state", state.kind()));
    };
    let items = &state.items;
    match obj {
        Value::Dtype(d) => {
            let order = items
                .get(1)
                .and_then(Value::text)
                .and_then(|t| t.chars().next())
                .ok_or("BUILD of a numpy dtype without a byte order")?;
            d.borrow_mut().byteorder = order;
            Ok(())
        }
        Value::Array(a) => {
            // Version 1 states lead with the version; older ones do not.
            let fields = match items.as_slice() {
                [_, rest @ ..] if rest.len() == 4 => rest,
                all if all.len() == 4 => all,
                _ => {
                    return Err(format!(
                        "BUILD of a numpy array with a state of {} items",
                        items.len()
                    ))
                }
            };
            let Value::Tuple(shape) = &fields[0] else {
                return Err(format!("numpy array shape is a {}", fields[0].kind()));
            };
            let shape = shape
                .items
                .iter()
                .map(|v| match v {
                    Value::Int(n) => usize::try_from(*n).map_err(|_| format!("dimension {n}")),
                    other => Err(format!("dimension of type {}", other.kind())),
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("numpy array shape has a bad {e}"))?;
            let Value::Dtype(dtype) = &fields[1] else {
                return Err(format!("numpy array dtype is a {}", fields[1].kind()));
            };
            let fortran = match &fields[2] {
                Value::Bool(b) => *b,
                Value::Int(n) => *n != 0,
                other => return Err(format!("numpy array order flag is a {}", other.kind())),
            };
            let raw = match &fields[3] {
                Value::Bytes(b) => b.clone(),
                Value::Str(s) => Rc::new(Cow::Owned(latin1(s)?)),
                other => return Err(format!("numpy array data is a {}", other.kind())),
            };
            let dtype = dtype.borrow();
            *a.borrow_mut() = Array {
                built: true,
                shape,
                dtype: dtype.name.clone(),
                byteorder: dtype.byteorder,
                fortran,
                raw,
            };
            Ok(())
        }
        other => Err(format!("BUILD of a {}", other.kind())),
    }
}

/// Runs the pickle in `bytes` and returns the object STOP returns.
pub(super) fn load(bytes: &[u8]) -> Result<Value<'_>, String> {
    let mut r = Reader { bytes, pos: 0 };
    let mut m = Machine {
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    loop {
        let at = r.pos;
        let op = r
            .u8("opcode")
            .map_err(|_| format!("truncated: the pickle ends at byte {at} before its STOP"))?;
        step(&mut r, &mut m, op).map_err(|e| {
            if e.starts_with("truncated") {
                e
            } else {
                format!("opcode {:?} at byte {at}: {e}", char::from(op))
            }
        })?;
        if op == b'.' {
            return m.pop("STOP");
        }
    }
}

/// Executes one opcode.
fn step<'a>(r: &mut Reader<'a>, m: &mut Machine<'a>, op: u8) -> Result<(), String> {
    match op {
        // PROTO
        0x80 => {
            let v = r.u8("PROTO")?;
            if !(2..=5).contains(&v) {
                return Err(format!("pickle protocol {v} is not supported (2 to 5 are)"));
            }
        }
        // FRAME: a hint for buffering; its length must fit in the file.
        0x95 => {
            let n = r.len_u64("FRAME")?;
            let left = r.bytes.len() - r.pos;
            if n > left {
                return Err(format!(
                    "truncated: FRAME at byte {} announces {n} bytes but only {left} are left",
                    r.pos - 9
                ));
            }
        }
        b'.' => {}
        b'(' => m.marks.push(m.stack.len()),
        b'}' => m.push(Value::Dict(Rc::default())),
        b')' => m.tuple(Vec::new(), "EMPTY_TUPLE")?,
        b't' => {
            let items = m.pop_mark("TUPLE")?;
            m.tuple(items, "TUPLE")?;
        }
        0x85..=0x87 => {
            let n = usize::from(op - 0x84);
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(m.pop("TUPLEn")?);
            }
            items.reverse();
            m.tuple(items, "TUPLEn")?;
        }
        b'N' => m.push(Value::None),
        0x88 => m.push(Value::Bool(true)),
        0x89 => m.push(Value::Bool(false)),
        b'J' => m.push(Value::Int(i64::from(i32::from_le_bytes(
            r.array("BININT")?,
        )))),
        b'K' => m.push(Value::Int(i64::from(r.u8("BININT1")?))),
        // INT: decimal text; protocol 1 writes False and True as 00 and 01.
        b'I' => {
            let line = r.line("INT")?;
            m.push(match line {
                "00" => Value::Bool(false),
                "01" => Value::Bool(true),
                n => Value::Int(n.parse().map_err(|_| format!("bad integer {n:?}"))?),
            });
        }
        b'M' => m.push(Value::Int(i64::from(u16::from_le_bytes(
            r.array("BININT2")?,
        )))),
        // LONG1: a little-endian two's-complement integer of n bytes.
        0x8a => {
            let n = usize::from(r.u8("LONG1")?);
            if n > 8 {
                return Err(format!("a {n}-byte integer is too large"));
            }
            let b = r.take(n, "LONG1")?;
            let fill = if b.last().is_some_and(|&c| c & 0x80 != 0) {
                0xff
            } else {
                0
            };
            let mut full = [fill; 8];
            full[..n].copy_from_slice(b);
            m.push(Value::Int(i64::from_le_bytes(full)));
        }
        // SHORT_BINSTRING, BINSTRING (Python 2 strings, kept as their latin1
        // bytes), SHORT_BINBYTES, BINBYTES, BINBYTES8.
        b'U' | b'T' | b'C' | b'B' | 0x8e => {
            let n = match op {
                b'U' | b'C' => usize::from(r.u8("string length")?),
                b'T' => {
                    let n = i32::from_le_bytes(r.array("BINSTRING")?);
                    usize::try_from(n).map_err(|_| format!("negative string length {n}"))?
                }
                b'B' => r.u32("BINBYTES")? as usize,
                _ => r.len_u64("BINBYTES8")?,
            };
            let b = r.take(n, "a string")?;
            m.push(Value::Bytes(Rc::new(Cow::Borrowed(b))));
        }
        // SHORT_BINUNICODE, BINUNICODE, BINUNICODE8
        0x8c | b'X' | 0x8d => {
            let n = match op {
                0x8c => usize::from(r.u8("SHORT_BINUNICODE")?),
                b'X' => r.u32("BINUNICODE")? as usize,
                _ => r.len_u64("BINUNICODE8")?,
            };
            let b = r.take(n, "a unicode string")?;
            let s = std::str::from_utf8(b).map_err(|e| format!("text is not UTF-8: {e}"))?;
            m.push(Value::Str(s));
        }
        // Protocol 0: STRING, PUT, GET, DICT, LONG.
        b'S' => {
            let b = unrepr(r.line_bytes("STRING")?)?;
            m.push(Value::Bytes(Rc::new(Cow::Owned(b))));
        }
        b'p' => {
            let i = r.line_index("PUT")?;
            m.memo_put(i, "PUT")?;
        }
        b'g' => {
            let i = r.line_index("GET")?;
            m.memo_get(i, "GET")?;
        }
        b'd' => {
            let pairs = m.pop_mark("DICT")?;
            m.push(Value::Dict(Rc::default()));
            m.set_items(pairs, "DICT")?;
        }
        b'L' => {
            let line = r.line("LONG")?;
            let n = line.strip_suffix('L').unwrap_or(line);
            m.push(Value::Int(
                n.parse().map_err(|_| format!("bad integer {line:?}"))?,
            ));
        }
        b'c' => {
            let module = r.line("GLOBAL module")?;
            let name = r.line("GLOBAL name")?;
            m.push(Value::Global(resolve(module, name)?));
        }
        0x93 => {
            let name = m.pop("STACK_GLOBAL")?;
            let module = m.pop("STACK_GLOBAL")?;
            let (Value::Str(module), Value::Str(name)) = (&module, &name) else {
                return Err(format!(
                    "STACK_GLOBAL with a {} and a {}",
                    module.kind(),
                    name.kind()
                ));
            };
            m.push(Value::Global(resolve(module, name)?));
        }
        b'R' => {
            let args = m.pop("REDUCE")?;
            let callable = m.pop("REDUCE")?;
            m.push(reduce(&callable, &args)?);
        }
        b'b' => {
            let state = m.pop("BUILD")?;
            build(m.top("BUILD")?, state)?;
        }
        b's' => {
            let v = m.pop("SETITEM")?;
            let k = m.pop("SETITEM")?;
            m.set_items(vec![k, v], "SETITEM")?;
        }
        b'u' => {
            let pairs = m.pop_mark("SETITEMS")?;
            m.set_items(pairs, "SETITEMS")?;
        }
        b'q' => {
            let i = u32::from(r.u8("BINPUT")?);
            m.memo_put(i, "BINPUT")?;
        }
        b'r' => {
            let i = r.u32("LONG_BINPUT")?;
            m.memo_put(i, "LONG_BINPUT")?;
        }
        0x94 => {
            let i = u32::try_from(m.memo.len()).map_err(|_| "the memo is full".to_string())?;
            m.memo_put(i, "MEMOIZE")?;
        }
        b'h' => {
            let i = u32::from(r.u8("BINGET")?);
            m.memo_get(i, "BINGET")?;
        }
        b'j' => {
            let i = r.u32("LONG_BINGET")?;
            m.memo_get(i, "LONG_BINGET")?;
        }
        other => {
            return Err(format!(
                "unsupported opcode 0x{other:02x}: not one a pickled dict of numpy arrays uses"
            ))
        }
    }
    Ok(())
}
