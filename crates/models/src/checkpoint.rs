//! Checkpoint loading: the safetensors files of a model folder, memory-mapped.
//!
//! A model folder holds either `model.safetensors.index.json` (whose `weight_map` names, for every
//! tensor, the shard file that stores it) plus those shards, or a single `model.safetensors`.
//! Shard names are never derived: the gpt-oss converter numbers them in a way that does not follow
//! the usual `-of-N` convention (see GPTOSS-SPEC §2.1), so only the index is trusted.
//!
//! Every file is memory-mapped, never read into memory; [`Checkpoint::get`] hands out byte slices
//! into the mappings. Headers are parsed and validated by the `safetensors` crate at open time, so
//! a truncated or corrupt file fails in [`Checkpoint::open`] with a message naming the file.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use gptoss_core::{DType, Error, Result, Shape, TensorDesc};
use memmap2::Mmap;
use safetensors::{Dtype as StDtype, SafeTensorError, SafeTensors};
use serde::Deserialize;

const INDEX_FILE: &str = "model.safetensors.index.json";
const SINGLE_FILE: &str = "model.safetensors";
/// Length of the little-endian u64 header-size prefix of a safetensors file.
const PREFIX_LEN: usize = 8;
/// The safetensors crate rejects headers larger than this (its `MAX_HEADER_SIZE`).
const MAX_HEADER_LEN: u64 = 100_000_000;

/// One memory-mapped safetensors file.
struct Shard {
    path: PathBuf,
    mmap: Mmap,
}

/// Where a tensor lives: its shard, its dtype and shape as stored, and its bytes in the shard's mmap
/// (absolute offsets, header included).
struct Entry {
    shard: usize,
    dtype: StDtype,
    shape: Vec<usize>,
    range: Range<usize>,
}

/// The tensors of a model folder: memory maps of every shard plus, for every tensor name, where its
/// bytes are. Cheap to query; the bytes are paged in by the OS as they are touched.
pub struct Checkpoint {
    dir: PathBuf,
    shards: Vec<Shard>,
    tensors: BTreeMap<String, Entry>,
}

/// A tensor's bytes as stored in the checkpoint (little-endian, C order).
///
/// `bytes` points into a memory map; it is NOT necessarily aligned to the element size (safetensors
/// only aligns data when the writer padded the header), so do not cast it to `&[f32]`/`&[u16]`
/// without checking alignment — copy or decode with `from_le_bytes` instead.
#[derive(Clone)]
pub struct TensorBytes<'a> {
    pub name: &'a str,
    pub desc: TensorDesc,
    pub bytes: &'a [u8],
    pub file: &'a Path,
}

impl fmt::Debug for TensorBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TensorBytes")
            .field("name", &self.name)
            .field("desc", &self.desc)
            .field("bytes", &format_args!("<{} bytes>", self.bytes.len()))
            .field("file", &self.file)
            .finish()
    }
}

impl fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checkpoint")
            .field("dir", &self.dir)
            .field(
                "files",
                &self.shards.iter().map(|s| &s.path).collect::<Vec<_>>(),
            )
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// `model.safetensors.index.json`. Only `weight_map` is used; `metadata.total_size` is checked
/// against the sum of tensor sizes and a mismatch is logged.
#[derive(Deserialize)]
struct Index {
    #[serde(default)]
    metadata: Option<IndexMetadata>,
    weight_map: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct IndexMetadata {
    #[serde(default)]
    total_size: Option<u64>,
}

impl Checkpoint {
    /// Open a model folder: if model.safetensors.index.json exists, read its weight_map and mmap every shard it names
    /// (never derive shard names); else model.safetensors; else error naming the folder and what was looked for.
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(Error::file(
                dir,
                "is a file, not a model folder; pass the folder that holds config.json and the \
                     .safetensors files",
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::file(dir, "model folder does not exist"))
            }
            Err(e) => return Err(Error::file(dir, format!("cannot read model folder: {e}"))),
        }

