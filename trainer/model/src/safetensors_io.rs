//! Reading and writing safetensors without tch's whole-file reader.
//!
//! Files are memory-mapped (`memmap2`) and parsed with the `safetensors` crate; each tensor is
//! copied out of the map, converted and moved to the device one at a time, so host memory never
//! holds more than one tensor beyond the page cache. Writing goes through the same crate so the
//! header can carry `{"format": "pt"}` metadata, which transformers and PEFT expect.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use lf_data::files::{confined_join, open_regular, read_regular};
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::{Dtype, SafeTensorError, SafeTensors, View};
use tch::{Device, Kind, Tensor};

use crate::durable;
use crate::ModelError;

/// The little-endian u64 header length that starts every safetensors file.
const HEADER_LEN_BYTES: usize = 8;

/// The weight files of a Hugging Face model directory: the shards listed by
/// `model.safetensors.index.json`, or the single `model.safetensors`.
///
/// The index is the tenant's: each shard name must stay inside `dir` and be a regular file
/// (checked here, so the error names the index entry; a FIFO would block the open forever).
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        return index_files(dir, &index);
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    Err(ModelError::NoWeights {
        dir: dir.to_path_buf(),
    })
}

/// The distinct shards `index`'s `weight_map` names, sorted, each confined to `dir` and opened
/// once as a regular file.
fn index_files(dir: &Path, index: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let json = |message: String| ModelError::Json {
        path: index.to_path_buf(),
        message,
    };
    let bytes = read_regular(index)?;
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| json(e.to_string()))?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| json("missing the `weight_map` object".into()))?;
    let mut files: Vec<PathBuf> = Vec::new();
    for (entry, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| json(format!("weight_map entry `{entry}` is not a file name")))?;
        let refused = |source| ModelError::WeightMapEntry {
            index: index.to_path_buf(),
            entry: entry.clone(),
            source,
        };
        let path = confined_join(dir, file).map_err(refused)?;
        if !files.contains(&path) {
            open_regular(&path).map_err(refused)?;
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// A memory-mapped safetensors file whose header was parsed and validated once, at open.
pub struct MappedFile {
    path: PathBuf,
    mmap: memmap2::Mmap,
    /// Where the tensor data starts in the map (after the 8-byte length and the header).
    data_start: usize,
    metadata: Metadata,
}

impl MappedFile {
    /// Maps `path` read-only and validates its header: its declared length (bounded by the
    /// `safetensors` crate before anything is allocated), and tensor offsets that are contiguous,
    /// in bounds and consistent with shapes and dtypes. Only a regular file is mapped ([`open_regular`]: a FIFO would block the open).
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        let file = open_regular(path)?;
        // SAFETY: the map is read-only and lives as long as `self`; a file truncated underneath us
        // by another process is outside what any safetensors reader can defend against.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let (header_len, metadata) =
            SafeTensors::read_metadata(&mmap).map_err(|e| ModelError::Safetensors {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        Ok(MappedFile {
            path: path.to_path_buf(),
            mmap,
            data_start: HEADER_LEN_BYTES + header_len,
            metadata,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor names in the file.
    pub fn names(&self) -> Result<Vec<String>, ModelError> {
        Ok(self.metadata.offset_keys())
    }

    /// Bytes tensor `name` takes in the file (`None` when absent).
    pub fn stored_len(&self, name: &str) -> Option<u64> {
        let (start, end) = self.metadata.info(name)?.data_offsets;
        Some(end.saturating_sub(start) as u64)
    }

    /// The bytes of the tensor `info` describes (validated at open, checked again here).
    fn bytes(&self, name: &str, info: &TensorInfo) -> Result<&[u8], ModelError> {
        let (start, end) = info.data_offsets;
        let range = self.data_start.checked_add(start)..self.data_start.checked_add(end);
        match range {
            std::ops::Range {
                start: Some(s),
                end: Some(e),
            } => self.mmap.get(s..e),
            _ => None,
        }
        .ok_or_else(|| ModelError::Safetensors {
            path: self.path.clone(),
            message: format!("tensor `{name}` lies outside the file"),
        })
    }

    /// Copies tensor `name` to `device` as `kind` (`None` keeps the stored dtype).
    pub fn load(
        &self,
        name: &str,
        kind: Option<Kind>,
        device: Device,
    ) -> Result<Tensor, ModelError> {
        let info = self
            .metadata
            .info(name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.to_string(),
                source_desc: self.path.display().to_string(),
            })?;
        let stored = kind_of(info.dtype).ok_or_else(|| ModelError::UnsupportedDtype {
            name: name.to_string(),
            source_desc: self.path.display().to_string(),
            dtype: format!("{:?}", info.dtype),
        })?;
        let shape: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
        let host = Tensor::f_from_data_size(self.bytes(name, info)?, &shape, stored).map_err(
            ModelError::torch(format!("reading `{name}` from {}", self.path.display())),
        )?;
        let target = kind.unwrap_or(stored);
        let out = host.to_device(device);
        Ok(if target == stored {
            out
        } else {
            out.to_kind(target)
        })
    }
}

/// The tch kind for a safetensors dtype, for the dtypes a checkpoint may hold.
fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I16 => Kind::Int16,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

fn dtype_of(kind: Kind) -> Option<Dtype> {
    Some(match kind {
        Kind::Float => Dtype::F32,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Double => Dtype::F64,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Int16 => Dtype::I16,
        Kind::Int8 => Dtype::I8,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        _ => return None,
    })
}

/// A tensor copied to host bytes, ready to serialise.
pub struct HostTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl HostTensor {
    /// Copies `t` (any device, any layout) to contiguous host bytes.
    pub fn from_tensor(name: &str, t: &Tensor) -> Result<Self, ModelError> {
        let kind = t.kind();
        let dtype = dtype_of(kind).ok_or_else(|| ModelError::UnsupportedDtype {
            name: name.to_string(),
            source_desc: "the model in memory".into(),
            dtype: format!("{kind:?}"),
        })?;
        let host = t.detach().to_device(Device::Cpu).contiguous();
        let numel = host.numel();
        let mut bytes = vec![0u8; numel * kind.elt_size_in_bytes()];
        host.f_copy_data_u8(&mut bytes, numel)
            .map_err(ModelError::torch(format!("copying `{name}` to host")))?;
        let shape = host.size().iter().map(|&d| d as usize).collect();
        Ok(HostTensor {
            dtype,
            shape,
            bytes,
        })
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the tensor holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

impl View for &HostTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Writes `tensors` to `path` with `{"format": "pt"}` metadata (what PEFT and transformers write),
/// atomically and durably ([`durable`]); a full volume is [`ModelError::StorageFull`] with the
/// size needed.
pub fn write_file(path: &Path, tensors: &BTreeMap<String, HostTensor>) -> Result<(), ModelError> {
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let needed: u64 = tensors.values().map(|t| t.len() as u64).sum();
    durable::write_with(path, needed, |tmp| {
        safetensors::serialize_to_file(
            tensors.iter().map(|(k, v)| (k.as_str(), v)),
            Some(metadata),
            tmp,
        )
        .map_err(|e| match e {
            SafeTensorError::IoError(io) => io,
            other => std::io::Error::other(other.to_string()),
        })
    })
}

/// Writes `tensors` (host copies made one at a time by `fetch`) as Hugging Face shards of at most
/// `shard_bytes` each: `model.safetensors` when one shard suffices, else
/// `model-0000i-of-0000n.safetensors` plus `model.safetensors.index.json`.
pub fn write_sharded(
    dir: &Path,
    names_and_sizes: &[(String, u64)],
    shard_bytes: u64,
    mut fetch: impl FnMut(&str) -> Result<HostTensor, ModelError>,
) -> Result<(), ModelError> {
    // Plan the shards first so the file names (which contain the count) are known up front.
    let mut shards: Vec<Vec<&str>> = vec![Vec::new()];
    let mut current = 0u64;
    for (name, size) in names_and_sizes {
        if current > 0 && current + size > shard_bytes {
            shards.push(Vec::new());
            current = 0;
        }
        if let Some(shard) = shards.last_mut() {
            shard.push(name);
        }
        current += size;
    }
    let n = shards.len();
    let total: u64 = names_and_sizes.iter().map(|(_, s)| s).sum();
    let mut weight_map = serde_json::Map::new();
    for (i, names) in shards.iter().enumerate() {
        let file = if n == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", i + 1, n)
        };
        let mut tensors = BTreeMap::new();
        for name in names {
            tensors.insert(name.to_string(), fetch(name)?);
            weight_map.insert(name.to_string(), serde_json::Value::String(file.clone()));
        }
        write_file(&dir.join(&file), &tensors)?;
    }
    if n > 1 {
        let index =
            serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        let path = dir.join("model.safetensors.index.json");
        let text = serde_json::to_string_pretty(&index).map_err(|e| ModelError::Json {
            path: path.clone(),
            message: e.to_string(),
        })?;
        durable::write_atomic(&path, text.as_bytes())?;
    }
    Ok(())
}
