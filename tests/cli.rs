//! The command line's handling of bad arguments, run as a user runs it.

use std::process::Command;

/// A bench with an algorithm no backend has fails at once: the error names the
/// argument, the value and the choices, and neither the peak probe nor the
/// table's header runs first.
#[test]
fn bench_rejects_an_unknown_algorithm_before_it_starts() {
    let out = Command::new(env!("CARGO_BIN_EXE_ferroconv"))
        .args(["bench", "--device", "cpu", "--algorithm", "fft"])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap());
    assert!(!out.status.success());
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("algorithm") && stderr.contains("\"fft\"") && stderr.contains("gemm_col2im"), "{stderr}");
    assert!(!stderr.contains("peak"), "{stderr}");
}
