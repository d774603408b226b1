//! The NVRTC path without a GPU: every embedded kernel source compiles with
//! NVRTC, and (when `PTXAS` names a ptxas) the PTX assembles for sm_80 and sm_90.
//!
//! Needs libnvrtc on the library path, so it is ignored by default; CI runs it
//! with `cargo test --test nvrtc -- --ignored` (scripts/ci_cuda.sh).

use std::path::PathBuf;
use std::process::Command;

use ferroconv::cuda::kernels;

#[test]
#[ignore = "needs libnvrtc on the library path (scripts/ci_cuda.sh runs it)"]
fn every_kernel_source_compiles_with_nvrtc_and_assembles() {
    assert!(kernels::nvrtc_present(), "libnvrtc is not on the library path");
    let compiled = kernels::compile_with_nvrtc(kernels::NVRTC_ARCH).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(compiled.len(), kernels::sources().len());

    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("nvrtc-ptx");
    std::fs::create_dir_all(&dir).unwrap();
    for (file, ptx) in &compiled {
        for id in kernels::KernelId::ALL {
            if file.text.contains(&format!("FERRO_INSTANTIATE({})", id.name().rsplit_once('_').unwrap().0)) {
                assert!(ptx.contains(&format!(".entry {}(", id.name())), "{}.cu: no entry {}", file.name, id.name());
            }
        }
        let path = dir.join(format!("{}.ptx", file.name));
        std::fs::write(&path, ptx).unwrap();
        let Some(ptxas) = std::env::var_os("PTXAS") else {
            eprintln!("PTXAS not set: {}.cu compiled by NVRTC, not assembled", file.name);
            continue;
        };
        for arch in ["sm_80", "sm_90"] {
            let output = Command::new(&ptxas).args(["-v", &format!("-arch={arch}"), "-o", "/dev/null"]).arg(&path).output();
            let output = output.unwrap_or_else(|e| panic!("running {ptxas:?}: {e}"));
            let log = String::from_utf8_lossy(&output.stderr);
            eprint!("{log}");
            assert!(output.status.success(), "ptxas {arch} failed on NVRTC's {}.ptx:\n{log}", file.name);
        }
    }
}
