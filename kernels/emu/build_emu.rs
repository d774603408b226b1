//! PLACEHOLDER, owned by the emulator helper (kernels/emu/): its real version compiles the kernels as
//! host C++ with the emulator shim. This stub only keeps the cuda branch building; the lead takes the
//! emulator branch's file at merge.

use std::path::Path;

/// Builds the emulator (in the emulator branch); here, nothing.
pub fn build(_kernel_dir: &Path, _out_dir: &Path) {
    println!("cargo:warning=ferroconv: the `emu` feature needs the emulator branch's kernels/emu/build_emu.rs");
}
