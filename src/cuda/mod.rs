//! The CUDA backend (cudarc, loaded dynamically: nothing CUDA is needed to build).
//!
//! Layers, bottom up:
//! - [`kernels`]: the kernel ids (from `kernels/kernels.def`) and code (PTX from nvcc, or sources for NVRTC);
//! - [`KernelArgs`]: the one by-value parameter of every kernel;
//! - [`plan`]: each primitive call as a list of launches, plain data;
//! - [`Executor`]: runs plans; [`CudaExecutor`] on a GPU (the emulator is another);
//! - [`GpuBackend`]: the crate's [`ConvPrimitives`](crate::ConvPrimitives) on any executor;
//! - [`StreamOps`]: the same primitives on caller-owned `CudaSlice`s and stream, for training libraries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

mod backend;
#[cfg(feature = "emu")]
pub mod emu;
mod executor;
pub mod kernels;
mod params;
pub mod plan;
mod stream_ops;

pub(crate) use backend::check_len;
pub use backend::{GpuBackend, GpuBuffer};
pub use executor::{CudaExecutor, Executor, LoadedKernels};
pub use kernels::{KernelFamily, KernelId};
pub use params::{KernelArgs, activation_code, padding_mode_code};
pub(crate) use params::{to_i64, to_i64s};
pub use plan::{BufferWrite, CorrelateBuffers, GpuAlgorithm, Launch, Plan, Planner, Step, WeightBuffers, Workspace};
pub use stream_ops::StreamOps;

use crate::error::Result;

/// A probe's answer: the device's name, or why it cannot be used.
type ProbeAnswer = std::result::Result<String, String>;

/// Whether CUDA device `ordinal` can run ops, decided once per ordinal:
/// `Ok(name)` or `Err(reason)` — no driver, no device, or no kernels (no PTX
/// in this build and no NVRTC to compile them). Never panics when the driver
/// library is absent.
pub fn probe(ordinal: usize) -> ProbeAnswer {
    static PROBED: OnceLock<Mutex<HashMap<usize, ProbeAnswer>>> = OnceLock::new();
    let cache = PROBED.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    cache.entry(ordinal).or_insert_with(|| probe_uncached(ordinal)).clone()
}

fn probe_uncached(ordinal: usize) -> ProbeAnswer {
    // SAFETY: only tries to dlopen the driver library by its usual names; no
    // symbol is called. cudarc's loader panics when the library is missing,
    // which this check rules out before any driver call.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("no CUDA driver library (libcuda) found".into());
    }
    let context = cudarc::driver::CudaContext::new(ordinal)
        .map_err(|e| format!("the driver loads, but device {ordinal} does not answer: {e}"))?;
    let name = context.name().map_err(|e| format!("device {ordinal}: {e}"))?;
    kernels::origin().map_err(|why| format!("device {ordinal} ({name}) answers, but {why}"))?;
    Ok(name)
}

/// A buffer on a CUDA device, as tensors hold it.
pub type CudaBuffer<T> = GpuBuffer<T, cudarc::driver::CudaSlice<u8>>;

/// The backend of CUDA device `ordinal`, created once (context, stream,
/// kernels) and shared by every tensor on that device.
pub fn device_backend(ordinal: usize) -> Result<Arc<GpuBackend<CudaExecutor>>> {
    static BACKENDS: OnceLock<Mutex<HashMap<usize, Arc<GpuBackend<CudaExecutor>>>>> = OnceLock::new();
    let backends = BACKENDS.get_or_init(Default::default);
    let mut backends = backends.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(backend) = backends.get(&ordinal) {
        return Ok(Arc::clone(backend));
    }
    let backend = Arc::new(GpuBackend::new(CudaExecutor::new(ordinal)?));
    backends.insert(ordinal, Arc::clone(&backend));
    Ok(backend)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_explains_itself_without_panicking() {
        let answer = probe(0);
        // SAFETY: as in `probe_uncached`: only tries to dlopen the driver library.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            let reason = answer.clone().expect_err("no driver, no device");
            assert!(reason.contains("no CUDA driver library"), "{reason}");
            let e = device_backend(0).expect_err("no driver, no backend");
            assert_eq!(e.kind(), "device_unavailable");
            assert!(e.to_string().contains("no CUDA driver library"), "{e}");
        }
        assert_eq!(probe(0), answer, "decided once");
    }
}
