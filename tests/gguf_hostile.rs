//! The GGUF reader on broken versions of the real SmolLM2 file: truncated in every section,
//! with counts, lengths, types and offsets overwritten, and with random byte mutations; and on
//! files built to make it allocate as much as possible per byte (tiny metadata entries, long
//! arrays of every element type, empty strings, empty nested arrays, many tensors).
//! Every case must give a typed error (or, for harmless mutations, a valid parse), never a
//! panic, and the parser's peak heap use, measured by a counting allocator, must stay within
//! `PEAK_MEMORY_FACTOR` times the file's length (plus `PEAK_MEMORY_SLACK` bytes).

mod common;

use webguard::weights::{Gguf, GgufError};

/// The fuzz target's counting allocator (per-thread live and peak heap bytes).
#[path = "../fuzz/src/alloc.rs"]
mod counting;
use counting::{Counting, peak_since, reset_peak};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What the bound allows for `len` bytes of file.
fn allowed(len: usize) -> usize {
    webguard::weights::gguf::PEAK_MEMORY_FACTOR * len + webguard::weights::gguf::PEAK_MEMORY_SLACK
}

/// [`Gguf::parse`] (and dropping what it returned), checking the heap it used at its peak.
fn parse(bytes: &[u8]) -> Result<(), GgufError> {
    parse_peak(bytes).0
}

/// [`parse`], and the peak.
fn parse_peak(bytes: &[u8]) -> (Result<(), GgufError>, usize) {
    let start = reset_peak();
    let result = Gguf::parse(bytes).map(drop);
    let peak = peak_since(start);
    assert!(
        peak <= allowed(bytes.len()),
        "parsing {} bytes used {peak} bytes of heap at its peak ({:.1} x the file; at most {} \
         allowed); result {result:?}",
        bytes.len(),
        peak as f64 / bytes.len().max(1) as f64,
        allowed(bytes.len())
    );
    (result, peak)
}

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The errors a file cut short may give.
fn cut_short(err: &GgufError) -> bool {
    use GgufError::{BadTensorOffset, ImplausibleLength, Truncated};
    matches!(
        err,
        Truncated { .. } | ImplausibleLength { .. } | BadTensorOffset { .. }
    )
}

#[test]
fn truncated_in_every_section() {
    let bytes = common::read_model(webguard::SMOLLM2_GGUF);
    parse(&bytes).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    let data = g.data_offset as usize;
    let last = g
        .tensors
        .iter()
        .map(|t| t.offset + t.n_bytes)
        .max()
        .unwrap() as usize
        + data;
    // Header, across the metadata (dozens of points), the tensor table, the data.
    let mut cuts: Vec<usize> = (0..24).collect();
    cuts.extend((1..60).map(|i| i * (data / 60)));
    cuts.extend([data - 1, data, data + 1, last / 2, last - 1]);
    for cut in cuts {
        let err = parse(&bytes[..cut]).expect_err("truncated file parsed");
        assert!(cut_short(&err), "cut at {cut}: {err}");
    }
}

#[test]
fn overwritten_fields() {
    let bytes = common::read_model(webguard::SMOLLM2_GGUF);
    let with = |at: usize, patch: &[u8]| {
        let mut b = bytes.clone();
        b[at..at + patch.len()].copy_from_slice(patch);
        parse(&b)
    };
    assert!(matches!(with(0, b"GGML"), Err(GgufError::BadMagic(_))));
    assert!(matches!(
        with(4, &9u32.to_le_bytes()),
        Err(GgufError::UnsupportedVersion(9))
    ));
    assert!(matches!(
        with(8, &u64::MAX.to_le_bytes()),
        Err(GgufError::ImplausibleLength { .. })
    ));
    assert!(matches!(
        with(16, &(1u64 << 50).to_le_bytes()),
        Err(GgufError::ImplausibleLength { .. })
    ));
    // The first key's length, then its value type.
    assert!(matches!(
        with(24, &(1u64 << 62).to_le_bytes()),
        Err(GgufError::ImplausibleLength { .. })
    ));
    let key_len = u64::from_le_bytes(bytes[24..32].try_into().unwrap()) as usize;
    assert!(matches!(
        with(32 + key_len, &77u32.to_le_bytes()),
        Err(GgufError::UnknownValueType { type_id: 77, .. })
    ));
    // The last tensor's type id and offset are the last 12 bytes of the tensor table.
    let g = Gguf::parse(&bytes).unwrap();
    let last = g.tensors.last().unwrap();
    let table_end = {
        // Walk back from the data section over the padding: the offset field ends the table.
        let mut end = g.data_offset as usize;
        while u64::from_le_bytes(bytes[end - 8..end].try_into().unwrap()) != last.offset {
            end -= 1;
        }
        end
    };
    assert!(matches!(
        with(table_end - 12, &999u32.to_le_bytes()),
        Err(GgufError::UnknownTensorType { type_id: 999, .. })
    ));
    assert!(matches!(
        with(
            table_end - 8,
            &(bytes.len() as u64).next_multiple_of(32).to_le_bytes()
        ),
        Err(GgufError::BadTensorOffset { .. })
    ));
    assert!(matches!(
        with(table_end - 8, &(last.offset + 1).to_le_bytes()),
        Err(GgufError::BadTensorOffset { .. })
    ));
}

