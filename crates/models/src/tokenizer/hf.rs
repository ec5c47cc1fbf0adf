//! Loading a Hugging Face `tokenizer.json` (byte-level BPE, as published with gpt-oss).

use std::collections::HashMap;
use std::path::Path;

use gptoss_core::{Error, Result};
use tokenizers::{Model, Normalizer, OffsetType, PreTokenizedString, PreTokenizer};

use super::PieceTable;

/// A tokenizer.json and what was derived from it at load time.
pub(super) struct HfTokenizer {
    inner: tokenizers::Tokenizer,
}

pub(super) struct Loaded {
    pub tokenizer: HfTokenizer,
    pub table: PieceTable,
    pub specials: HashMap<String, u32>,
}

pub(super) fn load(path: &Path) -> Result<Loaded> {
    let bytes =
        std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let inner = tokenizers::Tokenizer::from_bytes(&bytes)
        .map_err(|e| Error::format(path, format!("not a usable tokenizer.json: {e}")))?;

    check_added_ids(path, &bytes, &inner)?;
    let vocab = inner.get_vocab(false);
    let added = inner.get_added_tokens_decoder();
    let size = vocab
        .values()
        .chain(added.keys())
        .map(|&id| id as usize + 1)
        .max()
        .unwrap_or(0);
    if size == 0 {
        return Err(Error::format(path, "the tokenizer has an empty vocabulary"));
    }
    let byte_of = unicode_to_byte();
    let mut pieces: Vec<Option<(Vec<u8>, bool)>> = vec![None; size];
    for (token, &id) in &vocab {
        pieces[id as usize] = Some((byte_level_bytes(token, &byte_of), false));
    }
    let mut specials = HashMap::new();
    for (&id, tok) in &added {
        pieces[id as usize] = Some((tok.content.as_bytes().to_vec(), true));
        specials.insert(tok.content.clone(), id);
    }
    Ok(Loaded {
        tokenizer: HfTokenizer { inner },
        table: PieceTable::build(pieces),
        specials,
    })
}

#[derive(serde::Deserialize)]
struct DeclaredToken {
    id: u32,
    content: String,
}

#[derive(serde::Deserialize)]
struct Declared {
    #[serde(default)]
    added_tokens: Vec<DeclaredToken>,
}

/// The tokenizers library numbers added tokens itself (after the model vocabulary, in file
/// order) and only logs a mismatch; a file whose declared ids differ would give wrong ids.
fn check_added_ids(path: &Path, bytes: &[u8], inner: &tokenizers::Tokenizer) -> Result<()> {
    let declared: Declared = serde_json::from_slice(bytes)
        .map_err(|e| Error::format(path, format!("reading added_tokens: {e}")))?;
    for t in declared.added_tokens {
        let got = inner.token_to_id(&t.content);
        if got != Some(t.id) {
            return Err(Error::format(
                path,
                format!(
                    "added token {:?} declares id {} but loads as {:?}: added tokens must follow the model \
                     vocabulary without gaps",
                    t.content, t.id, got
                ),
            ));
        }
    }
    Ok(())
}

impl HfTokenizer {
    /// Ordinary encoding: the model and pre-tokenizer only, so text that looks like an added
    /// token ("<|start|>") is split like any other text (`Tokenizer::encode` would match it).
    pub fn encode_ordinary(&self, text: &str) -> Result<Vec<u32>> {
        let fail = |e: tokenizers::Error| {
            Error::Input(format!("tokenizer.json failed to encode text: {e}"))
        };
        let mut pre = PreTokenizedString::from(text);
        if let Some(n) = self.inner.get_normalizer() {
            pre.normalize(|s| n.normalize(s)).map_err(fail)?;
        }
        if let Some(p) = self.inner.get_pre_tokenizer() {
            p.pre_tokenize(&mut pre).map_err(fail)?;
        }
        let model = self.inner.get_model();
        pre.tokenize(|s| model.tokenize(s.get())).map_err(fail)?;
        let enc = pre.into_encoding(None, 0, OffsetType::None).map_err(fail)?;
        Ok(enc.get_ids().to_vec())
    }

    /// Encoding where added (special) tokens in the text become their ids.
    pub fn encode_with_special(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Input(format!("tokenizer.json failed to encode text: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }
}

/// Bytes of a byte-level BPE vocabulary string (GPT-2's byte→char map reversed); a string
/// with a char outside that map is taken as its UTF-8 bytes.
fn byte_level_bytes(token: &str, byte_of: &HashMap<char, u8>) -> Vec<u8> {
    let mapped: Option<Vec<u8>> = token.chars().map(|c| byte_of.get(&c).copied()).collect();
    mapped.unwrap_or_else(|| token.as_bytes().to_vec())
}

/// GPT-2 `bytes_to_unicode`, reversed: printable bytes stand for themselves, the others are
/// mapped in order to U+0100, U+0101, ...
pub(super) fn unicode_to_byte() -> HashMap<char, u8> {
    byte_to_unicode()
        .into_iter()
        .enumerate()
        .map(|(b, c)| (c, b as u8))
        .collect()
}

/// GPT-2 `bytes_to_unicode`: the char standing for each byte value.
pub(super) fn byte_to_unicode() -> Vec<char> {
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut next = 256u32;
    (0u32..256)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap_or('?')
            } else {
                let c = char::from_u32(next).unwrap_or('?');
                next += 1;
                c
            }
        })
        .collect()
}