        let index_path = dir.join(INDEX_FILE);
        let single_path = dir.join(SINGLE_FILE);
        let ckpt = if index_path.exists() {
            Self::open_sharded(dir, &index_path)?
        } else if single_path.exists() {
            Self::open_single(dir, &single_path)?
        } else {
            return Err(Error::file(
                dir,
                format!(
                    "no checkpoint in this folder: looked for {INDEX_FILE} (sharded) and \
                     {SINGLE_FILE} (single file); neither exists. Pass the folder of a Hugging Face \
                     gpt-oss model (e.g. a download of openai/gpt-oss-20b)"
                ),
            ));
        };
        tracing::debug!(
            dir = %dir.display(),
            files = ckpt.shards.len(),
            tensors = ckpt.tensors.len(),
            bytes = ckpt.total_bytes(),
            "opened checkpoint"
        );
        Ok(ckpt)
    }

    fn open_single(dir: &Path, path: &Path) -> Result<Checkpoint> {
        let (shard, metadata) = map_shard(path)?;
        let mut tensors = BTreeMap::new();
        for (name, info) in metadata {
            tensors.insert(name, Entry { shard: 0, ..info });
        }
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            shards: vec![shard],
            tensors,
        })
    }

    fn open_sharded(dir: &Path, index_path: &Path) -> Result<Checkpoint> {
        let text = std::fs::read_to_string(index_path)
            .map_err(|e| Error::file(index_path, format!("cannot read the index: {e}")))?;
        let index: Index = serde_json::from_str(&text).map_err(|e| {
            Error::format(
                index_path,
                format!(
                    "malformed index (expected {{\"metadata\": {{...}}, \"weight_map\": \
                     {{tensor: file}}}}): {e}"
                ),
            )
        })?;
        if index.weight_map.is_empty() {
            return Err(Error::format(
                index_path,
                "weight_map is empty: the index names no tensors",
            ));
        }

        // Every distinct shard the index names, in name order; check they all exist before
        // mapping any, so that a partial download reports every missing file at once.
        let files: Vec<&str> = index
            .weight_map
            .values()
            .map(String::as_str)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let missing: Vec<PathBuf> = files
            .iter()
            .map(|f| dir.join(f))
            .filter(|p| !p.exists())
            .collect();
        if !missing.is_empty() {
            let list: Vec<String> = missing.iter().map(|p| p.display().to_string()).collect();
            return Err(Error::file(
                &missing[0],
                format!(
                    "shard file missing: listed in {} but not present ({} of {} shards \
                     missing: {}); the download is probably incomplete, download the model again",
                    index_path.display(),
                    missing.len(),
                    files.len(),
                    list.join(", ")
                ),
            ));
        }

        let mut shards = Vec::with_capacity(files.len());
        let mut shard_tensors = Vec::with_capacity(files.len());
        for f in &files {
            let (shard, metadata) = map_shard(&dir.join(f))?;
            shards.push(shard);
            shard_tensors.push(metadata);
        }

        let mut tensors = BTreeMap::new();
        for (name, file) in &index.weight_map {
            let shard = files
                .binary_search(&file.as_str())
                .expect("file collected from weight_map");
            let Some(info) = shard_tensors[shard].remove(name) else {
                return Err(Error::format(
                    index_path,
                    format!(
                        "tensor '{name}' is mapped to {file}, but {} has no tensor of that name; \
                         the index and the shards do not belong together",
                        shards[shard].path.display()
                    ),
                ));
            };
            tensors.insert(name.clone(), Entry { shard, ..info });
        }
        for (i, rest) in shard_tensors.iter().enumerate() {
            if !rest.is_empty() {
                tracing::warn!(
                    file = %shards[i].path.display(),
                    count = rest.len(),
                    first = %rest.keys().next().unwrap(),
                    "tensors stored in the shard but not listed in the index are ignored"
                );
            }
        }

        let ckpt = Checkpoint {
            dir: dir.to_path_buf(),
            shards,
            tensors,
        };
        if let Some(expected) = index.metadata.and_then(|m| m.total_size) {
            let found = ckpt.total_bytes();
            if expected != found {
                tracing::warn!(
                    index = %index_path.display(),
                    expected,
                    found,
                    "metadata.total_size of the index differs from the sum of tensor sizes"
                );
            }
        }
        Ok(ckpt)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Every tensor name, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.tensors.keys().map(String::as_str).collect()
    }

    /// The files that were mapped, in the order used internally (index order for sharded folders).
    pub fn files(&self) -> Vec<&Path> {
        self.shards.iter().map(|s| s.path.as_path()).collect()
    }

    /// Sum of tensor byte sizes (equals `metadata.total_size` of a consistent index).
    pub fn total_bytes(&self) -> u64 {
        self.tensors
            .values()
            .map(|e| (e.range.end - e.range.start) as u64)
            .sum()
    }

    fn entry(&self, name: &str) -> Result<(&str, &Entry)> {
        match self.tensors.get_key_value(name) {
            Some((k, e)) => Ok((k.as_str(), e)),
            None => Err(Error::tensor(
                name,
                format!(
                    "not found in {} (checked {} tensors in {} files)",
                    self.dir.display(),
                    self.tensors.len(),
                    self.shards.len()
                ),
            )),
        }
    }

    /// The tensor as stored (safetensors dtype mapped: F32,BF16,F16,U8,I32; others -> error naming the dtype).
    pub fn get(&self, name: &str) -> Result<TensorBytes<'_>> {
        let (key, e) = self.entry(name)?;
        let shard = &self.shards[e.shard];
        let dtype = map_dtype(e.dtype).ok_or_else(|| {
            Error::tensor(
                name,
                format!(
                    "in {}: stored dtype {} is not supported (supported: F32, BF16, F16, U8, I32)",
                    shard.path.display(),
                    e.dtype
                ),
            )
        })?;
        Ok(self.bytes_of(key, e, dtype))
    }

    /// The tensor, checked against what the model needs. `dtype` Mxfp4Blocks/E8m0Scales accept a stored U8 and
    /// the returned desc carries the requested dtype. Errors name the tensor, the file, expected vs found.
    pub fn expect(&self, name: &str, dtype: DType, shape: &[usize]) -> Result<TensorBytes<'_>> {
        let (key, e) = self.entry(name)?;
        let shard = &self.shards[e.shard];
        let dtype_ok = match dtype {
            // Raw bytes: the published checkpoints store these as U8; F8_E8M0 is the same bytes.
            DType::Mxfp4Blocks => e.dtype == StDtype::U8,
            DType::E8m0Scales => matches!(e.dtype, StDtype::U8 | StDtype::F8_E8M0),
            _ => map_dtype(e.dtype) == Some(dtype),
        };
        if !dtype_ok || e.shape != shape {
            let expected_dtype = match dtype {
                DType::Mxfp4Blocks | DType::E8m0Scales => format!("U8 ({dtype})"),
                _ => dtype.to_string(),
            };
            let what = match (dtype_ok, e.shape == shape) {
                (false, false) => "wrong dtype and shape",
                (false, true) => "wrong dtype",
                _ => "wrong shape",
            };
            return Err(Error::tensor(
                name,
                format!(
                    "{what} in {}: expected {expected_dtype} {}, found {} {}",
                    shard.path.display(),
                    Shape::from(shape),
                    e.dtype,
                    Shape::from(e.shape.as_slice())
                ),
            ));
        }
        Ok(self.bytes_of(key, e, dtype))
    }

    fn bytes_of<'a>(&'a self, key: &'a str, e: &'a Entry, dtype: DType) -> TensorBytes<'a> {
        let shard = &self.shards[e.shard];
        TensorBytes {
            name: key,
            desc: TensorDesc::new(dtype, e.shape.as_slice()),
            bytes: &shard.mmap[e.range.clone()],
            file: &shard.path,
        }
    }
}

