//! Small GGUF files written by PyPI's `gguf` (fuzz/seeds, made by scripts/make-fuzz-seeds.py):
//! every metadata value type, nested arrays, and F32/F16/Q8_0/Q4_1 tensors, read back here as
//! the known values that script wrote.

use webguard::weights::{GgmlType, Gguf, Value, ValueType};

fn seed(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/fuzz/seeds/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
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
    match v("t.nested") {
        Value::Array(ValueType::Array, outer) => {
            let inner: Vec<Vec<i64>> = outer
                .iter()
                .map(|a| {
                    a.as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_i64().unwrap())
                        .collect()
                })
                .collect();
            assert_eq!(inner, vec![vec![1, 2], vec![3]]);
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
    // The same values quantised two ways stay close to each other.
    let q8 = g.dequantize("q8_0").unwrap();
    let q4 = g.dequantize("q4_1").unwrap();
    let max_diff = q8
        .iter()
        .zip(&q4)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(max_diff < 0.5, "Q8_0 vs Q4_1 of the same data: {max_diff}");
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
