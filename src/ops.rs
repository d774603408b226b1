//! The functional API: `conv1d` … `conv_transpose3d` and their backward passes,
//! on whichever device the tensors live.

use crate::backend::{Activation, Conv, ConvPrimitives, ConvTranspose, GradRequest};
use crate::cpu::CpuBackend;
use crate::cuda::{CudaExecutor, GpuBackend};
use crate::device::Device;
use crate::element::Element;
use crate::error::{Error, Result};
use crate::geometry::{ConvGeometry, ConvOptions, ConvTransposeOptions, OpKind};
use crate::tensor::{Storage, Tensor};

/// A backend that can see the buffers of tensors on its device and wrap new ones.
pub(crate) trait TensorBackend<T: Element>: ConvPrimitives<T> {
    /// The buffer of `tensor`, which must live on this backend's device.
    fn view<'t>(&self, what: &'static str, tensor: &'t Tensor<T>) -> Result<&'t Self::Buffer<T>>;
    /// A tensor of `shape` owning `buffer`.
    fn wrap(&self, shape: Vec<usize>, buffer: Self::Buffer<T>) -> Tensor<T>;
}

impl<T: Element> TensorBackend<T> for CpuBackend {
    fn view<'t>(&self, what: &'static str, tensor: &'t Tensor<T>) -> Result<&'t Vec<T>> {
        match tensor.storage() {
            Storage::Cpu(v) => Ok(v),
            _ => Err(Error::DeviceMismatch { what, expected: "cpu".into(), got: tensor.device().to_string() }),
        }
    }

    fn wrap(&self, shape: Vec<usize>, buffer: Vec<T>) -> Tensor<T> {
        Tensor::from_storage(shape, Storage::Cpu(buffer))
    }
}

impl<T: Element> TensorBackend<T> for GpuBackend<CudaExecutor> {
    fn view<'t>(&self, what: &'static str, tensor: &'t Tensor<T>) -> Result<&'t Self::Buffer<T>> {
        let ordinal = self.executor().ordinal();
        match tensor.storage() {
            Storage::Cuda { ordinal: o, buffer } if *o == ordinal => Ok(buffer),
            _ => Err(Error::DeviceMismatch {
                what,
                expected: Device::Cuda(ordinal).to_string(),
                got: tensor.device().to_string(),
            }),
        }
    }

    fn wrap(&self, shape: Vec<usize>, buffer: Self::Buffer<T>) -> Tensor<T> {
        let ordinal = self.executor().ordinal();
        Tensor::from_storage(shape, Storage::Cuda { ordinal, buffer: std::sync::Arc::new(buffer) })
    }
}

#[cfg(feature = "emu")]
impl<T: Element> TensorBackend<T> for GpuBackend<crate::cuda::emu::EmuExecutor> {
    fn view<'t>(&self, what: &'static str, tensor: &'t Tensor<T>) -> Result<&'t Self::Buffer<T>> {
        match tensor.storage() {
            Storage::Emu(buffer) => Ok(buffer),
            _ => {
                Err(Error::DeviceMismatch { what, expected: Device::Emu.to_string(), got: tensor.device().to_string() })
            }
        }
    }

    fn wrap(&self, shape: Vec<usize>, buffer: Self::Buffer<T>) -> Tensor<T> {
        Tensor::from_storage(shape, Storage::Emu(std::sync::Arc::new(buffer)))
    }
}

/// The gradients a backward pass returns; each is `None` when not requested
/// (or, for the bias, when there is no bias).
#[derive(Debug, Clone)]
pub struct Gradients<T: Element> {
    /// `∂L/∂input`, shaped like the input.
    pub input: Option<Tensor<T>>,
    /// `∂L/∂weight`, shaped like the weight.
    pub weight: Option<Tensor<T>>,
    /// `∂L/∂bias`, `[C_out]`.
    pub bias: Option<Tensor<T>>,
}

