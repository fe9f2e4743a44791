//! The GGUF reader on broken versions of the real SmolLM2 file: truncated in every section,
//! with counts, lengths, types and offsets overwritten, and with random byte mutations.
//! Every case must give a typed error (or, for harmless mutations, a valid parse), never a
//! panic and never an allocation larger than the file.

mod common;

use webguard::weights::{Gguf, GgufError};

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn truncated_in_every_section() {
    let bytes = common::read_model(webguard::SMOLLM2_GGUF);
    let g = Gguf::parse(&bytes).unwrap();
    let data = g.data_offset as usize;
    let last = g
        .tensors
        .iter()
        .map(|t| t.offset + t.n_bytes)
        .max()
        .unwrap() as usize
        + data;
    // Header, across the metadata (dozens of points), the tensor table, the data.
    let mut cuts: Vec<usize> = (0..24).collect();
    cuts.extend((1..60).map(|i| i * (data / 60)));
    cuts.extend([data - 1, data, data + 1, last / 2, last - 1]);
    for cut in cuts {
        let err = Gguf::parse(&bytes[..cut]).expect_err("truncated file parsed");
        assert!(
            matches!(
                err,
                GgufError::Truncated { .. }
                    | GgufError::ImplausibleLength { .. }
                    | GgufError::BadTensorOffset { .. }
            ),
            "cut at {cut}: {err}"
        );
    }
}

#[test]
fn overwritten_fields() {
    let bytes = common::read_model(webguard::SMOLLM2_GGUF);
    let with = |at: usize, patch: &[u8]| {
        let mut b = bytes.clone();
        b[at..at + patch.len()].copy_from_slice(patch);
        Gguf::parse(&b).map(|_| ())
    };
    assert!(matches!(with(0, b"GGML"), Err(GgufError::BadMagic(_))));
    assert!(matches!(
        with(4, &9u32.to_le_bytes()),
        Err(GgufError::UnsupportedVersion(9))
    ));
    assert!(matches!(
        with(8, &u64::MAX.to_le_bytes()),
        Err(GgufError::ImplausibleLength { .. })
    ));
    assert!(matches!(
        with(16, &(1u64 << 50).to_le_bytes()),
        Err(GgufError::ImplausibleLength { .. })
    ));
    // The first key's length, then its value type.
    assert!(matches!(
        with(24, &(1u64 << 62).to_le_bytes()),
        Err(GgufError::ImplausibleLength { .. })
    ));
    let key_len = u64::from_le_bytes(bytes[24..32].try_into().unwrap()) as usize;
    assert!(matches!(
        with(32 + key_len, &77u32.to_le_bytes()),
        Err(GgufError::UnknownValueType { type_id: 77, .. })
    ));
    // The last tensor's type id and offset are the last 12 bytes of the tensor table.
    let g = Gguf::parse(&bytes).unwrap();
    let last = g.tensors.last().unwrap();
    let table_end = {
        // Walk back from the data section over the padding: the offset field ends the table.
        let mut end = g.data_offset as usize;
        while u64::from_le_bytes(bytes[end - 8..end].try_into().unwrap()) != last.offset {
            end -= 1;
        }
        end
    };
    assert!(matches!(
        with(table_end - 12, &999u32.to_le_bytes()),
        Err(GgufError::UnknownTensorType { type_id: 999, .. })
    ));
    assert!(matches!(
        with(
            table_end - 8,
            &(bytes.len() as u64).next_multiple_of(32).to_le_bytes()
        ),
        Err(GgufError::BadTensorOffset { .. })
    ));
    assert!(matches!(
        with(table_end - 8, &(last.offset + 1).to_le_bytes()),
        Err(GgufError::BadTensorOffset { .. })
    ));
}

#[test]
fn random_mutations_never_panic() {
    let bytes = common::read_model(webguard::SMOLLM2_GGUF);
    let g = Gguf::parse(&bytes).unwrap();
    // The header and metadata prefix plus the first tensor infos is where parsing decisions are.
    let hot = g.data_offset as usize;
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let mut errors = 0;
    for _ in 0..300 {
        let mut b = bytes[..hot + 64].to_vec();
        for _ in 0..1 + rng.below(4) {
            let at = if rng.below(2) == 0 {
                rng.below(64)
            } else {
                rng.below(b.len())
            };
            b[at] = rng.next() as u8;
        }
        let cut = if rng.below(4) == 0 {
            rng.below(b.len())
        } else {
            b.len()
        };
        if Gguf::parse(&b[..cut]).is_err() {
            errors += 1;
        }
    }
    assert!(errors > 0);
}
