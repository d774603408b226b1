//! The CUDA backend (cudarc, loaded dynamically: nothing CUDA is needed to build).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// A probe's answer: the device's name, or why it cannot be used.
type ProbeAnswer = Result<String, String>;

/// Whether CUDA device `ordinal` answers, decided once per ordinal: `Ok(name)`
/// or `Err(reason)`. Never panics when the driver library is absent.
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
    context.name().map_err(|e| format!("device {ordinal}: {e}"))
}

#[cfg(feature = "emu")]
pub mod emu;