/// The one device all operands live on, or a [`Error::DeviceMismatch`].
pub(crate) fn common_device<T: Element>(operands: &[(&'static str, Option<&Tensor<T>>)]) -> Result<Device> {
    let mut present = operands.iter().filter_map(|(what, t)| t.map(|t| (*what, t.device())));
    let (_, device) = present.next().expect("the input is always present");
    for (what, other) in present {
        if other != device {
            return Err(Error::DeviceMismatch { what, expected: device.to_string(), got: other.to_string() });
        }
    }
    Ok(device)
}

/// Runs `$body` with `$backend` bound to the backend of `$device`.
macro_rules! on_device {
    ($device:expr, |$backend:ident| $body:expr) => {
        match $device {
            $crate::device::Device::Cpu => {
                let $backend = $crate::cpu::CpuBackend::global();
                $body
            }
            $crate::device::Device::Cuda(ordinal) => {
                $device.ensure_available()?;
                let backend = $crate::cuda::device_backend(ordinal)?;
                let $backend = &*backend;
                $body
            }
            #[cfg(feature = "emu")]
            $crate::device::Device::Emu => {
                let backend = $crate::cuda::emu::device_backend()?;
                let $backend = &*backend;
                $body
            }
            #[cfg(not(feature = "emu"))]
            $crate::device::Device::Emu => Err($crate::device::emulator_not_built()),
        }
    };
}
pub(crate) use on_device;

fn check_shape<T: Element>(what: &'static str, t: &Tensor<T>, expected: &[usize]) -> Result<()> {
    if t.shape() != expected {
        return Err(Error::ShapeMismatch { what, expected: expected.to_vec(), got: t.shape().to_vec() });
    }
    Ok(())
}

fn forward_with<T: Element, B: TensorBackend<T>>(
    backend: &B,
    g: &ConvGeometry,
    input: &Tensor<T>,
    weight: &Tensor<T>,
    bias: Option<&Tensor<T>>,
    activation: Activation,
) -> Result<Tensor<T>> {
    let shape = g.op_output_shape();
    let mut out = backend.alloc(crate::error::checked_product("output", &shape)?)?;
    let (x, w) = (backend.view("input", input)?, backend.view("weight", weight)?);
    let b = bias.map(|b| backend.view("bias", b)).transpose()?;
    match g.op {
        OpKind::Conv => Conv::forward(backend, g, x, w, b, activation, &mut out)?,
        OpKind::ConvTranspose => ConvTranspose::forward(backend, g, x, w, b, activation, &mut out)?,
    }
    Ok(backend.wrap(shape, out))
}

fn backward_with<T: Element, B: TensorBackend<T>>(
    backend: &B,
    g: &ConvGeometry,
    input: &Tensor<T>,
    weight: &Tensor<T>,
    grad_output: &Tensor<T>,
    request: GradRequest,
) -> Result<Gradients<T>> {
    let (x, w) = (backend.view("input", input)?, backend.view("weight", weight)?);
    let dy = backend.view("grad_output", grad_output)?;
    let new_buffer = |what, shape: &[usize]| backend.alloc(crate::error::checked_product(what, shape)?);
    let input_grad = if request.input {
        let shape = g.op_input_shape();
        let mut dx = new_buffer("grad_input", &shape)?;
        match g.op {
            OpKind::Conv => Conv::backward_data(backend, g, dy, w, &mut dx)?,
            OpKind::ConvTranspose => ConvTranspose::backward_data(backend, g, dy, w, &mut dx)?,
        }
        Some(backend.wrap(shape, dx))
    } else {
        None
    };
    let weight_grad = if request.weight {
        let shape = g.weight_shape();
        let mut dw = new_buffer("grad_weight", &shape)?;
        match g.op {
            OpKind::Conv => Conv::backward_weight(backend, g, x, dy, &mut dw)?,
            OpKind::ConvTranspose => ConvTranspose::backward_weight(backend, g, x, dy, &mut dw)?,
        }
        Some(backend.wrap(shape, dw))
    } else {
        None
    };
    let bias_grad = if request.bias && g.has_bias {
        let shape = vec![g.op_out_channels()];
        let mut db = new_buffer("grad_bias", &shape)?;
        match g.op {
            OpKind::Conv => Conv::backward_bias(backend, g, dy, &mut db)?,
            OpKind::ConvTranspose => ConvTranspose::backward_bias(backend, g, dy, &mut db)?,
        }
        Some(backend.wrap(shape, db))
    } else {
        None
    };
    Ok(Gradients { input: input_grad, weight: weight_grad, bias: bias_grad })
}

/// Validates a conv for these tensors (the same checks as [`conv`]).
pub fn conv_geometry<T: Element>(
    spatial_dims: usize,
    input: &Tensor<T>,
    weight: &Tensor<T>,
    bias: Option<&Tensor<T>>,
    options: &ConvOptions,
) -> Result<ConvGeometry> {
    ConvGeometry::conv(spatial_dims, input.shape(), weight.shape(), bias.map(Tensor::shape), options)
}

/// Validates a transposed conv for these tensors (the same checks as [`conv_transpose`]).
pub fn conv_transpose_geometry<T: Element>(
    spatial_dims: usize,
    input: &Tensor<T>,
    weight: &Tensor<T>,
    bias: Option<&Tensor<T>>,
    options: &ConvTransposeOptions,
) -> Result<ConvGeometry> {
    ConvGeometry::conv_transpose(spatial_dims, input.shape(), weight.shape(), bias.map(Tensor::shape), options)
}

/// Runs the forward op of a validated geometry on the tensors' device, with
/// `activation` fused into the pass that writes the output.
pub fn forward<T: Element>(
    geometry: &ConvGeometry,
    input: &Tensor<T>,
    weight: &Tensor<T>,
    bias: Option<&Tensor<T>>,
    activation: Activation,
) -> Result<Tensor<T>> {
    check_shape("input", input, &geometry.op_input_shape())?;
    check_shape("weight", weight, &geometry.weight_shape())?;
    if geometry.has_bias != bias.is_some() {
        return Err(Error::InvalidArgument {
            what: "bias",
            detail: format!("the geometry was validated {} a bias", if geometry.has_bias { "with" } else { "without" }),
        });
    }
    if let Some(b) = bias {
        check_shape("bias", b, &[geometry.op_out_channels()])?;
    }
    let device = common_device(&[("input", Some(input)), ("weight", Some(weight)), ("bias", bias)])?;
    on_device!(device, |backend| forward_with(backend, geometry, input, weight, bias, activation))
}

/// Runs the backward op of a validated geometry: the requested gradients of
/// `⟨op(input, weight) + bias, grad_output⟩`.
pub fn backward<T: Element>(
    geometry: &ConvGeometry,
    input: &Tensor<T>,
    weight: &Tensor<T>,
    grad_output: &Tensor<T>,
    request: GradRequest,
) -> Result<Gradients<T>> {
    check_shape("input", input, &geometry.op_input_shape())?;
    check_shape("weight", weight, &geometry.weight_shape())?;
    check_shape("grad_output", grad_output, &geometry.op_output_shape())?;
    let device =
        common_device(&[("input", Some(input)), ("weight", Some(weight)), ("grad_output", Some(grad_output))])?;
    on_device!(device, |backend| backward_with(backend, geometry, input, weight, grad_output, request))
}

/// `F.convNd` for `spatial_dims` = 1, 2 or 3.
///
/// ```
/// use ferroconv::{conv, ConvOptions, Tensor};
/// # fn main() -> ferroconv::Result<()> {
/// let x = Tensor::<f32>::zeros(&[1, 3, 32, 32])?;
/// let w = Tensor::<f32>::zeros(&[16, 3, 3, 3])?;
/// let y = conv(2, &x, &w, None, &ConvOptions::new().padding(1))?;
/// assert_eq!(y.shape(), &[1, 16, 32, 32]);
/// # Ok(()) }
/// ```
pub fn conv<T: Element>(
    spatial_dims: usize,
    input: &Tensor<T>,
    weight: &Tensor<T>,
    bias: Option<&Tensor<T>>,
    options: &ConvOptions,
) -> Result<Tensor<T>> {
    forward(&conv_geometry(spatial_dims, input, weight, bias, options)?, input, weight, bias, Activation::Identity)
}

/// `F.conv_transposeNd` for `spatial_dims` = 1, 2 or 3.
///
/// ```
/// use ferroconv::{conv_transpose, ConvTransposeOptions, Tensor};
/// # fn main() -> ferroconv::Result<()> {
/// let x = Tensor::<f32>::zeros(&[1, 16, 16, 16])?;
/// let w = Tensor::<f32>::zeros(&[16, 3, 3, 3])?;
/// let opts = ConvTransposeOptions::new().stride(2).padding(1).output_padding(1);
/// assert_eq!(conv_transpose(2, &x, &w, None, &opts)?.shape(), &[1, 3, 32, 32]);
/// # Ok(()) }
/// ```
pub fn conv_transpose<T: Element>(
    spatial_dims: usize,
    input: &Tensor<T>,
    weight: &Tensor<T>,
    bias: Option<&Tensor<T>>,
    options: &ConvTransposeOptions,
) -> Result<Tensor<T>> {
    forward(
        &conv_transpose_geometry(spatial_dims, input, weight, bias, options)?,
        input,
        weight,
        bias,
        Activation::Identity,
    )
}

/// The backward pass of [`conv`]: the requested gradients given `grad_output`.
///
/// ```
/// use ferroconv::{conv_backward, ConvOptions, GradRequest, Tensor};
/// # fn main() -> ferroconv::Result<()> {
/// let x = Tensor::<f64>::full(&[1, 1, 4], 1.0)?;
/// let w = Tensor::<f64>::full(&[1, 1, 2], 1.0)?;
/// let b = Tensor::<f64>::zeros(&[1])?;
/// let dy = Tensor::<f64>::full(&[1, 1, 3], 1.0)?;
/// let grads = conv_backward(1, &x, &w, Some(&b), &dy, &ConvOptions::new(), GradRequest::ALL)?;
/// assert_eq!(grads.input.unwrap().to_vec()?, vec![1., 2., 2., 1.]);
/// assert_eq!(grads.weight.unwrap().to_vec()?, vec![3., 3.]);
/// assert_eq!(grads.bias.unwrap().to_vec()?, vec![3.]);
/// # Ok(()) }
/// ```
pub fn conv_backward<T: Element>(
    spatial_dims: usize,
    input: &Tensor<T>,
    weight: &Tensor<T>,
    bias: Option<&Tensor<T>>,
    grad_output: &Tensor<T>,
    options: &ConvOptions,
    request: GradRequest,
) -> Result<Gradients<T>> {
    let g = conv_geometry(spatial_dims, input, weight, bias, options)?;
    backward(&g, input, weight, grad_output, request)
}

/// The backward pass of [`conv_transpose`].
pub fn conv_transpose_backward<T: Element>(
    spatial_dims: usize,
    input: &Tensor<T>,
    weight: &Tensor<T>,
    bias: Option<&Tensor<T>>,
    grad_output: &Tensor<T>,
    options: &ConvTransposeOptions,
    request: GradRequest,
) -> Result<Gradients<T>> {
    let g = conv_transpose_geometry(spatial_dims, input, weight, bias, options)?;
    backward(&g, input, weight, grad_output, request)
}

macro_rules! ranked {
    ($($name:ident, $generic:ident, $options:ty, $dims:literal, $doc:literal;)*) => {$(
        #[doc = $doc]
        pub fn $name<T: Element>(
            input: &Tensor<T>,
            weight: &Tensor<T>,
            bias: Option<&Tensor<T>>,
            options: &$options,
        ) -> Result<Tensor<T>> {
            $generic($dims, input, weight, bias, options)
        }
    )*};
}

ranked! {
    conv1d, conv, ConvOptions, 1, "`F.conv1d`: input `[N, C_in, W]`, weight `[C_out, C_in/groups, k]`.";
    conv2d, conv, ConvOptions, 2, "`F.conv2d`: input `[N, C_in, H, W]`, weight `[C_out, C_in/groups, kh, kw]`.";
    conv3d, conv, ConvOptions, 3, "`F.conv3d`: input `[N, C_in, D, H, W]`, weight `[C_out, C_in/groups, kd, kh, kw]`.";
    conv_transpose1d, conv_transpose, ConvTransposeOptions, 1, "`F.conv_transpose1d`: weight `[C_in, C_out/groups, k]`.";
    conv_transpose2d, conv_transpose, ConvTransposeOptions, 2, "`F.conv_transpose2d`: weight `[C_in, C_out/groups, kh, kw]`.";
    conv_transpose3d, conv_transpose, ConvTransposeOptions, 3, "`F.conv_transpose3d`: weight `[C_in, C_out/groups, kd, kh, kw]`.";
}
