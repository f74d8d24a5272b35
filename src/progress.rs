//! A minimal progress bar on stderr, drawn only when stderr is a terminal so
//! logs and CI output stay clean.

use std::io::{IsTerminal, Write};

pub struct Progress {
    label: String,
    total: usize,
    enabled: bool,
    last_drawn: usize,
}

impl Progress {
    pub fn new(label: &str, total: usize) -> Self {
        Progress {
            label: label.to_string(),
            total,
            enabled: std::io::stderr().is_terminal() && total > 0,
            last_drawn: usize::MAX,
        }
    }

    pub fn set(&mut self, done: usize) {
        if !self.enabled {
            return;
        }
        let width = 30;
        let filled = (done * width / self.total.max(1)).min(width);
        if filled == self.last_drawn && done != self.total {
            return;
        }
        self.last_drawn = filled;
        let mut e = std::io::stderr();
        let _ = write!(
            e,
            "\r{} [{}{}] {}/{}",
            self.label,
            "#".repeat(filled),
            " ".repeat(width - filled),
            done,
            self.total
        );
        if done >= self.total {
            let _ = writeln!(e);
        }
        let _ = e.flush();
    }
}
