//! Element-wise and data-movement kernels: activations, residual add, channel concat / split.

use super::buffers;
use super::profile;
use super::simd;
use super::tensor::Tensor;
use super::threads::{for_chunks_mut, num_threads, parallel_for, SyncPtr};

/// Below this many elements an element-wise pass runs on the calling thread: splitting it would cost
/// more in rayon overhead than it saves.
const PAR_MIN: usize = 1 << 16;

/// Logistic sigmoid, 1 / (1 + e^-v), with the standard library's exact `exp` (for post-processing).
#[inline]
pub fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

/// SiLU (swish), v · sigmoid(v), with the standard library's exact `exp`.
#[inline]
pub fn silu(v: f32) -> f32 {
    v / (1.0 + (-v).exp())
}

/// Applies SiLU to every element in place (vectorised; relative error below 1e-6).
pub fn silu_inplace(t: &mut Tensor) {
    let span = profile::start();
    let shape = t.shape();
    let data = t.data_mut();
    let big = data.len() >= PAR_MIN;
    for_chunks_mut(data, PAR_MIN / 2, big, &|_, c| simd::silu_slice(c));
    span.finish(0, || format!("silu {shape:?}"));
}

/// Residual add: `a += b`.
///
/// # Panics
/// If the shapes differ.
pub fn add_assign(a: &mut Tensor, b: &Tensor) {
    assert_eq!(a.shape(), b.shape(), "add_assign: shape mismatch");
    let span = profile::start();
    let shape = a.shape();
    let isa = simd::isa();
    let (a, b) = (a.data_mut(), b.data());
    let big = a.len() >= PAR_MIN;
    let chunk = PAR_MIN / 2;
    for_chunks_mut(a, chunk, big, &|i, a| add_slices(a, &b[i * chunk..i * chunk + a.len()], isa));
    span.finish(0, || format!("add {shape:?}"));
}