#[test]
fn random_mutations_never_panic() {
    let bytes = common::read_model(webguard::SMOLLM2_GGUF);
    let g = Gguf::parse(&bytes).unwrap();
    // The header and metadata prefix plus the first tensor infos is where parsing decisions are.
    let hot = g.data_offset as usize;
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let mut errors = 0;
    for _ in 0..300 {
        let mut b = bytes[..hot + 64].to_vec();
        for _ in 0..1 + rng.below(4) {
            let at = if rng.below(2) == 0 {
                rng.below(64)
            } else {
                rng.below(b.len())
            };
            b[at] = rng.next() as u8;
        }
        let cut = if rng.below(4) == 0 {
            rng.below(b.len())
        } else {
            b.len()
        };
        if parse(&b[..cut]).is_err() {
            errors += 1;
        }
    }
    assert!(errors > 0);
}

/// GGUF bytes written by hand.
struct Builder(Vec<u8>);

impl Builder {
    fn new(tensors: u64, kvs: u64) -> Self {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend(tensors.to_le_bytes());
        out.extend(kvs.to_le_bytes());
        Builder(out)
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend(v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend(v.to_le_bytes());
        self
    }
    fn string(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64);
        self.0.extend(s.as_bytes());
        self
    }
    fn bytes(&mut self, n: usize, byte: u8) -> &mut Self {
        self.0.extend(std::iter::repeat_n(byte, n));
        self
    }
}

/// A distinct short name for `i`.
fn name(i: usize) -> String {
    format!("{i:x}")
}

/// Files that make the parser allocate the most per byte of file, each valid.
fn greedy_files() -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let n = 20_000;
    // Nothing but tiny metadata entries: a u8 under a short key.
    let mut b = Builder::new(0, n as u64);
    for i in 0..n {
        b.string(&name(i)).u32(0).0.push(1);
    }
    files.push(("tiny entries".into(), b.0));
    // Tiny string values.
    let mut b = Builder::new(0, n as u64);
    for i in 0..n {
        b.string(&name(i)).u32(8).string("x");
    }
    files.push(("tiny strings".into(), b.0));
    // One long array of each fixed-size element type (ids 0-7 and 10-12), 1 MB each.
    for (type_id, size, byte) in [
        (0u32, 1usize, 7u8),
        (1, 1, 7),
        (2, 2, 7),
        (3, 2, 7),
        (4, 4, 7),
        (5, 4, 7),
        (6, 4, 0),
        (7, 1, 1),
        (10, 8, 7),
        (11, 8, 7),
        (12, 8, 0),
    ] {
        let count = (1 << 20) / size;
        let mut b = Builder::new(0, 1);
        b.string("a")
            .u32(9)
            .u32(type_id)
            .u64(count as u64)
            .bytes(count * size, byte);
        files.push((format!("array of type {type_id}"), b.0));
    }
    // Arrays of empty and one-byte strings.
    for len in [0usize, 1] {
        let mut b = Builder::new(0, 1);
        b.string("s").u32(9).u32(8).u64(100_000);
        for _ in 0..100_000 {
            b.string(&"y".repeat(len));
        }
        files.push((format!("array of {len}-byte strings"), b.0));
    }
    // Arrays of empty arrays, and arrays of those.
    let mut b = Builder::new(0, 1);
    b.string("n").u32(9).u32(9).u64(50_000);
    for _ in 0..50_000 {
        b.u32(0).u64(0);
    }
    files.push(("array of empty arrays".into(), b.0));
    let mut b = Builder::new(0, 1);
    b.string("n").u32(9).u32(9).u64(10_000);
    for _ in 0..10_000 {
        b.u32(9).u64(1).u32(9).u64(1).u32(0).u64(0);
    }
    files.push(("arrays three deep".into(), b.0));
    // Many one-element tensors (they may share their data).
    let mut b = Builder::new(n as u64, 0);
    for i in 0..n {
        b.string(&name(i)).u32(1).u64(1).u32(0).u64(0);
    }
    while !b.0.len().is_multiple_of(32) {
        b.0.push(0);
    }
    b.bytes(32, 0);
    files.push(("many tensors".into(), b.0));
    files
}

#[test]
fn peak_memory_stays_within_a_small_multiple_of_the_file() {
    let mut worst = (0.0, String::new());
    for (what, bytes) in greedy_files() {
        let (result, peak) = parse_peak(&bytes);
        assert!(result.is_ok(), "{what}: {result:?}");
        // The counter sees what the parser keeps: at least the elements' own bytes.
        assert!(peak >= bytes.len() / 2, "{what}: only {peak} bytes counted");
        let ratio = peak as f64 / bytes.len() as f64;
        eprintln!(
            "{what}: {} bytes of file, peak {peak} bytes of heap ({ratio:.2} x)",
            bytes.len()
        );
        if ratio > worst.0 {
            worst = (ratio, what.clone());
        }
        // Cut anywhere, they stay within the bound too.
        for cut in [bytes.len() / 3, bytes.len() / 2, bytes.len() - 1] {
            let _ = parse(&bytes[..cut]);
        }
    }
    eprintln!("worst: {:.2} x the file ({})", worst.0, worst.1);
    // The real file: its metadata (49,152 tokens, 48,900 merges) is a small part of it.
    let bytes = common::read_model(webguard::SMOLLM2_GGUF);
    let start = reset_peak();
    let g = Gguf::parse(&bytes).unwrap();
    let peak = peak_since(start);
    let metadata_bytes = g.tensors.first().map(|_| g.data_offset as usize).unwrap();
    drop(g);
    assert!(
        peak <= allowed(metadata_bytes),
        "the real file's metadata and tensor table ({metadata_bytes} bytes) took {peak} bytes"
    );
}
