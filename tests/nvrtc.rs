//! The NVRTC path without a GPU: every embedded kernel source compiles with
//! NVRTC and defines its entry points; the PTX is written to
//! `FERROCONV_NVRTC_PTX_DIR` (default: a folder under the target dir), and
//! when `PTXAS` names a ptxas it is assembled for sm_80 and sm_90.
//!
//! Needs libnvrtc on the library path, so it is ignored by default; CI runs it
//! with `cargo test --test nvrtc -- --ignored` and assembles the PTX itself
//! (scripts/ci_cuda.sh).

use std::path::PathBuf;
use std::process::Command;

use ferroconv::cuda::kernels;

#[test]
#[ignore = "needs libnvrtc on the library path (scripts/ci_cuda.sh runs it)"]
fn every_kernel_source_compiles_with_nvrtc_and_assembles() {
    assert!(kernels::nvrtc_present(), "libnvrtc is not on the library path");
    let compiled = kernels::compile_with_nvrtc(kernels::NVRTC_ARCH).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(compiled.len(), kernels::sources().len());

    let dir = std::env::var_os("FERROCONV_NVRTC_PTX_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("nvrtc-ptx"));
    std::fs::create_dir_all(&dir).unwrap();
    for (file, ptx) in &compiled {
        for id in kernels::KernelId::ALL {
            let family = id.name().rsplit_once('_').unwrap().0;
            if file.text.contains(&format!("FERRO_INSTANTIATE({family})"))
                || file.text.contains(&format!("FERRO_INSTANTIATE_WITH_OCCUPANCY({family},"))
            {
                assert!(ptx.contains(&format!(".entry {}(", id.name())), "{}.cu: no entry {}", file.name, id.name());
            }
        }
        let path = dir.join(format!("{}.ptx", file.name));
        std::fs::write(&path, ptx).unwrap();
        let Some(ptxas) = std::env::var_os("PTXAS") else {
            eprintln!("{}.cu compiled by NVRTC into {} (PTXAS not set: not assembled)", file.name, path.display());
            continue;
        };
        for arch in ["sm_80", "sm_90"] {
            let output =
                Command::new(&ptxas).args(["-v", &format!("-arch={arch}"), "-o", "/dev/null"]).arg(&path).output();
            let output = output.unwrap_or_else(|e| panic!("running {ptxas:?}: {e}"));
            let log = String::from_utf8_lossy(&output.stderr);
            eprint!("{log}");
            assert!(output.status.success(), "ptxas {arch} failed on NVRTC's {}.ptx:\n{log}", file.name);
        }
    }
}