fn map_dtype(d: StDtype) -> Option<DType> {
    Some(match d {
        StDtype::F32 => DType::F32,
        StDtype::BF16 => DType::BF16,
        StDtype::F16 => DType::F16,
        StDtype::U8 => DType::U8,
        StDtype::I32 => DType::I32,
        _ => return None,
    })
}

/// Memory-map one safetensors file and read its header. Returns the tensors with `shard` unset (0)
/// and absolute byte ranges into the map.
fn map_shard(path: &Path) -> Result<(Shard, BTreeMap<String, Entry>)> {
    let file = File::open(path).map_err(|e| Error::file(path, format!("cannot open: {e}")))?;
    let len = file
        .metadata()
        .map_err(|e| Error::file(path, format!("cannot stat: {e}")))?
        .len();
    if len < PREFIX_LEN as u64 {
        return Err(Error::format(
            path,
            format!(
                "truncated: the file has {len} bytes, fewer than the {PREFIX_LEN}-byte header \
                 length prefix of a safetensors file; download it again"
            ),
        ));
    }
    // SAFETY: the mapping is read-only and lives as long as the `Checkpoint`. Memory-mapping is
    // only unsound if another process modifies or truncates the file while it is mapped (reads
    // could then change under us or fault with SIGBUS). Checkpoint files are written once by a
    // download and never modified while a model runs (the HF cache replaces blobs by new files,
    // it does not rewrite them in place), which is the same assumption every safetensors loader
    // (PyTorch, candle, llama.cpp) makes.
    let mmap = unsafe { Mmap::map(&file) }
        .map_err(|e| Error::file(path, format!("cannot memory-map: {e}")))?;
    let buf: &[u8] = &mmap;

    let (header_len, metadata) =
        SafeTensors::read_metadata(buf).map_err(|e| header_error(path, buf, e))?;
    let data_start = PREFIX_LEN + header_len;
    let mut tensors = BTreeMap::new();
    for (name, info) in metadata.tensors() {
        let (begin, end) = info.data_offsets;
        tensors.insert(
            name,
            Entry {
                shard: 0,
                dtype: info.dtype,
                shape: info.shape.clone(),
                range: data_start + begin..data_start + end,
            },
        );
    }
    drop(metadata);
    Ok((
        Shard {
            path: path.to_path_buf(),
            mmap,
        },
        tensors,
    ))
}

