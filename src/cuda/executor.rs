//! Executing plans: the [`Executor`] trait, and [`CudaExecutor`], which runs
//! them on a GPU through cudarc.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DriverError, LaunchConfig, PushKernelArg};

use crate::error::{Error, Result};

use super::kernels::{KernelId, ptx_for_loading};
use super::plan::{Plan, Step};

/// Runs [`Plan`]s and owns the memory they run on.
///
/// [`GpuBackend<E>`](super::GpuBackend) implements every primitive for any
/// executor: it allocates through it, plans, and hands it the plan. Plans
/// name buffers by [`address`](Self::address).
pub trait Executor: Send + Sync + 'static {
    /// A block of device memory, freed when dropped.
    type Allocation: Send + Sync + std::fmt::Debug;

    /// A short description, e.g. `"cuda:0 (NVIDIA H100)"`.
    fn name(&self) -> String;

    /// `bytes` bytes of uninitialised memory (any size, zero included).
    fn alloc(&self, bytes: usize) -> Result<Self::Allocation>;

    /// The address plans use for `allocation` (a device address on a GPU).
    fn address(&self, allocation: &Self::Allocation) -> u64;

    /// Copies `src` to the start of `dst`, which has at least `src.len()` bytes.
    fn upload(&self, src: &[u8], dst: &mut Self::Allocation) -> Result<()>;

    /// Copies the first `dst.len()` bytes of `src` to `dst` once the work
    /// queued before has finished.
    fn download(&self, src: &Self::Allocation, dst: &mut [u8]) -> Result<()>;

    /// Queues (or runs) the plan's steps in order.
    fn execute(&self, plan: &Plan) -> Result<()>;
}

/// An [`Error::Cuda`] for a failed driver call.
pub(crate) fn driver_error(context: impl Into<String>) -> impl FnOnce(DriverError) -> Error {
    let context = context.into();
    move |e| Error::Cuda { context, message: e.to_string() }
}

/// Every kernel of the crate loaded into one context: a function handle per
/// [`KernelId`], resolved once when the module loads.
#[derive(Debug)]
pub struct LoadedKernels {
    /// Indexed by `KernelId as usize`; holds exactly one handle per id.
    functions: Vec<CudaFunction>,
}

