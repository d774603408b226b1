#![warn(missing_docs)]
//! # ferroconv
//!
//! Convolution layer kernels with PyTorch's exact semantics: `Conv` and
//! `ConvTranspose` in 1, 2 and 3 spatial dims, forward and backward, in f32,
//! f64, f16 and bf16, on the CPU (rayon) and on NVIDIA GPUs (CUDA, through cudarc).
//!
//! ```
//! use ferroconv::{conv2d, conv_transpose2d, ConvOptions, ConvTransposeOptions, Tensor};
//! # fn main() -> ferroconv::Result<()> {
//! let x = Tensor::<f32>::zeros(&[1, 3, 32, 32])?;
//! let w = Tensor::<f32>::zeros(&[16, 3, 3, 3])?;
//! let y = conv2d(&x, &w, None, &ConvOptions::new().padding(1))?;
//! assert_eq!(y.shape(), &[1, 16, 32, 32]);
//!
//! // The transposed conv's trap: 16x16 upsampled by stride 2 is 31x31 without output_padding.
//! let up = Tensor::<f32>::zeros(&[16, 3, 3, 3])?;
//! let x = Tensor::<f32>::zeros(&[1, 16, 16, 16])?;
//! let opts = ConvTransposeOptions::new().stride(2).padding(1);
//! assert_eq!(conv_transpose2d(&x, &up, None, &opts)?.shape(), &[1, 3, 31, 31]);
//! # Ok(()) }
//! ```

pub mod backend;
pub mod bench;
pub mod companion;
pub mod cpu;
pub mod cuda;
pub mod device;
pub mod element;
pub mod error;
pub mod fixture;
pub mod geometry;
pub mod layers;
pub mod ops;
pub mod tensor;

pub use backend::{Activation, Backend, Conv, ConvPrimitives, ConvTranspose, GradRequest};
pub use companion::{
    ChannelBlock, CompanionPrimitives, MaxPoolOptions, PoolGeometry, add, cat_channels, max_pool, max_pool_backward,
    max_pool2d, relu, relu_backward, split_channels,
};
pub use cpu::{CpuAlgorithm, CpuBackend};
pub use device::{Device, DeviceChoice};
pub use element::{Accumulator, DType, Element};
pub use error::{Error, Result};
pub use geometry::{ConvGeometry, ConvOptions, ConvTransposeOptions, Dims, OpKind, Padding, PaddingMode};
pub use layers::{
    Conv1d, Conv2d, Conv3d, ConvBuilder, ConvNd, ConvTranspose1d, ConvTranspose2d, ConvTranspose3d,
    ConvTransposeBuilder, ConvTransposeNd,
};
pub use ops::{
    Gradients, backward, conv, conv_backward, conv_transpose, conv_transpose_backward, conv_transpose1d,
    conv_transpose2d, conv_transpose3d, conv1d, conv2d, conv3d, forward,
};
pub use tensor::Tensor;

pub use half::{bf16, f16};

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
