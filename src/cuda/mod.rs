//! The CUDA backend (cudarc, loaded dynamically: nothing CUDA is needed to build).

use std::sync::{Mutex, OnceLock};

/// Whether CUDA device `ordinal` answers, decided once per ordinal: `Ok(name)`
/// or `Err(reason)`. Never panics when the driver library is absent.
pub fn probe(ordinal: usize) -> Result<String, String> {
    static PROBED: OnceLock<Mutex<Vec<(usize, Result<String, String>)>>> = OnceLock::new();
    let cache = PROBED.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((_, answer)) = cache.iter().find(|(o, _)| *o == ordinal) {
        return answer.clone();
    }
    let answer = probe_uncached(ordinal);
    cache.push((ordinal, answer.clone()));
    answer
}

fn probe_uncached(ordinal: usize) -> Result<String, String> {
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
