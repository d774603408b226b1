//! The PyTorch golden cases in tests/fixtures, run on the CPU through the fixture harness.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use ferroconv::Device;
use ferroconv::fixture::{CaseReport, Checked, Expected, Fail, Fixture, Pass, fixture_files};

/// The `error_kind` names of the rules table in tests/fixtures/README.md, in its order.
const PYTORCH_ERROR_KINDS: [&str; 20] = [
    "bad_input_rank",
    "weight_rank_mismatch",
    "param_length_mismatch",
    "non_positive_stride",
    "negative_padding",
    "non_positive_dilation",
    "non_positive_groups",
    "negative_output_padding",
    "string_padding_for_transpose",
    "same_padding_with_stride",
    "channels_not_divisible_by_groups",
    "weight_shape_mismatch",
    "bias_shape_mismatch",
    "empty_spatial_input",
    "reflect_padding_too_large",
    "circular_padding_too_large",
    "kernel_larger_than_padded_input",
    "output_size_out_of_range",
    "output_padding_too_large",
    "non_positive_output_size",
];

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn load_all() -> Vec<Fixture> {
    let files = fixture_files(&fixtures_dir()).expect("tests/fixtures is readable");
    assert!(files.len() >= 174, "expected the 174 shipped fixtures, found {}", files.len());
    files.iter().map(|f| Fixture::load(f).unwrap_or_else(|e| panic!("{e}"))).collect()
}

#[test]
fn every_fixture_passes_on_the_cpu() {
    let reports: Vec<CaseReport> = load_all().iter().map(|case| case.run(Device::Cpu)).collect();
    let failures: Vec<String> = reports.iter().filter(|r| !r.passed()).map(|r| r.to_string()).collect();
    assert!(failures.is_empty(), "{} of {} fixtures failed:\n{}", failures.len(), reports.len(), failures.join("\n"));
}

#[test]
fn every_pytorch_error_kind_is_covered_and_produced_by_validation() {
    let mut produced = BTreeSet::new();
    let mut problems = Vec::new();
    for case in load_all() {
        let Expected::Error { kind, .. } = &case.expected else { continue };
        assert!(PYTORCH_ERROR_KINDS.contains(&kind.as_str()), "{}: unknown error kind {kind}", case.name);
        // The kind must come from the library itself, not from the harness failing to build the parameters.
        match case.run(Device::Cpu).outcome {
            Ok(Pass::Rejected { kind }) => {
                produced.insert(kind);
            }
            other => problems.push(format!("{}: expected {kind}, got {other:?}", case.name)),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let missing: Vec<_> = PYTORCH_ERROR_KINDS.iter().filter(|k| !produced.contains(*k)).collect();
    assert!(missing.is_empty(), "error kinds no fixture produced: {missing:?}");
}

/// Guards the harness itself: a real case pushed just outside its tolerance in
/// one element of any checked tensor must fail, naming that tensor and element.
#[test]
fn a_fixture_nudged_out_of_tolerance_fails() {
    let path = fixtures_dir().join("p031_conv2d_bf16_n1_c4-6_i6x5_k3x3_p1x1_g2.json");
    let case = Fixture::load(&path).unwrap();
    assert!(case.run(Device::Cpu).passed());
    for which in Checked::ALL {
        let mut nudged = case.clone();
        let Expected::Values(values) = &mut nudged.expected else { panic!("{} is a valid case", case.name) };
        let allowed = values.tolerance_for(which);
        let tensor = match which {
            Checked::Output => &mut values.output,
            Checked::GradInput => &mut values.grad_input,
            Checked::GradWeight => &mut values.grad_weight,
            Checked::GradBias => values.grad_bias.as_mut().expect("the case has a bias"),
        };
        let last = tensor.data.len() - 1;
        tensor.data[last] += 2.0 * allowed.allowed(tensor.data[last]);
        let last_index: Vec<usize> = tensor.shape.iter().map(|n| n - 1).collect();
        let report = nudged.run(Device::Cpu);
        let Err(Fail::OutOfTolerance(comparisons)) = &report.outcome else { panic!("{which}: {report}") };
        let failed: Vec<_> = comparisons.iter().filter(|c| !c.passed()).collect();
        assert_eq!(failed.len(), 1, "{report}");
        assert_eq!(failed[0].tensor, which);
        assert_eq!(failed[0].worst.as_ref().unwrap().index, last_index, "{report}");
    }
}

/// `ferroconv check`: one line per case, the summary line, and the exit status.
#[test]
fn check_command_prints_a_line_per_case_and_fails_on_a_failure() {
    let run = |paths: &[&Path]| {
        let out = Command::new(env!("CARGO_BIN_EXE_ferroconv"))
            .args(["check", "--device", "cpu"])
            .args(paths)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8(out.stdout).unwrap())
    };
    let (status, stdout) = run(&[&fixtures_dir()]);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(status, Some(0), "{stdout}");
    assert_eq!(lines.len(), 175);
    assert!(lines[..174].iter().all(|l| l.starts_with("PASS p")), "{stdout}");
    assert_eq!(lines[174], "174 passed, 0 failed");

    let broken = Path::new(env!("CARGO_TARGET_TMPDIR")).join("broken_fixture.json");
    let text = std::fs::read_to_string(fixtures_dir().join("p165_err_conv2d_negative_padding.json")).unwrap();
    let fixed = text.replace(r#""padding":[-1,0]"#, r#""padding":[1,0]"#);
    assert_ne!(fixed, text);
    std::fs::write(&broken, fixed).unwrap();
    let single = fixtures_dir().join("p002_conv1d_f32_n2_c5-3_i11_k1_nobias_k1.json");
    let (status, stdout) = run(&[&single, &broken]);
    assert_eq!(status, Some(1), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("PASS p002_conv1d_f32_n2_c5-3_i11_k1_nobias_k1  max_abs="), "{stdout}");
    assert!(
        lines[1].starts_with("FAIL p165_err_conv2d_negative_padding  expected error kind negative_padding"),
        "{stdout}"
    );
    assert_eq!(lines[2], "1 passed, 1 failed");
}
