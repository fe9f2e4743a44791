//! Texts to feature vectors: tokenize, split long texts into overlapping windows, batch
//! windows of similar length, run the encoder, pool. Shared by classification and training.

use burn::tensor::Device;

use crate::backend::read_f32;
use crate::error::{Error, Result};
use crate::filter::features::FeatureSpec;
use crate::models::bert::{Bert, pad_batch, windows};
use crate::text::Tokenizer;
use crate::text::normalize::for_judging;

/// Limits and batching of the text encoder.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterOptions {
    /// Longest window the encoder sees, `[CLS]` and `[SEP]` included; longer texts are split.
    /// 64 is about twice a tweet (what the heads were trained on) and short enough that one
    /// insult is not averaged away by a long friendly paragraph around it.
    pub window_tokens: usize,
    /// Tokens shared by consecutive windows, so nothing is only seen cut in half.
    pub window_overlap: usize,
    /// Windows per encoder batch: bounds memory however many texts come in one call.
    pub batch_size: usize,
    /// Longest text accepted, in UTF-8 bytes; longer ones are an error rather than minutes of
    /// work (a 128 KiB text is about 700 windows).
    pub max_text_bytes: usize,
}

impl Default for FilterOptions {
    fn default() -> Self {
        FilterOptions {
            window_tokens: 64,
            window_overlap: 16,
            batch_size: 32,
            max_text_bytes: 128 * 1024,
        }
    }
}

/// The MiniLM tokenizer and encoder on one device.
pub struct TextEncoder {
    tokenizer: Tokenizer,
    bert: Bert,
    options: FilterOptions,
    device: Device,
}

impl TextEncoder {
    /// An encoder with default options.
    pub fn new(tokenizer: Tokenizer, bert: Bert, device: &Device) -> Self {
        TextEncoder {
            tokenizer,
            bert,
            options: FilterOptions::default(),
            device: device.clone(),
        }
    }

    /// Loads `tokenizer.json`, `config.json` and `model.safetensors` from MiniLM's folder.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(minilm_dir: &std::path::Path, device: &Device) -> Result<Self> {
        let read = |name: &str| {
            let p = minilm_dir.join(name);
            std::fs::read(&p).map_err(|e| Error::io(&p, e))
        };
        let tokenizer = Tokenizer::from_tokenizer_json(&read("tokenizer.json")?)?;
        let config = crate::models::bert::BertConfig::from_json(&read("config.json")?)?;
        let bert = Bert::load(&config, &read("model.safetensors")?, device)?;
        Ok(Self::new(tokenizer, bert, device))
    }

    /// The encoder network.
    pub fn bert(&self) -> &Bert {
        &self.bert
    }

    /// The device it runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Limits and batching in use.
    pub fn options(&self) -> &FilterOptions {
        &self.options
    }

    /// Changes limits and batching.
    pub fn set_options(&mut self, options: FilterOptions) -> Result<()> {
        if options.batch_size == 0
            || options.window_tokens < 8
            || options.window_tokens > self.bert.max_tokens()
            || options.window_overlap + 2 >= options.window_tokens
        {
            return Err(Error::InvalidInput(format!(
                "filter options out of range: {options:?} (batch >= 1, 8 <= window <= {}, overlap < window - 2)",
                self.bert.max_tokens()
            )));
        }
        self.options = options;
        Ok(())
    }

    /// Every window of every text as `(text index, ids)`, shortest first so that batches pad
    /// little. Texts over `max_text_bytes` are an error before any work is done. Each text is
    /// read in its judging form ([`for_judging`]: look-alike letters, invisible characters and
    /// digit stand-ins folded), in training as in use, and encoded as plain text (a `[SEP]`
    /// typed in a comment is not the separator).
    pub fn windows(&self, texts: &[&str]) -> Result<Vec<(usize, Vec<u32>)>> {
        if let Some((i, text)) = texts
            .iter()
            .enumerate()
            .find(|(_, t)| t.len() > self.options.max_text_bytes)
        {
            return Err(Error::InvalidInput(format!(
                "text {i} is {} bytes; the filter takes at most {} (split it, or raise max_text_bytes)",
                text.len(),
                self.options.max_text_bytes
            )));
        }
        let mut items = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            let ids = self.tokenizer.encode_literal(&for_judging(text))?;
            for w in windows(
                &ids,
                self.options.window_tokens,
                self.options.window_overlap,
            )? {
                items.push((i, w));
            }
        }
        items.sort_by_key(|(_, w)| w.len());
        Ok(items)
    }

    /// Features `[rows, width]` of a batch of windows, still on the device.
    pub fn batch_features(
        &self,
        spec: &FeatureSpec,
        windows: &[&[u32]],
    ) -> burn::tensor::Tensor<2> {
        let ids: Vec<Vec<u32>> = windows.iter().map(|w| w.to_vec()).collect();
        let (ids, mask) = pad_batch(&ids, 0, &self.device);
        spec.compute(&self.bert, ids, mask)
    }

    /// Feature vectors of every window of `texts` as `(text index, features)` (what the heads
    /// are trained on), shortest windows first; `progress(done, total)` after each batch.
    pub async fn window_features(
        &self,
        spec: &FeatureSpec,
        texts: &[&str],
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Vec<(usize, Vec<f32>)>> {
        spec.check(&self.bert)?;
        let width = spec.width(self.bert.width());
        let items = self.windows(texts)?;
        let mut out = Vec::with_capacity(items.len());
        for chunk in items.chunks(self.options.batch_size) {
            let rows: Vec<&[u32]> = chunk.iter().map(|(_, w)| w.as_slice()).collect();
            let values = read_f32(self.batch_features(spec, &rows)).await?;
            for ((text, _), row) in chunk.iter().zip(values.chunks_exact(width)) {
                out.push((*text, row.to_vec()));
            }
            progress(out.len(), items.len());
        }
        Ok(out)
    }
}
