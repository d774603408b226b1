//! The kernels as this build embeds them: their ids (generated from
//! `kernels/kernels.def`), their sources, their PTX when nvcc was found, and
//! the choice between PTX and NVRTC at run time.

use std::sync::OnceLock;

use crate::element::DType;
use crate::error::{Error, Result};

include!(concat!(env!("OUT_DIR"), "/kernel_ids.rs"));

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/kernels_embedded.rs"));
}

/// The environment variable that picks the kernels' origin: `ptx`, `nvrtc` or `auto` (the default:
/// PTX when this build has it, else NVRTC).
pub const KERNELS_ENV: &str = "FERROCONV_CUDA_KERNELS";

/// The PTX target NVRTC compiles for (the same default as build.rs: runs on sm_75 and newer).
pub const NVRTC_ARCH: &str = "compute_75";

/// Where the kernels' code comes from on a GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelOrigin {
    /// PTX compiled by nvcc at build time.
    Ptx,
    /// The embedded sources, compiled by NVRTC at first use.
    Nvrtc,
}

/// One kernel file (`kernels/NAME.cu`) as embedded in this build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelFile {
    /// The file's stem, e.g. `"gemm"`.
    pub name: &'static str,
    /// Its text: CUDA C++ with the headers inlined, or PTX.
    pub text: &'static str,
}

/// Every kernel file's source, headers inlined (what NVRTC compiles).
pub fn sources() -> Vec<KernelFile> {
    embedded::KERNEL_SOURCES.iter().map(|&(name, text)| KernelFile { name, text }).collect()
}

/// Every kernel file's PTX, when nvcc compiled them at build time.
pub fn ptx() -> Option<Vec<KernelFile>> {
    embedded::KERNEL_PTX.map(|files| files.iter().map(|&(name, text)| KernelFile { name, text }).collect())
}

/// A one-line account of the kernels in this build (for `ferroconv info`).
///
/// ```
/// let line = ferroconv::cuda::kernels::summary();
/// assert!(line.contains("PTX") || line.contains("NVRTC"));
/// ```
pub fn summary() -> String {
    match embedded::KERNEL_PTX {
        Some(files) => format!(
            "{} kernels in {} files, PTX compiled by {} (NVRTC sources embedded too)",
            KernelId::ALL.len(),
            files.len(),
            embedded::PTX_ORIGIN
        ),
        None => format!(
            "{} kernels in {} files, embedded as source: NVRTC compiles them at first use (nvcc was not found at build time)",
            KernelId::ALL.len(),
            embedded::KERNEL_SOURCES.len()
        ),
    }
}

/// Where the kernels come from, given whether PTX is embedded, the value of
/// [`KERNELS_ENV`] and whether libnvrtc loads (only asked when needed).
/// `Err` says why no kernels can be had.
pub fn choose_origin(
    ptx_embedded: bool,
    requested: Option<&str>,
    nvrtc_present: impl FnOnce() -> bool,
) -> std::result::Result<KernelOrigin, String> {
    let nvrtc = |why: &str| {
        if nvrtc_present() {
            Ok(KernelOrigin::Nvrtc)
        } else {
            Err(format!("{why}, and no NVRTC library (libnvrtc) was found to compile the kernels"))
        }
    };
    match requested.unwrap_or("auto") {
        "ptx" if ptx_embedded => Ok(KernelOrigin::Ptx),
        "ptx" => Err(format!("{KERNELS_ENV}=ptx, but this build has no PTX (nvcc was not found at build time)")),
        "nvrtc" => nvrtc(&format!("{KERNELS_ENV}=nvrtc")),
        "auto" | "" if ptx_embedded => Ok(KernelOrigin::Ptx),
        "auto" | "" => nvrtc("no PTX in this build (nvcc was not found at build time)"),
        other => Err(format!("{KERNELS_ENV}={other:?}: expected ptx, nvrtc or auto")),
    }
}

/// The origin this process uses, decided once (see [`choose_origin`]).
pub fn origin() -> std::result::Result<KernelOrigin, String> {
    static ORIGIN: OnceLock<std::result::Result<KernelOrigin, String>> = OnceLock::new();
    ORIGIN
        .get_or_init(|| {
            let requested = std::env::var(KERNELS_ENV).ok();
            choose_origin(embedded::KERNEL_PTX.is_some(), requested.as_deref(), nvrtc_present)
        })
        .clone()
}

