//! [`GpuBackend`]: the crate's primitives on any [`Executor`], by planning
//! each call and handing the plan over. Nothing is copied to the host inside an
//! op; the only host-device copies are [`upload`](GpuBackend::upload) and
//! [`download`](GpuBackend::download).

use std::any::TypeId;
use std::marker::PhantomData;
use std::sync::Mutex;

use half::{bf16, f16};

use crate::backend::{Activation, Backend, ConvPrimitives};
use crate::element::Element;
use crate::error::{Error, Result, checked_product};
use crate::geometry::ConvGeometry;

use super::executor::Executor;
use super::plan::{CorrelateBuffers, GpuAlgorithm, Plan, Planner, WeightBuffers, Workspace};

/// A buffer of `len` elements of `T` in an executor's memory.
#[derive(Debug)]
pub struct GpuBuffer<T, A> {
    allocation: A,
    len: usize,
    element: PhantomData<fn() -> T>,
}

impl<T, A> GpuBuffer<T, A> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The executor's allocation behind the buffer.
    pub fn allocation(&self) -> &A {
        &self.allocation
    }
}

/// The primitives on a GPU (or on anything that runs plans): generic over the
/// [`Executor`], so the same planning code runs on a device and on the emulator.
///
/// ```no_run
/// use ferroconv::cuda::{CudaExecutor, GpuBackend};
/// use ferroconv::{Activation, Conv, ConvGeometry, ConvOptions};
/// # fn main() -> ferroconv::Result<()> {
/// let gpu = GpuBackend::new(CudaExecutor::new(0)?);
/// let g = ConvGeometry::conv(1, &[1, 1, 4], &[1, 1, 2], None, &ConvOptions::new())?;
/// let (x, w) = (gpu.upload(&[1f32, 2., 3., 4.])?, gpu.upload(&[1f32, 1.])?);
/// let mut y = gpu.alloc_buffer::<f32>(3)?;
/// Conv::forward(&gpu, &g, &x, &w, None, Activation::Identity, &mut y)?;
/// assert_eq!(gpu.download(&y)?, vec![3., 5., 7.]);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct GpuBackend<E: Executor> {
    executor: E,
    algorithm: GpuAlgorithm,
    /// Scratch memory for split reductions, grown on demand and reused by every call.
    workspace: Mutex<Option<(E::Allocation, usize)>>,
}

impl<E: Executor> GpuBackend<E> {
    /// A backend running its plans on `executor`, choosing algorithms per problem.
    pub fn new(executor: E) -> Self {
        GpuBackend { executor, algorithm: GpuAlgorithm::Auto, workspace: Mutex::new(None) }
    }

    /// The same backend, forced to use `algorithm` for the correlations.
    pub fn with_algorithm(mut self, algorithm: GpuAlgorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// The algorithm this backend was asked to use.
    pub fn algorithm(&self) -> GpuAlgorithm {
        self.algorithm
    }

    /// The executor.
    pub fn executor(&self) -> &E {
        &self.executor
    }

    /// A buffer of `len` elements, contents unspecified (each op overwrites its outputs).
    pub fn alloc_buffer<T: Element>(&self, len: usize) -> Result<GpuBuffer<T, E::Allocation>> {
        let bytes = byte_len::<T>(len)?;
        Ok(GpuBuffer { allocation: self.executor.alloc(bytes)?, len, element: PhantomData })
    }

    /// A buffer holding a copy of `data`.
    pub fn upload<T: Element>(&self, data: &[T]) -> Result<GpuBuffer<T, E::Allocation>> {
        let mut buffer = self.alloc_buffer::<T>(data.len())?;
        self.executor.upload(as_bytes(data)?, &mut buffer.allocation)?;
        Ok(buffer)
    }

    /// The elements of `buffer`, once the work queued before has finished.
    pub fn download<T: Element>(&self, buffer: &GpuBuffer<T, E::Allocation>) -> Result<Vec<T>> {
        let mut data = crate::error::try_filled_vec("download", buffer.len, T::default())?;
        self.executor.download(&buffer.allocation, as_bytes_mut(&mut data)?)?;
        Ok(data)
    }

    fn address<T>(&self, buffer: &GpuBuffer<T, E::Allocation>) -> u64 {
        self.executor.address(&buffer.allocation)
    }

    fn planner<T: Element>(&self) -> Planner {
        Planner::new(T::DTYPE, self.algorithm)
    }

    /// Builds a plan that may need `bytes` of workspace and executes it, holding
    /// the workspace until the plan is queued (later plans queue after it).
    fn run_with_workspace(&self, bytes: u64, plan: impl FnOnce(Workspace) -> Result<Plan>) -> Result<()> {
        if bytes == 0 {
            return self.executor.execute(&plan(Workspace::default())?);
        }
        let bytes = usize::try_from(bytes).map_err(|_| Error::overflow("workspace", format!("{bytes} bytes")))?;
        let mut workspace = self.workspace.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if workspace.as_ref().is_none_or(|(_, capacity)| *capacity < bytes) {
            *workspace = None; // free the old one first
            *workspace = Some((self.executor.alloc(bytes)?, bytes));
        }
        let (allocation, capacity) = workspace.as_ref().expect("the workspace was just ensured");
        let region = Workspace { address: self.executor.address(allocation), bytes: *capacity as u64 };
        self.executor.execute(&plan(region)?)
    }
}

impl<E: Executor> Backend for GpuBackend<E> {
    type Buffer<T: Element> = GpuBuffer<T, E::Allocation>;

