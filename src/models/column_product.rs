//! A linear layer's product over a range of its output columns: one single-threaded gemm call,
//! then the bias. The unit both CPU paths split a layer into, one column range per task
//! (`cpu_linear` over rayon, the encoder's host loops over the spin pool).

/// Column ranges per task are a multiple of this (gemm's AVX-512 f32 tile width).
pub const COLUMN_STEP: usize = 16;

/// A matrix operand: where element (0, 0) is, and the strides between rows and columns.
#[derive(Clone, Copy)]
pub struct Strided {
    /// Element (0, 0).
    pub ptr: *const f32,
    /// Values from one row to the next.
    pub row_stride: isize,
    /// Values from one column to the next.
    pub col_stride: isize,
}

/// A result buffer's base address, shared by tasks that each write their own columns.
pub struct SharedOut(pub *mut f32);
// SAFETY: the tasks write disjoint columns of one buffer that outlives them.
unsafe impl Sync for SharedOut {}

/// `dst[r, c] = Σ_k lhs[r, k] · rhs[k, c] + bias[c]` for `r < rows`, `c < cols`, `dst`
/// row-major with `dst_stride` values between rows. The bias is added after the product, as
/// burn's `Linear` does: folding it into gemm's first depth chunk moved filter scores by up to
/// 9e-5 (the heads divide features by their spread, which amplifies rounding).
///
/// # Safety
/// `lhs` is `rows × depth` and `rhs` `depth × cols` with every element inside its buffer,
/// `dst` holds `rows` rows of `cols` values `dst_stride` apart, `bias` (if any) has `cols`
/// values, and nothing else reads or writes those `dst` values meanwhile.
#[allow(clippy::too_many_arguments)]
pub unsafe fn columns(
    rows: usize,
    cols: usize,
    depth: usize,
    lhs: Strided,
    rhs: Strided,
    dst: *mut f32,
    dst_stride: usize,
    bias: Option<&[f32]>,
) {
    // SAFETY: the caller's contract above.
    unsafe {
        gemm::gemm(
            rows,
            cols,
            depth,
            dst,
            1,
            dst_stride as isize,
            false,
            lhs.ptr,
            lhs.col_stride,
            lhs.row_stride,
            rhs.ptr,
            rhs.col_stride,
            rhs.row_stride,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
        if let Some(bias) = bias {
            for r in 0..rows {
                let row = std::slice::from_raw_parts_mut(dst.add(r * dst_stride), cols);
                row.iter_mut().zip(bias).for_each(|(y, b)| *y += b);
            }
        }
    }
}
