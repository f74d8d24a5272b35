//! Reading and writing the safetensors format, single file or sharded.
//!
//! Our own parser (not the `safetensors` crate) so every malformed input ends
//! in an error naming the file and tensor: header length past the end,
//! truncated data, out-of-range or overlapping offsets, a byte count that does
//! not match dtype x shape. Files are memory-mapped; tensors are borrowed.

use crate::error::{Error, Result};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Dtype {
    BF16,
    F16,
    F32,
    /// Trace dumps only (f64 numerics); model weights in it are refused.
    F64,
}

impl Dtype {
    pub fn size(self) -> usize {
        match self {
            Dtype::BF16 | Dtype::F16 => 2,
            Dtype::F32 => 4,
            Dtype::F64 => 8,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dtype::BF16 => "BF16",
            Dtype::F16 => "F16",
            Dtype::F32 => "F32",
            Dtype::F64 => "F64",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "BF16" => Some(Dtype::BF16),
            "F16" => Some(Dtype::F16),
            "F32" => Some(Dtype::F32),
            "F64" => Some(Dtype::F64),
            _ => None,
        }
    }
}

/// A tensor's bytes in its stored dtype, borrowed from a mapped file or owned
/// (synthetic weights).
#[derive(Debug, Clone)]
pub struct HostTensor<'a> {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Cow<'a, [u8]>,
}

impl HostTensor<'_> {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Value `i` as f32 (exact for the three weight dtypes; F64 rounds).
    #[inline]
    pub fn get_f32(&self, i: usize) -> f32 {
        let b = &self.bytes;
        match self.dtype {
            Dtype::F64 => self.get_f64(i) as f32,
            Dtype::BF16 => {
                f32::from_bits((u16::from_le_bytes([b[2 * i], b[2 * i + 1]]) as u32) << 16)
            }
            Dtype::F16 => {
                half::f16::from_bits(u16::from_le_bytes([b[2 * i], b[2 * i + 1]])).to_f32()
            }
            Dtype::F32 => f32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]),
        }
    }

    /// Value `i` widened to f64 (exact for every dtype).
    #[inline]
    pub fn get_f64(&self, i: usize) -> f64 {
        match self.dtype {
            Dtype::F64 => {
                let b = &self.bytes[8 * i..8 * i + 8];
                f64::from_le_bytes(b.try_into().expect("8 bytes"))
            }
            _ => self.get_f32(i) as f64,
        }
    }

    pub fn to_f64_vec(&self) -> Vec<f64> {
        (0..self.numel()).map(|i| self.get_f64(i)).collect()
    }

    pub fn to_f32_vec(&self) -> Vec<f32> {
        (0..self.numel()).map(|i| self.get_f32(i)).collect()
    }

    /// The first value that is finite as stored but rounds to a bf16
    /// infinity (|v| >= 2^128 - 2^119): none in a bf16 tensor.
    pub fn first_bf16_overflow(&self) -> Option<(usize, f32)> {
        if self.dtype == Dtype::BF16 {
            return None;
        }
        (0..self.numel())
            .map(|i| (i, self.get_f32(i)))
            .find(|&(_, v)| {
                v.is_finite()
                    && !f32::from_bits((crate::util::bf16_bits(v) as u32) << 16).is_finite()
            })
    }

    /// The first non-finite value, if any: weights with NaN/Inf are refused.
    pub fn first_non_finite(&self) -> Option<(usize, f32)> {
        (0..self.numel())
            .map(|i| (i, self.get_f32(i)))
            .find(|(_, v)| !v.is_finite())
    }
}

/// A header entry; offsets are relative to the data section.
#[derive(Debug, Clone)]
pub struct Entry {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub start: usize,
    pub end: usize,
}

/// One mapped safetensors file with a validated header.
pub struct SafeFile {
    path: PathBuf,
    map: memmap2::Mmap,
    data_start: usize,
    entries: BTreeMap<String, Entry>,
    pub metadata: BTreeMap<String, String>,
}