    fn name(&self) -> String {
        self.executor.name()
    }
}

/// Checks that a buffer has the length its geometry implies.
fn check_len<T, A>(what: &'static str, buffer: &GpuBuffer<T, A>, shape: &[usize]) -> Result<()> {
    let expected = checked_product(what, shape)?;
    if buffer.len != expected {
        return Err(Error::DataLength { what, shape: shape.to_vec(), expected, got: buffer.len });
    }
    Ok(())
}

impl<T: Element, E: Executor> ConvPrimitives<T> for GpuBackend<E> {
    fn alloc(&self, len: usize) -> Result<Self::Buffer<T>> {
        self.alloc_buffer(len)
    }

    fn correlate(
        &self,
        g: &ConvGeometry,
        x: &Self::Buffer<T>,
        w: &Self::Buffer<T>,
        bias: Option<&Self::Buffer<T>>,
        activation: Activation,
        y: &mut Self::Buffer<T>,
    ) -> Result<()> {
        check_len("x", x, &g.x_shape())?;
        check_len("weight", w, &g.weight_shape())?;
        check_len("y", y, &g.y_shape())?;
        if let Some(b) = bias {
            check_len("bias", b, &[g.out_channels])?;
        }
        let buffers = CorrelateBuffers {
            x: self.address(x),
            w: self.address(w),
            bias: bias.map(|b| self.address(b)),
            y: self.address(y),
        };
        self.executor.execute(&self.planner::<T>().correlate(g, buffers, activation)?)
    }

    fn correlate_adjoint(
        &self,
        g: &ConvGeometry,
        y: &Self::Buffer<T>,
        w: &Self::Buffer<T>,
        bias: Option<&Self::Buffer<T>>,
        activation: Activation,
        x: &mut Self::Buffer<T>,
    ) -> Result<()> {
        check_len("y", y, &g.y_shape())?;
        check_len("weight", w, &g.weight_shape())?;
        check_len("x", x, &g.x_shape())?;
        if let Some(b) = bias {
            check_len("bias", b, &[g.in_channels])?;
        }
        let buffers = CorrelateBuffers {
            x: self.address(x),
            w: self.address(w),
            bias: bias.map(|b| self.address(b)),
            y: self.address(y),
        };
        self.executor.execute(&self.planner::<T>().correlate_adjoint(g, buffers, activation)?)
    }

    fn correlate_weight(
        &self,
        g: &ConvGeometry,
        x: &Self::Buffer<T>,
        y: &Self::Buffer<T>,
        dw: &mut Self::Buffer<T>,
    ) -> Result<()> {
        check_len("x", x, &g.x_shape())?;
        check_len("y", y, &g.y_shape())?;
        check_len("grad_weight", dw, &g.weight_shape())?;
        let planner = self.planner::<T>();
        let buffers = WeightBuffers { x: self.address(x), y: self.address(y), dw: self.address(dw) };
        self.run_with_workspace(planner.correlate_weight_workspace(g)?, |workspace| {
            planner.correlate_weight(g, buffers, workspace)
        })
    }

