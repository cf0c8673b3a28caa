//! GGUF header check: magic, version, metadata, tensor table, and whether the
//! file holds all the tensor data its header declares.
//!
//! llama.cpp itself fails on these files too, but late and with messages that
//! do not say "your download is incomplete"; this reads only the header and
//! the file size, so it is cheap enough to run before every load.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::template;
use proto::worker::ExitCode;

/// First four bytes of every GGUF file.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// GGUF versions this check (and the llama.cpp we ship) understand.
pub const SUPPORTED_VERSIONS: [u32; 2] = [2, 3];
const DEFAULT_ALIGNMENT: u64 = 32;
/// No sane key, string value or tensor name is longer than this; a larger
/// length field means the header is corrupt.
const MAX_STRING: u64 = 64 << 20;
/// No model has this many tensors or metadata entries (the largest have a
/// few thousand); a larger count field means the header is corrupt.
const MAX_ENTRIES: u64 = 1 << 24;
/// No metadata array (a vocabulary, its merges) has this many elements.
const MAX_ARRAY: u64 = 1 << 32;

/// What the header says about the model.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GgufInfo {
    /// File size in bytes.
    pub file_size: u64,
    /// GGUF format version.
    pub version: u32,
    /// Number of tensors.
    pub tensor_count: u64,
    /// Number of metadata entries.
    pub metadata_count: u64,
    /// `general.architecture`, e.g. "llama".
    pub architecture: Option<String>,
    /// `general.name`.
    pub name: Option<String>,
    /// `<arch>.context_length`: the context the model was trained for.
    pub context_length: Option<u64>,
    /// `general.file_type` (llama.cpp's quantisation id).
    pub file_type: Option<u64>,
    /// Whether the file carries its own chat template.
    pub has_chat_template: bool,
    /// Which of [`template::VOCAB_MARKERS`] the vocabulary holds (they
    /// show the chat format when the file carries no template).
    pub vocab_markers: Vec<String>,
    /// Byte offset where tensor data starts.
    pub data_offset: u64,
    /// Bytes of tensor data the header declares (end of the last tensor).
    pub data_size: u64,
    /// The shape of the model's KV cache, when the header gives it.
    pub kv: Option<KvShape>,
}

/// What the size of a model's KV cache depends on besides the context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvShape {
    /// Transformer blocks (`<arch>.block_count`).
    pub layers: u64,
    /// Key/value heads (`<arch>.attention.head_count_kv`, else the head count).
    pub kv_heads: u64,
    /// Width of one key head (`<arch>.attention.key_length`, else embedding / heads).
    pub key_dim: u64,
    /// Width of one value head (`<arch>.attention.value_length`, else as keys).
    pub value_dim: u64,
}

impl KvShape {
    /// KV-cache bytes of one sequence of `context` tokens (K and V, every
    /// layer) with elements of type `kv` (f16 2 bytes, `q8_0` 1.0625 and
    /// `q4_0` 0.5625: their blocks carry a scale).
    pub fn sequence_bytes(&self, context: u64, kv: proto::worker::KvCacheType) -> u64 {
        use proto::worker::KvCacheType;
        let milli_bytes = match kv {
            KvCacheType::F16 => 2000,
            KvCacheType::Q8_0 => 1062,
            KvCacheType::Q4_0 => 562,
        };
        self.layers
            .saturating_mul(context)
            .saturating_mul(self.kv_heads)
            .saturating_mul(self.key_dim + self.value_dim)
            .saturating_mul(milli_bytes)
            / 1000
    }