fn add_slices(a: &mut [f32], b: &[f32], isa: simd::Isa) {
    #[inline(always)]
    fn generic(a: &mut [f32], b: &[f32]) {
        for (x, y) in a.iter_mut().zip(b) {
            *x += *y;
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn avx512(a: &mut [f32], b: &[f32]) {
        generic(a, b)
    }
    #[cfg(target_arch = "x86_64")]
    if isa == simd::Isa::Avx512 {
        // SAFETY: `isa` is never above what the CPU was detected to support.
        return unsafe { avx512(a, b) };
    }
    let _ = isa;
    generic(a, b)
}

/// Concatenates tensors along the channel axis (torch.cat(dim=1)), in the given order.
///
/// # Panics
/// If `parts` is empty or the parts disagree in batch size or spatial size.
pub fn concat_channels(parts: &[&Tensor]) -> Tensor {
    assert!(!parts.is_empty(), "concat_channels: no inputs");
    let [n, _, h, w] = parts[0].shape();
    for p in parts {
        let [pn, _, ph, pw] = p.shape();
        assert_eq!((pn, ph, pw), (n, h, w), "concat_channels: parts differ in n, h or w");
    }
    let span = profile::start();
    let c_total: usize = parts.iter().map(|p| p.shape()[1]).sum();
    // Image-major: for each image, the parts' channel blocks one after another.
    let pieces: Vec<&[f32]> = (0..n).flat_map(|i| parts.iter().map(move |p| p.image(i))).collect();
    let out = gather(&pieces);
    span.finish(0, || format!("concat {} parts -> {:?}", parts.len(), [n, c_total, h, w]));
    Tensor::new([n, c_total, h, w], out)
}

/// Channels `start..start + len` of `x` (torch.narrow(1, start, len)), copied into a new tensor.
///
/// # Panics
/// If the range is outside `x`'s channels.
pub fn narrow_channels(x: &Tensor, start: usize, len: usize) -> Tensor {
    let [n, c, h, w] = x.shape();
    assert!(start + len <= c, "narrow_channels: {start}..{} outside {c} channels", start + len);
    let span = profile::start();
    let hw = h * w;
    let pieces: Vec<&[f32]> = (0..n).map(|i| &x.image(i)[start * hw..(start + len) * hw]).collect();
    let out = gather(&pieces);
    span.finish(0, || format!("narrow {len} of {:?}", x.shape()));
    Tensor::new([n, len, h, w], out)
}

/// The concatenation of `pieces` in a new (pooled) buffer. Large copies are split over the rayon
/// pool: one core alone does not reach the memory bandwidth these multi-MiB activations need.
fn gather(pieces: &[&[f32]]) -> Vec<f32> {
    /// Floats per parallel copy task (256 KiB).
    const CHUNK: usize = 1 << 16;
    let total: usize = pieces.iter().map(|p| p.len()).sum();
    let mut out = buffers::take(total);
    if total < 4 * CHUNK || num_threads() == 1 {
        for p in pieces {
            out.extend_from_slice(p);
        }
        return out;
    }
    // (source chunk, destination offset) for every CHUNK-sized piece of every input.
    let mut jobs = Vec::with_capacity(total / CHUNK + pieces.len());
    let mut offset = 0;
    for p in pieces {
        for c in p.chunks(CHUNK) {
            jobs.push((c, offset));
            offset += c.len();
        }
    }
    let dst = SyncPtr(out.spare_capacity_mut().as_mut_ptr().cast::<f32>());
    parallel_for(jobs.len(), &|j| {
        let (src, at) = jobs[j];
        // SAFETY: `at + src.len() <= total <= capacity`, the jobs' destination ranges are disjoint,
        // and the source tensors are distinct from the fresh output buffer.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.get().add(at), src.len()) };
    });
    // SAFETY: the jobs wrote all `total` elements.
    unsafe { out.set_len(total) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testutil::Rng;

    #[test]
    fn large_concat_then_narrow_round_trips() {
        let mut rng = Rng::new(8);
        let a = rng.tensor([2, 5, 120, 130]);
        let b = rng.tensor([2, 3, 120, 130]);
        let cat = concat_channels(&[&a, &b]);
        assert_eq!(narrow_channels(&cat, 0, 5), a);
        assert_eq!(narrow_channels(&cat, 5, 3), b);
        assert_eq!(cat.plane(1, 6), b.plane(1, 1));
    }

    #[test]
    fn concat_then_narrow_round_trips() {
        let mut rng = Rng::new(7);
        let a = rng.tensor([2, 3, 4, 5]);
        let b = rng.tensor([2, 1, 4, 5]);
        let c = rng.tensor([2, 2, 4, 5]);
        let cat = concat_channels(&[&a, &b, &c]);
        assert_eq!(cat.shape(), [2, 6, 4, 5]);
        for i in 0..2 {
            assert_eq!(cat.plane(i, 3), b.plane(i, 0));
            assert_eq!(cat.plane(i, 5), c.plane(i, 1));
            assert_eq!(cat.plane(i, 0), a.plane(i, 0));
        }
        assert_eq!(narrow_channels(&cat, 0, 3), a);
        assert_eq!(narrow_channels(&cat, 3, 1), b);
        assert_eq!(narrow_channels(&cat, 4, 2), c);
    }

    #[test]
    #[should_panic(expected = "concat_channels")]
    fn concat_rejects_size_mismatch() {
        concat_channels(&[&Tensor::zeros([1, 1, 2, 2]), &Tensor::zeros([1, 1, 2, 3])]);
    }

    #[test]
    fn add_and_silu() {
        let mut rng = Rng::new(3);
        for len in [17usize, 70_001] {
            let a = rng.tensor([1, 1, 1, len]);
            let b = rng.tensor([1, 1, 1, len]);
            let mut s = a.clone();
            add_assign(&mut s, &b);
            for ((s, a), b) in s.data().iter().zip(a.data()).zip(b.data()) {
                assert_eq!(*s, a + b);
            }
            let mut t = a.clone();
            silu_inplace(&mut t);
            for (t, a) in t.data().iter().zip(a.data()) {
                let want = silu(*a);
                assert!((t - want).abs() <= 1e-6 * want.abs() + 1e-30);
            }
        }
        assert!((sigmoid(0.0) - 0.5).abs() < 1e-7);
        assert!((silu(2.0) - 2.0 / (1.0 + (-2.0f32).exp())).abs() < 1e-7);
    }
}
