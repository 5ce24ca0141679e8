//! The engine's one tensor type: a dense, contiguous NCHW `f32` array.

use super::buffers;

/// A 4-D, NCHW-ordered, contiguous `f32` tensor.
///
/// Every kernel in the engine reads and writes this layout, so there are no strides and no views:
/// element `(n, c, h, w)` lives at `((n * C + c) * H + h) * W + w`.
///
/// Dropping a large tensor hands its buffer to the engine's pool for the next one (see
/// [`release_buffers`](super::release_buffers)).
#[derive(Debug, PartialEq)]
pub struct Tensor {
    shape: [usize; 4],
    data: Vec<f32>,
}

impl Tensor {
    /// Wraps `data` (NCHW order) as a tensor of `shape`.
    ///
    /// # Panics
    /// If `data.len()` is not the product of `shape` (a programmer error).
    pub fn new(shape: [usize; 4], data: Vec<f32>) -> Tensor {
        let numel: usize = shape.iter().product();
        assert_eq!(data.len(), numel, "Tensor::new: {} values for shape {shape:?} ({numel} expected)", data.len());
        Tensor { shape, data }
    }

    /// A tensor of `shape` filled with zeros.
    pub fn zeros(shape: [usize; 4]) -> Tensor {
        Tensor { shape, data: buffers::zeros(shape.iter().product()) }
    }

    /// `[n, c, h, w]`.
    #[inline]
    pub fn shape(&self) -> [usize; 4] {
        self.shape
    }

    /// The values in NCHW order.
    #[inline]
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// The values in NCHW order, writable.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// Gives up the tensor and returns its values (NCHW order).
    #[inline]
    pub fn into_data(mut self) -> Vec<f32> {
        std::mem::take(&mut self.data)
    }

    /// Number of elements (`n * c * h * w`).
    #[inline]
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// The `h * w` values of channel `c` of image `n`.
    #[inline]
    pub fn plane(&self, n: usize, c: usize) -> &[f32] {
        let [_, ch, h, w] = self.shape;
        let start = (n * ch + c) * h * w;
        &self.data[start..start + h * w]
    }

    /// The `c * h * w` values of image `n`.
    #[inline]
    pub fn image(&self, n: usize) -> &[f32] {
        let [_, c, h, w] = self.shape;
        let len = c * h * w;
        &self.data[n * len..(n + 1) * len]
    }
}

impl Clone for Tensor {
    fn clone(&self) -> Tensor {
        let mut data = buffers::take(self.data.len());
        data.extend_from_slice(&self.data);
        Tensor { shape: self.shape, data }
    }
}

impl Drop for Tensor {
    fn drop(&mut self) {
        buffers::give(std::mem::take(&mut self.data));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_accessors() {
        let t = Tensor::new([2, 3, 2, 2], (0..24).map(|v| v as f32).collect());
        assert_eq!(t.shape(), [2, 3, 2, 2]);
        assert_eq!(t.numel(), 24);
        assert_eq!(t.plane(1, 2), &[20.0, 21.0, 22.0, 23.0]);
        assert_eq!(t.image(1)[0], 12.0);
        let z = Tensor::zeros([1, 2, 3, 4]);
        assert!(z.data().iter().all(|&v| v == 0.0));
        assert_eq!(z.into_data().len(), 24);
    }

    #[test]
    #[should_panic(expected = "Tensor::new")]
    fn new_rejects_wrong_length() {
        let _ = Tensor::new([1, 2, 2, 2], vec![0.0; 7]);
    }
}