    fn channel_sums(
        &self,
        batch: usize,
        channels: usize,
        volume: usize,
        t: &Self::Buffer<T>,
        sums: &mut Self::Buffer<T>,
    ) -> Result<()> {
        check_len("tensor", t, &[batch, channels, volume])?;
        check_len("sums", sums, &[channels])?;
        let planner = self.planner::<T>();
        let (t, sums) = (self.address(t), self.address(sums));
        self.run_with_workspace(planner.channel_sums_workspace(batch, channels, volume)?, |workspace| {
            planner.channel_sums(batch, channels, volume, t, sums, workspace)
        })
    }

    fn pad(&self, g: &ConvGeometry, x: &Self::Buffer<T>, padded: &mut Self::Buffer<T>) -> Result<()> {
        check_len("x", x, &g.x_shape())?;
        check_len("padded x", padded, &g.padded_x_shape())?;
        self.executor.execute(&self.planner::<T>().pad(g, self.address(x), self.address(padded))?)
    }

    fn fold_padding(&self, g: &ConvGeometry, padded: &Self::Buffer<T>, x: &mut Self::Buffer<T>) -> Result<()> {
        check_len("padded x", padded, &g.padded_x_shape())?;
        check_len("x", x, &g.x_shape())?;
        self.executor.execute(&self.planner::<T>().fold_padding(g, self.address(padded), self.address(x))?)
    }
}

/// Whether `T` is one of the four element types the kernels know (which are
/// plain data: every byte initialised, every bit pattern a value).
pub(crate) fn check_kernel_element<T: Element>() -> Result<()> {
    let known = [TypeId::of::<f32>(), TypeId::of::<f64>(), TypeId::of::<f16>(), TypeId::of::<bf16>()];
    if known.contains(&TypeId::of::<T>()) {
        Ok(())
    } else {
        Err(Error::InvalidArgument {
            what: "element type",
            detail: format!(
                "{} is not one of the GPU kernels' types (f32, f64, f16, bf16)",
                std::any::type_name::<T>()
            ),
        })
    }
}

fn byte_len<T: Element>(len: usize) -> Result<usize> {
    check_kernel_element::<T>()?;
    len.checked_mul(std::mem::size_of::<T>()).ok_or_else(|| Error::overflow("buffer", format!("{len} elements")))
}

fn as_bytes<T: Element>(data: &[T]) -> Result<&[u8]> {
    check_kernel_element::<T>()?;
    // SAFETY: T is f32, f64, f16 or bf16 (checked above): no padding, every byte initialised.
    Ok(unsafe { std::slice::from_raw_parts(data.as_ptr().cast::<u8>(), std::mem::size_of_val(data)) })
}

fn as_bytes_mut<T: Element>(data: &mut [T]) -> Result<&mut [u8]> {
    check_kernel_element::<T>()?;
    // SAFETY: T is f32, f64, f16 or bf16 (checked above): no padding, and every bit pattern is a
    // valid value, so any bytes written through the view leave valid elements.
    Ok(unsafe { std::slice::from_raw_parts_mut(data.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(data)) })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::cuda::plan::Step;
    use crate::element::DType;
    use crate::geometry::ConvOptions;

    /// Host memory for allocations; records the plans instead of running them.
    #[derive(Debug, Default)]
    struct Recorder {
        plans: Mutex<Vec<Plan>>,
        allocations: Mutex<Vec<usize>>,
    }

    impl Executor for Recorder {
        type Allocation = Vec<u8>;

        fn name(&self) -> String {
            "recorder".into()
        }

        fn alloc(&self, bytes: usize) -> Result<Vec<u8>> {
            self.allocations.lock().unwrap().push(bytes);
            Ok(vec![0xAA; bytes.max(1)])
        }

        fn address(&self, allocation: &Vec<u8>) -> u64 {
            allocation.as_ptr() as u64
        }

        fn upload(&self, src: &[u8], dst: &mut Vec<u8>) -> Result<()> {
            dst[..src.len()].copy_from_slice(src);
            Ok(())
        }

        fn download(&self, src: &Vec<u8>, dst: &mut [u8]) -> Result<()> {
            dst.copy_from_slice(&src[..dst.len()]);
            Ok(())
        }

        fn execute(&self, plan: &Plan) -> Result<()> {
            self.plans.lock().unwrap().push(plan.clone());
            Ok(())
        }
    }

    #[test]
    fn uploads_come_back_bit_for_bit() {
        let gpu = GpuBackend::new(Recorder::default());
        let values = [f16::from_f32(1.5), f16::NAN, f16::from_f32(-0.0), f16::MAX];
        let buffer = gpu.upload(&values).unwrap();
        assert_eq!(buffer.len(), 4);
        let back = gpu.download(&buffer).unwrap();
        assert_eq!(back.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), values.map(|v| v.to_bits()));
    }

