//! The part of burn's API that `src/weights/safetensors.rs` uses, for the fuzz targets.

pub mod tensor {
    /// A device (nothing runs on it).
    #[derive(Debug, Clone, Default)]
    pub struct Device;

    /// Values and a shape, checked as burn checks them.
    #[derive(Debug, Clone)]
    pub struct TensorData {
        pub values: Vec<f32>,
        pub shape: Vec<usize>,
    }

    impl TensorData {
        /// Panics, as burn does, when `values` do not fill `shape` exactly.
        pub fn new<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> Self {
            let n: usize = shape.iter().product();
            assert_eq!(
                values.len(),
                n,
                "{} values for shape {shape:?}",
                values.len()
            );
            TensorData {
                values,
                shape: shape.to_vec(),
            }
        }
    }

    /// A tensor of rank `D`.
    #[derive(Debug, Clone)]
    pub struct Tensor<const D: usize> {
        pub data: TensorData,
    }

    impl<const D: usize> Tensor<D> {
        pub fn from_data(data: TensorData, _device: &Device) -> Self {
            assert_eq!(data.shape.len(), D);
            Tensor { data }
        }
    }
}
