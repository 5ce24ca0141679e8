//! The CPU compute engine: an NCHW `f32` [`Tensor`] and the handful of kernels YOLO26 needs.
//!
//! Everything is inference-shaped and written as plain functions or small structs (so a backward
//! pass can sit next to each kernel later):
//!
//! * [`Conv2d`]: convolution with folded BatchNorm and a fused [`Activation`]. On AVX-512 CPUs it runs
//!   the engine's own implicit-GEMM kernel (no im2col); elsewhere im2col + the `gemm` crate.
//! * [`max_pool2d`], [`upsample_nearest`], [`concat_channels`], [`narrow_channels`], [`add_assign`],
//!   [`silu_inplace`], and the [`attention`] core of YOLO26's `Attention` block.
//!
//! Kernels split their work over a small fork-join team of spinning helper threads (see `threads.rs`:
//! rayon's sleeping workers take tens of µs to wake, a large share of a 100 µs kernel), sized like the
//! current rayon pool; [`set_num_threads`] sizes that. CPU features are
//! detected at run time ([`Isa`]); `FERROYOLO_ISA=portable|avx2` forces a lower tier.

mod attention;
pub mod backward;
mod buffers;
mod conv;
mod elementwise;
mod igemm;
pub mod int8;
mod pool;
mod profile;
mod simd;
mod tensor;
mod threads;

#[cfg(test)]
mod testutil;

pub use attention::attention;
pub use buffers::release_buffers;
pub use conv::{Activation, Conv2d};
pub use elementwise::{add_assign, concat_channels, narrow_channels, sigmoid, silu, silu_inplace};
pub use pool::{max_pool2d, upsample_nearest};
pub use profile::{process_cpu_ms, profile_report, set_profiling};
pub use simd::{isa, Isa};
pub use tensor::Tensor;
pub use threads::{num_threads, set_num_threads};