    #[test]
    fn buffers_of_the_wrong_length_are_refused_before_anything_runs() {
        let gpu = GpuBackend::new(Recorder::default());
        let g = ConvGeometry::conv(1, &[2, 3, 8], &[4, 3, 3], None, &ConvOptions::new()).unwrap();
        let x = gpu.alloc_buffer::<f32>(2 * 3 * 8).unwrap();
        let w = gpu.alloc_buffer::<f32>(4 * 3 * 3 + 1).unwrap();
        let mut y = gpu.alloc_buffer::<f32>(2 * 4 * 6).unwrap();
        let e = gpu.correlate(&g, &x, &w, None, Activation::Identity, &mut y).unwrap_err();
        assert_eq!(e.kind(), "data_length");
        assert!(e.to_string().contains("weight"), "{e}");
        assert!(gpu.executor().plans.lock().unwrap().is_empty());
    }

    #[test]
    fn the_workspace_is_allocated_once_and_reused() {
        let gpu = GpuBackend::new(Recorder::default());
        let g = ConvGeometry::conv(2, &[16, 16, 64, 64], &[16, 16, 3, 3], None, &ConvOptions::new()).unwrap();
        let x = gpu.alloc_buffer::<f32>(16 * 16 * 64 * 64).unwrap();
        let y = gpu.alloc_buffer::<f32>(16 * 16 * 62 * 62).unwrap();
        let mut dw = gpu.alloc_buffer::<f32>(16 * 16 * 9).unwrap();
        let allocations_before = gpu.executor().allocations.lock().unwrap().len();
        gpu.correlate_weight(&g, &x, &y, &mut dw).unwrap();
        gpu.correlate_weight(&g, &x, &y, &mut dw).unwrap();
        let allocations = gpu.executor().allocations.lock().unwrap()[allocations_before..].to_vec();
        let planner = Planner::new(DType::F32, GpuAlgorithm::Auto);
        assert_eq!(allocations, vec![planner.correlate_weight_workspace(&g).unwrap() as usize]);

        let plans = gpu.executor().plans.lock().unwrap();
        assert_eq!(plans.len(), 2);
        assert_eq!(plans[0], plans[1]);
        let Step::Kernel(first) = &plans[0].steps[0] else { panic!("{:?}", plans[0]) };
        assert_eq!((first.args.x, first.args.y), (gpu.address(&x), gpu.address(&y)));
    }

    #[test]
    fn only_the_four_kernel_types_reach_a_device() {
        #[derive(Debug, Clone, Copy, Default, PartialEq)]
        struct Fixed(f32);
        impl Element for Fixed {
            type Accum = f32;
            const DTYPE: DType = DType::F32;
            fn to_accum(self) -> f32 {
                self.0
            }
            fn from_accum(v: f32) -> Self {
                Fixed(v)
            }
            fn to_f64(self) -> f64 {
                self.0 as f64
            }
            fn from_f64(v: f64) -> Self {
                Fixed(v as f32)
            }
            fn nan() -> Self {
                Fixed(f32::NAN)
            }
        }
        let gpu = GpuBackend::new(Recorder::default());
        assert_eq!(gpu.alloc_buffer::<Fixed>(4).unwrap_err().kind(), "invalid_argument");
        assert_eq!(gpu.upload(&[Fixed(1.0)]).unwrap_err().kind(), "invalid_argument");
    }
}
