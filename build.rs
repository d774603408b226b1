//! Build script: the emu branch's minimal version, for testing the emulator. The cuda branch owns
//! build.rs; its version calls `build_emu::build` the same way when the `emu` feature is on.

use std::env;
use std::path::PathBuf;

#[path = "kernels/emu/build_emu.rs"]
mod build_emu;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if env::var_os("CARGO_FEATURE_EMU").is_some() {
        let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
        let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
        build_emu::build(&manifest_dir.join("kernels"), &out_dir);
    }
}