/// Turn a safetensors header error into a message that names the file and says what is wrong in
/// terms of sizes where the problem is a short file.
fn header_error(path: &Path, buf: &[u8], e: SafeTensorError) -> Error {
    let len = buf.len() as u64;
    let prefix = u64::from_le_bytes(buf[..PREFIX_LEN].try_into().expect("checked length"));
    if buf.starts_with(b"version https://git-lfs") {
        return Error::format(
            path,
            "is a Git LFS pointer, not the weights: the repository was cloned without LFS; run \
             `git lfs pull` in it, or download the model with `huggingface-cli download`",
        );
    }
    let reason = match e {
        SafeTensorError::HeaderTooLarge => format!(
            "not a safetensors file (or corrupt): the header length prefix says {prefix} bytes, \
             more than the {MAX_HEADER_LEN}-byte limit"
        ),
        SafeTensorError::InvalidHeaderLength => {
            if (PREFIX_LEN as u64).saturating_add(prefix) > len {
                format!(
                    "truncated: the header length prefix says {prefix} bytes of header, so the \
                     file needs at least {} bytes, but it has only {len}; download it again",
                    prefix.saturating_add(PREFIX_LEN as u64)
                )
            } else {
                format!("invalid header length prefix {prefix} (file has {len} bytes)")
            }
        }
        SafeTensorError::MetadataIncompleteBuffer => {
            // The header parsed and its offsets are contiguous; the data section's size differs
            // from what the header describes. Re-read the header for the sizes.
            let header = &buf[PREFIX_LEN..PREFIX_LEN + prefix as usize];
            let data_len = serde_json::from_slice::<safetensors::tensor::Metadata>(header)
                .ok()
                .and_then(|m| m.tensors().values().map(|i| i.data_offsets.1 as u64).max())
                .unwrap_or(0);
            let needed = PREFIX_LEN as u64 + prefix + data_len;
            if needed > len {
                format!(
                    "truncated: the header describes {data_len} bytes of tensor data after \
                     {} bytes of prefix and header, so the file needs {needed} bytes, but it has \
                     only {len} ({} missing); download it again",
                    PREFIX_LEN as u64 + prefix,
                    needed - len
                )
            } else {
                format!(
                    "the file has {len} bytes but its header describes {needed} ({} unexpected \
                     trailing bytes after the last tensor)",
                    len - needed
                )
            }
        }
        SafeTensorError::InvalidHeader(e) => format!("header is not valid UTF-8: {e}"),
        SafeTensorError::InvalidHeaderDeserialization(e) => {
            format!("header is not valid safetensors JSON: {e}")
        }
        SafeTensorError::InvalidOffset(name) => format!(
            "invalid header: data_offsets of tensor '{name}' are not contiguous with the previous \
             tensor's"
        ),
        SafeTensorError::TensorInvalidInfo => {
            "invalid header: a tensor's data_offsets do not match its dtype and shape".to_string()
        }
        other => format!("invalid safetensors header: {other}"),
    };
    Error::format(path, reason)
}
