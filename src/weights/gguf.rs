//! A GGUF (v2/v3) reader written for hostile input.
//!
//! Layout of a GGUF file (all little-endian):
//! ```text
//! magic "GGUF" | version u32 | tensor_count u64 | kv_count u64
//! kv_count  x (key: string, value_type: u32, value)
//! tensor_count x (name: string, n_dims: u32, dims: n_dims x u64, type: u32, offset: u64)
//! padding to `general.alignment` (default 32) | tensor data
//! ```
//! Every read is bounds-checked and every length or count is checked against the bytes that
//! are actually left before anything is allocated, so a 40-byte file that claims 2^60 tensors
//! is rejected at once instead of exhausting memory. Arrays are kept as vectors of their
//! element type ([`Array`]: a `u8` array takes a byte per element, a string array one buffer
//! plus an end offset per string), so what parsing allocates stays within a small multiple of
//! the file's size whatever the file says ([`PEAK_MEMORY_FACTOR`]; measured by
//! `tests/gguf_memory.rs` and the fuzz target). Parsing never panics; it returns a
//! [`GgufError`] that says which section was bad and where.

use std::fmt;

use super::quant::{self, GgmlType};

/// Default data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// GGML tensors have at most four dimensions.
pub const MAX_DIMS: u32 = 4;
/// Arrays of arrays deeper than this are refused (real files use depth 1).
pub const MAX_ARRAY_DEPTH: usize = 8;
/// What [`Gguf::parse`] allocates at its peak is at most this many times the file's length
/// (plus [`PEAK_MEMORY_SLACK`] bytes), for any input: the worst cases are files made of
/// nothing but tiny metadata entries or empty nested arrays.
pub const PEAK_MEMORY_FACTOR: usize = 8;
/// The constant part of the bound above.
pub const PEAK_MEMORY_SLACK: usize = 1024;

/// Which part of the file a parse error was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// Magic, version and the two counts.
    Header,
    /// The key/value metadata.
    Metadata,
    /// The tensor descriptions.
    TensorInfo,
    /// The tensor data after the padding.
    TensorData,
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Section::Header => "header",
            Section::Metadata => "metadata",
            Section::TensorInfo => "tensor info",
            Section::TensorData => "tensor data",
        })
    }
}

/// Everything that can be wrong with a GGUF file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GgufError {
    /// The first four bytes are not `GGUF`.
    #[error("not a GGUF file: magic bytes are {0:02x?}, expected \"GGUF\"")]
    BadMagic([u8; 4]),
    /// A version this reader does not understand (v1 used 32-bit counts and is not supported).
    #[error("unsupported GGUF version {0} (supported: 2 and 3)")]
    UnsupportedVersion(u32),
    /// The file ends before a value that should be there.
    #[error(
        "GGUF file truncated in the {section} at byte {offset}: needed {needed} more bytes, {available} left"
    )]
    Truncated {
        /// Where.
        section: Section,
        /// Absolute byte offset of the read.
        offset: u64,
        /// Bytes the read needed.
        needed: u64,
        /// Bytes left in the file.
        available: u64,
    },
    /// A count or length larger than the rest of the file could possibly hold.
    #[error(
        "GGUF {section} at byte {offset}: {what} of {value} cannot fit in the {available} bytes left"
    )]
    ImplausibleLength {
        /// Where.
        section: Section,
        /// Absolute byte offset of the length field.
        offset: u64,
        /// What was being counted.
        what: &'static str,
        /// The value found.
        value: u64,
        /// Bytes left in the file.
        available: u64,
    },
    /// A metadata value type id outside the GGUF specification.
    #[error("GGUF metadata at byte {offset}: unknown value type {type_id}")]
    UnknownValueType {
        /// Absolute byte offset of the type field.
        offset: u64,
        /// The type id found.
        type_id: u32,
    },
    /// A bool stored as a byte other than 0 or 1.
    #[error("GGUF metadata at byte {offset}: bool value {byte} is neither 0 nor 1")]
    InvalidBool {
        /// Absolute byte offset of the value.
        offset: u64,
        /// The byte found.
        byte: u8,
    },
    /// Arrays nested deeper than [`MAX_ARRAY_DEPTH`].
    #[error("GGUF metadata at byte {offset}: arrays nested deeper than {MAX_ARRAY_DEPTH}")]
    ArrayTooDeep {
        /// Absolute byte offset of the array.
        offset: u64,
    },
    /// A string that is not UTF-8.
    #[error("GGUF {section} at byte {offset}: string is not valid UTF-8")]
    InvalidUtf8 {
        /// Where.
        section: Section,
        /// Absolute byte offset of the string's bytes.
        offset: u64,
    },
    /// The same metadata key twice.
    #[error("GGUF metadata: duplicate key {0:?}")]
    DuplicateKey(String),
    /// The same tensor name twice.
    #[error("GGUF tensor info: duplicate tensor name {0:?}")]
    DuplicateTensor(String),
    /// `general.alignment` of the wrong type or not a power of two.
    #[error("GGUF metadata: general.alignment must be a non-zero power of two u32, found {0}")]
    BadAlignment(String),
    /// A tensor with zero or more than four dimensions, or a zero-sized or overflowing shape.
    #[error("GGUF tensor {name:?}: invalid shape {dims:?} ({reason})")]
    BadShape {
        /// Tensor name.
        name: String,
        /// Dimensions as read (at most the first few).
        dims: Vec<u64>,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A tensor type id this reader does not know.
    #[error("GGUF tensor {name:?}: unknown tensor type {type_id}")]
    UnknownTensorType {
        /// Tensor name.
        name: String,
        /// The type id found.
        type_id: u32,
    },
    /// The element count is not a whole number of quantisation blocks.
    #[error(
        "GGUF tensor {name:?}: {elements} elements is not a multiple of the {ggml_type} block of {block}"
    )]
    PartialBlock {
        /// Tensor name.
        name: String,
        /// Its type.
        ggml_type: GgmlType,
        /// Element count.
        elements: u64,
        /// Block size of the type.
        block: u64,
    },
    /// Tensor data offset not aligned, or data running past the end of the file.
    #[error("GGUF tensor {name:?}: data at offset {offset} (+{n_bytes} bytes) {reason}")]
    BadTensorOffset {
        /// Tensor name.
        name: String,
        /// Offset relative to the data section.
        offset: u64,
        /// Size of the tensor's data.
        n_bytes: u64,
        /// Why it was refused.
        reason: &'static str,
    },
    /// Asked for a tensor the file does not have.
    #[error("GGUF file has no tensor named {0:?}")]
    MissingTensor(String),
    /// Asked for a metadata key the file does not have, or with another type.
    #[error("GGUF metadata key {key:?}: {problem}")]
    Metadata {
        /// The key.
        key: String,
        /// What is wrong.
        problem: String,
    },
    /// The tensor's type cannot be dequantised by this crate.
    #[error("GGUF tensor {name:?}: dequantising {ggml_type} is not supported")]
    UnsupportedDequant {
        /// Tensor name.
        name: String,
        /// Its type.
        ggml_type: GgmlType,
    },
}

