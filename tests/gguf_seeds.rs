//! Small GGUF files written by PyPI's `gguf` (fuzz/seeds, made by scripts/make-fuzz-seeds.py):
//! every metadata value type, nested arrays, and F32/F16/Q8_0/Q4_1 tensors, read back here as
//! the known values that script wrote: the F32 and F16 tensors exactly, the Q8_0 and Q4_1 ones
//! as PyPI `gguf` dequantises them (each its own values; they differ by quantisation), and each
//! within its format's rounding of the values that were quantised.
//!
//! The constants below: `numpy.random.default_rng(1)` drawn as the script draws them, and
//! `gguf.quants.dequantize` of the file's `q8_0` and `q4_1` blocks (gguf 0.x, numpy 2.3).

use webguard::weights::{Array, GgmlType, Gguf, Value, ValueType};

fn seed(name: &str) -> Vec<u8> {
    std::fs::read(webguard::source_checkout().join("fuzz/seeds").join(name)).unwrap()
}

/// `f32`: the 3 x 4 values the script wrote, exactly.
#[rustfmt::skip]
const F32: [f32; 12] = [
    -0.8407216, -0.5060255, -0.34811747, 0.5320021, -0.40530238, 0.27788284,
    -0.17653325, -0.84467113, -0.31982625, -0.95039964, 0.006514986, -1.1238662,
];

/// `f16`: the 2 x 8 half-precision values the script wrote, as f32 (exact).
#[rustfmt::skip]
const F16: [f32; 16] = [
    -1.0927734, 1.4570312, -0.05319214, -0.053894043, 0.51171875, -0.42089844, -0.22851562, 0.42504883,
    0.2824707, -1.1591797, 0.8334961, -0.59033203, -1.0556641, -0.9003906, -0.390625, 1.6269531,
];

/// The 2 x 64 values that were quantised to `q8_0` and `q4_1`.
#[rustfmt::skip]
const ORIGINAL: [f32; 128] = [
    0.34558418, 0.82161814, 0.33043706, -1.3031572, 0.9053559, 0.44637457, -0.5369532, 0.5811181,
    0.3645724, 0.2941325, 0.028422242, 0.546713, -0.73645407, -0.16290995, -0.48211932, 0.5988462,
    0.039722107, -0.29245675, -0.78190845, -0.25719225, 0.008142181, -0.2756029, 1.2940638, 1.0067244,
    -2.7111626, -1.8890133, -0.1747721, -0.4221904, 0.213643, 0.21732193, 2.1178389, -1.1120207,
    -0.37760502, 2.0427716, 0.646703, 0.66306335, -0.5140064, -1.6480752, 0.16746475, 0.10901409,
    -1.227352, -0.68322664, -0.07204368, -0.9447516, -0.09826997, 0.09548303, 0.035586238, -0.5062917,
    0.5937481, 0.8911669, 0.32084832, -0.8182302, 0.73165226, -0.50144005, 0.87916064, -1.0717874,
    0.9144672, -0.020063454, -1.2487489, -0.31389946, 0.05410228, 0.27279133, -0.9821881, -1.107373,
    0.19958453, -0.4667496, 0.23550561, 0.7595195, -1.6487874, 0.25438812, 1.2246469, -0.29752684,
    -0.81081456, 0.7522438, 0.25344652, 0.8958831, -0.3452157, -1.4818183, -0.110010765, -0.44582814,
    0.7753238, 0.19363284, -1.6308492, -1.1951631, 0.88378906, 0.67976505, -0.64024335, -0.0010487966,
    0.44557357, 0.46840432, 0.8762422, 0.25648564, -0.09482834, -0.25884807, 1.0557429, -2.2508543,
    -0.13865532, 0.033000104, -1.425349, 0.33281362, -0.651281, 0.8624448, -0.12559208, 0.6691532,
    1.2188436, 0.3829296, -0.87572116, -1.5143186, 1.7533841, -0.11129219, -0.68856496, 0.14425708,
    -0.19141133, 0.8521423, 0.033928182, 0.013749584, -0.7145797, 0.4695681, -1.0338668, 0.66588944,
    1.5239375, -1.524686, -2.4662292, 0.61687875, 2.5478978, -1.0009248, -1.2506957, 0.58896893,
];