impl SafeFile {
    pub fn open(path: &Path) -> Result<Self> {
        crate::util::regular_file(path)?;
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the file is opened read-only; lockstep never writes model files
        // it has mapped (regeneration writes a temporary and renames it).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let (data_start, entries, metadata) = parse_header(&map, path)?;
        Ok(SafeFile {
            path: path.to_path_buf(),
            map,
            data_start,
            entries,
            metadata,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.entries.keys()
    }

    pub fn tensor(&self, name: &str) -> Option<HostTensor<'_>> {
        self.entries.get(name).map(|e| HostTensor {
            dtype: e.dtype,
            shape: e.shape.clone(),
            bytes: Cow::Borrowed(&self.map[self.data_start + e.start..self.data_start + e.end]),
        })
    }
}

fn bad(path: &Path, problem: impl Into<String>) -> Error {
    Error::Safetensors {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

pub type Header = (usize, BTreeMap<String, Entry>, BTreeMap<String, String>);

/// Validates a whole safetensors image: header and every offset.
pub fn parse_header(bytes: &[u8], path: &Path) -> Result<Header> {
    if bytes.len() < 8 {
        return Err(bad(
            path,
            format!(
                "file is {} bytes, too short for the 8-byte header length",
                bytes.len()
            ),
        ));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    let avail = (bytes.len() - 8) as u64;
    if n > avail {
        return Err(bad(
            path,
            format!(
                "header length {n} runs past the end of the file ({} bytes after the length field)",
                avail
            ),
        ));
    }
    let n = n as usize;
    let header: HeaderPairs = serde_json::from_slice(&bytes[8..8 + n])
        .map_err(|e| bad(path, format!("header is not a valid JSON object: {e}")))?;
    // JSON lets a key repeat and a map keeps the last: refuse instead, since
    // which of two tensors of one name is meant cannot be known.
    let mut seen = std::collections::BTreeSet::new();
    if let Some((dup, _)) = header.0.iter().find(|(k, _)| !seen.insert(k.as_str())) {
        return Err(bad(
            path,
            format!("tensor `{dup}` is named twice in the header"),
        ));
    }
    let obj: serde_json::Map<String, Value> = header.0.into_iter().collect();
    let data_start = 8 + n;
    let data_len = bytes.len() - data_start;
    let mut entries = BTreeMap::new();
    let mut metadata = BTreeMap::new();
    for (name, v) in &obj {
        if name == "__metadata__" {
            if let Some(m) = v.as_object() {
                for (k, v) in m {
                    if let Some(s) = v.as_str() {
                        metadata.insert(k.clone(), s.to_string());
                    }
                }
            }
            continue;
        }
        entries.insert(name.clone(), parse_entry(name, v, data_len, path)?);
    }
    let mut spans: Vec<(&String, &Entry)> = entries.iter().collect();
    spans.sort_by_key(|(_, e)| (e.start, e.end));
    for w in spans.windows(2) {
        if w[1].1.start < w[0].1.end {
            return Err(bad(
                path,
                format!(
                    "tensors `{}` [{}, {}) and `{}` [{}, {}) overlap",
                    w[0].0, w[0].1.start, w[0].1.end, w[1].0, w[1].1.start, w[1].1.end
                ),
            ));
        }
        // The format indexes the whole data section, without holes (what
        // the safetensors library itself enforces).
        if w[1].1.start > w[0].1.end {
            return Err(bad(
                path,
                format!(
                    "bytes [{}, {}) between tensors `{}` and `{}` belong to no tensor",
                    w[0].1.end, w[1].1.start, w[0].0, w[1].0
                ),
            ));
        }
    }
    let (first, end) = (
        spans.first().map_or(0, |(_, e)| e.start),
        spans.last().map_or(0, |(_, e)| e.end),
    );
    if first != 0 || end != data_len {
        return Err(bad(
            path,
            format!(
                "the tensors cover data bytes [{first}, {end}) of {data_len}: the data section must be indexed whole, without leading or trailing bytes"
            ),
        ));
    }
    Ok((data_start, entries, metadata))
}

/// A JSON object's entries in file order, repeats kept (serde_json's map
/// keeps only the last of a repeated key).
struct HeaderPairs(Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for HeaderPairs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = HeaderPairs;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<HeaderPairs, A::Error> {
                let mut v = Vec::new();
                while let Some(kv) = m.next_entry::<String, Value>()? {
                    v.push(kv);
                }
                Ok(HeaderPairs(v))
            }
        }
        d.deserialize_map(V)
    }
}

fn parse_entry(name: &str, v: &Value, data_len: usize, path: &Path) -> Result<Entry> {
    let o = v.as_object().ok_or_else(|| {
        bad(
            path,
            format!("tensor `{name}`: header entry is not an object"),
        )
    })?;
    let dtype_s = o
        .get("dtype")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(path, format!("tensor `{name}`: missing dtype")))?;
    let dtype = Dtype::parse(dtype_s).ok_or_else(|| Error::WeightDtype {
        path: path.to_path_buf(),
        tensor: name.to_string(),
        expected: "BF16, F16, F32".into(),
        got: dtype_s.to_string(),
    })?;
    let shape: Vec<usize> = o
        .get("shape")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().map(|x| x.as_u64().map(|x| x as usize)).collect())
        .ok_or_else(|| {
            bad(
                path,
                format!("tensor `{name}`: shape is not a list of integers"),
            )
        })?;
    let offs: Vec<u64> = o
        .get("data_offsets")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().map(Value::as_u64).collect())
        .filter(|v: &Vec<u64>| v.len() == 2)
        .ok_or_else(|| {
            bad(
                path,
                format!("tensor `{name}`: data_offsets is not a pair of integers"),
            )
        })?;
    let (start, end) = (offs[0], offs[1]);
    if start > end {
        return Err(bad(
            path,
            format!("tensor `{name}`: data_offsets [{start}, {end}) run backwards"),
        ));
    }
    if end > data_len as u64 {
        return Err(bad(
            path,
            format!(
                "tensor `{name}`: data_offsets [{start}, {end}) run past the data section ({data_len} bytes); the file is truncated or the header is wrong"
            ),
        ));
    }
    let numel = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad(path, format!("tensor `{name}`: shape {shape:?} overflows")))?;
    let want = numel.saturating_mul(dtype.size()) as u64;
    if end - start != want {
        return Err(bad(
            path,
            format!(
                "tensor `{name}`: {} bytes stored but {dtype_s} x {shape:?} needs {want}",
                end - start
            ),
        ));
    }
    Ok(Entry {
        dtype,
        shape,
        start: start as usize,
        end: end as usize,
    })
}