/// Metadata value types, with the ids the GGUF specification gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    /// 0
    U8,
    /// 1
    I8,
    /// 2
    U16,
    /// 3
    I16,
    /// 4
    U32,
    /// 5
    I32,
    /// 6
    F32,
    /// 7
    Bool,
    /// 8
    String,
    /// 9
    Array,
    /// 10
    U64,
    /// 11
    I64,
    /// 12
    F64,
}

impl ValueType {
    fn from_id(id: u32) -> Option<Self> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// The fewest bytes one value of this type takes in the file; bounds array allocations.
    fn min_size(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }

    /// The name the Python `gguf` package uses (`GGUFValueType`).
    pub fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "UINT8",
            I8 => "INT8",
            U16 => "UINT16",
            I16 => "INT16",
            U32 => "UINT32",
            I32 => "INT32",
            F32 => "FLOAT32",
            Bool => "BOOL",
            String => "STRING",
            Array => "ARRAY",
            U64 => "UINT64",
            I64 => "INT64",
            F64 => "FLOAT64",
        }
    }
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `u8`
    U8(u8),
    /// `i8`
    I8(i8),
    /// `u16`
    U16(u16),
    /// `i16`
    I16(i16),
    /// `u32`
    U32(u32),
    /// `i32`
    I32(i32),
    /// `f32`
    F32(f32),
    /// `bool` (one byte; any non-zero byte is refused as not 0 or 1)
    Bool(bool),
    /// UTF-8 string
    String(String),
    /// Homogeneous array, stored as a vector of its element type (boxed: most values are
    /// scalars, and a metadata entry stays 32 bytes).
    Array(Box<Array>),
    /// `u64`
    U64(u64),
    /// `i64`
    I64(i64),
    /// `f64`
    F64(f64),
}

impl Value {
    /// The value's type.
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(_) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// Any unsigned or non-negative signed integer as `u64`.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer as `i64` when it fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// `f32` or `f64` as `f64`.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The array, if this is one.
    pub fn as_array(&self) -> Option<&Array> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// The strings of a string array: one buffer and the end of each string in it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Strings {
    text: String,
    ends: Vec<usize>,
}

impl Strings {
    /// Number of strings.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// String `i`.
    pub fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        self.text.get(start..end)
    }

    /// The strings in order.
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        (0..self.len()).filter_map(|i| self.get(i))
    }
}

impl<'s> FromIterator<&'s str> for Strings {
    fn from_iter<I: IntoIterator<Item = &'s str>>(iter: I) -> Self {
        let mut out = Strings::default();
        for s in iter {
            out.text.push_str(s);
            out.ends.push(out.text.len());
        }
        out
    }
}

