//! What the commands have in common: reading input files (with a hint when a model is missing),
//! texts from the arguments or stdin, the process's memory (allocator tuning, peak resident
//! size) and a progress bar on stderr.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Instant;

use webguard::weights::mapped::MappedFile;
use webguard::{Error, Result};

/// Reads a whole file; a missing one is most often a model not fetched yet, so say how.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| model_file_error(path, e))
}

/// A model file mapped into memory (its pages are read as used; see `weights::mapped`).
pub fn map(path: &Path) -> Result<MappedFile> {
    MappedFile::open(path).map_err(|e| model_file_error(path, e))
}

fn model_file_error(path: &Path, e: std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::NotFound => Error::Io {
            path: path.display().to_string(),
            message: "not found (scripts/fetch-models.sh fetches the models; --models or $WEBGUARD_MODELS points elsewhere)".into(),
        },
        _ => Error::io(path, e),
    }
}

/// Lines of JSON objects, with the line number of a malformed one.
pub fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path, shape: &str) -> Result<Vec<T>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| {
                Error::InvalidInput(format!(
                    "{}:{}: expected {shape}: {e}",
                    path.display(),
                    i + 1
                ))
            })
        })
        .collect()
}

/// An error naming the first of a labelled file's lines (`lines`: each one's id and label, in
/// order; `what`: "prompt" or "answer") whose label is neither "safe" nor "unsafe".
pub fn check_safe_or_unsafe<'a>(
    path: &Path,
    what: &str,
    lines: impl IntoIterator<Item = (&'a serde_json::Value, &'a str)>,
) -> Result<()> {
    let bad = (lines.into_iter().enumerate()).find(|(_, (_, l))| *l != "safe" && *l != "unsafe");
    match bad {
        Some((i, (id, label))) => Err(Error::InvalidInput(format!(
            "{}: {what} {id} (line {}) has label {label:?}; use \"safe\" or \"unsafe\"",
            path.display(),
            i + 1
        ))),
        None => Ok(()),
    }
}

/// The texts given as arguments, or each line of stdin when there are none.
pub fn texts_or_stdin(texts: Vec<String>) -> Vec<String> {
    if texts.is_empty() {
        std::io::stdin()
            .lines()
            .map_while(std::io::Result::ok)
            .collect()
    } else {
        texts
    }
}

/// glibc gives large freed blocks back to the kernel (munmap, or trimming the heap) and the
/// next allocation of the same size faults every page in again; the models allocate and free
/// buffers of several MB per layer, which made page faults ~15% of the filter's time on the
/// CPU backend. Raise both thresholds so freed buffers are reused (the most glibc allows for
/// mmap: 32 MiB).
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
    }
}

/// Hands back the resident pages of this executable's read-only mappings (machine code, and
/// the segment of ELF headers, relocation tables and constants), for callers that have just
/// loaded a model: most of what they hold is code and tables used only while starting and
/// loading (the dynamic loader's 4.5 MB relocation table, argument parsing, GGUF parsing, the
/// tokenizer's construction, packing). Pages used again fault back in from the file (the
/// executable cannot be rewritten while it runs): 7-8 MB off the chat's peak resident memory
/// (notes/issue-15-kernels.md), at the cost of a few hundred page faults on the first
/// tokens. As with the model file's pages (`weights::mapped`), the kernel keeps them in its page
/// cache; this lowers the process's resident set, not the machine's cached files.
///
/// Only private file mappings of the executable that are not writable and hold no anonymous
/// (copied-on-write) pages: the relocated read-only data (RELRO, `r--p` after the loader's
/// `mprotect`) holds such copies, and dropping them would bring back unrelocated bytes.
pub fn release_startup_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let (Ok(exe), Ok(smaps)) = (
            std::fs::read_link("/proc/self/exe"),
            std::fs::read_to_string("/proc/self/smaps"),
        ) else {
            return;
        };
        let exe = exe.to_string_lossy();
        // A mapping's header line ("start-end perms offset dev inode path"), then its fields.
        let mut candidate: Option<(usize, usize)> = None;
        let release = |range: Option<(usize, usize)>| {
            if let Some((start, end)) = range {
                // SAFETY: `start..end` is a whole mapping of this executable, read-only (no
                // thread can write it), private and without anonymous pages: dropping its
                // page-table entries only makes later reads fault the same bytes in again.
                unsafe {
                    libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
                }
            }
        };
        for line in smaps.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if let [range, perms, offset, _dev, _inode, path @ ..] = fields.as_slice()
                && range.contains('-')
                && perms.len() == 4
            {
                candidate = None;
                let read_only = matches!(*perms, "r-xp" | "r--p");
                if read_only
                    && path.join(" ") == exe
                    && (*perms == "r-xp" || offset.chars().all(|c| c == '0'))
                    && let Some((a, b)) = range.split_once('-')
                    && let (Ok(a), Ok(b)) =
                        (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                {
                    candidate = Some((a, b));
                }
            } else if let ["Anonymous:", kb, "kB"] = fields.as_slice() {
                if *kb == "0" {
                    release(candidate.take());
                }
                candidate = None;
            }
        }
    }
}

/// Peak resident memory of this process (Linux), in MB.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// A small progress bar on stderr for long work (redrawn in place on a terminal, one line per
/// tenth of the work otherwise, so CI logs stay short).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_other_than_safe_or_unsafe_is_an_error_naming_its_line() {
        let path = Path::new("prompts.jsonl");
        let (a, b) = (serde_json::json!("a"), serde_json::json!(7));
        assert!(check_safe_or_unsafe(path, "prompt", [(&a, "safe"), (&b, "unsafe")]).is_ok());
        let err = check_safe_or_unsafe(path, "answer", [(&a, "safe"), (&b, "Unsafe")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("prompts.jsonl: answer 7 (line 2)"), "{err}");
        assert!(err.contains("\"Unsafe\""), "{err}");
    }
}
