//! Progress on stderr: a bar redrawn in place when stderr is a terminal;
//! otherwise (logs, CI, a device machine's captured output) one plain line
//! every few seconds once the work has run for two, so long work shows that
//! it moves without filling a log with redraws.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// When stderr is not a terminal: nothing for work shorter than this...
const QUIET_FOR: Duration = Duration::from_secs(2);
/// ...then a line at most this often.
const LINE_EVERY: Duration = Duration::from_secs(5);

enum Mode {
    Bar { last_drawn: usize },
    Lines { last_line: Option<Instant> },
    Off,
}

pub struct Progress {
    label: String,
    total: usize,
    started: Instant,
    mode: Mode,
}

impl Progress {
    pub fn new(label: &str, total: usize) -> Self {
        let mode = match (total > 0, std::io::stderr().is_terminal()) {
            (false, _) => Mode::Off,
            (true, true) => Mode::Bar {
                last_drawn: usize::MAX,
            },
            (true, false) => Mode::Lines { last_line: None },
        };
        Progress {
            label: label.to_string(),
            total,
            started: Instant::now(),
            mode,
        }
    }

    pub fn set(&mut self, done: usize) {
        let now = Instant::now();
        let mut e = std::io::stderr();
        match &mut self.mode {
            Mode::Off => {}
            Mode::Bar { last_drawn } => {
                let width = 30;
                let filled = (done * width / self.total.max(1)).min(width);
                if filled == *last_drawn && done != self.total {
                    return;
                }
                *last_drawn = filled;
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
            Mode::Lines { last_line } => {
                let elapsed = now - self.started;
                let due = last_line.is_none_or(|t| now - t >= LINE_EVERY);
                let finished_long = done >= self.total && last_line.is_some();
                if elapsed >= QUIET_FOR && (due || finished_long) {
                    *last_line = Some(now);
                    let _ = writeln!(
                        e,
                        "{}: {}/{} ({:.0} s)",
                        self.label,
                        done.min(self.total),
                        self.total,
                        elapsed.as_secs_f64()
                    );
                }
            }
        }
    }
}