/// A homogeneous metadata array, as a vector of its element type. The element type is kept
/// even when it is empty.
#[derive(Debug, Clone, PartialEq)]
pub enum Array {
    /// `u8` elements
    U8(Vec<u8>),
    /// `i8` elements
    I8(Vec<i8>),
    /// `u16` elements
    U16(Vec<u16>),
    /// `i16` elements
    I16(Vec<i16>),
    /// `u32` elements
    U32(Vec<u32>),
    /// `i32` elements
    I32(Vec<i32>),
    /// `f32` elements
    F32(Vec<f32>),
    /// `bool` elements
    Bool(Vec<bool>),
    /// strings
    String(Strings),
    /// arrays (each with its own element type)
    Array(Vec<Array>),
    /// `u64` elements
    U64(Vec<u64>),
    /// `i64` elements
    I64(Vec<i64>),
    /// `f64` elements
    F64(Vec<f64>),
}

impl Array {
    /// The type of every element.
    pub fn element_type(&self) -> ValueType {
        match self {
            Array::U8(_) => ValueType::U8,
            Array::I8(_) => ValueType::I8,
            Array::U16(_) => ValueType::U16,
            Array::I16(_) => ValueType::I16,
            Array::U32(_) => ValueType::U32,
            Array::I32(_) => ValueType::I32,
            Array::F32(_) => ValueType::F32,
            Array::Bool(_) => ValueType::Bool,
            Array::String(_) => ValueType::String,
            Array::Array(_) => ValueType::Array,
            Array::U64(_) => ValueType::U64,
            Array::I64(_) => ValueType::I64,
            Array::F64(_) => ValueType::F64,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::String(v) => v.len(),
            Array::Array(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F64(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` as a [`Value`] (a copy; strings and arrays are cloned).
    pub fn get(&self, i: usize) -> Option<Value> {
        Some(match self {
            Array::U8(v) => Value::U8(*v.get(i)?),
            Array::I8(v) => Value::I8(*v.get(i)?),
            Array::U16(v) => Value::U16(*v.get(i)?),
            Array::I16(v) => Value::I16(*v.get(i)?),
            Array::U32(v) => Value::U32(*v.get(i)?),
            Array::I32(v) => Value::I32(*v.get(i)?),
            Array::F32(v) => Value::F32(*v.get(i)?),
            Array::Bool(v) => Value::Bool(*v.get(i)?),
            Array::String(v) => Value::String(v.get(i)?.to_owned()),
            Array::Array(v) => Value::Array(Box::new(v.get(i)?.clone())),
            Array::U64(v) => Value::U64(*v.get(i)?),
            Array::I64(v) => Value::I64(*v.get(i)?),
            Array::F64(v) => Value::F64(*v.get(i)?),
        })
    }

    /// The elements as [`Value`]s, one at a time (see [`Array::get`]).
    pub fn iter(&self) -> impl Iterator<Item = Value> + '_ {
        (0..self.len()).filter_map(|i| self.get(i))
    }

    /// The strings, if this is an array of strings.
    pub fn as_strings(&self) -> Option<&Strings> {
        match self {
            Array::String(s) => Some(s),
            _ => None,
        }
    }

    /// Every element as `i64`, if this is an array of integers that all fit.
    pub fn to_i64s(&self) -> Option<Vec<i64>> {
        fn all<T: Copy>(v: &[T], f: impl Fn(T) -> Option<i64>) -> Option<Vec<i64>> {
            v.iter().map(|&x| f(x)).collect()
        }
        match self {
            Array::U8(v) => all(v, |x| Some(x.into())),
            Array::I8(v) => all(v, |x| Some(x.into())),
            Array::U16(v) => all(v, |x| Some(x.into())),
            Array::I16(v) => all(v, |x| Some(x.into())),
            Array::U32(v) => all(v, |x| Some(x.into())),
            Array::I32(v) => all(v, |x| Some(x.into())),
            Array::U64(v) => all(v, |x| i64::try_from(x).ok()),
            Array::I64(v) => all(v, Some),
            _ => None,
        }
    }
}

/// Where one tensor's data is and how to read it.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions in GGML order: `dims[0]` is the contiguous (fastest-varying) one.
    pub dims: Vec<u64>,
    /// Storage type.
    pub ggml_type: GgmlType,
    /// Offset of the data, relative to the start of the data section.
    pub offset: u64,
    /// Number of elements (product of `dims`).
    pub n_elements: u64,
    /// Number of bytes of data.
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Shape in row-major order (outermost first), the order burn and PyTorch use.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A parsed GGUF file that borrows the file's bytes; tensors are read from them on demand.
#[derive(Debug, Clone)]
pub struct Gguf<'a> {
    bytes: &'a [u8],
    /// The mapping `bytes` lie in, when parsed with [`Gguf::parse_mapped`].
    #[cfg(not(target_arch = "wasm32"))]
    mapping: Option<&'a super::mapped::MappedFile>,
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    /// Tensor descriptions in file order.
    pub tensors: Vec<TensorInfo>,
    /// Alignment of the data section and of each tensor's offset.
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: u64,
}

/// A bounds-checked little-endian cursor over the file.
#[derive(Clone, Copy)]
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    section: Section,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                section: self.section,
                offset: self.pos as u64,
                needed: n,
                available: self.remaining(),
            });
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.bytes[start..self.pos])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, GgufError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, GgufError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A count of items that each take at least `min_size` bytes; refused when the rest of
    /// the file cannot hold that many, which bounds every allocation by the file size.
    fn count(&mut self, what: &'static str, min_size: u64) -> Result<usize, GgufError> {
        let offset = self.pos as u64;
        let value = self.u64()?;
        let available = self.remaining();
        if value.saturating_mul(min_size) > available {
            return Err(GgufError::ImplausibleLength {
                section: self.section,
                offset,
                what,
                value,
                available,
            });
        }
        Ok(value as usize)
    }

    /// A string, borrowed from the file.
    fn str(&mut self) -> Result<&'a str, GgufError> {
        let len = self.count("string length", 1)?;
        let offset = self.pos as u64;
        let raw = self.take(len as u64)?;
        std::str::from_utf8(raw).map_err(|_| GgufError::InvalidUtf8 {
            section: self.section,
            offset,
        })
    }

    fn string(&mut self) -> Result<String, GgufError> {
        self.str().map(str::to_owned)
    }

    fn value_type(&mut self) -> Result<ValueType, GgufError> {
        let offset = self.pos as u64;
        let type_id = self.u32()?;
        ValueType::from_id(type_id).ok_or(GgufError::UnknownValueType { offset, type_id })
    }

    fn value(&mut self, ty: ValueType) -> Result<Value, GgufError> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.u8()?),
            ValueType::I8 => Value::I8(self.u8()? as i8),
            ValueType::U16 => Value::U16(self.u16()?),
            ValueType::I16 => Value::I16(self.u16()? as i16),
            ValueType::U32 => Value::U32(self.u32()?),
            ValueType::I32 => Value::I32(self.u32()? as i32),
            ValueType::F32 => Value::F32(f32::from_bits(self.u32()?)),
            ValueType::U64 => Value::U64(self.u64()?),
            ValueType::I64 => Value::I64(self.u64()? as i64),
            ValueType::F64 => Value::F64(f64::from_bits(self.u64()?)),
            ValueType::Bool => {
                let offset = self.pos as u64;
                match self.u8()? {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    byte => return Err(GgufError::InvalidBool { offset, byte }),
                }
            }
            ValueType::String => Value::String(self.string()?),
            ValueType::Array => Value::Array(Box::new(self.array_value(0)?)),
        })
    }

    /// `n` fixed-size elements of `N` bytes each, converted by `f`, as one vector.
    fn fixed<const N: usize, T>(
        &mut self,
        n: usize,
        f: fn([u8; N]) -> T,
    ) -> Result<Vec<T>, GgufError> {
        let raw = self.take(n as u64 * N as u64)?;
        Ok(raw
            .chunks_exact(N)
            .map(|c| {
                let mut b = [0u8; N];
                b.copy_from_slice(c);
                f(b)
            })
            .collect())
    }

    /// An array (element type, count, elements) nested `depth` arrays deep, as a vector of
    /// its element type: the count was checked against the bytes left, so each vector's
    /// allocation is bounded by the file.
    fn array_value(&mut self, depth: usize) -> Result<Array, GgufError> {
        let offset = self.pos as u64;
        if depth >= MAX_ARRAY_DEPTH {
            return Err(GgufError::ArrayTooDeep { offset });
        }
        let elem = self.value_type()?;
        let n = self.count("array length", elem.min_size())?;
        Ok(match elem {
            ValueType::U8 => Array::U8(self.take(n as u64)?.to_vec()),
            ValueType::I8 => Array::I8(self.fixed(n, |[b]| b as i8)?),
            ValueType::U16 => Array::U16(self.fixed(n, u16::from_le_bytes)?),
            ValueType::I16 => Array::I16(self.fixed(n, i16::from_le_bytes)?),
            ValueType::U32 => Array::U32(self.fixed(n, u32::from_le_bytes)?),
            ValueType::I32 => Array::I32(self.fixed(n, i32::from_le_bytes)?),
            ValueType::F32 => Array::F32(self.fixed(n, f32::from_le_bytes)?),
            ValueType::U64 => Array::U64(self.fixed(n, u64::from_le_bytes)?),
            ValueType::I64 => Array::I64(self.fixed(n, i64::from_le_bytes)?),
            ValueType::F64 => Array::F64(self.fixed(n, f64::from_le_bytes)?),
            ValueType::Bool => {
                let start = self.pos as u64;
                let raw = self.take(n as u64)?;
                if let Some(i) = raw.iter().position(|&b| b > 1) {
                    return Err(GgufError::InvalidBool {
                        offset: start + i as u64,
                        byte: raw[i],
                    });
                }
                Array::Bool(raw.iter().map(|&b| b == 1).collect())
            }
            ValueType::String => {
                // Size the buffer first (a dry run over the lengths), so it is allocated once.
                let mut dry = *self;
                let total = (0..n)
                    .try_fold(0u64, |sum, _| {
                        let len = dry.count("string length", 1).ok()? as u64;
                        dry.take(len).ok()?;
                        Some(sum + len)
                    })
                    .unwrap_or(0);
                let mut strings = Strings {
                    text: String::with_capacity(total as usize),
                    ends: Vec::with_capacity(n),
                };
                for _ in 0..n {
                    strings.text.push_str(self.str()?);
                    strings.ends.push(strings.text.len());
                }
                Array::String(strings)
            }
            ValueType::Array => {
                let mut arrays = Vec::with_capacity(n);
                for _ in 0..n {
                    arrays.push(self.array_value(depth + 1)?);
                }
                Array::Array(arrays)
            }
        })
    }
}

/// The first name that appears twice among `names` (sorted by an index, so nothing but one
/// index per name is allocated).
fn first_duplicate<'n>(names: impl Fn(usize) -> &'n str, n: usize) -> Option<&'n str> {
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_unstable_by(|&a, &b| names(a).cmp(names(b)).then(a.cmp(&b)));
    // Of every run of equal names, the duplicate reported is the one seen second in the file.
    order
        .windows(2)
        .filter(|w| names(w[0]) == names(w[1]))
        .map(|w| w[1])
        .min()
        .map(names)
}

fn align_up(value: u64, alignment: u64) -> Option<u64> {
    value.checked_next_multiple_of(alignment)
}

impl<'a> Gguf<'a> {
    /// Parses the header, metadata and tensor table of `bytes` and checks that every tensor's
    /// data lies inside the file. Tensor data itself is read later, on demand.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, GgufError> {
        let mut cur = Cursor {
            bytes,
            pos: 0,
            section: Section::Header,
        };
        let magic: [u8; 4] = cur.array()?;
        if &magic != b"GGUF" {
            return Err(GgufError::BadMagic(magic));
        }
        let version = cur.u32()?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion(version));
        }
        // Smallest tensor info: empty name (8) + n_dims (4) + one dim (8) + type (4) + offset (8).
        let tensor_count = cur.count("tensor count", 32)?;
        // Smallest key/value: empty key (8) + type (4) + one byte.
        let kv_count = cur.count("metadata count", 13)?;

        cur.section = Section::Metadata;
        let mut metadata: Vec<(String, Value)> = Vec::with_capacity(kv_count);
        for _ in 0..kv_count {
            let key = cur.string()?;
            let ty = cur.value_type()?;
            let value = cur.value(ty)?;
            metadata.push((key, value));
        }
        if let Some(key) = first_duplicate(|i| &metadata[i].0, metadata.len()) {
            return Err(GgufError::DuplicateKey(key.to_owned()));
        }

        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, Value::U32(a))) if a.is_power_of_two() => u64::from(*a),
            Some((_, other)) => return Err(GgufError::BadAlignment(format!("{other:?}"))),
        };

        cur.section = Section::TensorInfo;
        let mut tensors: Vec<TensorInfo> = Vec::with_capacity(tensor_count);
        for _ in 0..tensor_count {
            tensors.push(read_tensor_info(&mut cur)?);
        }
        if let Some(name) = first_duplicate(|i| &tensors[i].name, tensors.len()) {
            return Err(GgufError::DuplicateTensor(name.to_owned()));
        }

        let data_offset = align_up(cur.pos as u64, alignment).unwrap_or(u64::MAX);
        let file_len = bytes.len() as u64;
        if data_offset > file_len && !tensors.is_empty() {
            return Err(GgufError::Truncated {
                section: Section::TensorData,
                offset: cur.pos as u64,
                needed: data_offset - cur.pos as u64,
                available: file_len - cur.pos as u64,
            });
        }
        let data_len = file_len.saturating_sub(data_offset);
        for t in &tensors {
            let reason = if !t.offset.is_multiple_of(alignment) {
                Some("is not aligned")
            } else if t
                .offset
                .checked_add(t.n_bytes)
                .is_none_or(|end| end > data_len)
            {
                Some("runs past the end of the file")
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(GgufError::BadTensorOffset {
                    name: t.name.clone(),
                    offset: t.offset,
                    n_bytes: t.n_bytes,
                    reason,
                });
            }
        }

        Ok(Gguf {
            bytes,
            #[cfg(not(target_arch = "wasm32"))]
            mapping: None,
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
        })
    }

    /// [`Gguf::parse`] of a mapped file; [`Gguf::release`] then hands a tensor's pages back.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn parse_mapped(file: &'a super::mapped::MappedFile) -> Result<Self, GgufError> {
        let mut gguf = Gguf::parse(file.bytes())?;
        gguf.mapping = Some(file);
        Ok(gguf)
    }

    /// Says that `info`'s bytes have been copied and are not needed while loading goes on:
    /// a mapped file's pages under them leave resident memory (read again if used); bytes
    /// in a caller's buffer stay as they are.
    pub fn release(&self, info: &TensorInfo) {
        self.release_part(info, 0..info.n_bytes as usize);
    }

    /// [`Gguf::release`] of the bytes `part` (offsets into [`Gguf::tensor_bytes`]) of `info`,
    /// for a tensor copied a part at a time.
    pub fn release_part(&self, info: &TensorInfo, part: std::ops::Range<usize>) {
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(file) = self.mapping {
            let start = (self.data_offset + info.offset) as usize;
            file.release(start + part.start..start + part.end.min(info.n_bytes as usize));
        }
        #[cfg(target_arch = "wasm32")]
        let _ = (info, part);
    }

    /// Hands every page of a mapped file back (metadata and tensors alike: once a model has
    /// copied what it needs, pages that reading brought back, the kernel's fault-around
    /// neighbours included, would otherwise stay resident: 10 MB of SmolLM2's GGUF). Reads
    /// after it still see the file's bytes; a caller's buffer stays as it is.
    pub fn release_all(&self) {
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(file) = self.mapping {
            file.release(0..file.bytes().len());
        }
    }

    /// The metadata value for `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// A required metadata value, or a [`GgufError::Metadata`] naming the key.
    pub fn require(&self, key: &str) -> Result<&Value, GgufError> {
        self.get(key).ok_or_else(|| GgufError::Metadata {
            key: key.into(),
            problem: "missing".into(),
        })
    }

    /// A required unsigned integer.
    pub fn require_u64(&self, key: &str) -> Result<u64, GgufError> {
        let v = self.require(key)?;
        v.as_u64()
            .ok_or_else(|| type_problem(key, "an unsigned integer", v))
    }

    /// A required float.
    pub fn require_f64(&self, key: &str) -> Result<f64, GgufError> {
        let v = self.require(key)?;
        v.as_f64().ok_or_else(|| type_problem(key, "a float", v))
    }

    /// A required string.
    pub fn require_str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| type_problem(key, "a string", v))
    }

    /// A required array of strings.
    pub fn require_strings(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        let v = self.require(key)?;
        let items = v
            .as_array()
            .ok_or_else(|| type_problem(key, "an array", v))?;
        let strings = items
            .as_strings()
            .ok_or_else(|| type_problem(key, "an array of strings", v))?;
        Ok(strings.iter().collect())
    }

    /// The description of tensor `name`.
    pub fn tensor_info(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| GgufError::MissingTensor(name.into()))
    }

    /// The raw (possibly quantised) bytes of a tensor, e.g. Q4_1 blocks for a GPU kernel.
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &'a [u8] {
        // `parse` checked that every tensor lies inside the file.
        let start = (self.data_offset + info.offset) as usize;
        &self.bytes[start..start + info.n_bytes as usize]
    }

