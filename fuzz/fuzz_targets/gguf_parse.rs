//! Fuzzes the GGUF reader: any bytes must parse or give a typed error, never panic, and never
//! allocate more than `PEAK_MEMORY_FACTOR` times their length at the parser's peak (measured
//! by a counting allocator); a parsed file's tensors must all be readable and dequantisable
//! without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use webguard_fuzz::weights::gguf::{self, PEAK_MEMORY_FACTOR, PEAK_MEMORY_SLACK};
use webguard_fuzz::{Counting, peak_since, reset_peak};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fuzz_target!(|data: &[u8]| {
    let start = reset_peak();
    let parsed = gguf::Gguf::parse(data);
    let peak = peak_since(start);
    assert!(
        peak <= PEAK_MEMORY_FACTOR * data.len() + PEAK_MEMORY_SLACK,
        "parsing {} bytes used {peak} bytes of heap",
        data.len()
    );
    if let Ok(g) = parsed {
        for (key, value) in &g.metadata {
            let _ = g.require_str(key);
            let _ = g.require_u64(key);
            let _ = g.require_strings(key);
            if let Some(a) = value.as_array() {
                assert_eq!(a.iter().count(), a.len());
                let _ = a.to_i64s();
            }
        }
        for t in &g.tensors {
            let bytes = g.tensor_bytes(t);
            assert_eq!(bytes.len() as u64, t.n_bytes);
            if let Ok(values) = g.dequantize(&t.name) {
                assert_eq!(values.len() as u64, t.n_elements);
            }
        }
    }
});
