//! Guard pages: a kernel that writes one element past the end of a buffer, or reads one element
//! before its start, kills the process with SIGSEGV after a message naming the kernel, block and
//! thread. Each case runs in a child process (this test binary, re-run on the ignored test
//! `guard_child` with the case in an environment variable).
#![cfg(feature = "emu")]

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output};

use ferroconv::cuda::emu::selftest::{SelfTestArgs, SelfTestKernel};
use ferroconv::cuda::emu::{EmuBuffer, GuardSide, LaunchShape, Schedule, launch};

const CASE_VARIABLE: &str = "FERROCONV_EMU_GUARD_CASE";
const SIGSEGV: i32 = 11;

fn run_child(case: &str) -> Output {
    let exe = std::env::current_exe().expect("the test binary's path");
    Command::new(exe)
        .args(["guard_child", "--exact", "--include-ignored", "--nocapture", "--test-threads=1"])
        .env(CASE_VARIABLE, case)
        .output()
        .expect("the test binary runs")
}

fn assert_crashes(case: &str, kernel: &str) {
    let output = run_child(case);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.signal(), Some(SIGSEGV), "{case}: {:?}\nstderr:\n{stderr}", output.status);
    let expected = format!("in kernel {kernel}, block (0,0,0), thread (0,0,0): an out-of-bounds access");
    assert!(stderr.contains(&expected), "{case}: stderr lacks {expected:?}:\n{stderr}");
}

#[test]
fn writing_one_past_the_end_crashes() {
    assert_crashes("write_past_end", "selftest_write_past_end");
}

#[test]
fn reading_one_before_the_start_crashes() {
    assert_crashes("read_before_start", "selftest_read_before_start");
}

#[test]
fn the_child_survives_in_bounds_accesses() {
    let output = run_child("in_bounds");
    assert!(output.status.success(), "{:?}\n{}", output.status, String::from_utf8_lossy(&output.stderr));
}

#[test]
#[ignore = "a child process of the guard tests; does nothing on its own"]
fn guard_child() {
    let Ok(case) = std::env::var(CASE_VARIABLE) else { return };
    let n = 37; // not a multiple of a page: the buffer must still end flush against its guard
    let (kernel, input_guard, output_guard, output_len) = match case.as_str() {
        "write_past_end" => (SelfTestKernel::SelftestWritePastEnd, GuardSide::After, GuardSide::After, n),
        "read_before_start" => (SelfTestKernel::SelftestReadBeforeStart, GuardSide::Before, GuardSide::After, n),
        // The same write, into a buffer one element longer.
        "in_bounds" => (SelfTestKernel::SelftestWritePastEnd, GuardSide::After, GuardSide::After, n + 1),
        other => panic!("unknown case {other:?}"),
    };
    let input = EmuBuffer::<f32>::with_guard(n, input_guard).unwrap();
    let mut output = EmuBuffer::<f32>::with_guard(output_len, output_guard).unwrap();
    let args = SelfTestArgs { input: input.device_ptr(), output: output.device_ptr_mut(), n: n as i64, param: 0 };
    let shape = LaunchShape { grid: [2, 1, 1], block: [32, 1, 1], shared_bytes: 0 };
    // SAFETY: the kernels take SelfTestArgs; the buffers outlive the launch. The faulty cases
    // access one element outside a buffer, which by construction is a guard page: the point.
    unsafe { launch(kernel.kernel(), &shape, &args, Schedule { seed: 1, os_threads: 2 }) }.unwrap();
    if case != "in_bounds" {
        panic!("{case}: the out-of-bounds access did not fault");
    }
    assert_eq!(output.as_slice()[n], 1.0);
}
