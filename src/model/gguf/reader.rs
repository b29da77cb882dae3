//! A bounds-checked GGUF v2/v3 reader over a memory map: metadata, tensor directory, raw bytes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::dequant::GgmlType;
use super::GgufError;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

/// One metadata value, as typed in the file.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            MetaValue::I8(v) => Some(v.into()),
            MetaValue::I16(v) => Some(v.into()),
            MetaValue::I32(v) => Some(v.into()),
            MetaValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(v) => Some(v),
            _ => None,
        }
    }
}

/// A tensor's directory entry; `dims` are in GGUF order (dims[0] is the fastest-varying).
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Absolute byte range of the tensor's data within the file.
    pub start: usize,
    pub len: usize,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// The shape in torch order (slowest dim first).
    pub fn torch_shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, MetaValue>,
    pub tensors: Vec<TensorInfo>,
    mmap: Mmap,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let file = std::fs::File::open(path).map_err(|source| GgufError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        // SAFETY: the map is read-only and private to this process; a file truncated underneath
        // us while importing is outside what this tool promises to survive.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|source| GgufError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cursor = Cursor {
            bytes: &mmap,
            pos: 0,
            path,
        };
        if mmap.len() < 4 || &mmap[..4] != MAGIC {
            return Err(GgufError::BadMagic {
                path: path.to_path_buf(),
            });
        }
        cursor.pos = 4;
        let version = cursor.u32()?;
        if version != 2 && version != 3 {
            return Err(GgufError::UnsupportedVersion {
                path: path.to_path_buf(),
                version,
            });
        }
        let tensor_count = cursor.u64()?;
        let kv_count = cursor.u64()?;
        let mut metadata = BTreeMap::new();
        for _ in 0..kv_count {
            let key = cursor.string()?;
            let value_type = cursor.u32()?;
            let value = cursor.value(value_type)?;
            metadata.insert(key, value);
        }
        let alignment = match metadata.get("general.alignment") {
            Some(v) => v
                .as_u64()
                .filter(|a| *a > 0 && a.is_power_of_two())
                .ok_or_else(|| cursor.corrupt("general.alignment is not a power of two"))?,
            None => DEFAULT_ALIGNMENT,
        };
        let mut raw = Vec::new();
        for _ in 0..tensor_count {
            let name = cursor.string()?;
            let n_dims = cursor.u32()?;
            if n_dims > 4 {
                return Err(cursor.corrupt(&format!("tensor {name} has {n_dims} dimensions")));
            }
            let dims = (0..n_dims)
                .map(|_| cursor.u64())
                .collect::<Result<Vec<_>, _>>()?;
            let type_id = cursor.u32()?;
            let offset = cursor.u64()?;
            raw.push((name, dims, type_id, offset));
        }
        let data_start = (cursor.pos as u64).div_ceil(alignment) * alignment;
        let mut tensors = Vec::with_capacity(raw.len());
        for (name, dims, type_id, offset) in raw {
            let ggml_type =
                GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnsupportedQuant {
                    path: path.to_path_buf(),
                    tensor: name.clone(),
                    quant: GgmlType::name_of_id(type_id),
                })?;
            let n_elements = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| cursor.corrupt(&format!("tensor {name} is too large")))?;
            let len = ggml_type
                .byte_len(n_elements)
                .ok_or_else(|| GgufError::ShapeMismatch {
                    path: path.to_path_buf(),
                    tensor: name.clone(),
                    detail: format!(
                        "{n_elements} elements is not a whole number of {} blocks",
                        ggml_type.name()
                    ),
                })?;
            let start = data_start.checked_add(offset);
            let end = start.and_then(|s| s.checked_add(len));
            match (start, end) {
                (Some(start), Some(end)) if end <= mmap.len() as u64 => tensors.push(TensorInfo {
                    name,
                    dims,
                    ggml_type,
                    start: start as usize,
                    len: len as usize,
                }),
                _ => {
                    return Err(GgufError::Truncated {
                        path: path.to_path_buf(),
                        detail: format!(
                            "tensor {name} needs bytes up to {} but the file has {}",
                            end.map_or_else(|| "overflow".to_string(), |e| e.to_string()),
                            mmap.len()
                        ),
                    })
                }
            }
        }
        Ok(GgufFile {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            mmap,
        })
    }

    /// The raw (possibly quantized) bytes of a tensor; bounds were checked at open.
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        &self.mmap[info.start..info.start + info.len]
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    pub fn missing(&self, key: &str) -> GgufError {
        GgufError::MissingMetadata {
            path: self.path.clone(),
            key: key.to_string(),
        }
    }

    pub fn require_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.get(key)
            .and_then(MetaValue::as_u64)
            .ok_or_else(|| self.missing(key))
    }

    pub fn require_str(&self, key: &str) -> Result<&str, GgufError> {
        self.get(key)
            .and_then(MetaValue::as_str)
            .ok_or_else(|| self.missing(key))
    }

    pub fn opt_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(MetaValue::as_u64)
    }

    pub fn opt_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(MetaValue::as_f64)
    }

    pub fn opt_bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(MetaValue::as_bool)
    }

    pub fn opt_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(MetaValue::as_str)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl Cursor<'_> {
    fn corrupt(&self, detail: &str) -> GgufError {
        GgufError::Corrupt {
            path: self.path.to_path_buf(),
            detail: format!("{detail} (at byte {})", self.pos),
        }
    }

    fn take(&mut self, n: usize) -> Result<&[u8], GgufError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let out = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(out)
            }
            None => Err(GgufError::Truncated {
                path: self.path.to_path_buf(),
                detail: format!(
                    "the header needs {n} more bytes at offset {} but the file has {}",
                    self.pos,
                    self.bytes.len()
                ),
            }),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn len(&mut self) -> Result<usize, GgufError> {
        let n = self.u64()?;
        // Every element takes at least one byte, so a count past the file's end is corrupt and
        // must not drive an allocation.
        if n > (self.bytes.len() - self.pos) as u64 {
            return Err(GgufError::Truncated {
                path: self.path.to_path_buf(),
                detail: format!(
                    "a length of {n} at offset {} runs past the end of the file",
                    self.pos - 8
                ),
            });
        }
        Ok(n as usize)
    }

    fn string(&mut self) -> Result<String, GgufError> {
        let n = self.len()?;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.corrupt("a string is not valid UTF-8"))
    }

    fn value(&mut self, value_type: u32) -> Result<MetaValue, GgufError> {
        Ok(match value_type {
            0 => MetaValue::U8(self.array::<1>()?[0]),
            1 => MetaValue::I8(self.array::<1>()?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.array()?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array()?)),
            4 => MetaValue::U32(self.u32()?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array()?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array()?)),
            7 => MetaValue::Bool(self.array::<1>()?[0] != 0),
            8 => MetaValue::String(self.string()?),
            9 => {
                let item_type = self.u32()?;
                if item_type == 9 {
                    return Err(self.corrupt("nested metadata arrays are not supported"));
                }
                let n = self.len()?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(item_type)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64()?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array()?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array()?)),
            other => return Err(self.corrupt(&format!("unknown metadata value type {other}"))),
        })
    }
}
