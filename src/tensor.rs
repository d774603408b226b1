//! A dense, contiguous tensor: a shape and a buffer on one device.

use std::sync::Arc;

use crate::cuda::{CudaBuffer, device_backend};
use crate::device::Device;
use crate::element::Element;
use crate::error::{Error, Result, checked_product, try_filled_vec};

/// Where a tensor's elements are.
#[derive(Debug, Clone)]
pub(crate) enum Storage<T: Element> {
    Cpu(Vec<T>),
    /// Device memory of CUDA device `ordinal`, shared by clones (tensors are never mutated in place).
    Cuda {
        ordinal: usize,
        buffer: Arc<CudaBuffer<T>>,
    },
    /// The kernel emulator's memory (guard-paged host allocations).
    #[cfg(feature = "emu")]
    Emu(Arc<crate::cuda::emu::EmuDeviceBuffer<T>>),
}

/// A contiguous, row-major tensor (PyTorch's N, C, (D,) (H,) W layout) on one device.
///
/// ```
/// use ferroconv::{Device, Tensor};
/// # fn main() -> ferroconv::Result<()> {
/// let t = Tensor::<f32>::from_vec(&[2, 3], vec![1., 2., 3., 4., 5., 6.])?;
/// assert_eq!(t.shape(), &[2, 3]);
/// assert_eq!(t.device(), Device::Cpu);
/// assert_eq!(t.to_vec()?, vec![1., 2., 3., 4., 5., 6.]);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Tensor<T: Element> {
    shape: Vec<usize>,
    storage: Storage<T>,
}

impl<T: Element> Tensor<T> {
    /// A CPU tensor holding `data`, which must have `prod(shape)` elements.
    pub fn from_vec(shape: &[usize], data: Vec<T>) -> Result<Self> {
        let expected = checked_product("tensor", shape)?;
        if data.len() != expected {
            return Err(Error::DataLength { what: "tensor", shape: shape.to_vec(), expected, got: data.len() });
        }
        Ok(Tensor { shape: shape.to_vec(), storage: Storage::Cpu(data) })
    }

    /// A CPU tensor of zeros.
    pub fn zeros(shape: &[usize]) -> Result<Self> {
        Self::full(shape, T::default())
    }

    /// A CPU tensor with every element `value`.
    pub fn full(shape: &[usize], value: T) -> Result<Self> {
        let len = checked_product("tensor", shape)?;
        Ok(Tensor { shape: shape.to_vec(), storage: Storage::Cpu(try_filled_vec("tensor", len, value)?) })
    }

    /// A CPU tensor from f64 values, each rounded to `T`.
    pub fn from_f64(shape: &[usize], data: &[f64]) -> Result<Self> {
        Self::from_vec(shape, data.iter().map(|&v| T::from_f64(v)).collect())
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The device the elements live on.
    pub fn device(&self) -> Device {
        match &self.storage {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Cuda { ordinal, .. } => Device::Cuda(*ordinal),
            #[cfg(feature = "emu")]
            Storage::Emu(_) => Device::Emu,
        }
    }

    /// The elements, when they are on the CPU.
    pub fn as_slice(&self) -> Result<&[T]> {
        match &self.storage {
            Storage::Cpu(v) => Ok(v),
            _ => Err(Error::DeviceMismatch {
                what: "tensor",
                expected: Device::Cpu.to_string(),
                got: self.device().to_string(),
            }),
        }
    }

    /// A copy of the elements on the host, from any device (waiting for the device's queued work).
    pub fn to_vec(&self) -> Result<Vec<T>> {
        match &self.storage {
            Storage::Cpu(v) => Ok(v.clone()),
            Storage::Cuda { ordinal, buffer } => device_backend(*ordinal)?.download(buffer),
            #[cfg(feature = "emu")]
            Storage::Emu(buffer) => crate::cuda::emu::device_backend()?.download(buffer),
        }
    }

    /// The elements widened to f64, from any device.
    pub fn to_f64_vec(&self) -> Result<Vec<f64>> {
        Ok(self.to_vec()?.into_iter().map(T::to_f64).collect())
    }

    /// A copy on `device` (an explicit copy: ops never move tensors themselves).
    pub fn to_device(&self, device: Device) -> Result<Self> {
        let storage = match device {
            Device::Cpu => Storage::Cpu(self.to_vec()?),
            Device::Cuda(ordinal) => {
                device.ensure_available()?;
                let buffer = device_backend(ordinal)?.upload(&self.to_vec()?)?;
                Storage::Cuda { ordinal, buffer: Arc::new(buffer) }
            }
            #[cfg(feature = "emu")]
            Device::Emu => Storage::Emu(Arc::new(crate::cuda::emu::device_backend()?.upload(&self.to_vec()?)?)),
            #[cfg(not(feature = "emu"))]
            Device::Emu => return Err(crate::device::emulator_not_built()),
        };
        Ok(Tensor { shape: self.shape.clone(), storage })
    }

    pub(crate) fn storage(&self) -> &Storage<T> {
        &self.storage
    }

    pub(crate) fn from_storage(shape: Vec<usize>, storage: Storage<T>) -> Self {
        Tensor { shape, storage }
    }
}