    /// The shape from the architecture's integer metadata (`ints` holds
    /// every integer entry as `(key, value)`); `None` when a number is missing.
    fn from_metadata(arch: &str, ints: &[(String, u64)]) -> Option<Self> {
        let get = |name: &str| {
            let key = format!("{arch}.{name}");
            ints.iter().find(|(k, _)| *k == key).map(|(_, n)| *n)
        };
        let layers = get("block_count")?;
        let heads = get("attention.head_count").filter(|h| *h > 0)?;
        let kv_heads = get("attention.head_count_kv").unwrap_or(heads);
        let key_dim =
            get("attention.key_length").or_else(|| Some(get("embedding_length")? / heads))?;
        let value_dim = get("attention.value_length").unwrap_or(key_dim);
        Some(Self {
            layers,
            kv_heads,
            key_dim,
            value_dim,
        })
    }
}

/// Why a file is not a usable GGUF model.
#[derive(Debug, Error)]
pub enum GgufError {
    /// Nothing at that path.
    #[error("model file {path} does not exist: check the path in the config, or fetch the model")]
    Missing {
        /// The path checked.
        path: PathBuf,
    },
    /// The file exists but cannot be opened or read.
    #[error("model file {path} cannot be read: {source} (check permissions: the worker runs as the service user)")]
    Unreadable {
        /// The path checked.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Zero bytes: an interrupted or failed download.
    #[error("model file {path} is empty (0 bytes): the download failed; fetch it again")]
    Empty {
        /// The path checked.
        path: PathBuf,
    },
    /// Not a GGUF file at all.
    #[error("model file {path} is not a GGUF file (starts with {found:02x?}, expected \"GGUF\"): wrong file, or an HTML error page saved as a model; fetch it again")]
    BadMagic {
        /// The path checked.
        path: PathBuf,
        /// The first bytes found.
        found: Vec<u8>,
    },
    /// A GGUF version this build does not read.
    #[error("model file {path} is GGUF version {version}, this build reads versions 2 and 3: convert the model with a current llama.cpp")]
    UnsupportedVersion {
        /// The path checked.
        path: PathBuf,
        /// The version found.
        version: u32,
    },
    /// The header itself runs past the end of the file.
    #[error("model file {path} is truncated: its header runs past the end of the file ({size} bytes); the download is incomplete, fetch it again")]
    TruncatedHeader {
        /// The path checked.
        path: PathBuf,
        /// File size.
        size: u64,
    },
    /// The tensor data the header declares is not all there.
    #[error("model file {path} is truncated: tensor {tensor:?} needs bytes up to {needed} but the file has {size}; the download is incomplete, fetch it again")]
    TruncatedData {
        /// The path checked.
        path: PathBuf,
        /// File size.
        size: u64,
        /// Bytes the header says the file must have.
        needed: u64,
        /// The tensor that does not fit.
        tensor: String,
    },
    /// A header field has an impossible value.
    #[error("model file {path} has a corrupt header: {field} is {value}; fetch the file again")]
    Corrupt {
        /// The path checked.
        path: PathBuf,
        /// Which field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
}

impl GgufError {
    /// The worker exit code for this problem (all mean "do not restart").
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::Missing { .. } => ExitCode::ModelMissing,
            Self::Unreadable { .. } => ExitCode::ModelUnreadable,
            Self::Empty { .. } => ExitCode::ModelEmpty,
            Self::BadMagic { .. } => ExitCode::ModelBadFormat,
            Self::UnsupportedVersion { .. } => ExitCode::ModelBadVersion,
            Self::TruncatedHeader { .. } | Self::TruncatedData { .. } => ExitCode::ModelTruncated,
            Self::Corrupt { .. } => ExitCode::ModelInvalid,
        }
    }
}

