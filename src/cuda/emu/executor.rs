//! [`EmuExecutor`]: the CUDA backend's plans, run on the emulator.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::buffer::{EmuBuffer, GuardSide};
use super::launch::{EmuKernel, LaunchShape, Schedule, launch};
use crate::cuda::{BufferWrite, Executor, KernelId, Launch, Plan, Step};
use crate::error::{Error, Result};

/// An [`Executor`] that runs plans on the emulator, checking them as it goes:
///
/// - every address a plan uses must lie in a live allocation of this executor;
/// - before a launch, the buffers it overwrites ([`Launch::writes`]) are poisoned with NaN
///   (all bits set); after it, any element still holding the poison is an error naming the
///   kernel and the element (an element the kernel should have written but did not);
/// - the kernels themselves run as [`launch`] describes: shuffled fiber orders, strict barriers,
///   guard pages.
///
/// ```
/// use ferroconv::cuda::GpuBackend;
/// use ferroconv::cuda::emu::EmuExecutor;
/// use ferroconv::{Activation, Conv, ConvGeometry, ConvOptions};
/// # fn main() -> ferroconv::Result<()> {
/// let emu = GpuBackend::new(EmuExecutor::new()?);
/// let g = ConvGeometry::conv(1, &[1, 1, 4], &[1, 1, 2], None, &ConvOptions::new())?;
/// let (x, w) = (emu.upload(&[1f32, 2., 3., 4.])?, emu.upload(&[1f32, 1.])?);
/// let mut y = emu.alloc_buffer::<f32>(3)?;
/// Conv::forward(&emu, &g, &x, &w, None, Activation::Identity, &mut y)?;
/// assert_eq!(emu.download(&y)?, vec![3., 5., 7.]);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct EmuExecutor {
    /// Indexed by `KernelId as usize`.
    kernels: Vec<EmuKernel>,
    /// `None`: [`Schedule::next`] for each launch.
    schedule: Option<Schedule>,
    memory: Arc<LiveAllocations>,
}

impl EmuExecutor {
    /// An executor drawing a fresh schedule for each launch ([`Schedule::next`]: a new seed
    /// unless `FERROCONV_EMU_SEED` fixes it).
    pub fn new() -> Result<Self> {
        Ok(EmuExecutor { kernels: resolve_kernels()?, schedule: None, memory: Arc::default() })
    }

    /// An executor running every launch with `schedule`.
    pub fn with_schedule(schedule: Schedule) -> Result<Self> {
        Ok(EmuExecutor { schedule: Some(schedule), ..Self::new()? })
    }

    fn run(&self, launch_step: &Launch) -> Result<()> {
        let kernel = self.kernels[launch_step.kernel as usize];
        let args = &launch_step.args;
        for (field, address) in [
            ("x", args.x),
            ("w", args.w),
            ("y", args.y),
            ("bias", args.bias),
            ("out", args.out),
            ("partials", args.partials),
        ] {
            if address != 0 {
                self.memory.check(address, 0).map_err(|e| plan_error(kernel, format!("args.{field}: {e}")))?;
            }
        }
        for write in &launch_step.writes {
            let bytes = self.memory.check(write.address, write.bytes).map_err(|e| plan_error(kernel, e))?;
            // SAFETY: `check` found the range inside a live allocation of this executor, which
            // holds no Rust reference into its bytes while a plan runs (the backend borrows the
            // output buffer mutably for the call).
            unsafe { std::ptr::write_bytes(write.address as usize as *mut u8, 0xFF, bytes) };
        }
        let shape =
            LaunchShape { grid: launch_step.grid, block: launch_step.block, shared_bytes: launch_step.shared_bytes };
        let schedule = match self.schedule {
            Some(fixed) => fixed,
            None => Schedule::next()?,
        };
        // SAFETY: every kernel of the table takes `const KernelArgs`, whose #[repr(C)] twin
        // `args` is; its non-null addresses lie in live allocations of this executor (checked
        // above), which the backend keeps alive and sized for the geometry during the call;
        // a kernel that overruns them hits a guard page.
        unsafe { launch(kernel, &shape, args, schedule) }?;
        for write in &launch_step.writes {
            check_written(kernel, schedule, write)?;
        }
        Ok(())
    }
}

/// Looks up every [`KernelId`] in the emulator's table, which build_emu.rs generated from the
/// same kernels.def: a mismatch means the two builds disagree.
fn resolve_kernels() -> Result<Vec<EmuKernel>> {
    let mismatch = |message: String| Error::Cuda { context: "emulator kernel table".into(), message };
    if EmuKernel::library_count() != KernelId::ALL.len() {
        return Err(mismatch(format!(
            "{} kernels in the emulator, {} in KernelId",
            EmuKernel::library_count(),
            KernelId::ALL.len()
        )));
    }
    KernelId::ALL
        .iter()
        .map(|&id| {
            EmuKernel::library(id as usize)
                .filter(|kernel| kernel.name() == id.name())
                .ok_or_else(|| mismatch(format!("row {} is not {}", id as usize, id.name())))
        })
        .collect()
}

