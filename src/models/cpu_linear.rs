//! Linear layers over few rows on the CPU backend: one fork-join per product, the output's
//! columns split into one task per thread, each a single-threaded gemm call.
//!
//! Why: at batch 1 the filter's encoder multiplies one 64-token window (64 rows). burn-flex
//! hands such products to gemm's own threading, which packs and forks rayon tasks for every
//! depth chunk of every product (several fork-joins per product, 36 products per window);
//! a profile of `bench filter --batches 1` had ~18% of the time in the scheduler and 27% in
//! gemm's dispatch around the microkernel (notes/issue-3-filter.md). Split by columns, each
//! thread packs only its part of the weight, so nothing is packed twice. Larger products
//! (batch 32: 2,048 rows) keep burn's path, where gemm's own split pays.
//!
//! Plain inference now runs the encoder's layers in `bert/host_layers.rs`, which splits
//! products the same way; this serves burn's path where that one declines (an encoder with
//! LoRA adapters attached, evaluated during tuning).

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::nn::Linear;
use burn::tensor::{DType, Device, Tensor, TensorData};
use rayon::prelude::*;

use crate::models::column_product::{self, COLUMN_STEP, SharedOut, Strided};

/// Products over at most this many rows take this path (a 64-token window is 64 rows; batch 32
/// is 2,048, where gemm's own threading is faster).
pub const MAX_ROWS: usize = 256;

/// `layer.forward(x)` for `x [rows, in]`, or `None` where this path does not apply (another
/// backend, autodiff, not f32, more than [`MAX_ROWS`] rows, a layout it does not take).
pub fn forward(layer: &Linear, x: &Tensor<2>) -> Option<Tensor<2>> {
    let [rows, d_in] = x.dims();
    if rows == 0 || rows > MAX_ROWS || x.is_autodiff() || x.device() != Device::flex() {
        return None;
    }
    let weight = layer.weight.val();
    let [w_in, d_out] = weight.dims();
    if w_in != d_in || d_out == 0 || weight.is_autodiff() {
        return None;
    }
    let lhs = Matrix::of(x)?;
    let rhs = Matrix::of(&weight)?;
    let mut out = vec![0.0f32; rows * d_out];
    let bias = match &layer.bias {
        Some(bias) => {
            let bias = bias.val();
            if bias.dims() != [d_out] || bias.is_autodiff() {
                return None;
            }
            Some(bias.try_into_data().ok()?.try_into_vec::<f32>().ok()?)
        }
        None => None,
    };
    let parts = rayon::current_num_threads()
        .min(d_out.div_ceil(COLUMN_STEP))
        .max(1);
    let width = d_out.div_ceil(parts).next_multiple_of(COLUMN_STEP);
    let dst = SharedOut(out.as_mut_ptr());
    (0..d_out.div_ceil(width)).into_par_iter().for_each(|p| {
        let first = p * width;
        let n = width.min(d_out - first);
        let dst = &dst;
        // SAFETY: `Matrix::of` checked that every element of both operands lies inside its
        // buffer; `out` is `rows × d_out`, row-major, and task `p` reads and writes only
        // columns `first..first + n` of it (the tasks' column ranges are disjoint).
        unsafe {
            column_product::columns(
                rows,
                n,
                d_in,
                Strided {
                    ptr: lhs.at(0, 0),
                    row_stride: lhs.row_stride,
                    col_stride: lhs.col_stride,
                },
                Strided {
                    ptr: rhs.at(0, first),
                    row_stride: rhs.row_stride,
                    col_stride: rhs.col_stride,
                },
                dst.0.add(first),
                d_out,
                bias.as_ref().map(|b| &b[first..first + n]),
            );
        }
    });
    Some(Tensor::from_data(
        TensorData::new(out, [rows, d_out]),
        &x.device(),
    ))
}

/// A 2-D f32 tensor's buffer and strides on the CPU backend.
struct Matrix {
    tensor: FlexTensor,
    offset: usize,
    row_stride: isize,
    col_stride: isize,
}

