//! The paths an x86-64 CPU without AVX-512 takes, run end to end on whatever CPU runs the
//! tests: [`limit_to_avx2`] keeps this process off AVX-512 (it is process-wide, hence a test
//! file of its own), and the chat model then answers the reference prompts through the AVX2
//! integer products and tiles with the same bounds as the default path in
//! tests/llama_reference.rs. On a CPU with AVX-512 (the machines these tests were written on),
//! the other test files only ever run the AVX-512 kernels end to end.

mod common;
mod llama_runs;

use llama_runs::agreement;
use webguard::models::packed::Precision;
use webguard::models::qdot::{Isa, limit_to_avx2};

/// Limits the process, then says which path the products take: AVX2 on any x86-64 CPU that
/// has it, never AVX-512.
fn on_avx2() -> Isa {
    limit_to_avx2();
    let isa = Isa::best();
    assert_ne!(isa, Isa::Avx512Vnni, "the limit must hold");
    eprintln!("integer products on {isa:?}");
    isa
}

#[test]
fn int16_products_on_avx2_give_the_exact_model_s_answers() {
    on_avx2();
    llama_runs::assert_int16_agrees(&agreement(Precision::Int16));
}

#[test]
fn int8_products_on_avx2_mostly_pick_the_exact_model_s_next_token() {
    on_avx2();
    llama_runs::assert_int8_agrees(&agreement(Precision::Int8));
}
