//! A small progress bar on stderr for long work (redrawn in place on a terminal, one line per
//! tenth of the work otherwise, so CI logs stay short).

use std::io::{IsTerminal, Write};
use std::time::Instant;

pub struct Progress {
    what: String,
    total: usize,
    start: Instant,
    last_draw: Option<Instant>,
    last_tenth: usize,
    tty: bool,
}

impl Progress {
    pub fn new(what: impl Into<String>, total: usize) -> Self {
        Progress {
            what: what.into(),
            total,
            start: Instant::now(),
            last_draw: None,
            last_tenth: 0,
            tty: std::io::stderr().is_terminal(),
        }
    }

    pub fn update(&mut self, done: usize, note: &str) {
        let elapsed = self.start.elapsed().as_secs_f64();
        let rate = done as f64 / elapsed.max(1e-9);
        let eta = if done > 0 {
            (self.total.saturating_sub(done)) as f64 / rate
        } else {
            f64::NAN
        };
        let tenth = done * 10 / self.total.max(1);
        let finished = done >= self.total;
        if self.tty {
            if !finished
                && self
                    .last_draw
                    .is_some_and(|t| t.elapsed().as_millis() < 200)
            {
                return;
            }
            self.last_draw = Some(Instant::now());
            let width = 30;
            let filled = (done * width / self.total.max(1)).min(width);
            eprint!(
                "\r{} [{}{}] {done}/{} {rate:.1}/s ETA {} {note}   ",
                self.what,
                "#".repeat(filled),
                ".".repeat(width - filled),
                self.total,
                fmt_secs(eta)
            );
            if finished {
                eprintln!();
            }
        } else if tenth > self.last_tenth || finished {
            self.last_tenth = tenth;
            eprintln!(
                "{}: {done}/{} ({rate:.1}/s, {} left) {note}",
                self.what,
                self.total,
                fmt_secs(eta)
            );
        }
        let _ = std::io::stderr().flush();
    }
}

fn fmt_secs(s: f64) -> String {
    if !s.is_finite() {
        "?".into()
    } else if s >= 60.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!("{s:.0}s")
    }
}