impl Matrix {
    /// The tensor's buffer, when it is f32 with non-negative strides and every element
    /// `(r, c)` at `offset + r·row_stride + c·col_stride` inside the buffer.
    fn of(t: &Tensor<2>) -> Option<Matrix> {
        let [rows, cols] = t.dims();
        if rows == 0 || cols == 0 {
            return None;
        }
        let tensor = t.clone().try_into_primitive::<Flex>().ok()?;
        if tensor.dtype() != DType::F32 {
            return None;
        }
        let layout = tensor.layout();
        let &[row_stride, col_stride] = layout.strides() else {
            return None;
        };
        let offset = layout.start_offset();
        let (rs, cs) = (
            usize::try_from(row_stride).ok()?,
            usize::try_from(col_stride).ok()?,
        );
        let last = (rows - 1)
            .checked_mul(rs)?
            .checked_add((cols - 1).checked_mul(cs)?)?
            .checked_add(offset)?;
        if last >= tensor.storage::<f32>().len() {
            return None;
        }
        Some(Matrix {
            tensor,
            offset,
            row_stride,
            col_stride,
        })
    }

    /// Pointer to element `(r, c)` (in bounds by [`Matrix::of`]'s check when `r`, `c` are).
    fn at(&self, r: usize, c: usize) -> *const f32 {
        let at = self.offset as isize + r as isize * self.row_stride + c as isize * self.col_stride;
        self.tensor.storage::<f32>()[at as usize..].as_ptr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Param;

    fn noise(i: usize, seed: usize) -> f32 {
        let h = (i.wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(40_503)) % 10_007;
        h as f32 / 5_003.5 - 1.0
    }

    /// Against a float64 loop over the same values, for shapes the encoder has (64 × 384 →
    /// 384 and → 1536), odd ones (widths not a multiple of 16, one row), a weight stored
    /// transposed (as the encoder's are: PyTorch's `[out, in]` viewed as `[in, out]`) and one
    /// without a bias.
    #[test]
    fn matches_a_float64_product() {
        let device = Device::flex();
        for (rows, d_in, d_out, transposed, bias) in [
            (64, 384, 384, true, true),
            (64, 384, 1536, true, true),
            (64, 1536, 384, false, true),
            (1, 7, 5, true, true),
            (13, 33, 50, false, false),
            (256, 40, 17, true, true),
        ] {
            let x: Vec<f32> = (0..rows * d_in).map(|i| noise(i, 1)).collect();
            let w: Vec<f32> = (0..d_in * d_out).map(|i| noise(i, 2)).collect(); // [in, out]
            let b: Vec<f32> = (0..d_out).map(|i| noise(i, 3)).collect();
            let weight = if transposed {
                let wt: Vec<f32> = (0..d_out * d_in)
                    .map(|i| w[(i % d_in) * d_out + i / d_in])
                    .collect();
                Tensor::<2>::from_data(TensorData::new(wt, [d_out, d_in]), &device).transpose()
            } else {
                Tensor::<2>::from_data(TensorData::new(w.clone(), [d_in, d_out]), &device)
            };
            let layer = Linear {
                weight: Param::from_tensor(weight),
                bias: bias.then(|| {
                    Param::from_tensor(Tensor::from_data(
                        TensorData::new(b.clone(), [d_out]),
                        &device,
                    ))
                }),
            };
            let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [rows, d_in]), &device);
            let y = forward(&layer, &xt).expect("this path takes these shapes");
            let y = y.into_data().try_into_vec::<f32>().unwrap();
            for r in 0..rows {
                for c in 0..d_out {
                    let mut want = if bias { b[c] as f64 } else { 0.0 };
                    let mut scale = want.abs();
                    for k in 0..d_in {
                        let p = x[r * d_in + k] as f64 * w[k * d_out + c] as f64;
                        want += p;
                        scale += p.abs();
                    }
                    let got = y[r * d_out + c] as f64;
                    assert!(
                        (got - want).abs() <= 1e-6 * scale.max(1.0),
                        "{rows}x{d_in}->{d_out} at ({r}, {c}): {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn larger_or_autodiff_inputs_are_left_to_burn() {
        let device = Device::flex();
        let layer = Linear {
            weight: Param::from_tensor(Tensor::zeros([4, 3], &device)),
            bias: None,
        };
        assert!(forward(&layer, &Tensor::zeros([MAX_ROWS + 1, 4], &device)).is_none());
        assert!(forward(&layer, &Tensor::zeros([2, 5], &device)).is_none());
        assert!(forward(&layer, &Tensor::zeros([0, 4], &device)).is_none());
        let empty = Linear {
            weight: Param::from_tensor(Tensor::zeros([0, 3], &device)),
            bias: None,
        };
        assert!(forward(&empty, &Tensor::zeros([2, 0], &device)).is_none());
    }
}
