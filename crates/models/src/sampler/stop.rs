//! Stop strings: generation ends when the output text contains one. Text that might be the
//! start of a stop string is held back until it is known not to be.

/// The outcome of adding text to a [`StopStrings`] matcher.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StopCheck {
    /// Text that may be shown now (never contains a stop string or text after one).
    pub emit: String,
    /// A stop string was reached: generation should end (its text is not emitted).
    pub stopped: bool,
}

/// Watches streamed text for stop strings.
#[derive(Debug, Clone, Default)]
pub struct StopStrings {
    stops: Vec<String>,
    held: String,
    stopped: bool,
}

impl StopStrings {
    /// Empty strings are ignored.
    pub fn new(stops: &[String]) -> Self {
        StopStrings {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            ..Default::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.stops.is_empty()
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Adds generated text; returns what may be emitted and whether a stop string was hit.
    pub fn push(&mut self, text: &str) -> StopCheck {
        if self.stopped {
            return StopCheck {
                emit: String::new(),
                stopped: true,
            };
        }
        let mut buf = std::mem::take(&mut self.held);
        buf.push_str(text);
        if let Some(at) = self.stops.iter().filter_map(|s| buf.find(s.as_str())).min() {
            buf.truncate(at);
            self.stopped = true;
            return StopCheck {
                emit: buf,
                stopped: true,
            };
        }
        let hold_from = buf
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| self.stops.iter().any(|s| s.starts_with(&buf[i..])))
            .unwrap_or(buf.len());
        self.held = buf.split_off(hold_from);
        StopCheck {
            emit: buf,
            stopped: false,
        }
    }

    /// Releases the held text at the end of generation (no stop string followed it).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stops(s: &[&str]) -> StopStrings {
        StopStrings::new(&s.iter().map(|x| x.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn stop_string_across_token_boundaries_is_found_and_never_emitted() {
        let mut m = stops(&["STOP"]);
        let mut shown = String::new();
        for piece in ["Hello S", "T", "O"] {
            let c = m.push(piece);
            assert!(!c.stopped);
            shown.push_str(&c.emit);
        }
        assert_eq!(shown, "Hello ", "the possible prefix 'STO' is held back");
        let c = m.push("P and more");
        assert!(c.stopped);
        assert_eq!(c.emit, "");
        assert!(m.push("later").stopped);
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn false_prefix_is_released_and_earliest_stop_wins() {
        let mut m = stops(&["STOP"]);
        assert_eq!(m.push("ST").emit, "");
        let c = m.push("AR");
        assert_eq!((c.emit.as_str(), c.stopped), ("STAR", false));
        assert_eq!(m.push("x S").emit, "x ");
        assert_eq!(m.finish(), "S", "held text comes out at the end");

        let mut m = stops(&["world", "lo w", ""]);
        let c = m.push("hello world");
        assert!(c.stopped);
        assert_eq!(c.emit, "hel");
    }

    #[test]
    fn multibyte_text_is_split_only_at_char_boundaries() {
        let mut m = stops(&["日本語です"]);
        let c = m.push("abc日本");
        assert_eq!(c.emit, "abc");
        let c = m.push("人");
        assert_eq!(c.emit, "日本人");
        assert!(stops(&[]).is_empty());
        assert_eq!(stops(&[]).push("x").emit, "x");
    }
}