/// Whether libnvrtc can be loaded. cudarc's loader panics when it cannot, so
/// this is asked before any NVRTC call.
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen libnvrtc by its usual names; no symbol is called.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Compiles every embedded source with NVRTC for `arch` (e.g. `"compute_80"`),
/// returning PTX per file. The files compile in parallel. Needs no GPU, only libnvrtc.
pub fn compile_with_nvrtc(arch: &'static str) -> Result<Vec<(KernelFile, String)>> {
    if !nvrtc_present() {
        return Err(Error::Cuda {
            context: "NVRTC".into(),
            message: "no NVRTC library (libnvrtc) found on the library path".into(),
        });
    }
    let compile = |file: KernelFile| -> Result<(KernelFile, String)> {
        let options = cudarc::nvrtc::CompileOptions {
            arch: Some(arch),
            options: vec!["--std=c++17".into()],
            name: Some(format!("{}.cu", file.name)),
            ..Default::default()
        };
        let ptx = cudarc::nvrtc::compile_ptx_with_opts(file.text, options).map_err(|e| Error::Cuda {
            context: format!("NVRTC compiling kernels/{}.cu", file.name),
            message: nvrtc_message(e),
        })?;
        Ok((file, ptx.to_src()))
    };
    // NVRTC compiles separate programs concurrently.
    std::thread::scope(|scope| {
        let jobs: Vec<_> = sources().into_iter().map(|file| scope.spawn(move || compile(file))).collect();
        jobs.into_iter()
            .map(|job| {
                job.join().unwrap_or_else(|_| {
                    Err(Error::Cuda { context: "NVRTC".into(), message: "a compiling thread panicked".into() })
                })
            })
            .collect()
    })
}

/// The PTX this process loads: nvcc's, or NVRTC's compiled once and kept.
pub(crate) fn ptx_for_loading() -> Result<Vec<String>> {
    static NVRTC_PTX: OnceLock<std::result::Result<Vec<String>, Error>> = OnceLock::new();
    let unavailable = |message: String| Error::Cuda { context: "CUDA kernels".into(), message };
    match origin().map_err(unavailable)? {
        KernelOrigin::Ptx => Ok(ptx().unwrap_or_default().into_iter().map(|f| f.text.to_string()).collect()),
        KernelOrigin::Nvrtc => NVRTC_PTX
            .get_or_init(|| Ok(compile_with_nvrtc(NVRTC_ARCH)?.into_iter().map(|(_, ptx)| ptx).collect()))
            .clone(),
    }
}

fn nvrtc_message(error: cudarc::nvrtc::CompileError) -> String {
    match error {
        cudarc::nvrtc::CompileError::CompileError { nvrtc, log, .. } => {
            format!("{nvrtc:?}:\n{}", log.to_string_lossy())
        }
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ptx_is_preferred_and_nvrtc_is_the_fallback() {
        let never = || panic!("NVRTC must not be probed when PTX serves");
        assert_eq!(choose_origin(true, None, never), Ok(KernelOrigin::Ptx));
        assert_eq!(choose_origin(true, Some("auto"), never), Ok(KernelOrigin::Ptx));
        assert_eq!(choose_origin(false, None, || true), Ok(KernelOrigin::Nvrtc));
        assert_eq!(choose_origin(true, Some("nvrtc"), || true), Ok(KernelOrigin::Nvrtc));
    }

    #[test]
    fn missing_kernels_say_why() {
        let neither = choose_origin(false, None, || false).unwrap_err();
        assert!(neither.contains("no PTX") && neither.contains("no NVRTC"), "{neither}");
        let forced = choose_origin(false, Some("ptx"), || true).unwrap_err();
        assert!(forced.contains("no PTX"), "{forced}");
        let bad = choose_origin(true, Some("cubin"), || true).unwrap_err();
        assert!(bad.contains("cubin"), "{bad}");
    }

    #[test]
    fn every_family_has_every_dtype() {
        for family in KernelFamily::ALL {
            for dtype in DType::ALL {
                let id = family.kernel(dtype);
                assert!(id.name().ends_with(&format!("_{}", dtype.name())), "{family:?} {dtype} -> {}", id.name());
            }
        }
        assert_eq!(KernelId::ALL.len(), KernelFamily::ALL.len() * DType::ALL.len());
        for (index, id) in KernelId::ALL.iter().enumerate() {
            assert_eq!(*id as usize, index, "{} is out of kernels.def's order", id.name());
        }
    }

    #[test]
    fn every_entry_point_is_defined_in_a_source() {
        let sources = sources();
        for id in KernelId::ALL {
            let family = id.name().rsplit_once('_').map(|(family, _)| family).unwrap_or_default();
            let instantiated =
                [format!("FERRO_INSTANTIATE({family})"), format!("FERRO_INSTANTIATE_WITH_OCCUPANCY({family},")];
            assert!(
                sources.iter().any(|file| instantiated.iter().any(|i| file.text.contains(i))),
                "no kernels/*.cu instantiates {family} (for {})",
                id.name()
            );
        }
    }
}
