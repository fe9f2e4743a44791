//! The chat model: greedy decoding of a known question gives the known answer (DESIGN.md:
//! checked with an independent numpy implementation), and bad input is refused.

mod common;

use burn::tensor::Device;
use webguard::generate::{GenerateOptions, StopReason, generate};
use webguard::models::llama::Llama;
use webguard::text::Tokenizer;
use webguard::text::chat_template::{Message, render};
use webguard::weights::Gguf;

#[test]
fn greedy_answer_to_the_capital_of_france() {
    let bytes = common::read_model(webguard::SMOLLM2_GGUF);
    let gguf = Gguf::parse(&bytes).unwrap();
    let tok = Tokenizer::from_gguf(&gguf).unwrap();
    let device = Device::flex();
    let model = Llama::load(&gguf, &device).unwrap();
    let prompt = render(
        &[Message::new("user", "What is the capital of France?")],
        true,
    )
    .unwrap();
    let ids = tok.encode(&prompt).unwrap();
    let end = [
        tok.token_to_id("<|im_end|>").unwrap(),
        tok.token_to_id("<|endoftext|>").unwrap(),
    ];
    let mut streamed = String::new();
    let options = GenerateOptions {
        max_new_tokens: 24,
        ..GenerateOptions::default()
    };
    let out = pollster::block_on(generate(&model, &tok, &ids, &end, &options, |piece| {
        streamed.push_str(piece);
        true
    }))
    .unwrap();
    assert_eq!(out.text, "The capital of France is Paris.");
    assert_eq!(out.stop_reason, StopReason::EndOfTurn);
    assert_eq!(streamed, out.text, "the stream adds up to the answer");

    // Cancelling after the first piece stops generation.
    let mut pieces = 0;
    let out = pollster::block_on(generate(&model, &tok, &ids, &end, &options, |_| {
        pieces += 1;
        false
    }))
    .unwrap();
    assert_eq!((pieces, out.stop_reason), (1, StopReason::Cancelled));

    // A stop string ends the answer before it.
    let options = GenerateOptions {
        stop: vec![" Paris".into()],
        ..options
    };
    let out = pollster::block_on(generate(&model, &tok, &ids, &end, &options, |_| true)).unwrap();
    assert_eq!(out.text, "The capital of France is");
    assert_eq!(out.stop_reason, StopReason::StopString(" Paris".into()));

    // Bad input.
    let mut cache = model.new_cache();
    assert!(model.forward(&[], &mut cache).is_err());
    assert!(model.forward(&[49152], &mut cache).is_err());
    let too_long = vec![1u32; model.config().context_length + 1];
    assert!(model.forward(&too_long, &mut cache).is_err());
    assert!(
        pollster::block_on(generate(
            &model,
            &tok,
            &[],
            &end,
            &GenerateOptions::default(),
            |_| true
        ))
        .is_err()
    );
}