    /// Tensor `name` dequantised to `f32`, in GGML element order (row-major over [`TensorInfo::shape`]).
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>, GgufError> {
        let info = self.tensor_info(name)?;
        quant::dequantize(info.ggml_type, self.tensor_bytes(info)).ok_or_else(|| {
            GgufError::UnsupportedDequant {
                name: name.into(),
                ggml_type: info.ggml_type,
            }
        })
    }
}

fn type_problem(key: &str, expected: &str, found: &Value) -> GgufError {
    GgufError::Metadata {
        key: key.into(),
        problem: format!("expected {expected}, found {}", found.value_type().name()),
    }
}

fn read_tensor_info(cur: &mut Cursor<'_>) -> Result<TensorInfo, GgufError> {
    let name = cur.string()?;
    let n_dims = cur.u32()?;
    if n_dims == 0 || n_dims > MAX_DIMS {
        return Err(GgufError::BadShape {
            name,
            dims: vec![],
            reason: "a tensor has 1 to 4 dimensions",
        });
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        dims.push(cur.u64()?);
    }
    let type_id = cur.u32()?;
    let offset = cur.u64()?;

    let bad_shape = |reason| GgufError::BadShape {
        name: name.clone(),
        dims: dims.clone(),
        reason,
    };
    if dims.contains(&0) {
        return Err(bad_shape("a dimension is zero"));
    }
    let n_elements = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= i64::MAX as u64)
        .ok_or_else(|| bad_shape("element count overflows"))?;
    let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnknownTensorType {
        name: name.clone(),
        type_id,
    })?;
    let (block, type_size) = ggml_type.block_layout();
    // Rows are made of whole blocks, as in ggml.
    if !dims[0].is_multiple_of(block) {
        return Err(GgufError::PartialBlock {
            name,
            ggml_type,
            elements: dims[0],
            block,
        });
    }
    let n_bytes = (n_elements / block)
        .checked_mul(type_size)
        .ok_or_else(|| bad_shape("byte size overflows"))?;
    Ok(TensorInfo {
        name,
        dims,
        ggml_type,
        offset,
        n_elements,
        n_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds small GGUF files for tests.
    pub(crate) struct Builder {
        pub out: Vec<u8>,
    }

    impl Builder {
        fn new(version: u32, n_tensors: u64, n_kv: u64) -> Self {
            let mut out = b"GGUF".to_vec();
            out.extend(version.to_le_bytes());
            out.extend(n_tensors.to_le_bytes());
            out.extend(n_kv.to_le_bytes());
            Builder { out }
        }
        fn string(&mut self, s: &str) -> &mut Self {
            self.out.extend((s.len() as u64).to_le_bytes());
            self.out.extend(s.as_bytes());
            self
        }
        fn u32(&mut self, v: u32) -> &mut Self {
            self.out.extend(v.to_le_bytes());
            self
        }
        fn u64(&mut self, v: u64) -> &mut Self {
            self.out.extend(v.to_le_bytes());
            self
        }
        fn pad(&mut self, alignment: usize) -> &mut Self {
            while !self.out.len().is_multiple_of(alignment) {
                self.out.push(0);
            }
            self
        }
    }

    /// A valid file: two metadata keys (a string and a nested array) and one F32 tensor [2, 3].
    fn small_file() -> Vec<u8> {
        let mut b = Builder::new(3, 1, 2);
        b.string("general.name").u32(8).string("tiny");
        // array of 2 arrays of u8: [[1, 2], [3]]
        b.string("nested").u32(9).u32(9).u64(2);
        b.u32(0).u64(2).out.extend([1u8, 2]);
        b.u32(0).u64(1).out.push(3);
        b.string("w").u32(2).u64(3).u64(2).u32(0).u64(0);
        b.pad(32);
        for i in 0..6 {
            b.out.extend((i as f32).to_le_bytes());
        }
        b.out
    }

    #[test]
    fn parses_a_small_file() {
        let bytes = small_file();
        let g = Gguf::parse(&bytes).unwrap();
        assert_eq!(g.version, 3);
        assert_eq!(g.get("general.name").unwrap().as_str(), Some("tiny"));
        let nested = g.get("nested").unwrap();
        assert_eq!(
            nested,
            &Value::Array(Box::new(Array::Array(vec![
                Array::U8(vec![1, 2]),
                Array::U8(vec![3]),
            ])))
        );
        assert_eq!(nested.as_array().unwrap().element_type(), ValueType::Array);
        let t = g.tensor_info("w").unwrap();
        assert_eq!(t.shape(), vec![2, 3]);
        assert_eq!(
            g.dequantize("w").unwrap(),
            vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
        );
        assert_eq!(g.data_offset % 32, 0);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = small_file();
        for len in 0..bytes.len() {
            let err = Gguf::parse(&bytes[..len]).expect_err("a truncated file must not parse");
            assert!(
                matches!(
                    err,
                    GgufError::Truncated { .. }
                        | GgufError::ImplausibleLength { .. }
                        | GgufError::BadTensorOffset { .. }
                ),
                "len {len}: unexpected {err:?}"
            );
        }
    }

    #[test]
    fn hostile_headers() {
        let mut bad_magic = small_file();
        bad_magic[0] = b'X';
        assert!(matches!(
            Gguf::parse(&bad_magic),
            Err(GgufError::BadMagic(_))
        ));

        for version in [0, 1, 4, u32::MAX] {
            let mut f = small_file();
            f[4..8].copy_from_slice(&version.to_le_bytes());
            assert_eq!(
                Gguf::parse(&f).unwrap_err(),
                GgufError::UnsupportedVersion(version)
            );
        }

        let huge = Builder::new(3, u64::MAX, 0).out;
        assert!(matches!(
            Gguf::parse(&huge),
            Err(GgufError::ImplausibleLength {
                what: "tensor count",
                ..
            })
        ));
        let huge = Builder::new(3, 0, 1 << 40).out;
        assert!(matches!(
            Gguf::parse(&huge),
            Err(GgufError::ImplausibleLength {
                what: "metadata count",
                ..
            })
        ));
    }

    #[test]
    fn hostile_metadata() {
        // A string claiming 2^63 bytes.
        let mut b = Builder::new(3, 0, 1);
        b.u64(1 << 63);
        assert!(matches!(
            Gguf::parse(&b.out),
            Err(GgufError::ImplausibleLength { .. })
        ));
        // An array of u64 claiming far more elements than bytes.
        let mut b = Builder::new(3, 0, 1);
        b.string("k").u32(9).u32(10).u64(1_000_000);
        assert!(matches!(
            Gguf::parse(&b.out),
            Err(GgufError::ImplausibleLength { .. })
        ));
        // Unknown value type.
        let mut b = Builder::new(3, 0, 1);
        b.string("k").u32(13).u32(0);
        assert!(matches!(
            Gguf::parse(&b.out),
            Err(GgufError::UnknownValueType { type_id: 13, .. })
        ));
        // Arrays nested too deep.
        let mut b = Builder::new(3, 0, 1);
        b.string("k").u32(9);
        for _ in 0..(MAX_ARRAY_DEPTH + 2) {
            b.u32(9).u64(1);
        }
        b.u32(0).u64(0);
        assert!(matches!(
            Gguf::parse(&b.out),
            Err(GgufError::ArrayTooDeep { .. })
        ));
        // Invalid UTF-8 key.
        let mut b = Builder::new(3, 0, 1);
        b.u64(2).out.extend([0xff, 0xfe]);
        b.u32(0).out.push(0);
        assert!(matches!(
            Gguf::parse(&b.out),
            Err(GgufError::InvalidUtf8 { .. })
        ));
        // Duplicate key.
        let mut b = Builder::new(3, 0, 2);
        b.string("k").u32(0).out.push(1);
        b.string("k").u32(0).out.push(2);
        assert_eq!(
            Gguf::parse(&b.out).unwrap_err(),
            GgufError::DuplicateKey("k".into())
        );
        // Alignment not a power of two.
        let mut b = Builder::new(3, 0, 1);
        b.string("general.alignment").u32(4).u32(3);
        assert!(matches!(
            Gguf::parse(&b.out),
            Err(GgufError::BadAlignment(_))
        ));
        // Bool that is neither 0 nor 1.
        let mut b = Builder::new(3, 0, 1);
        b.string("k").u32(7).out.push(7);
        assert!(matches!(
            Gguf::parse(&b.out),
            Err(GgufError::InvalidBool { byte: 7, .. })
        ));
    }

    fn one_tensor(dims: &[u64], type_id: u32, offset: u64, data: usize) -> Vec<u8> {
        let mut b = Builder::new(3, 1, 0);
        b.string("t").u32(dims.len() as u32);
        for &d in dims {
            b.u64(d);
        }
        b.u32(type_id).u64(offset);
        b.pad(32);
        b.out.extend(std::iter::repeat_n(0u8, data));
        b.out
    }

    #[test]
    fn hostile_tensor_infos() {
        assert!(Gguf::parse(&one_tensor(&[4], 0, 0, 16)).is_ok());
        assert!(matches!(
            Gguf::parse(&one_tensor(&[], 0, 0, 16)),
            Err(GgufError::BadShape { .. })
        ));
        assert!(matches!(
            Gguf::parse(&one_tensor(&[1, 1, 1, 1, 1], 0, 0, 16)),
            Err(GgufError::BadShape { .. })
        ));
        assert!(matches!(
            Gguf::parse(&one_tensor(&[4, 0], 0, 0, 16)),
            Err(GgufError::BadShape { .. })
        ));
        assert!(matches!(
            Gguf::parse(&one_tensor(&[u64::MAX, u64::MAX], 0, 0, 16)),
            Err(GgufError::BadShape { .. })
        ));
        assert!(matches!(
            Gguf::parse(&one_tensor(&[4], 1000, 0, 16)),
            Err(GgufError::UnknownTensorType { type_id: 1000, .. })
        ));
        assert!(matches!(
            Gguf::parse(&one_tensor(&[33], 3, 0, 64)),
            Err(GgufError::PartialBlock { .. })
        ));
        assert!(matches!(
            Gguf::parse(&one_tensor(&[4], 0, 4, 64)),
            Err(GgufError::BadTensorOffset {
                reason: "is not aligned",
                ..
            })
        ));
        assert!(matches!(
            Gguf::parse(&one_tensor(&[4], 0, 32, 16)),
            Err(GgufError::BadTensorOffset { .. })
        ));
        assert!(matches!(
            Gguf::parse(&one_tensor(&[4], 0, u64::MAX - 31, 16)),
            Err(GgufError::BadTensorOffset { .. })
        ));
        assert!(matches!(
            Gguf::parse(&one_tensor(&[1 << 40, 1 << 20], 0, 0, 16)),
            Err(GgufError::BadTensorOffset { .. })
        ));
    }

    #[test]
    fn missing_things_are_named() {
        let bytes = small_file();
        let g = Gguf::parse(&bytes).unwrap();
        assert_eq!(
            g.dequantize("nope").unwrap_err(),
            GgufError::MissingTensor("nope".into())
        );
        let err = g.require_u64("general.name").unwrap_err().to_string();
        assert!(
            err.contains("general.name") && err.contains("STRING"),
            "{err}"
        );
        assert!(g.require_str("absent").is_err());
    }
}
