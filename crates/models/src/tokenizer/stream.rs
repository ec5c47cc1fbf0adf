//! Incremental UTF-8 decoding for streamed tokens: a token may end in the middle of a
//! multibyte character, so bytes are held back until they complete one.

/// Buffers token bytes and releases them as text once they form valid UTF-8.
///
/// Invalid sequences (bytes that can never become valid) become U+FFFD at once; an
/// incomplete sequence at the end is held (at most 3 bytes) until the next push or
/// [`StreamDecoder::finish`].
#[derive(Debug, Default, Clone)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `bytes` and returns the text that is complete now (possibly empty).
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // The prefix was just validated, so this cannot fail.
                    out.push_str(std::str::from_utf8(&rest[..valid]).unwrap_or_default());
                    match e.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &rest[valid + bad..];
                        }
                        None => {
                            rest = &rest[valid..];
                            break;
                        }
                    }
                }
            }
        }
        let keep = rest.len();
        let drop = self.pending.len() - keep;
        self.pending.drain(..drop);
        out
    }

    /// True when bytes are held back waiting for the rest of a character.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Releases whatever is held (an incomplete character becomes U+FFFD) and resets.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multibyte_character_split_over_pushes_comes_out_whole() {
        let bytes = "é日😀".as_bytes().to_vec();
        // Every split of the byte string into single bytes.
        let mut d = StreamDecoder::new();
        let mut out = String::new();
        for b in &bytes {
            out.push_str(&d.push(&[*b]));
        }
        assert!(!d.has_pending());
        assert_eq!(out, "é日😀");
        // Nothing is released before the character is complete.
        let mut d = StreamDecoder::new();
        assert_eq!(d.push(&bytes[2..4]), "");
        assert!(d.has_pending());
        assert_eq!(d.push(&bytes[4..5]), "日");
    }

    #[test]
    fn invalid_bytes_become_replacement_and_text_goes_on() {
        let mut d = StreamDecoder::new();
        assert_eq!(d.push(b"a\xffb"), "a\u{FFFD}b");
        assert_eq!(d.push(b"\xe6\x97"), "");
        assert_eq!(d.finish(), "\u{FFFD}");
        assert!(!d.has_pending());
        assert_eq!(d.push(b"ok"), "ok");
    }
}
