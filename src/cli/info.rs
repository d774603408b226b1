//! `ferroconv info`: version, the device ops run on and why, CPU threads and features, CUDA and its kernels.

use std::process::ExitCode;

use ferroconv::{CpuBackend, Device};

use super::Outcome;

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_: &Args) -> Outcome {
    let choice = Device::choice();
    println!("ferroconv {}", env!("CARGO_PKG_VERSION"));
    println!("device: {} ({})", choice.device, choice.reason);
    println!("cpu: {} threads; features: {}", CpuBackend::global().threads(), cpu_features());
    let cuda = match ferroconv::cuda::probe(0) {
        Ok(name) => format!("device 0 answers ({name})"),
        Err(reason) => format!("not usable: {reason}"),
    };
    println!("cuda: {cuda}");
    println!("cuda kernels: {}", ferroconv::cuda::kernels::summary());
    println!(
        "kernel emulator: {}",
        if cfg!(feature = "emu") { "built in (--device emu)" } else { "not built (feature emu)" }
    );
    Ok(ExitCode::SUCCESS)
}

/// The SIMD extensions this CPU has, of those that matter to convolution kernels.
#[cfg(target_arch = "x86_64")]
fn cpu_features() -> String {
    let features = [
        ("avx2", std::arch::is_x86_feature_detected!("avx2")),
        ("fma", std::arch::is_x86_feature_detected!("fma")),
        ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
        ("avx512bf16", std::arch::is_x86_feature_detected!("avx512bf16")),
        ("avx512fp16", std::arch::is_x86_feature_detected!("avx512fp16")),
    ];
    let list: Vec<String> =
        features.iter().map(|(name, found)| format!("{name} {}", if *found { "yes" } else { "no" })).collect();
    list.join(", ")
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_features() -> String {
    format!("not detected on {}", std::env::consts::ARCH)
}
