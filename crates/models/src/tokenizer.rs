//! The gpt-oss tokenizer (o200k_harmony, spec 6).
//!
//! [`Tokenizer::for_model`] uses the model folder's `tokenizer.json` when there is one, else
//! the built-in o200k_harmony encoding (tiktoken-rs embeds the o200k_base ranks: no file and
//! no network needed). Both give the same ids. Text is encoded "ordinarily" (special-token
//! text such as `<|start|>` in user input stays plain text); the harmony renderer emits
//! special tokens by id. Decoding works on bytes: a token may end inside a UTF-8 character,
//! so streaming output goes through [`StreamDecoder`].

mod hf;
pub mod special;
mod stream;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use gptoss_core::{Error, Result};

pub use special::{
    CALL, CHANNEL, CONSTRAIN, END, ENDOFTEXT, HARMONY_VOCAB_SIZE, MESSAGE, RETURN, START,
    STARTOFTEXT, STOP_TOKENS,
};
pub use stream::StreamDecoder;

/// Where a tokenizer's vocabulary came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenizerSource {
    /// `tokenizer.json` read from this path.
    TokenizerJson(PathBuf),
    /// The o200k_harmony encoding built into the binary.
    BuiltinO200kHarmony,
}

impl std::fmt::Display for TokenizerSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenizerSource::TokenizerJson(p) => write!(f, "{}", p.display()),
            TokenizerSource::BuiltinO200kHarmony => write!(f, "built-in o200k_harmony"),
        }
    }
}

enum Engine {
    Tiktoken(tiktoken_rs::CoreBPE),
    Hf(Box<hf::HfTokenizer>),
}

/// Bytes of every id, in one buffer (`offsets[id]..offsets[id + 1]`), with flags.
pub(crate) struct PieceTable {
    bytes: Vec<u8>,
    offsets: Vec<usize>,
    known: Vec<bool>,
    special: Vec<bool>,
}

impl PieceTable {
    fn build(pieces: Vec<Option<(Vec<u8>, bool)>>) -> Self {
        let mut t = PieceTable {
            bytes: Vec::new(),
            offsets: Vec::with_capacity(pieces.len() + 1),
            known: Vec::with_capacity(pieces.len()),
            special: Vec::with_capacity(pieces.len()),
        };
        t.offsets.push(0);
        for p in pieces {
            let (bytes, special) = p
                .as_ref()
                .map(|(b, s)| (b.as_slice(), *s))
                .unwrap_or((&[], false));
            t.bytes.extend_from_slice(bytes);
            t.offsets.push(t.bytes.len());
            t.known.push(p.is_some());
            t.special.push(special);
        }
        t
    }

    fn len(&self) -> usize {
        self.known.len()
    }

    fn get(&self, id: u32) -> Option<&[u8]> {
        let i = id as usize;
        if i < self.len() && self.known[i] {
            Some(&self.bytes[self.offsets[i]..self.offsets[i + 1]])
        } else {
            None
        }
    }
}

/// The gpt-oss tokenizer: encode, decode, special tokens.
pub struct Tokenizer {
    engine: Engine,
    table: PieceTable,
    specials: HashMap<String, u32>,
    source: TokenizerSource,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("source", &self.source)
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

impl Tokenizer {
    /// The tokenizer of the model in `dir`: `<dir>/tokenizer.json` if present, else the
    /// built-in o200k_harmony encoding.
    pub fn for_model(dir: &Path) -> Result<Tokenizer> {
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            Self::from_tokenizer_json(&json)
        } else {
            tracing::debug!(dir = %dir.display(), "no tokenizer.json: using built-in o200k_harmony");
            Self::o200k_harmony()
        }
    }

