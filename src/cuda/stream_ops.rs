//! The primitives on memory and a stream the caller owns: the entry point for a
//! training library that keeps its own `CudaSlice`s, stream and workspace.

use std::sync::Arc;

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut};

use crate::backend::Activation;
use crate::element::Element;
use crate::error::{Error, Result, checked_product};
use crate::geometry::ConvGeometry;

use super::backend::check_kernel_element;
use super::executor::{LoadedKernels, launch_plan};
use super::plan::{CorrelateBuffers, GpuAlgorithm, Plan, Planner, WeightBuffers, Workspace};

/// The crate's primitives queued on a caller's stream, reading and writing the
/// caller's buffers (`CudaSlice`s or views of them), with caller-provided
/// workspace. Nothing is allocated and nothing waits for the GPU.
///
/// The primitives are those of [`ConvPrimitives`](crate::ConvPrimitives), on a
/// zero-padded geometry: a conv's forward is [`correlate`](Self::correlate),
/// its backward-data [`correlate_adjoint`](Self::correlate_adjoint), its
/// backward-weight [`correlate_weight`](Self::correlate_weight) and its bias
/// gradient [`channel_sums`](Self::channel_sums); a transposed conv swaps the
/// first two. Other padding modes [`pad`](Self::pad) the input first and
/// [`fold_padding`](Self::fold_padding) the input gradient after.
///
/// ```no_run
/// use cudarc::driver::CudaContext;
/// use ferroconv::cuda::StreamOps;
/// use ferroconv::{Activation, ConvGeometry, ConvOptions};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let stream = CudaContext::new(0)?.default_stream();
/// let ops = StreamOps::new(stream.clone())?; // loads the kernels once; keep it
///
/// let g = ConvGeometry::conv(2, &[8, 64, 32, 32], &[128, 64, 3, 3], Some(&[128]), &ConvOptions::new().padding(1))?;
/// let x = stream.clone_htod(&vec![0.5f32; 8 * 64 * 32 * 32])?;
/// let w = stream.clone_htod(&vec![0.01f32; 128 * 64 * 3 * 3])?;
/// let b = stream.clone_htod(&vec![0.1f32; 128])?;
/// let mut y = stream.alloc_zeros::<f32>(8 * 128 * 32 * 32)?;
/// ops.correlate(&g, &x, &w, Some(&b), Activation::Relu, &mut y)?; // conv2d + bias + ReLU
///
/// // The weight gradient reduces in two deterministic passes through a workspace.
/// let dy = stream.clone_htod(&vec![1f32; 8 * 128 * 32 * 32])?;
/// let mut dw = stream.alloc_zeros::<f32>(128 * 64 * 3 * 3)?;
/// let mut workspace = stream.alloc_zeros::<u8>(ops.correlate_weight_workspace::<f32>(&g)?.max(1))?;
/// ops.correlate_weight(&g, &x, &dy, &mut dw, &mut workspace)?;
/// let dw = stream.clone_dtoh(&dw)?; // waits for the stream
/// # let _ = dw;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct StreamOps {
    stream: Arc<CudaStream>,
    kernels: LoadedKernels,
    algorithm: GpuAlgorithm,
}

impl StreamOps {
    /// Loads the kernels into `stream`'s context (PTX, or NVRTC's compilation,
    /// done once per process). Create one per stream and keep it.
    pub fn new(stream: Arc<CudaStream>) -> Result<Self> {
        let kernels = LoadedKernels::load(stream.context())?;
        Ok(StreamOps { stream, kernels, algorithm: GpuAlgorithm::Auto })
    }

