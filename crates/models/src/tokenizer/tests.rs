use super::test_support::builtin;
use super::*;

/// Spec 6.5 (tiktoken 0.14 with the verified rank file).
const VECTORS: &[(&str, &[u32])] = &[
    ("Hello, world!", &[13225, 11, 2375, 0]),
    ("What is 2 + 2?", &[4827, 382, 220, 17, 659, 220, 17, 30]),
    (
        "  leading spaces\n\nnewlines",
        &[220, 8117, 18608, 279, 1389, 10105],
    ),
    ("naïve café 日本語", &[1503, 9954, 737, 30469, 17428, 40909]),
    ("1234567", &[7633, 19354, 22]),
    ("don't WE'LL", &[91418, 26919, 6, 7454]),
    ("assistant", &[173781]),
    ("user", &[1428]),
    ("system", &[17360]),
    ("developer", &[77944]),
    ("analysis", &[35644]),
    ("final", &[17196]),
    ("commentary", &[12606, 815]),
    (" to", &[316]),
    ("=", &[28]),
    ("functions", &[44580]),
    ("json", &[4108]),
    ("\n", &[198]),
];

#[test]
fn spec_vectors_encode_exactly_and_round_trip() {
    let tok = builtin();
    for (text, ids) in VECTORS {
        assert_eq!(tok.encode(text).unwrap(), *ids, "encoding {text:?}");
        assert_eq!(tok.decode(ids).unwrap(), *text);
    }
}

#[derive(serde::Deserialize)]
struct CorpusEntry {
    text: String,
    ids: Vec<u32>,
}

/// English, code, CJK, other scripts, emoji, whitespace runs, special-token-looking text:
/// ids from tiktoken and openai-harmony (testdata/corpus.json, made by
/// harmony/testdata/make_fixtures.py).
#[test]
fn corpus_matches_the_official_encoders() {
    let corpus: Vec<CorpusEntry> =
        serde_json::from_str(include_str!("testdata/corpus.json")).unwrap();
    assert!(corpus.len() >= 30);
    let tok = builtin();
    for e in &corpus {
        assert_eq!(tok.encode(&e.text).unwrap(), e.ids, "encoding {:?}", e.text);
        assert_eq!(tok.decode(&e.ids).unwrap(), e.text);
    }
}

#[test]
fn builtin_has_the_harmony_vocabulary() {
    let tok = builtin();
    assert_eq!(tok.vocab_size(), 201088);
    assert_eq!(tok.source(), &TokenizerSource::BuiltinO200kHarmony);
    let named = [
        ("<|startoftext|>", STARTOFTEXT),
        ("<|endoftext|>", ENDOFTEXT),
        ("<|return|>", RETURN),
        ("<|constrain|>", CONSTRAIN),
        ("<|channel|>", CHANNEL),
        ("<|start|>", START),
        ("<|end|>", END),
        ("<|message|>", MESSAGE),
        ("<|call|>", CALL),
        ("<|reserved_200013|>", 200013),
        ("<|reserved_201087|>", 201087),
    ];
    for (name, id) in named {
        assert_eq!(tok.token_id(name), Some(id), "{name}");
        assert!(tok.is_special(id));
        assert_eq!(tok.decode(&[id]).unwrap(), name);
    }
    assert_eq!(tok.token_id("<|reserved_201088|>"), None);
    assert_eq!(tok.token_id("hello"), None);
    assert!(!tok.is_special(13225));
    assert!(!tok.is_special(201088));
}

#[test]
fn special_token_text_is_plain_text_unless_allowed() {
    let tok = builtin();
    let ordinary = tok.encode("say <|start|> and <|call|>").unwrap();
    assert!(
        ordinary.iter().all(|&id| !tok.is_special(id)),
        "{ordinary:?}"
    );
    assert_eq!(tok.decode(&ordinary).unwrap(), "say <|start|> and <|call|>");
    let special = tok
        .encode_with_special("<|start|>user<|message|>hi<|end|>")
        .unwrap();
    assert_eq!(special[0], START);
    assert_eq!(special[1], 1428);
    assert_eq!(special[2], MESSAGE);
    assert_eq!(*special.last().unwrap(), END);
}

