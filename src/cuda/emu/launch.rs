//! Kernel tables, launch shapes, schedules (seed and OS threads) and the raw launch.

use std::ffi::{CStr, c_char, c_void};
use std::hash::{BuildHasher, RandomState};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use super::ffi;
use crate::error::{Error, Result};

/// A kernel compiled into the emulator: a row of one of its tables.
#[derive(Clone, Copy)]
pub struct EmuKernel {
    entry: &'static ffi::KernelEntry,
}

impl EmuKernel {
    /// The library kernel at `index` in `kernels/kernels.def` order (`KernelId as usize`).
    pub fn library(index: usize) -> Option<EmuKernel> {
        // SAFETY: the generated function has no preconditions besides a writable `count`.
        table_entry(|count| unsafe { ffi::ferro_emu_kernel_table(count) }, index)
    }

    /// The number of library kernels.
    pub fn library_count() -> usize {
        let mut count = 0;
        // SAFETY: as in `library`.
        unsafe { ffi::ferro_emu_kernel_table(&mut count) };
        count
    }

    /// The self-test kernel at `index` in `kernels/emu/tests/kernels.def` order.
    pub(crate) fn selftest(index: usize) -> Option<EmuKernel> {
        // SAFETY: as in `library`.
        table_entry(|count| unsafe { ffi::ferro_emu_selftest_kernel_table(count) }, index)
    }

    /// The kernel's name in its kernels.def.
    pub fn name(&self) -> &'static str {
        // SAFETY: the generated tables hold NUL-terminated string literals (ASCII identifiers).
        unsafe { CStr::from_ptr(self.entry.name) }.to_str().unwrap_or("<non-UTF-8 kernel name>")
    }
}

impl std::fmt::Debug for EmuKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("EmuKernel").field(&self.name()).finish()
    }
}

fn table_entry(table: impl FnOnce(&mut usize) -> *const ffi::KernelEntry, index: usize) -> Option<EmuKernel> {
    let mut count = 0;
    let rows = table(&mut count);
    // SAFETY: the table is a static array of `count` rows (plus a terminator) that lives forever.
    (index < count).then(|| EmuKernel { entry: unsafe { &*rows.add(index) } })
}

/// A launch's geometry: grid and block sizes (x, y, z) and dynamic shared memory per block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LaunchShape {
    /// Blocks in x, y, z.
    pub grid: [u32; 3],
    /// Threads per block in x, y, z.
    pub block: [u32; 3],
    /// Dynamic shared memory per block (`FERRO_DYNAMIC_SHARED`), in bytes.
    pub shared_bytes: u32,
}

/// How the emulator schedules a launch: the seed that draws the fibers' order between barriers
/// (`seed % 3`: forward, reverse or a random permutation) and the blocks' order, and the number
/// of OS threads the blocks are spread over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Schedule {
    /// Draws the orders; `seed % 3` picks forward, reverse or random.
    pub seed: u64,
    /// OS threads the blocks run on (at least 1; more than the blocks is no more).
    pub os_threads: u32,
}

/// Fixes the seed of every launch (decimal or `0x` hex), to replay a failure.
pub const SEED_VARIABLE: &str = "FERROCONV_EMU_SEED";
/// The number of OS threads a launch runs its blocks on (default: the available parallelism, at most 8).
pub const THREADS_VARIABLE: &str = "FERROCONV_EMU_THREADS";

impl Schedule {
    /// The schedule for the next launch: a fresh seed each time (so runs differ; failures print
    /// it), unless `FERROCONV_EMU_SEED` fixes one; `FERROCONV_EMU_THREADS` OS threads.
    pub fn next() -> Result<Schedule> {
        static SETTINGS: OnceLock<Result<(Option<u64>, u32)>> = OnceLock::new();
        let (fixed_seed, os_threads) = SETTINGS.get_or_init(read_environment).clone()?;
        Ok(Schedule { seed: fixed_seed.unwrap_or_else(fresh_seed), os_threads })
    }
}

fn fresh_seed() -> u64 {
    static KEYS: OnceLock<RandomState> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    KEYS.get_or_init(RandomState::new).hash_one(COUNTER.fetch_add(1, Ordering::Relaxed))
}

fn read_environment() -> Result<(Option<u64>, u32)> {
    let invalid = |variable: &'static str, value: &str, expected: &str| Error::InvalidArgument {
        what: variable,
        detail: format!("{value:?} is not {expected}"),
    };
    let seed = match std::env::var(SEED_VARIABLE) {
        Ok(value) => {
            let trimmed = value.trim();
            let parsed = match trimmed.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => trimmed.parse(),
            };
            Some(parsed.map_err(|_| invalid(SEED_VARIABLE, &value, "a u64 (decimal or 0x hex)"))?)
        }
        Err(_) => None,
    };
    let os_threads = match std::env::var(THREADS_VARIABLE) {
        Ok(value) => value
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| invalid(THREADS_VARIABLE, &value, "a positive number of threads"))?,
        Err(_) => std::thread::available_parallelism().map_or(1, |n| n.get().min(8) as u32),
    };
    Ok((seed, os_threads))
}

/// Runs `kernel` on the emulator, blocking until every block has finished.
///
/// Errors name the kernel, the block and threads at fault and the seed, with how to replay it.
/// An out-of-bounds access does not return: it kills the process with SIGSEGV, after a message.
///
/// # Safety
///
/// 1. `args` must be the argument struct `kernel` takes (`KernelArgs` for library kernels,
///    `SelfTestArgs` for self-test kernels), with the same layout as its C++ twin.
/// 2. Every pointer in `args` must point into an [`EmuBuffer`](super::EmuBuffer) (or other memory)
///    that stays alive and is not accessed by anything else during the launch, and the kernel's
///    accesses through it must be ones `args` allows (sizes, element types); the guard pages turn
///    an overrun into a crash, not into defined behaviour.
pub unsafe fn launch<A>(kernel: EmuKernel, shape: &LaunchShape, args: &A, schedule: Schedule) -> Result<()> {
    let dim = |[x, y, z]: [u32; 3]| ffi::Dim3 { x, y, z };
    let mut message = [0 as c_char; 1024];
    // SAFETY: `kernel.entry` is a live table row; `args` is a valid argument struct whose buffers
    // outlive the call (the caller's contract); `message` is writable for its length.
    let code = unsafe {
        ffi::ferro_emu_launch(
            kernel.entry,
            dim(shape.grid),
            dim(shape.block),
            shape.shared_bytes as usize,
            (args as *const A).cast::<c_void>(),
            schedule.seed,
            schedule.os_threads,
            message.as_mut_ptr(),
            message.len(),
        )
    };
    if code == ffi::OK {
        return Ok(());
    }
    // SAFETY: the runtime wrote a NUL-terminated message into the buffer (it is zeroed otherwise).
    let message = unsafe { CStr::from_ptr(message.as_ptr()) }.to_string_lossy();
    let what = match code {
        ffi::INVALID_LAUNCH => "invalid launch",
        ffi::BARRIER_DIVERGENCE => "divergent __syncthreads",
        ffi::WARP_COLLECTIVE => "broken warp collective",
        ffi::RESOURCES => "out of host resources",
        _ => "launch failed",
    };
    Err(Error::Cuda {
        context: format!(
            "emulator, kernel {} grid {:?} block {:?} ({what}; replay with {SEED_VARIABLE}={:#x})",
            kernel.name(),
            shape.grid,
            shape.block,
            schedule.seed
        ),
        message: message.into_owned(),
    })
}
