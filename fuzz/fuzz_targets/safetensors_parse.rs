//! Fuzzes the safetensors reader (src/weights/safetensors.rs over the `safetensors` crate): any
//! bytes parse or give an error, never a panic; every tensor of a parsed file converts to f32
//! values that fill its shape, and builds a tensor of its rank when asked for its own shape
//! and is refused for another.
#![no_main]

use burn::tensor::Device;
use libfuzzer_sys::fuzz_target;
use webguard_fuzz::weights::safetensors::SafetensorsFile;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = SafetensorsFile::parse(data) else {
        return;
    };
    let _ = file.expect_format("webguard-filter-heads/1", "a heads file");
    let _ = file.required_metadata("labels", "a heads file");
    let device = Device;
    for name in file.names() {
        let Ok(shape) = file.shape(&name) else {
            continue;
        };
        if let Ok((values, got)) = file.f32_values(&name) {
            assert_eq!(got, shape);
            assert_eq!(values.len(), shape.iter().product::<usize>());
        }
        match shape.as_slice() {
            &[a] => {
                let _ = file.tensor::<1>(&name, [a], &device);
                assert!(
                    file.tensor::<1>(&name, [a.wrapping_add(1)], &device)
                        .is_err()
                );
            }
            &[a, b] => {
                let _ = file.tensor::<2>(&name, [a, b], &device);
                let other = [b.wrapping_add(1), a];
                assert!(file.tensor::<2>(&name, other, &device).is_err() || other == [a, b]);
            }
            _ => {
                assert!(file.tensor::<1>(&name, [0], &device).is_err());
            }
        }
    }
});
