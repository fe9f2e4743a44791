//! MiniLM's safetensors into burn tensors, against PyPI's `safetensors`
//! (tests/reference/safetensors_minilm.json, made by scripts/make-references.py).

mod common;

use burn::tensor::Device;
use webguard::weights::safetensors::SafetensorsFile;

#[test]
fn every_tensor_matches_python_safetensors() {
    let bytes = common::read_model(&format!("{}/model.safetensors", webguard::MINILM_DIR));
    let file = SafetensorsFile::parse(&bytes).unwrap();
    let reference = common::reference("safetensors_minilm.json");
    let expected = reference.as_array().unwrap();
    let names: Vec<&str> = expected
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(file.names(), names);
    for exp in expected {
        let name = exp["name"].as_str().unwrap();
        if exp["dtype"] == "int64" {
            // position_ids: not a weight; asking for it as floats is a clear error.
            let err = file.f32_values(name).unwrap_err().to_string();
            assert!(err.contains("I64"), "{err}");
            assert_eq!(file.shape(name).unwrap(), [1, 512]);
            continue;
        }
        let (values, shape) = file.f32_values(name).unwrap();
        let exp_shape: Vec<usize> = serde_json::from_value(exp["shape"].clone()).unwrap();
        assert_eq!(shape, exp_shape, "{name}");
        for (i, v) in exp["indices"]
            .as_array()
            .unwrap()
            .iter()
            .zip(exp["values"].as_array().unwrap())
        {
            assert_eq!(
                values[i.as_u64().unwrap() as usize],
                v.as_f64().unwrap() as f32,
                "{name}[{i}]"
            );
        }
        let sum: f64 = values.iter().map(|&v| f64::from(v)).sum();
        let want = exp["sum"].as_f64().unwrap();
        assert!(
            (sum - want).abs() <= 1e-9 * want.abs().max(1.0),
            "{name}: sum {sum} vs {want}"
        );
    }
}

#[test]
fn tensors_reach_burn_with_checked_shapes() {
    let bytes = common::read_model(&format!("{}/model.safetensors", webguard::MINILM_DIR));
    let file = SafetensorsFile::parse(&bytes).unwrap();
    let device = Device::flex();
    let name = "embeddings.word_embeddings.weight";
    let t = file.tensor::<2>(name, [30522, 384], &device).unwrap();
    let (values, _) = file.f32_values(name).unwrap();
    let row = t
        .slice([101..102, 0..384])
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    assert_eq!(row, values[101 * 384..102 * 384]);
    let err = file
        .tensor::<2>(name, [384, 30522], &device)
        .unwrap_err()
        .to_string();
    assert!(err.contains("shape"), "{err}");
    assert!(file.tensor::<1>("no.such.tensor", [1], &device).is_err());
}

#[test]
fn malformed_safetensors_are_errors() {
    for bad in [
        &b""[..],
        b"\x08\x00\x00\x00\x00\x00\x00\x00{}",
        b"\xff\xff\xff\xff\xff\xff\xff\xff{}",
    ] {
        assert!(SafetensorsFile::parse(bad).is_err());
    }
    let bytes = common::read_model(&format!("{}/model.safetensors", webguard::MINILM_DIR));
    assert!(
        SafetensorsFile::parse(&bytes[..bytes.len() - 1]).is_err(),
        "truncated file"
    );
}

/// A file with a NaN or an infinity in a tensor, in each float type: refused by name (one NaN
/// weight makes every score NaN).
#[test]
fn tensors_with_values_that_are_not_finite_are_refused() {
    use safetensors::{Dtype, tensor::TensorView};
    let cases: [(Dtype, Vec<u8>); 4] = [
        (
            Dtype::F32,
            [1.0f32, f32::NAN]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        (
            Dtype::F32,
            [f32::INFINITY, 1.0]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        (
            Dtype::F16,
            [0x3c00u16, 0x7e00]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        (
            Dtype::BF16,
            [0x3f80u16, 0xff80]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
    ];
    for (dtype, data) in cases {
        let view = TensorView::new(dtype, vec![2], &data).unwrap();
        let bytes = safetensors::serialize([("w", view)], None).unwrap();
        let file = SafetensorsFile::parse(&bytes).unwrap();
        let err = file.f32_values("w").unwrap_err().to_string();
        assert!(
            err.contains("\"w\" holds a value that is not finite"),
            "{dtype:?}: {err}"
        );
    }
    // The same file with finite values reads.
    let data: Vec<u8> = [1.0f32, -2.5]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let view = TensorView::new(Dtype::F32, vec![2], &data).unwrap();
    let bytes = safetensors::serialize([("w", view)], None).unwrap();
    let (values, _) = SafetensorsFile::parse(&bytes)
        .unwrap()
        .f32_values("w")
        .unwrap();
    assert_eq!(values, [1.0, -2.5]);
}
