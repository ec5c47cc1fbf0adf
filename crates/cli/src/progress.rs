//! A one-line progress indicator on stderr for long loads (silent when stderr is not a terminal).

use std::io::{IsTerminal, Write};
use std::time::Instant;

pub struct Progress {
    label: String,
    start: Instant,
    tty: bool,
    last_pct: Option<u64>,
}

impl Progress {
    pub fn new(label: String) -> Self {
        Progress {
            label,
            start: Instant::now(),
            tty: std::io::stderr().is_terminal(),
            last_pct: None,
        }
    }

    pub fn update(&mut self, done: u64, total: u64) {
        if !self.tty || total == 0 {
            return;
        }
        let pct = done * 100 / total;
        if self.last_pct == Some(pct) {
            return;
        }
        self.last_pct = Some(pct);
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        eprint!(
            "\r{}: {pct:3}% ({:.2}/{:.2} GiB)",
            self.label,
            gib(done),
            gib(total)
        );
        let _ = std::io::stderr().flush();
    }

    pub fn finish(&mut self) {
        if self.tty {
            eprintln!(
                "\r{}: done in {:.1}s{:20}",
                self.label,
                self.start.elapsed().as_secs_f64(),
                ""
            );
        }
    }
}
