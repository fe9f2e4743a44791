//! Fuzzes the GGUF reader: any bytes must parse or give a typed error, never panic, and a
//! parsed file's tensors must all be readable and dequantisable without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;

// The parser's own source files, compiled here directly (`super::quant` in gguf.rs resolves to
// the crate root's `quant` below).
#[allow(dead_code)]
#[path = "../../src/weights/gguf.rs"]
mod gguf;
#[allow(dead_code)]
#[path = "../../src/weights/quant.rs"]
mod quant;

fuzz_target!(|data: &[u8]| {
    if let Ok(g) = gguf::Gguf::parse(data) {
        for (key, _) in &g.metadata {
            let _ = g.require_str(key);
            let _ = g.require_u64(key);
            let _ = g.require_strings(key);
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