fn plan_error(kernel: EmuKernel, message: impl Into<String>) -> Error {
    Error::Cuda { context: format!("emulator, plan launching {}", kernel.name()), message: message.into() }
}

/// Fails when an element of `write` still holds the poison: unwritten by the kernel, or
/// computed from memory that was never written.
fn check_written(kernel: EmuKernel, schedule: Schedule, write: &BufferWrite) -> Result<()> {
    let size = write.dtype.size_in_bytes();
    let bytes = write.bytes as usize;
    // SAFETY: the range was checked to lie in a live allocation before the launch, and the
    // kernel has finished writing it.
    let data = unsafe { std::slice::from_raw_parts(write.address as usize as *const u8, bytes) };
    let mut poisoned = data.chunks_exact(size).enumerate().filter(|(_, e)| e.iter().all(|&b| b == 0xFF));
    let Some((first, _)) = poisoned.next() else { return Ok(()) };
    Err(Error::Cuda {
        context: format!(
            "emulator, kernel {} ({}; replay with {}={:#x})",
            kernel.name(),
            "unwritten output",
            super::SEED_VARIABLE,
            schedule.seed
        ),
        message: format!(
            "{} of the {} {} elements at {:#x} still hold the NaN poison after the launch, the first at index {first}",
            1 + poisoned.count(),
            bytes / size,
            write.dtype,
            write.address
        ),
    })
}

impl Executor for EmuExecutor {
    type Allocation = EmuAllocation;

    fn name(&self) -> String {
        match self.schedule {
            Some(s) => format!("emu (seed {:#x}, {} OS threads)", s.seed, s.os_threads),
            None => "emu".into(),
        }
    }

    fn alloc(&self, bytes: usize) -> Result<EmuAllocation> {
        let buffer = EmuBuffer::<u8>::with_guard(bytes, GuardSide::alternate())?;
        let start = buffer.device_ptr() as u64;
        self.memory.insert(start, bytes as u64);
        Ok(EmuAllocation { buffer, memory: Arc::clone(&self.memory) })
    }

    fn address(&self, allocation: &EmuAllocation) -> u64 {
        allocation.buffer.device_ptr() as u64
    }

    fn upload(&self, src: &[u8], dst: &mut EmuAllocation) -> Result<()> {
        let capacity = dst.buffer.len();
        let dst = dst.buffer.as_mut_slice().get_mut(..src.len()).ok_or_else(|| Error::InvalidArgument {
            what: "upload",
            detail: format!("{} bytes do not fit a buffer of {capacity} bytes", src.len()),
        })?;
        dst.copy_from_slice(src);
        Ok(())
    }

    fn download(&self, src: &EmuAllocation, dst: &mut [u8]) -> Result<()> {
        let src = src.buffer.as_slice().get(..dst.len()).ok_or_else(|| Error::InvalidArgument {
            what: "download",
            detail: format!("{} bytes requested from a buffer of {} bytes", dst.len(), src.buffer.len()),
        })?;
        dst.copy_from_slice(src);
        Ok(())
    }

    fn execute(&self, plan: &Plan) -> Result<()> {
        for step in &plan.steps {
            match step {
                Step::Zero { address, bytes } => {
                    let bytes = self.memory.check(*address, *bytes).map_err(|message| Error::Cuda {
                        context: "emulator, plan zeroing a buffer".into(),
                        message,
                    })?;
                    // SAFETY: the range lies in a live allocation of this executor (checked), into
                    // which no Rust reference is held while a plan runs.
                    unsafe { std::ptr::write_bytes(*address as usize as *mut u8, 0, bytes) };
                }
                Step::Kernel(launch_step) => self.run(launch_step)?,
            }
        }
        Ok(())
    }
}

/// An allocation of an [`EmuExecutor`]: a guard-paged [`EmuBuffer`] of bytes, registered with
/// its executor while it lives.
#[derive(Debug)]
pub struct EmuAllocation {
    buffer: EmuBuffer<u8>,
    memory: Arc<LiveAllocations>,
}

impl Drop for EmuAllocation {
    fn drop(&mut self) {
        self.memory.remove(self.buffer.device_ptr() as u64);
    }
}

/// The live allocations of an executor, by start address, so plans' addresses can be checked.
#[derive(Debug, Default)]
struct LiveAllocations {
    spans: Mutex<BTreeMap<u64, u64>>,
}

impl LiveAllocations {
    fn insert(&self, start: u64, bytes: u64) {
        self.spans.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(start, bytes);
    }

    fn remove(&self, start: u64) {
        self.spans.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&start);
    }

    /// `bytes` as a `usize` when `[address, address + bytes)` lies inside one live allocation
    /// (for `bytes == 0`: `address` lies inside one, or at its end); otherwise why not.
    fn check(&self, address: u64, bytes: u64) -> std::result::Result<usize, String> {
        let spans = self.spans.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let inside = spans
            .range(..=address)
            .next_back()
            .is_some_and(|(&start, &len)| address.checked_add(bytes).is_some_and(|end| end <= start + len));
        if !inside {
            return Err(format!("{bytes} bytes at {address:#x} are not inside any live allocation of this executor"));
        }
        usize::try_from(bytes).map_err(|_| format!("{bytes} bytes do not fit in memory"))
    }
}
