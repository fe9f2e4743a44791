//! Fuzzes what a filter heads file or exported filter adapters must hold
//! (src/filter/heads_file.rs: label names, thresholds, widths, every tensor's shape), the check
//! `Heads::load` and `Filter::import_adapters` run before building any tensor: any bytes are
//! accepted or refused without a panic, and whatever is accepted has only valid label names,
//! thresholds strictly between 0 and 1, and every tensor the heads need, readable, of its
//! shape.
#![no_main]

use burn::tensor::Device;
use libfuzzer_sys::fuzz_target;
use webguard_fuzz::filter::heads_file::{HeadsLayout, check_file_threshold, check_label};
use webguard_fuzz::weights::safetensors::SafetensorsFile;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = SafetensorsFile::parse(data) else {
        return;
    };
    // Whichever format the file says it is (heads or adapters: the same layout).
    let format = file.metadata().get("format").cloned().unwrap_or_default();
    let Ok(layout) = HeadsLayout::read(&file, &format) else {
        return;
    };
    assert_eq!(layout.labels.len(), layout.thresholds.len());
    for (label, &t) in layout.labels.iter().zip(&layout.thresholds) {
        check_label(label).unwrap();
        check_file_threshold(label, t).unwrap();
        assert!(!label.contains(['<', '>', '"', '&', ',', '.']));
    }
    let device = Device;
    for (name, shape) in layout.tensors() {
        let got = file.shape(&name).unwrap();
        assert_eq!(got, shape);
        let _ = match shape.as_slice() {
            &[a] => file.tensor::<1>(&name, [a], &device).map(drop),
            &[a, b] => file.tensor::<2>(&name, [a, b], &device).map(drop),
            _ => unreachable!("heads tensors are 1-D or 2-D"),
        };
    }
});