/// Tensors of a model folder: one file or a sharded index.
pub struct SafeTensors {
    files: Vec<SafeFile>,
    /// tensor name -> index into `files`
    index: BTreeMap<String, usize>,
}

impl SafeTensors {
    /// Opens `model.safetensors` or `model.safetensors.index.json` in `dir`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        if index_path.exists() {
            return Self::open_index(dir, &index_path);
        }
        let file = SafeFile::open(&single)?;
        let index = file.names().map(|n| (n.clone(), 0)).collect();
        Ok(SafeTensors {
            files: vec![file],
            index,
        })
    }

    fn open_index(dir: &Path, index_path: &Path) -> Result<Self> {
        let text = crate::util::read_text_bounded(index_path, crate::util::limits::SHARD_INDEX)?;
        let v: Value = serde_json::from_str(&text).map_err(|source| Error::Json {
            path: index_path.to_path_buf(),
            source,
        })?;
        let map = v
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| bad(index_path, "`weight_map` is missing or not an object"))?;
        let mut shard_names: Vec<String> = Vec::new();
        let mut wanted: BTreeMap<String, String> = BTreeMap::new();
        for (tensor, file) in map {
            let file = file.as_str().ok_or_else(|| {
                bad(
                    index_path,
                    format!("weight_map[`{tensor}`] is not a file name"),
                )
            })?;
            if file.is_empty() {
                return Err(bad(
                    index_path,
                    format!("weight_map[`{tensor}`] is an empty file name"),
                ));
            }
            if file.contains('/') || file.contains('\\') || file.starts_with('.') {
                return Err(bad(
                    index_path,
                    format!("weight_map[`{tensor}`] = {file:?} is not a plain file name"),
                ));
            }
            if !shard_names.iter().any(|s| s == file) {
                shard_names.push(file.to_string());
            }
            wanted.insert(tensor.clone(), file.to_string());
        }
        shard_names.sort();
        let files = shard_names
            .iter()
            .map(|s| SafeFile::open(&dir.join(s)))
            .collect::<Result<Vec<_>>>()?;
        let mut index = BTreeMap::new();
        for (tensor, file) in wanted {
            let i = shard_names.iter().position(|s| *s == file).expect("listed");
            if files[i].tensor(&tensor).is_none() {
                return Err(Error::MissingTensor {
                    path: files[i].path().to_path_buf(),
                    tensor,
                });
            }
            index.insert(tensor, i);
        }
        Ok(SafeTensors { files, index })
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.index.keys()
    }

    /// The tensor and the file it lives in.
    pub fn get(&self, name: &str) -> Option<(HostTensor<'_>, &Path)> {
        let f = &self.files[*self.index.get(name)?];
        f.tensor(name).map(|t| (t, f.path()))
    }

    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.files.first()?.metadata.get(key).map(String::as_str)
    }
}