    /// Loads a Hugging Face `tokenizer.json`.
    pub fn from_tokenizer_json(path: &Path) -> Result<Tokenizer> {
        let loaded = hf::load(path)?;
        Ok(Tokenizer {
            engine: Engine::Hf(Box::new(loaded.tokenizer)),
            table: loaded.table,
            specials: loaded.specials,
            source: TokenizerSource::TokenizerJson(path.to_path_buf()),
        })
    }

    /// The built-in o200k_harmony encoding (o200k_base ranks + harmony specials, 201088 ids).
    pub fn o200k_harmony() -> Result<Tokenizer> {
        let bpe = tiktoken_rs::o200k_harmony().map_err(|e| {
            Error::Input(format!("building the built-in o200k_harmony encoding: {e}"))
        })?;
        let mut specials = HashMap::new();
        let pieces = (0..HARMONY_VOCAB_SIZE)
            .map(|id| {
                let bytes = bpe.decode_bytes(&[id]).ok()?;
                let is_special = id >= special::FIRST_SPECIAL;
                if is_special {
                    specials.insert(String::from_utf8_lossy(&bytes).into_owned(), id);
                }
                Some((bytes, is_special))
            })
            .collect();
        Ok(Tokenizer {
            engine: Engine::Tiktoken(bpe),
            table: PieceTable::build(pieces),
            specials,
            source: TokenizerSource::BuiltinO200kHarmony,
        })
    }

    /// Where the vocabulary came from.
    pub fn source(&self) -> &TokenizerSource {
        &self.source
    }

    /// Number of ids (one past the largest id): 201088 for the built-in encoding.
    pub fn vocab_size(&self) -> usize {
        self.table.len()
    }

    /// Encodes ordinary text: special-token text (`<|start|>`) is encoded as plain text.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match &self.engine {
            Engine::Tiktoken(bpe) => Ok(bpe.encode_ordinary(text)),
            Engine::Hf(hf) => hf.encode_ordinary(text),
        }
    }

    /// Encodes text in which special-token text becomes the special id.
    pub fn encode_with_special(&self, text: &str) -> Result<Vec<u32>> {
        match &self.engine {
            Engine::Tiktoken(bpe) => Ok(bpe.encode_with_special_tokens(text)),
            Engine::Hf(hf) => hf.encode_with_special(text),
        }
    }

    /// Decodes ids to text. Invalid UTF-8 becomes U+FFFD; an id outside the vocabulary is an
    /// error naming it.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        if let Some(&bad) = ids.iter().find(|&&id| self.table.get(id).is_none()) {
            return Err(Error::Input(format!(
                "token id {bad} is not in the vocabulary ({} ids, source {})",
                self.vocab_size(),
                self.source
            )));
        }
        Ok(String::from_utf8_lossy(&self.decode_bytes(ids)).into_owned())
    }

    /// The concatenated bytes of `ids` (special tokens as their text). An id outside the
    /// vocabulary contributes the bytes of U+FFFD.
    pub fn decode_bytes(&self, ids: &[u32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            match self.table.get(id) {
                Some(b) => out.extend_from_slice(b),
                None => out.extend_from_slice("\u{FFFD}".as_bytes()),
            }
        }
        out
    }

    /// The bytes of one token, or None for an id outside the vocabulary.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.table.get(id)
    }

    /// The id of a special token given by its text (`"<|start|>"`).
    pub fn token_id(&self, special: &str) -> Option<u32> {
        self.specials.get(special).copied()
    }

    /// True for special (added / harmony control) tokens.
    pub fn is_special(&self, id: u32) -> bool {
        self.table
            .special
            .get(id as usize)
            .copied()
            .unwrap_or(false)
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::Tokenizer;
    use std::sync::OnceLock;

    /// The built-in tokenizer, built once for all tests of the crate.
    pub fn builtin() -> &'static Tokenizer {
        static TOK: OnceLock<Tokenizer> = OnceLock::new();
        TOK.get_or_init(|| Tokenizer::o200k_harmony().expect("built-in o200k_harmony"))
    }
}

#[cfg(test)]
mod tests;
