//! Small GGUF files written by PyPI's `gguf` (fuzz/seeds, made by scripts/make-fuzz-seeds.py):
//! every metadata value type, nested arrays, and F32/F16/Q8_0/Q4_1 tensors, read back here as
//! the known values that script wrote: the F32 and F16 tensors exactly, the Q8_0 and Q4_1 ones
//! as PyPI `gguf` dequantises them (each its own values; they differ by quantisation), and each
//! within its format's rounding of the values that were quantised.
//!
//! The values they are checked against (`tests/data/gguf-seeds.json`):
//! `numpy.random.default_rng(1)` drawn as the script draws them, and `gguf.quants.dequantize`
//! of the file's `q8_0` and `q4_1` blocks (gguf 0.x, numpy 2.3).

mod common;

use webguard::weights::{Array, GgmlType, Gguf, Value, ValueType};

fn seed(name: &str) -> Vec<u8> {
    std::fs::read(webguard::source_checkout().join("fuzz/seeds").join(name)).unwrap()
}

/// Values from `tests/data/gguf-seeds.json`: `f32` (the 3 x 4 values the script wrote,
/// exactly), `f16` (its 2 x 8 half-precision values, as f32: exact), `original` (the 2 x 64
/// values that were quantised to `q8_0` and `q4_1`), `q8_0` and `q4_1` (as PyPI `gguf`
/// dequantises them, `gguf.quants.dequantize`).
fn values(name: &str) -> Vec<f32> {
    let path = webguard::source_checkout().join("tests/data/gguf-seeds.json");
    let all: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    serde_json::from_value(all[name].clone()).unwrap()
}

#[test]
fn every_value_type_round_trips_from_python_gguf() {
    let bytes = seed("all_types.gguf");
    let g = Gguf::parse(&bytes).unwrap();
    let v = |k: &str| g.get(k).unwrap_or_else(|| panic!("{k} missing")).clone();
    assert_eq!(v("t.u8"), Value::U8(7));
    assert_eq!(v("t.i8"), Value::I8(-7));
    assert_eq!(v("t.u16"), Value::U16(700));
    assert_eq!(v("t.i16"), Value::I16(-700));
    assert_eq!(v("t.u32"), Value::U32(70000));
    assert_eq!(v("t.i32"), Value::I32(-70000));
    assert_eq!(v("t.f32"), Value::F32(0.5));
    assert_eq!(v("t.u64"), Value::U64(1 << 40));
    assert_eq!(v("t.i64"), Value::I64(-(1 << 40)));
    assert_eq!(v("t.f64"), Value::F64(0.25));
    assert_eq!(v("t.bool"), Value::Bool(true));
    assert_eq!(v("t.str"), Value::String("héllo ✓".into()));
    assert_eq!(g.require_strings("t.arr").unwrap(), ["a", "bc", ""]);
    match v("t.nested").as_array() {
        Some(Array::Array(outer)) => {
            let inner: Vec<Vec<i64>> = outer.iter().map(|a| a.to_i64s().unwrap()).collect();
            assert_eq!(inner, vec![vec![1, 2], vec![3]]);
            assert!(outer.iter().all(|a| a.element_type() != ValueType::Array));
        }
        other => panic!("t.nested: {other:?}"),
    }
    let types: Vec<GgmlType> = g.tensors.iter().map(|t| t.ggml_type).collect();
    assert_eq!(
        types,
        [GgmlType::F32, GgmlType::F16, GgmlType::Q8_0, GgmlType::Q4_1]
    );
    for t in &g.tensors {
        assert_eq!(g.dequantize(&t.name).unwrap().len() as u64, t.n_elements);
    }
    let shapes: Vec<Vec<usize>> = g.tensors.iter().map(|t| t.shape()).collect();
    assert_eq!(shapes, [vec![3, 4], vec![2, 8], vec![2, 64], vec![2, 64]]);

    // Stored exactly: every value equal.
    assert_eq!(g.dequantize("f32").unwrap(), values("f32"));
    assert_eq!(g.dequantize("f16").unwrap(), values("f16"));
    // Quantised: each equals its own dequantisation by PyPI `gguf` (float rounding only) ...
    let q8 = g.dequantize("q8_0").unwrap();
    let q4 = g.dequantize("q4_1").unwrap();
    for (name, got) in [("q8_0", &q8), ("q4_1", &q4)] {
        let diff = common::max_diff(got, &values(name));
        assert!(diff <= 1e-6, "{name}: {diff}");
    }
    // ... and is within its format's rounding of the values quantised: per block of 32, half a
    // step (Q8_0: max |x| / 127; Q4_1: (max - min) / 15), plus the f16 rounding of the scale.
    for (block, original) in values("original").chunks(32).enumerate() {
        let range = |f: fn(f32, f32) -> f32, init| original.iter().copied().fold(init, f);
        let (lo, hi) = (
            range(f32::min, f32::INFINITY),
            range(f32::max, f32::NEG_INFINITY),
        );
        let q8_step = lo.abs().max(hi.abs()) / 127.0;
        let q4_step = (hi - lo) / 15.0;
        let at = block * 32..block * 32 + 32;
        let (d8, d4) = (
            common::max_diff(&q8[at.clone()], original),
            common::max_diff(&q4[at], original),
        );
        assert!(
            d8 <= q8_step * 0.51 + 1e-3 * q8_step * 127.0,
            "Q8_0 block {block}: {d8} (step {q8_step})"
        );
        assert!(
            d4 <= q4_step * 0.51 + 1e-3 * q4_step * 15.0,
            "Q4_1 block {block}: {d4} (step {q4_step})"
        );
        assert!(
            d8 < d4,
            "Q8_0 is the finer of the two in block {block}: {d8} vs {d4}"
        );
    }
}

#[test]
fn other_seeds_parse() {
    assert!(
        Gguf::parse(&seed("metadata_only.gguf"))
            .unwrap()
            .tensors
            .is_empty()
    );
    let bytes = seed("one_tensor.gguf");
    let g = Gguf::parse(&bytes).unwrap();
    assert_eq!(
        g.dequantize("w").unwrap(),
        (0..8).map(|i| i as f32).collect::<Vec<_>>()
    );
}