/// `q8_0` as PyPI `gguf` dequantises it (`gguf.quants.dequantize`).
#[rustfmt::skip]
const Q8_0: [f32; 128] = [
    0.34155273, 0.81118774, 0.3202057, -1.3021698, 0.8965759, 0.44828796, -0.53367615, 0.57637024,
    0.36289978, 0.29885864, 0.021347046, 0.5550232, -0.72579956, -0.17077637, -0.49098206, 0.5977173,
    0.04269409, -0.29885864, -0.7898407, -0.25616455, 0.0, -0.2775116, 1.3021698, 1.0033112,
    -2.7110748, -1.87854, -0.17077637, -0.42694092, 0.21347046, 0.21347046, 2.1133575, -1.1100464,
    -0.36990356, 2.042511, 0.64331055, 0.6593933, -0.51464844, -1.6404419, 0.16082764, 0.112579346,
    -1.22229, -0.6754761, -0.064331055, -0.94888306, -0.09649658, 0.09649658, 0.032165527, -0.49856567,
    0.59506226, 0.884552, 0.32165527, -0.82022095, 0.72372437, -0.49856567, 0.884552, -1.0775452,
    0.9167175, -0.016082764, -1.2544556, -0.32165527, 0.04824829, 0.27340698, -0.9810486, -1.1097107,
    0.19503784, -0.46099854, 0.23049927, 0.76242065, -1.6489563, 0.24822998, 1.2234192, -0.30142212,
    -0.8156128, 0.74468994, 0.24822998, 0.90426636, -0.33688354, -1.4893799, -0.10638428, -0.44326782,
    0.78015137, 0.19503784, -1.6312256, -1.1879578, 0.88653564, 0.6737671, -0.63830566, 0.0,
    0.44326782, 0.46099854, 0.86880493, 0.24822998, -0.088653564, -0.2659607, 1.0638428, -2.2518005,
    -0.14045715, 0.040130615, -1.4246368, 0.34111023, -0.64208984, 0.8628082, -0.120391846, 0.66215515,
    1.2239838, 0.38124084, -0.88287354, -1.5048981, 1.7456818, -0.120391846, -0.68222046, 0.14045715,
    -0.20065308, 0.8427429, 0.040130615, 0.020065308, -0.7223511, 0.46150208, -1.043396, 0.66215515,
    1.5249634, -1.5249634, -2.4680328, 0.62202454, 2.548294, -1.0032654, -1.2440491, 0.5818939,
];

/// `q4_1` as PyPI `gguf` dequantises it.
#[rustfmt::skip]
const Q4_1: [f32; 128] = [
    0.18725586, 0.8312988, 0.18725586, -1.4228516, 0.8312988, 0.50927734, -0.4567871, 0.50927734,
    0.50927734, 0.18725586, 0.18725586, 0.50927734, -0.7788086, -0.13476562, -0.4567871, 0.50927734,
    0.18725586, -0.13476562, -0.7788086, -0.13476562, -0.13476562, -0.13476562, 1.1533203, 1.1533203,
    -2.7109375, -1.744873, -0.13476562, -0.4567871, 0.18725586, 0.18725586, 2.1193848, -1.1008301,
    -0.41796875, 2.0429688, 0.56640625, 0.56640625, -0.41796875, -1.6484375, 0.07421875, 0.07421875,
    -1.15625, -0.6640625, -0.171875, -0.91015625, -0.171875, 0.07421875, 0.07421875, -0.41796875,
    0.56640625, 0.8125, 0.3203125, -0.91015625, 0.8125, -0.41796875, 0.8125, -1.15625,
    0.8125, 0.07421875, -1.15625, -0.41796875, 0.07421875, 0.3203125, -0.91015625, -1.15625,
    0.29858398, -0.39648438, 0.29858398, 0.7619629, -1.5549316, 0.29858398, 1.2253418, -0.39648438,
    -0.8598633, 0.7619629, 0.29858398, 0.99365234, -0.39648438, -1.5549316, -0.16479492, -0.39648438,
    0.7619629, 0.29858398, -1.5549316, -1.0915527, 0.99365234, 0.7619629, -0.6281738, 0.06689453,
    0.53027344, 0.53027344, 0.7619629, 0.29858398, -0.16479492, -0.16479492, 0.99365234, -2.25,
    -0.12719727, -0.12719727, -1.4641113, 0.20703125, -0.7956543, 0.8754883, -0.12719727, 0.54125977,
    1.2097168, 0.54125977, -0.7956543, -1.4641113, 1.8781738, -0.12719727, -0.7956543, 0.20703125,
    -0.12719727, 0.8754883, -0.12719727, -0.12719727, -0.7956543, 0.54125977, -1.1298828, 0.54125977,
    1.5439453, -1.4641113, -2.4667969, 0.54125977, 2.5466309, -1.1298828, -1.1298828, 0.54125977,
];

/// Largest difference between two equally long slices.
fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
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
    assert_eq!(g.dequantize("f32").unwrap(), F32);
    assert_eq!(g.dequantize("f16").unwrap(), F16);
    // Quantised: each equals its own dequantisation by PyPI `gguf` (float rounding only) ...
    let q8 = g.dequantize("q8_0").unwrap();
    let q4 = g.dequantize("q4_1").unwrap();
    assert!(
        max_diff(&q8, &Q8_0) <= 1e-6,
        "Q8_0: {}",
        max_diff(&q8, &Q8_0)
    );
    assert!(
        max_diff(&q4, &Q4_1) <= 1e-6,
        "Q4_1: {}",
        max_diff(&q4, &Q4_1)
    );
    // ... and is within its format's rounding of the values quantised: per block of 32, half a
    // step (Q8_0: max |x| / 127; Q4_1: (max - min) / 15), plus the f16 rounding of the scale.
    for (block, original) in ORIGINAL.chunks(32).enumerate() {
        let range = |f: fn(f32, f32) -> f32, init| original.iter().copied().fold(init, f);
        let (lo, hi) = (
            range(f32::min, f32::INFINITY),
            range(f32::max, f32::NEG_INFINITY),
        );
        let q8_step = lo.abs().max(hi.abs()) / 127.0;
        let q4_step = (hi - lo) / 15.0;
        let at = block * 32..block * 32 + 32;
        let (d8, d4) = (
            max_diff(&q8[at.clone()], original),
            max_diff(&q4[at], original),
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