#[test]
fn decoding_is_byte_exact_and_lossy_safe() {
    let tok = builtin();
    let ids = tok.encode("😀 日本語").unwrap();
    assert_eq!(tok.decode_bytes(&ids), "😀 日本語".as_bytes());
    // Single-byte tokens of a 4-byte emoji: each alone is invalid UTF-8.
    let bytes_ids: Vec<u32> = "😀".bytes().map(|b| tok.encode_bytes_for_test(b)).collect();
    assert_eq!(bytes_ids.len(), 4);
    assert_eq!(tok.decode(&bytes_ids[..2]).unwrap(), "\u{FFFD}");
    assert_eq!(tok.decode(&bytes_ids).unwrap(), "😀");
    let mut stream = StreamDecoder::new();
    let text: String = bytes_ids
        .iter()
        .map(|&id| stream.push(tok.token_bytes(id).unwrap()))
        .collect();
    assert_eq!(text, "😀");
    // Ids outside the vocabulary: an error for decode, U+FFFD for decode_bytes.
    let e = tok.decode(&[13225, 300_000]).unwrap_err().to_string();
    assert!(e.contains("300000") && e.contains("201088"), "{e}");
    assert_eq!(
        tok.decode_bytes(&[13225, 300_000]),
        "Hello\u{FFFD}".as_bytes()
    );
    assert_eq!(tok.token_bytes(300_000), None);
}

impl Tokenizer {
    /// The id of the single-byte token `b` (every byte has one in o200k).
    fn encode_bytes_for_test(&self, b: u8) -> u32 {
        (0..self.vocab_size() as u32)
            .find(|&id| self.token_bytes(id) == Some(&[b][..]))
            .expect("byte token")
    }
}

#[test]
fn for_model_without_tokenizer_json_uses_the_builtin_encoding() {
    let dir = tempfile::tempdir().unwrap();
    let tok = Tokenizer::for_model(dir.path()).unwrap();
    assert_eq!(tok.source(), &TokenizerSource::BuiltinO200kHarmony);
    assert_eq!(tok.encode("Hello, world!").unwrap(), [13225, 11, 2375, 0]);
}

/// A small byte-level BPE tokenizer.json in the layout of gpt-oss's (Split regex +
/// ByteLevel pre-tokenizer, BPE with ignore_merges, added special tokens).
fn tiny_tokenizer_json() -> String {
    let chars = hf::byte_to_unicode();
    let mut vocab = serde_json::Map::new();
    for (b, c) in chars.iter().enumerate() {
        vocab.insert(c.to_string(), b.into());
    }
    let g = chars[b' ' as usize];
    vocab.insert("he".into(), 256.into());
    vocab.insert("ll".into(), 257.into());
    vocab.insert("hell".into(), 258.into());
    vocab.insert("hello".into(), 259.into());
    vocab.insert(format!("{g}w"), 260.into());
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [
            {"id": 261, "content": "<|start|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": 262, "content": "<|end|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
        ],
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": " ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*| ?\\p{L}+|\\s+(?!\\S)|\\s+"}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
        ]},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": true,
                  "vocab": vocab, "merges": [["h", "e"], ["l", "l"], ["he", "ll"], ["hell", "o"], [g.to_string(), "w"]]}
    });
    json.to_string()
}

#[test]
fn tokenizer_json_is_used_when_present() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), tiny_tokenizer_json()).unwrap();
    let tok = Tokenizer::for_model(dir.path()).unwrap();
    assert!(
        matches!(tok.source(), TokenizerSource::TokenizerJson(p) if p.ends_with("tokenizer.json"))
    );
    // Added tokens follow the model vocabulary (the library numbers them so, as in gpt-oss's file).
    assert_eq!(tok.vocab_size(), 263);
    assert_eq!(tok.encode("hello").unwrap(), [259]);
    assert_eq!(tok.encode("hello w").unwrap(), [259, 260]);
    // Special-token text is plain text for `encode`, the special id for `encode_with_special`.
    let plain = tok.encode("<|start|>hello").unwrap();
    assert!(!plain.contains(&261), "{plain:?}");
    assert_eq!(tok.decode(&plain).unwrap(), "<|start|>hello");
    assert_eq!(
        tok.encode_with_special("<|start|>hello<|end|>").unwrap(),
        [261, 259, 262]
    );
    assert_eq!(tok.token_id("<|end|>"), Some(262));
    assert!(tok.is_special(261) && !tok.is_special(259));
    // Bytes come back through the byte-level map, including non-printable bytes.
    let ids = tok.encode("é\n").unwrap();
    assert_eq!(tok.decode_bytes(&ids), "é\n".as_bytes());
    assert_eq!(
        tok.decode(&[261, 259, 262]).unwrap(),
        "<|start|>hello<|end|>"
    );
}

#[test]
fn a_broken_tokenizer_json_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), "{\"model\": 5}").unwrap();
    let e = Tokenizer::for_model(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("tokenizer.json") && e.contains("not a usable tokenizer.json"),
        "{e}"
    );
    // Declared added-token ids the library would silently renumber.
    let gapped = tiny_tokenizer_json().replace("\"id\":262", "\"id\":300");
    assert!(gapped.contains("\"id\":300"));
    std::fs::write(dir.path().join("tokenizer.json"), gapped).unwrap();
    let e = Tokenizer::for_model(dir.path()).unwrap_err().to_string();
    assert!(e.contains("declares id 300"), "{e}");
}