/// What a tensor will be, before its bytes exist.
#[derive(Debug, Clone)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

/// Serialises tensors to a safetensors file, atomically. The header is compact
/// JSON with keys sorted, padded with spaces to 8 bytes, so the same tensors
/// always give the same bytes. `bytes_of` is called once per tensor, in the
/// order of `specs`, so large tensors never need to be held all at once.
pub fn write_file(
    path: &Path,
    specs: &[TensorSpec],
    metadata: &BTreeMap<String, String>,
    mut bytes_of: impl FnMut(&TensorSpec) -> Result<Vec<u8>>,
) -> Result<()> {
    let mut header = Map::new();
    if !metadata.is_empty() {
        header.insert(
            "__metadata__".into(),
            Value::Object(
                metadata
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::from(v.clone())))
                    .collect(),
            ),
        );
    }
    let mut offset = 0usize;
    for t in specs {
        let len = t.shape.iter().product::<usize>() * t.dtype.size();
        let mut e = Map::new();
        e.insert("dtype".into(), Value::from(t.dtype.name()));
        e.insert("shape".into(), Value::from(t.shape.clone()));
        e.insert(
            "data_offsets".into(),
            Value::from(vec![offset, offset + len]),
        );
        header.insert(t.name.clone(), Value::Object(e));
        offset += len;
    }
    let mut text = serde_json::to_string(&Value::Object(header)).expect("header serialises");
    while (8 + text.len()) % 8 != 0 {
        text.push(' ');
    }
    crate::util::write_atomically(path, |w| {
        use std::io::Write;
        w.write_all(&(text.len() as u64).to_le_bytes())?;
        w.write_all(text.as_bytes())?;
        for t in specs {
            let bytes = bytes_of(t).map_err(std::io::Error::other)?;
            let want = t.shape.iter().product::<usize>() * t.dtype.size();
            if bytes.len() != want {
                return Err(std::io::Error::other(format!(
                    "tensor `{}`: produced {} bytes, header says {want}",
                    t.name,
                    bytes.len()
                )));
            }
            w.write_all(&bytes)?;
        }
        Ok(())
    })
}