    /// The same, forced to use `algorithm` for the correlations.
    pub fn with_algorithm(mut self, algorithm: GpuAlgorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// The stream work is queued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Bytes of workspace [`correlate_weight`](Self::correlate_weight) needs (0: none).
    pub fn correlate_weight_workspace<T: Element>(&self, g: &ConvGeometry) -> Result<usize> {
        to_usize(self.planner::<T>()?.correlate_weight_workspace(g)?)
    }

    /// Bytes of workspace [`channel_sums`](Self::channel_sums) needs (0: none).
    pub fn channel_sums_workspace<T: Element>(&self, batch: usize, channels: usize, volume: usize) -> Result<usize> {
        to_usize(self.planner::<T>()?.channel_sums_workspace(batch, channels, volume)?)
    }

    /// `y = act(x ⋆ w + bias)` (see [`ConvPrimitives::correlate`](crate::ConvPrimitives::correlate)).
    pub fn correlate<T: Element>(
        &self,
        g: &ConvGeometry,
        x: &impl DevicePtr<T>,
        w: &impl DevicePtr<T>,
        bias: Option<&impl DevicePtr<T>>,
        activation: Activation,
        y: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        self.check("x", x.len(), x.stream(), &g.x_shape())?;
        self.check("weight", w.len(), w.stream(), &g.weight_shape())?;
        self.check("y", y.len(), y.stream(), &g.y_shape())?;
        if let Some(b) = bias {
            self.check("bias", b.len(), b.stream(), &[g.out_channels])?;
        }
        let s = &self.stream;
        let ((xa, _x), (wa, _w), b, (ya, _y)) =
            (x.device_ptr(s), w.device_ptr(s), bias.map(|b| b.device_ptr(s)), y.device_ptr_mut(s));
        let buffers = CorrelateBuffers { x: xa, w: wa, bias: b.as_ref().map(|(address, _)| *address), y: ya };
        self.launch(&self.planner::<T>()?.correlate(g, buffers, activation)?)
    }

    /// `x = act(yᵀ ⋆ w + bias)` (see [`ConvPrimitives::correlate_adjoint`](crate::ConvPrimitives::correlate_adjoint)).
    pub fn correlate_adjoint<T: Element>(
        &self,
        g: &ConvGeometry,
        y: &impl DevicePtr<T>,
        w: &impl DevicePtr<T>,
        bias: Option<&impl DevicePtr<T>>,
        activation: Activation,
        x: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        self.check("y", y.len(), y.stream(), &g.y_shape())?;
        self.check("weight", w.len(), w.stream(), &g.weight_shape())?;
        self.check("x", x.len(), x.stream(), &g.x_shape())?;
        if let Some(b) = bias {
            self.check("bias", b.len(), b.stream(), &[g.in_channels])?;
        }
        let s = &self.stream;
        let ((ya, _y), (wa, _w), b, (xa, _x)) =
            (y.device_ptr(s), w.device_ptr(s), bias.map(|b| b.device_ptr(s)), x.device_ptr_mut(s));
        let buffers = CorrelateBuffers { x: xa, w: wa, bias: b.as_ref().map(|(address, _)| *address), y: ya };
        self.launch(&self.planner::<T>()?.correlate_adjoint(g, buffers, activation)?)
    }

    /// `dw = Σ x ⋆ y`, with at least [`correlate_weight_workspace`](Self::correlate_weight_workspace) bytes of workspace.
    pub fn correlate_weight<T: Element>(
        &self,
        g: &ConvGeometry,
        x: &impl DevicePtr<T>,
        y: &impl DevicePtr<T>,
        dw: &mut impl DevicePtrMut<T>,
        workspace: &mut impl DevicePtrMut<u8>,
    ) -> Result<()> {
        self.check("x", x.len(), x.stream(), &g.x_shape())?;
        self.check("y", y.len(), y.stream(), &g.y_shape())?;
        self.check("grad_weight", dw.len(), dw.stream(), &g.weight_shape())?;
        self.check_context("workspace", workspace.stream())?;
        let s = &self.stream;
        let bytes = workspace.len() as u64;
        let ((xa, _x), (ya, _y), (dwa, _dw), (wsa, _ws)) =
            (x.device_ptr(s), y.device_ptr(s), dw.device_ptr_mut(s), workspace.device_ptr_mut(s));
        let workspace = Workspace { address: wsa, bytes };
        self.launch(&self.planner::<T>()?.correlate_weight(g, WeightBuffers { x: xa, y: ya, dw: dwa }, workspace)?)
    }

    /// `sums[c] = Σ_{n, p} t[n, c, p]`, with at least [`channel_sums_workspace`](Self::channel_sums_workspace) bytes of workspace.
    #[allow(clippy::too_many_arguments)] // the shape is three sizes, as in ConvPrimitives::channel_sums
    pub fn channel_sums<T: Element>(
        &self,
        batch: usize,
        channels: usize,
        volume: usize,
        t: &impl DevicePtr<T>,
        sums: &mut impl DevicePtrMut<T>,
        workspace: &mut impl DevicePtrMut<u8>,
    ) -> Result<()> {
        self.check("tensor", t.len(), t.stream(), &[batch, channels, volume])?;
        self.check("sums", sums.len(), sums.stream(), &[channels])?;
        self.check_context("workspace", workspace.stream())?;
        let s = &self.stream;
        let bytes = workspace.len() as u64;
        let ((ta, _t), (sa, _s), (wsa, _ws)) = (t.device_ptr(s), sums.device_ptr_mut(s), workspace.device_ptr_mut(s));
        let workspace = Workspace { address: wsa, bytes };
        self.launch(&self.planner::<T>()?.channel_sums(batch, channels, volume, ta, sa, workspace)?)
    }

    /// `padded = pad(x)` by the geometry's padding and mode.
    pub fn pad<T: Element>(
        &self,
        g: &ConvGeometry,
        x: &impl DevicePtr<T>,
        padded: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        self.check("x", x.len(), x.stream(), &g.x_shape())?;
        self.check("padded x", padded.len(), padded.stream(), &g.padded_x_shape())?;
        let ((xa, _x), (pa, _p)) = (x.device_ptr(&self.stream), padded.device_ptr_mut(&self.stream));
        self.launch(&self.planner::<T>()?.pad(g, xa, pa)?)
    }

    /// `x = padᵀ(padded)`: the adjoint of [`pad`](Self::pad).
    pub fn fold_padding<T: Element>(
        &self,
        g: &ConvGeometry,
        padded: &impl DevicePtr<T>,
        x: &mut impl DevicePtrMut<T>,
    ) -> Result<()> {
        self.check("padded x", padded.len(), padded.stream(), &g.padded_x_shape())?;
        self.check("x", x.len(), x.stream(), &g.x_shape())?;
        let ((pa, _p), (xa, _x)) = (padded.device_ptr(&self.stream), x.device_ptr_mut(&self.stream));
        self.launch(&self.planner::<T>()?.fold_padding(g, pa, xa)?)
    }

    /// The planner for `T`, which must be one of the kernels' four element types.
    fn planner<T: Element>(&self) -> Result<Planner> {
        check_kernel_element::<T>()?;
        Ok(Planner::new(T::DTYPE, self.algorithm))
    }

    fn launch(&self, plan: &Plan) -> Result<()> {
        // SAFETY: every address in the plan comes from a buffer checked by `check` (this stream's
        // context, the length the geometry implies) whose device_ptr guard is alive in the caller
        // until the launch is queued; the guards then record the use, so cudarc's event tracking
        // keeps other streams (and the buffers' frees) ordered after this work.
        unsafe { launch_plan(&self.stream, &self.kernels, plan) }
    }

    fn check_context(&self, what: &'static str, stream: &Arc<CudaStream>) -> Result<()> {
        if stream.context() == self.stream.context() {
            Ok(())
        } else {
            Err(Error::DeviceMismatch {
                what,
                expected: format!("cuda:{}", self.stream.context().ordinal()),
                got: format!("cuda:{}", stream.context().ordinal()),
            })
        }
    }

    /// Checks a buffer's context and its length against `shape`.
    fn check(&self, what: &'static str, len: usize, stream: &Arc<CudaStream>, shape: &[usize]) -> Result<()> {
        self.check_context(what, stream)?;
        let expected = checked_product(what, shape)?;
        if len != expected {
            return Err(Error::DataLength { what, shape: shape.to_vec(), expected, got: len });
        }
        Ok(())
    }
}

fn to_usize(bytes: u64) -> Result<usize> {
    usize::try_from(bytes).map_err(|_| Error::overflow("workspace", format!("{bytes} bytes")))
}
