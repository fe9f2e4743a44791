//! The GGUF reader against PyPI's `gguf` package (tests/reference/gguf_smollm2.json, made by
//! scripts/make-references.py): every metadata key and value, the tensor table, and
//! dequantised values of one tensor of each type in the file.

mod common;

use serde_json::Value as Json;
use sha2::{Digest, Sha256};
use webguard::weights::{Gguf, Value};

/// The canonical bytes `make-references.py` hashes (see its `canon()`).
fn canon(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Bool(b) => out.push(u8::from(*b)),
        Value::F32(v) => out.extend(f64::from(*v).to_le_bytes()),
        Value::F64(v) => out.extend(v.to_le_bytes()),
        Value::String(s) => {
            out.extend((s.len() as u64).to_le_bytes());
            out.extend(s.as_bytes());
        }
        Value::Array(items) => {
            out.push(b'[');
            out.extend((items.len() as u64).to_le_bytes());
            for item in items.iter() {
                canon(&item, out);
            }
            out.push(b']');
        }
        int => {
            let bits = int
                .as_i64()
                .map(|v| v as u64)
                .or_else(|| int.as_u64())
                .expect("integer");
            out.extend(bits.to_le_bytes());
        }
    }
}

fn to_json(value: &Value) -> Json {
    match value {
        Value::Bool(b) => Json::from(*b),
        Value::F32(v) => Json::from(f64::from(*v)),
        Value::F64(v) => Json::from(*v),
        Value::String(s) => Json::from(s.as_str()),
        Value::Array(items) => Json::Array(items.iter().map(|v| to_json(&v)).collect()),
        int => match int.as_i64() {
            Some(v) => Json::from(v),
            None => Json::from(int.as_u64().expect("integer")),
        },
    }
}

fn types(value: &Value) -> Vec<String> {
    match value {
        Value::Array(items) => vec!["ARRAY".into(), items.element_type().name().into()],
        other => vec![other.value_type().name().into()],
    }
}

#[test]
fn metadata_and_tensor_table_match_python_gguf() {
    let bytes = common::read_model(webguard::SMOLLM2_GGUF);
    let gguf = Gguf::parse(&bytes).expect("the real model parses");
    let reference = common::reference("gguf_smollm2.json");

    assert_eq!(
        u64::from(gguf.version),
        reference["version"].as_u64().unwrap()
    );
    assert_eq!(gguf.alignment, reference["alignment"].as_u64().unwrap());
    assert_eq!(gguf.data_offset, reference["data_offset"].as_u64().unwrap());

    let expected = reference["metadata"].as_array().unwrap();
    assert_eq!(
        gguf.metadata.len(),
        expected.len(),
        "number of metadata keys"
    );
    for ((key, value), exp) in gguf.metadata.iter().zip(expected) {
        assert_eq!(key, exp["key"].as_str().unwrap(), "keys in file order");
        let exp_types: Vec<String> = serde_json::from_value(exp["types"].clone()).unwrap();
        assert_eq!(types(value), exp_types, "type of {key}");
        if let Some(len) = exp.get("len") {
            let items = value.as_array().unwrap();
            assert_eq!(items.len() as u64, len.as_u64().unwrap(), "length of {key}");
            let mut buf = Vec::new();
            canon(value, &mut buf);
            assert_eq!(
                format!("{:x}", Sha256::digest(&buf)),
                exp["sha256"].as_str().unwrap(),
                "every element of {key}"
            );
            let head = exp["head"].as_array().unwrap();
            for (item, exp_item) in items.iter().zip(head) {
                assert_eq!(&to_json(&item), exp_item, "element of {key}");
            }
        } else {
            assert_eq!(to_json(value), exp["value"], "value of {key}");
        }
    }

    let expected = reference["tensors"].as_array().unwrap();
    assert_eq!(gguf.tensors.len(), expected.len());
    for (t, exp) in gguf.tensors.iter().zip(expected) {
        assert_eq!(t.name, exp["name"].as_str().unwrap());
        assert_eq!(
            t.ggml_type.to_string(),
            exp["type"].as_str().unwrap(),
            "{}",
            t.name
        );
        let dims: Vec<u64> = serde_json::from_value(exp["dims"].clone()).unwrap();
        assert_eq!(t.dims, dims, "{}", t.name);
        assert_eq!(
            t.n_elements,
            exp["n_elements"].as_u64().unwrap(),
            "{}",
            t.name
        );
        assert_eq!(
            gguf.data_offset + t.offset,
            exp["offset"].as_u64().unwrap(),
            "{}",
            t.name
        );
        assert_eq!(t.n_bytes, exp["n_bytes"].as_u64().unwrap(), "{}", t.name);
    }
}

#[test]
fn dequantisation_matches_python_gguf() {
    let bytes = common::read_model(webguard::SMOLLM2_GGUF);
    let gguf = Gguf::parse(&bytes).unwrap();
    let reference = common::reference("gguf_smollm2.json");
    let mut types_seen = Vec::new();
    for exp in reference["dequantized"].as_array().unwrap() {
        let name = exp["name"].as_str().unwrap();
        let values = gguf.dequantize(name).expect("dequantises");
        assert_eq!(
            values.len() as u64,
            gguf.tensor_info(name).unwrap().n_elements
        );
        let mut max_diff = 0f32;
        let indices = exp["indices"].as_array().unwrap();
        for (i, v) in indices.iter().zip(exp["values"].as_array().unwrap()) {
            let got = values[i.as_u64().unwrap() as usize];
            max_diff = max_diff.max((got - v.as_f64().unwrap() as f32).abs());
        }
        assert!(max_diff < 1e-6, "{name}: max abs diff {max_diff}");
        // Every element counts towards the sums, not only the sampled ones.
        let sum: f64 = values.iter().map(|&v| f64::from(v)).sum();
        let sum_abs: f64 = values.iter().map(|&v| f64::from(v).abs()).sum();
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
        assert!(
            close(sum, exp["sum"].as_f64().unwrap()),
            "{name}: sum {sum}"
        );
        assert!(
            close(sum_abs, exp["sum_abs"].as_f64().unwrap()),
            "{name}: sum|x| {sum_abs}"
        );
        types_seen.push(exp["type"].as_str().unwrap().to_string());
    }
    types_seen.sort();
    assert_eq!(types_seen, ["F32", "Q4_1", "Q8_0"]);
}