impl LoadedKernels {
    /// Loads the kernels' PTX (nvcc's, or NVRTC's compiled once per process)
    /// into `context` and resolves every entry point of kernels.def.
    pub fn load(context: &Arc<CudaContext>) -> Result<Self> {
        let mut modules = Vec::new();
        for ptx in ptx_for_loading()? {
            let module = context.load_module(cudarc::nvrtc::Ptx::from_src(ptx));
            modules.push(module.map_err(driver_error("loading the kernels' PTX"))?);
        }
        let functions = KernelId::ALL
            .iter()
            .map(|id| {
                modules.iter().find_map(|module| module.load_function(id.name()).ok()).ok_or_else(|| Error::Cuda {
                    context: "loading the kernels".into(),
                    message: format!("no kernel named {} in the loaded PTX", id.name()),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(LoadedKernels { functions })
    }

    /// The handle of `id`.
    pub fn function(&self, id: KernelId) -> &CudaFunction {
        &self.functions[id as usize]
    }
}

/// Queues a plan on `stream`.
///
/// # Safety
///
/// 1. Every address in the plan (its [`KernelArgs`](super::KernelArgs) and
///    zero steps) is device memory of `stream`'s context, of at least the size
///    the plan's geometry implies, that stays allocated until the work is done.
/// 2. No other work writes that memory concurrently, and nothing reads the
///    plan's outputs before the plan's work is done.
pub(crate) unsafe fn launch_plan(stream: &CudaStream, kernels: &LoadedKernels, plan: &Plan) -> Result<()> {
    stream.context().bind_to_thread().map_err(driver_error("binding the context"))?;
    for step in &plan.steps {
        match step {
            Step::Zero { address, bytes } => {
                let bytes =
                    usize::try_from(*bytes).map_err(|_| Error::overflow("zero step", format!("{bytes} bytes")))?;
                // SAFETY: by this function's contract, `address` holds `bytes` bytes of device memory.
                unsafe { cudarc::driver::result::memset_d8_async(*address, 0, bytes, stream.cu_stream()) }
                    .map_err(driver_error("zeroing a buffer"))?;
            }
            Step::Kernel(launch) => {
                let config = LaunchConfig {
                    grid_dim: (launch.grid[0], launch.grid[1], launch.grid[2]),
                    block_dim: (launch.block[0], launch.block[1], launch.block[2]),
                    shared_mem_bytes: launch.shared_bytes,
                };
                let mut builder = stream.launch_builder(kernels.function(launch.kernel));
                builder.arg(&launch.args);
                // SAFETY: every entry point takes exactly one `const KernelArgs` by value (common.cuh),
                // of which `launch.args` is the #[repr(C)] twin; its buffers are valid by this
                // function's contract, and the kernels stay within the sizes the geometry implies.
                unsafe { builder.launch(config) }
                    .map_err(driver_error(format!("launching {}", launch.kernel.name())))?;
            }
        }
    }
    Ok(())
}

/// The executor of a CUDA device: one context, one stream, the kernels loaded
/// once. Everything is queued on the stream, in order.
#[derive(Debug)]
pub struct CudaExecutor {
    ordinal: usize,
    name: String,
    stream: Arc<CudaStream>,
    kernels: LoadedKernels,
}

impl CudaExecutor {
    /// The executor of device `ordinal`: probes it (never panics without a
    /// driver), creates a stream and loads the kernels.
    pub fn new(ordinal: usize) -> Result<Self> {
        let device_name = super::probe(ordinal)
            .map_err(|reason| Error::DeviceUnavailable { device: format!("cuda:{ordinal}"), reason })?;
        let context =
            CudaContext::new(ordinal).map_err(driver_error(format!("creating a context on cuda:{ordinal}")))?;
        // SAFETY: this context handle is ours alone. Every buffer allocated through it is used on
        // our one stream only, where the stream's order already serialises all uses, and freed on
        // that stream (stream-ordered), so cudarc's per-buffer events are not needed.
        unsafe { context.disable_event_tracking() };
        let stream = context.new_stream().map_err(driver_error("creating a stream"))?;
        let kernels = LoadedKernels::load(&context)?;
        Ok(CudaExecutor { ordinal, name: format!("cuda:{ordinal} ({device_name})"), stream, kernels })
    }

    /// The device ordinal.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The stream all work is queued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Waits until all queued work is done (and reports any error it raised).
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(driver_error("synchronizing the stream"))
    }
}

impl Executor for CudaExecutor {
    type Allocation = CudaSlice<u8>;

    fn name(&self) -> String {
        self.name.clone()
    }

    fn alloc(&self, bytes: usize) -> Result<CudaSlice<u8>> {
        // SAFETY: the memory is uninitialised; the backend overwrites every buffer before it is read.
        // A zero-byte request gets one byte so that every allocation has a distinct address.
        unsafe { self.stream.alloc::<u8>(bytes.max(1)) }.map_err(|e| Error::Cuda {
            context: format!("allocating {bytes} bytes on cuda:{}", self.ordinal),
            message: e.to_string(),
        })
    }

    fn address(&self, allocation: &CudaSlice<u8>) -> u64 {
        let (address, _record) = cudarc::driver::DevicePtr::device_ptr(allocation, &self.stream);
        address
    }

    fn upload(&self, src: &[u8], dst: &mut CudaSlice<u8>) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        let capacity = dst.len();
        let mut dst = dst.try_slice_mut(..src.len()).ok_or_else(|| Error::InvalidArgument {
            what: "upload",
            detail: format!("{} bytes do not fit a buffer of {capacity} bytes", src.len()),
        })?;
        self.stream.memcpy_htod(src, &mut dst).map_err(driver_error("copying to the device"))
    }

    fn download(&self, src: &CudaSlice<u8>, dst: &mut [u8]) -> Result<()> {
        if !dst.is_empty() {
            let src = src.try_slice(..dst.len()).ok_or_else(|| Error::InvalidArgument {
                what: "download",
                detail: format!("{} bytes requested from a buffer of {} bytes", dst.len(), src.len()),
            })?;
            self.stream.memcpy_dtoh(&src, dst).map_err(driver_error("copying from the device"))?;
        }
        self.synchronize()
    }

    fn execute(&self, plan: &Plan) -> Result<()> {
        // SAFETY: plans come from `GpuBackend`, which allocates every buffer through this
        // executor (so on this context), checks each buffer's length against the geometry, and
        // keeps buffers alive at least until the work on this stream that uses them is done
        // (frees are queued on the same stream).
        unsafe { launch_plan(&self.stream, &self.kernels, plan) }
    }
}