/// Reads and checks the header of the GGUF file at `path`.
///
/// # Errors
/// A [`GgufError`] naming the problem and what to do about it.
pub fn check(path: &Path) -> Result<GgufInfo, GgufError> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(GgufError::Missing {
                path: path.to_owned(),
            })
        }
        Err(source) => {
            return Err(GgufError::Unreadable {
                path: path.to_owned(),
                source,
            })
        }
    };
    if meta.is_dir() {
        return Err(GgufError::Unreadable {
            path: path.to_owned(),
            source: io::Error::new(io::ErrorKind::IsADirectory, "is a directory"),
        });
    }
    let size = meta.len();
    if size == 0 {
        return Err(GgufError::Empty {
            path: path.to_owned(),
        });
    }
    let file = File::open(path).map_err(|source| GgufError::Unreadable {
        path: path.to_owned(),
        source,
    })?;
    let mut parser = Parser {
        input: BufReader::new(file),
        pos: 0,
        size,
        path,
    };
    parser.parse()
}

struct Parser<'a, R> {
    input: R,
    pos: u64,
    size: u64,
    path: &'a Path,
}

/// A metadata value, kept only when it is a scalar or string we may want.
enum Value {
    Int(u64),
    Str(String),
    Other,
}

impl<R: Read> Parser<'_, R> {
    fn parse(&mut self) -> Result<GgufInfo, GgufError> {
        let mut magic = [0u8; 4];
        let got = self.read_up_to(&mut magic)?;
        if got < 4 || magic != MAGIC {
            return Err(GgufError::BadMagic {
                path: self.path.to_owned(),
                found: magic[..got].to_vec(),
            });
        }
        let version = self.u32()?;
        if !SUPPORTED_VERSIONS.contains(&version) {
            return Err(GgufError::UnsupportedVersion {
                path: self.path.to_owned(),
                version,
            });
        }
        let tensor_count = self.u64()?;
        let metadata_count = self.u64()?;
        // Every tensor entry and every metadata entry takes at least 8 bytes.
        self.plausible("tensor count", tensor_count, 8, MAX_ENTRIES)?;
        self.plausible("metadata count", metadata_count, 8, MAX_ENTRIES)?;

        let mut info = GgufInfo {
            file_size: self.size,
            version,
            tensor_count,
            metadata_count,
            ..GgufInfo::default()
        };
        let mut alignment = DEFAULT_ALIGNMENT;
        let mut ints: Vec<(String, u64)> = Vec::new();
        for _ in 0..metadata_count {
            let key = self.string()?;
            let value = if key == "tokenizer.ggml.tokens" {
                self.vocabulary(&mut info.vocab_markers)?
            } else {
                self.value()?
            };
            match (key.as_str(), value) {
                ("general.architecture", Value::Str(s)) => info.architecture = Some(s),
                ("general.name", Value::Str(s)) => info.name = Some(s),
                ("general.file_type", Value::Int(n)) => info.file_type = Some(n),
                ("general.alignment", Value::Int(n)) => alignment = n,
                ("tokenizer.chat_template", Value::Str(_)) => info.has_chat_template = true,
                (_, Value::Int(n)) => ints.push((key, n)),
                _ => {}
            }
        }
        if alignment == 0 || !alignment.is_power_of_two() {
            return Err(self.corrupt("general.alignment", alignment));
        }
        if let Some(arch) = &info.architecture {
            let wanted = format!("{arch}.context_length");
            info.context_length = ints.iter().find(|(k, _)| *k == wanted).map(|(_, n)| *n);
            info.kv = KvShape::from_metadata(arch, &ints);
        }

        let mut last_end = 0u64;
        let mut last_name = String::new();
        for _ in 0..tensor_count {
            let name = self.string()?;
            let n_dims = self.u32()?;
            if n_dims > 8 {
                return Err(self.corrupt("tensor dimension count", u64::from(n_dims)));
            }
            let mut elements: u64 = 1;
            for _ in 0..n_dims {
                let dim = self.u64()?;
                elements = elements
                    .checked_mul(dim)
                    .ok_or_else(|| self.corrupt("tensor element count", dim))?;
            }
            let ggml_type = self.u32()?;
            let offset = self.u64()?;
            let bytes = tensor_bytes(ggml_type, elements).unwrap_or(0);
            let end = offset
                .checked_add(bytes)
                .ok_or_else(|| self.corrupt("tensor offset", offset))?;
            if end > last_end {
                last_end = end;
                last_name = name;
            }
        }
        let data_offset = self.pos.div_ceil(alignment) * alignment;
        info.data_offset = data_offset;
        info.data_size = last_end;
        let needed = data_offset.saturating_add(last_end);
        if needed > self.size {
            return Err(GgufError::TruncatedData {
                path: self.path.to_owned(),
                size: self.size,
                needed,
                tensor: last_name,
            });
        }
        Ok(info)
    }

    fn corrupt(&self, field: &'static str, value: u64) -> GgufError {
        GgufError::Corrupt {
            path: self.path.to_owned(),
            field,
            value,
        }
    }

    /// Refuses a count before looping over (or allocating for) it: above
    /// `limit` no model could have it, so the field is garbage; below it, a
    /// count whose entries need more bytes than are left means the file was
    /// cut short (a 24-byte download ends right after two sane counts).
    fn plausible(
        &self,
        field: &'static str,
        count: u64,
        min_bytes_each: u64,
        limit: u64,
    ) -> Result<(), GgufError> {
        if count > limit {
            return Err(self.corrupt(field, count));
        }
        if count.saturating_mul(min_bytes_each) > self.remaining() {
            return Err(self.truncated());
        }
        Ok(())
    }

    /// Bytes of the file not read yet.
    fn remaining(&self) -> u64 {
        self.size.saturating_sub(self.pos)
    }

    fn truncated(&self) -> GgufError {
        GgufError::TruncatedHeader {
            path: self.path.to_owned(),
            size: self.size,
        }
    }

    fn read_up_to(&mut self, buf: &mut [u8]) -> Result<usize, GgufError> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.input.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(GgufError::Unreadable {
                        path: self.path.to_owned(),
                        source,
                    })
                }
            }
        }
        self.pos += filled as u64;
        Ok(filled)
    }

    fn exact(&mut self, buf: &mut [u8]) -> Result<(), GgufError> {
        if self.read_up_to(buf)? < buf.len() {
            return Err(self.truncated());
        }
        Ok(())
    }

    fn skip(&mut self, mut n: u64) -> Result<(), GgufError> {
        let mut scratch = [0u8; 4096];
        while n > 0 {
            let chunk = usize::try_from(n.min(scratch.len() as u64)).unwrap_or(scratch.len());
            self.exact(&mut scratch[..chunk])?;
            n -= chunk as u64;
        }
        Ok(())
    }

    fn u32(&mut self) -> Result<u32, GgufError> {
        let mut b = [0u8; 4];
        self.exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, GgufError> {
        let mut b = [0u8; 8];
        self.exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn string_len(&mut self) -> Result<u64, GgufError> {
        let len = self.u64()?;
        if len > MAX_STRING {
            return Err(self.corrupt("string length", len));
        }
        if len > self.remaining() {
            return Err(self.truncated());
        }
        Ok(len)
    }

    fn string(&mut self) -> Result<String, GgufError> {
        let len = self.string_len()?;
        let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
        self.exact(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    fn value(&mut self) -> Result<Value, GgufError> {
        let kind = self.u32()?;
        self.value_of(kind, true)
    }

    /// Reads the vocabulary (an array of strings) noting which chat-format
    /// markers it holds; tokens are short, so each is compared in place.
    fn vocabulary(&mut self, found: &mut Vec<String>) -> Result<Value, GgufError> {
        let kind = self.u32()?;
        if kind != 9 {
            return self.value_of(kind, true);
        }
        let elem = self.u32()?;
        if elem != 8 {
            return self.array_rest(elem);
        }
        let count = self.u64()?;
        self.plausible("array length", count, 8, MAX_ARRAY)?;
        let longest = template::VOCAB_MARKERS
            .iter()
            .map(|m| m.len() as u64)
            .max()
            .unwrap_or(0);
        let mut buf = Vec::new();
        for _ in 0..count {
            let len = self.string_len()?;
            if len > longest {
                self.skip(len)?;
                continue;
            }
            buf.resize(usize::try_from(len).unwrap_or(0), 0);
            self.exact(&mut buf)?;
            if let Some(m) = template::VOCAB_MARKERS
                .iter()
                .find(|m| m.as_bytes() == buf.as_slice())
            {
                if !found.iter().any(|f| f == m) {
                    found.push((*m).to_owned());
                }
            }
        }
        Ok(Value::Other)
    }

    /// The rest of an array after its element type: count, elements.
    fn array_rest(&mut self, elem: u32) -> Result<Value, GgufError> {
        let count = self.u64()?;
        self.plausible("array length", count, 1, MAX_ARRAY)?;
        match elem_size(elem) {
            Some(each) => self.skip(count.saturating_mul(each))?,
            None => {
                for _ in 0..count {
                    self.value_of(elem, false)?;
                }
            }
        }
        Ok(Value::Other)
    }

    /// Reads one value of GGUF type `kind`; `keep` = false skips strings
    /// without allocating (array elements).
    fn value_of(&mut self, kind: u32, keep: bool) -> Result<Value, GgufError> {
        Ok(match kind {
            // uint8, int8, bool
            0 | 1 | 7 => {
                let mut b = [0u8; 1];
                self.exact(&mut b)?;
                Value::Int(u64::from(b[0]))
            }
            // uint16, int16
            2 | 3 => {
                let mut b = [0u8; 2];
                self.exact(&mut b)?;
                Value::Int(u64::from(u16::from_le_bytes(b)))
            }
            // uint32, int32
            4 | 5 => Value::Int(u64::from(self.u32()?)),
            // float32
            6 => {
                self.u32()?;
                Value::Other
            }
            // string
            8 if keep => Value::Str(self.string()?),
            8 => {
                let len = self.string_len()?;
                self.skip(len)?;
                Value::Other
            }
            // array: element type, count, elements
            9 => {
                let elem = self.u32()?;
                self.array_rest(elem)?
            }
            // uint64, int64
            10 | 11 => Value::Int(self.u64()?),
            // float64
            12 => {
                self.u64()?;
                Value::Other
            }
            other => return Err(self.corrupt("metadata value type", u64::from(other))),
        })
    }
}

/// Size of fixed-size GGUF value types (for skipping arrays quickly).
fn elem_size(kind: u32) -> Option<u64> {
    match kind {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

/// Bytes of a tensor of `elements` elements of ggml type `ggml_type`, for the
/// types llama.cpp writes; `None` for a type this table does not know (its
/// size is then not checked).
fn tensor_bytes(ggml_type: u32, elements: u64) -> Option<u64> {
    // (elements per block, bytes per block), from ggml's type traits.
    let (block, bytes) = match ggml_type {
        2 | 20 => (32, 18),    // Q4_0, IQ4_NL
        3 => (32, 20),         // Q4_1
        6 => (32, 22),         // Q5_0
        7 => (32, 24),         // Q5_1
        8 => (32, 34),         // Q8_0
        9 => (32, 36),         // Q8_1
        10 => (256, 84),       // Q2_K
        11 | 21 => (256, 110), // Q3_K, IQ3_S
        12 => (256, 144),      // Q4_K
        13 => (256, 176),      // Q5_K
        14 => (256, 210),      // Q6_K
        15 => (256, 292),      // Q8_K
        16 | 35 => (256, 66),  // IQ2_XXS, TQ2_0
        17 => (256, 74),       // IQ2_XS
        18 => (256, 98),       // IQ3_XXS
        19 => (256, 50),       // IQ1_S
        22 => (256, 82),       // IQ2_S
        23 => (256, 136),      // IQ4_XS
        24 => (1, 1),          // I8
        1 | 25 | 30 => (1, 2), // F16, I16, BF16
        0 | 26 => (1, 4),      // F32, I32
        27 | 28 => (1, 8),     // I64, F64
        29 => (256, 56),       // IQ1_M
        34 => (256, 54),       // TQ1_0
        _ => return None,
    };
    Some(elements.div_ceil(block).saturating_mul(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a minimal GGUF image: two metadata entries, one F32 tensor of
    /// `elements` elements, and `data_len` bytes of data after the header.
    fn image(version: u32, elements: u64, data_len: usize) -> Vec<u8> {
        fn s(out: &mut Vec<u8>, text: &str) {
            out.extend((text.len() as u64).to_le_bytes());
            out.extend(text.as_bytes());
        }
        let mut out = b"GGUF".to_vec();
        out.extend(version.to_le_bytes());
        out.extend(1u64.to_le_bytes()); // tensors
        out.extend(3u64.to_le_bytes()); // metadata
        s(&mut out, "general.architecture");
        out.extend(8u32.to_le_bytes());
        s(&mut out, "llama");
        s(&mut out, "llama.context_length");
        out.extend(4u32.to_le_bytes());
        out.extend(8192u32.to_le_bytes());
        s(&mut out, "tokenizer.ggml.tokens");
        out.extend(9u32.to_le_bytes());
        out.extend(8u32.to_le_bytes());
        out.extend(3u64.to_le_bytes());
        s(&mut out, "a");
        s(&mut out, "<|im_start|>");
        s(&mut out, "a much longer token than any marker");
        s(&mut out, "w");
        out.extend(1u32.to_le_bytes());
        out.extend(elements.to_le_bytes());
        out.extend(0u32.to_le_bytes()); // F32
        out.extend(0u64.to_le_bytes()); // offset
        while !out.len().is_multiple_of(32) {
            out.push(0);
        }
        out.extend(vec![0u8; data_len]);
        out
    }

    fn write(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, bytes).unwrap();
        (dir, path)
    }

    #[test]
    fn a_complete_file_passes_with_its_facts() {
        let (_d, path) = write(&image(3, 16, 64));
        let info = check(&path).unwrap();
        assert_eq!(info.version, 3);
        assert_eq!(info.tensor_count, 1);
        assert_eq!(info.architecture.as_deref(), Some("llama"));
        assert_eq!(info.context_length, Some(8192));
        assert_eq!(info.data_size, 64);
        assert_eq!(info.vocab_markers, ["<|im_start|>"]);
        assert!(!info.has_chat_template);
    }

    #[test]
    fn the_kv_shape_comes_from_the_architecture_and_sizes_a_sequence() {
        use proto::worker::KvCacheType;
        let ints = |pairs: &[(&str, u64)]| -> Vec<(String, u64)> {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
        };
        // Grouped-query attention: 9 heads of 64 over a 576 embedding, 3 KV heads.
        let gqa = ints(&[
            ("llama.block_count", 30),
            ("llama.attention.head_count", 9),
            ("llama.attention.head_count_kv", 3),
            ("llama.embedding_length", 576),
            ("qwen2.block_count", 99),
        ]);
        let shape = KvShape::from_metadata("llama", &gqa).unwrap();
        assert_eq!(
            (shape.layers, shape.kv_heads, shape.key_dim, shape.value_dim),
            (30, 3, 64, 64)
        );
        // 30 layers x 1024 tokens x 3 heads x (64 + 64) x 2 bytes.
        assert_eq!(
            shape.sequence_bytes(1024, KvCacheType::F16),
            30 * 1024 * 3 * 128 * 2
        );
        assert!(
            shape.sequence_bytes(1024, KvCacheType::Q4_0)
                < shape.sequence_bytes(1024, KvCacheType::Q8_0)
        );
        // Without head_count_kv every head has its own KV; explicit key and
        // value widths win over embedding / heads.
        let mha = ints(&[
            ("gemma.block_count", 2),
            ("gemma.attention.head_count", 4),
            ("gemma.attention.key_length", 256),
            ("gemma.attention.value_length", 128),
            ("gemma.embedding_length", 512),
        ]);
        let shape = KvShape::from_metadata("gemma", &mha).unwrap();
        assert_eq!(
            (shape.kv_heads, shape.key_dim, shape.value_dim),
            (4, 256, 128)
        );
        // Another architecture's numbers, or a missing one, give no shape.
        assert_eq!(KvShape::from_metadata("qwen2", &gqa), None);
        // The synthetic image has no block count.
        let (_d, path) = write(&image(3, 16, 64));
        assert_eq!(check(&path).unwrap().kv, None);
    }

    #[test]
    fn missing_data_is_truncation() {
        let (_d, path) = write(&image(3, 16, 63));
        let err = check(&path).unwrap_err();
        assert!(
            matches!(err, GgufError::TruncatedData { ref tensor, .. } if tensor == "w"),
            "{err}"
        );
        assert_eq!(err.exit_code(), ExitCode::ModelTruncated);
    }

    #[test]
    fn a_cut_header_is_truncation() {
        let full = image(3, 16, 64);
        let (_d, path) = write(&full[..40]);
        let err = check(&path).unwrap_err();
        assert!(
            matches!(err, GgufError::TruncatedHeader { size: 40, .. }),
            "{err}"
        );
    }

    #[test]
    fn a_file_cut_anywhere_in_its_header_is_truncation() {
        let full = image(3, 16, 64);
        // Cut right after the two counts (24 bytes), inside a key, inside a
        // value, inside the vocabulary array, inside the tensor table.
        // (A cut in the padding after the tensor table leaves the header
        // whole: that is missing tensor data.)
        let header_end = full.len() - 64;
        for cut in 4..header_end {
            let (_d, path) = write(&full[..cut]);
            let err = check(&path).unwrap_err();
            assert!(
                matches!(err, GgufError::TruncatedHeader { size, .. } | GgufError::TruncatedData { size, .. } if size == cut as u64),
                "cut at {cut}: {err}"
            );
            assert!(err.to_string().contains("truncated"), "cut at {cut}: {err}");
            assert_eq!(err.exit_code(), ExitCode::ModelTruncated);
        }
        let (_d, path) = write(&full[..24]);
        let err = check(&path).unwrap_err();
        assert!(
            matches!(err, GgufError::TruncatedHeader { size: 24, .. }),
            "{err}"
        );
    }

    #[test]
    fn old_version_magic_and_empty_are_distinct() {
        let (_d, path) = write(&image(1, 16, 64));
        assert!(matches!(
            check(&path).unwrap_err(),
            GgufError::UnsupportedVersion { version: 1, .. }
        ));
        let (_d, path) = write(b"<!DOCTYPE html>");
        let err = check(&path).unwrap_err();
        assert!(matches!(err, GgufError::BadMagic { .. }), "{err}");
        assert!(err.to_string().contains("not a GGUF file"));
        let (_d, path) = write(b"");
        assert_eq!(check(&path).unwrap_err().exit_code(), ExitCode::ModelEmpty);
        let (_d, path) = write(b"GG");
        assert!(matches!(
            check(&path).unwrap_err(),
            GgufError::BadMagic { .. }
        ));
        assert_eq!(
            check(Path::new("/nonexistent/m.gguf"))
                .unwrap_err()
                .exit_code(),
            ExitCode::ModelMissing
        );
    }

    #[test]
    fn absurd_counts_are_corruption_not_allocation() {
        let mut bytes = image(3, 16, 64);
        bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        let (_d, path) = write(&bytes);
        assert!(matches!(
            check(&path).unwrap_err(),
            GgufError::Corrupt {
                field: "tensor count",
                ..
            }
        ));
    }
}
