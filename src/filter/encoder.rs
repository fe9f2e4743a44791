//! Texts to feature vectors: tokenize, split long texts into overlapping windows, batch
//! windows of similar length, run the encoder, pool. Shared by classification and training.

use std::sync::atomic::{AtomicUsize, Ordering};

use burn::tensor::{Device, Tensor, TensorData};

use crate::backend::read_f32;
use crate::error::{Error, Result};
use crate::filter::features::FeatureSpec;
use crate::models::bert::{Bert, windows};
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

/// The MiniLM tokenizer and encoder on one device, and optionally a second copy of the encoder
/// on a GPU for large batches ([`crate::filter::routing`]).
pub struct TextEncoder {
    tokenizer: Tokenizer,
    bert: Bert,
    options: FilterOptions,
    device: Device,
    gpu: Option<GpuCopy>,
    batches: [AtomicUsize; 2],
}

/// The encoder's second copy, on a GPU, and the smallest batch it takes.
struct GpuCopy {
    bert: Bert,
    device: Device,
    from_batch: usize,
}

/// Batches encoded so far on the encoder's own device and on its GPU copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchCounts {
    /// On the encoder's own device (the CPU when routed).
    pub own: usize,
    /// On the GPU copy.
    pub gpu: usize,
}

/// Windows of token ids, each with the index of the text it came from.
pub type TextWindows = Vec<(usize, Vec<u32>)>;

impl TextEncoder {
    /// An encoder with default options.
    pub fn new(tokenizer: Tokenizer, bert: Bert, device: &Device) -> Self {
        TextEncoder {
            tokenizer,
            bert,
            options: FilterOptions::default(),
            device: device.clone(),
            gpu: None,
            batches: Default::default(),
        }
    }

    /// Sends batches of at least `from_batch` windows to `bert` on `device` (a copy of this
    /// encoder, the same weights, on a GPU); with `None` the copy is dropped and every batch
    /// stays here ([`crate::filter::routing`] measures which).
    pub fn route_to_gpu(
        &mut self,
        bert: Bert,
        device: &Device,
        from_batch: Option<usize>,
    ) -> Result<()> {
        if bert.width() != self.bert.width() || bert.layer_count() != self.bert.layer_count() {
            return Err(Error::InvalidInput(
                "the GPU copy of the encoder has another shape than the encoder".into(),
            ));
        }
        self.gpu = from_batch.map(|from_batch| GpuCopy {
            bert,
            device: device.clone(),
            from_batch,
        });
        Ok(())
    }

    /// Batches encoded so far on each device.
    pub fn batch_counts(&self) -> BatchCounts {
        BatchCounts {
            own: self.batches[0].load(Ordering::Relaxed),
            gpu: self.batches[1].load(Ordering::Relaxed),
        }
    }

    /// The longest window of a fixed English text: what the load-time measurement encodes.
    pub fn sample_window(&self) -> Result<Vec<u32>> {
        let text = "The committee met on Tuesday to review the budget, and after a long \
                    discussion about the library, the roads and the new school, it agreed to \
                    publish the figures next month. "
            .repeat(4);
        self.windows(&[&text])?
            .pop()
            .map(|(_, w)| w)
            .ok_or_else(|| Error::InvalidInput("the sample text gave no window".into()))
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
    pub fn windows(&self, texts: &[&str]) -> Result<TextWindows> {
        Ok(self
            .windows_within(texts, usize::MAX)?
            .expect("no count passes usize::MAX"))
    }

    /// [`TextEncoder::windows`], or `None` as soon as the texts make more than `most` windows:
    /// the texts after that are not read (a caller bounding its memory need not tokenize all
    /// of a large input first).
    pub fn windows_within(&self, texts: &[&str], most: usize) -> Result<Option<TextWindows>> {
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
            if items.len() > most {
                return Ok(None);
            }
        }
        items.sort_by_key(|(_, w)| w.len());
        Ok(Some(items))
    }

    /// Features `[rows, width]` of a batch of windows, on the encoder's device. A batch large
    /// enough for the GPU copy runs there and its features are read back (`rows x width`
    /// floats) onto this device.
    pub async fn batch_features(
        &self,
        spec: &FeatureSpec,
        windows: &[&[u32]],
    ) -> Result<Tensor<2>> {
        let gpu = (self.gpu.as_ref()).filter(|gpu| windows.len() >= gpu.from_batch);
        let (bert, device) = match gpu {
            Some(gpu) => (&gpu.bert, &gpu.device),
            None => (&self.bert, &self.device),
        };
        self.batches[usize::from(gpu.is_some())].fetch_add(1, Ordering::Relaxed);
        let features = spec.of_windows(bert, windows, device);
        if gpu.is_none() {
            return Ok(features);
        }
        let shape = [windows.len(), spec.width(self.bert.width())];
        let values = read_f32(features).await?;
        Ok(Tensor::from_data(
            TensorData::new(values, shape),
            &self.device,
        ))
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
            let values = read_f32(self.batch_features(spec, &rows).await?).await?;
            for ((text, _), row) in chunk.iter().zip(values.chunks_exact(width)) {
                out.push((*text, row.to_vec()));
            }
            progress(out.len(), items.len());
        }
        Ok(out)
    }
}
