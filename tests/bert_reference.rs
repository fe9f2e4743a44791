//! The MiniLM encoder against sentence-transformers (PyTorch, CPU):
//! tests/reference/embeddings_minilm.json, made by scripts/make-embedding-reference.py.
//! Each embedding must have cosine similarity >= 0.9999 with the reference.

mod common;

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use webguard::backend::{Backend, BackendChoice};
use webguard::models::bert::{Bert, BertConfig, pad_batch};
use webguard::text::Tokenizer;

fn load(device: &Device) -> (Bert, Tokenizer) {
    let dir = webguard::MINILM_DIR;
    let config = BertConfig::from_json(&common::read_model(&format!("{dir}/config.json"))).unwrap();
    let weights = common::read_model(&format!("{dir}/model.safetensors"));
    let bert = Bert::load(&config, &weights, device).unwrap();
    let tok = Tokenizer::from_tokenizer_json(&common::read_model(&format!("{dir}/tokenizer.json")))
        .unwrap();
    (bert, tok)
}

fn cosine(a: &[f32], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * y).sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|y| y.powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn embeddings_match_sentence_transformers() {
    let reference = common::reference("embeddings_minilm.json");
    let sentences: Vec<String> = serde_json::from_value(reference["sentences"].clone()).unwrap();
    let want_ids: Vec<Vec<u32>> = serde_json::from_value(reference["token_ids"].clone()).unwrap();
    let want: Vec<Vec<f64>> = serde_json::from_value(reference["embeddings"].clone()).unwrap();
    assert!(sentences.len() >= 50);

    let device = Device::flex();
    let (bert, tok) = load(&device);
    let ids: Vec<Vec<u32>> = sentences.iter().map(|s| tok.encode(s).unwrap()).collect();
    assert_eq!(ids, want_ids, "token ids");

    // One padded batch: padding must not change any sentence's embedding.
    let (batch_ids, mask) = pad_batch(&ids, 0, &device);
    let got = bert
        .embed(batch_ids, mask)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    let mut worst = 1.0f64;
    for (i, w) in want.iter().enumerate() {
        let c = cosine(&got[i * 384..(i + 1) * 384], w);
        assert!(c >= 0.9999, "sentence {i} {:?}: cosine {c}", sentences[i]);
        worst = worst.min(c);
    }
    eprintln!("worst cosine over {} sentences: {worst:.7}", want.len());
}

/// The host loops (`hidden_states_on_host`) against burn's ops on the same weights, every
/// hidden state at every position (padding included), in each of their ways to split the
/// work: one sequence and a few (split inside each op over the pool) and many padded ones
/// (whole sequences per thread, when the pool has two or more threads).
#[test]
fn host_layers_equal_burns_ops() {
    let reference = common::reference("embeddings_minilm.json");
    let sentences: Vec<String> = serde_json::from_value(reference["sentences"].clone()).unwrap();
    let device = Device::flex();
    let (bert, tok) = load(&device);
    let ids: Vec<Vec<u32>> = sentences.iter().map(|s| tok.encode(s).unwrap()).collect();
    let mut worst = 0.0f32;
    for batch in [&ids[..1], &ids[3..6], &ids[..13]] {
        let (batch_ids, mask) = pad_batch(batch, 0, &device);
        let ours = bert
            .hidden_states_on_host(&batch_ids, &mask)
            .expect("the host loops take plain weights on the CPU backend");
        let burns = bert.hidden_states_by_ops(batch_ids, mask);
        assert_eq!(ours.len(), bert.layer_count() + 1);
        for (layer, (a, b)) in ours.into_iter().zip(burns).enumerate() {
            assert_eq!(a.dims(), b.dims());
            let a = a.into_data().try_to_vec::<f32>().unwrap();
            let b = b.into_data().try_to_vec::<f32>().unwrap();
            let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            let diff = a
                .iter()
                .zip(&b)
                .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(
                diff <= 2e-5 * scale,
                "batch of {}, hidden state {layer}: differs by {diff} (largest value {scale})",
                batch.len()
            );
            worst = worst.max(diff / scale);
        }
    }
    eprintln!("worst difference relative to the largest value: {worst:e}");
}

/// What the host loops do not take comes back as `None` (burn's ops then run, or fail, as
/// before): a sequence with no real token, an id outside the vocabulary, a mask of another
/// shape; a plain batch is taken.
#[test]
fn host_layers_decline_what_they_do_not_take() {
    let device = Device::flex();
    let (bert, _) = load(&device);
    let ids = |v: Vec<i64>, shape: [usize; 2]| {
        Tensor::<2, Int>::from_data(TensorData::new(v, shape), &device)
    };
    let mask = |v: Vec<bool>, shape: [usize; 2]| {
        Tensor::<2, Bool>::from_data(TensorData::new(v, shape), &device)
    };
    let plain = ids(vec![101, 7592, 102, 101, 2088, 102], [2, 3]);
    assert!(
        bert.hidden_states_on_host(&plain, &mask(vec![true; 6], [2, 3]))
            .is_some()
    );
    let one_empty = mask(vec![true, true, true, false, false, false], [2, 3]);
    assert!(bert.hidden_states_on_host(&plain, &one_empty).is_none());
    let outside = ids(vec![101, 30522, 102], [1, 3]);
    assert!(
        bert.hidden_states_on_host(&outside, &mask(vec![true; 3], [1, 3]))
            .is_none()
    );
    assert!(
        bert.hidden_states_on_host(&plain, &mask(vec![true; 6], [3, 2]))
            .is_none()
    );
}

#[test]
fn embeddings_on_wgpu_match_too() {
    let reference = common::reference("embeddings_minilm.json");
    let sentences: Vec<String> = serde_json::from_value(reference["sentences"].clone()).unwrap();
    let want: Vec<Vec<f64>> = serde_json::from_value(reference["embeddings"].clone()).unwrap();
    let gpu = Backend::init_blocking(BackendChoice::Gpu).expect("a wgpu adapter (lavapipe)");
    let (bert, tok) = load(&gpu.device);
    // A few short sentences: lavapipe is a CPU pretending to be a GPU.
    let n = 8;
    let ids: Vec<Vec<u32>> = sentences[..n]
        .iter()
        .map(|s| tok.encode(s).unwrap())
        .collect();
    let got = bert.embed_sequences(&ids, &gpu.device).unwrap();
    let got = pollster::block_on(got.into_data_async())
        .unwrap()
        .try_to_vec::<f32>()
        .unwrap();
    for (i, w) in want[..n].iter().enumerate() {
        let c = cosine(&got[i * 384..(i + 1) * 384], w);
        assert!(c >= 0.9999, "wgpu sentence {i}: cosine {c}");
    }
}

#[test]
fn bad_sequences_are_errors() {
    let device = Device::flex();
    let (bert, _) = load(&device);
    assert!(bert.embed_sequences(&[], &device).is_err());
    assert!(bert.embed_sequences(&[vec![]], &device).is_err());
    let too_long = vec![101u32; bert.max_tokens() + 1];
    let err = bert
        .embed_sequences(&[too_long], &device)
        .unwrap_err()
        .to_string();
    assert!(err.contains("513") && err.contains("512"), "{err}");
    assert!(
        bert.embed_sequences(&[vec![101, 30522, 102]], &device)
            .is_err()
    );
    assert!(BertConfig::from_json(b"{}").is_err());
}
