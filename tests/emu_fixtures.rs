//! Every PyTorch golden fixture (tests/fixtures, else ../shared/fixtures; format and tolerances in
//! its README) through the whole CUDA backend on the emulator, `GpuBackend<EmuExecutor>`: forward,
//! grad input, grad weight and grad bias, with the automatic algorithm choice and with each
//! algorithm forced, each run under its own seed (fiber orders forward, reverse and random in
//! turn) on two OS threads. Error cases (PyTorch rejections) are validation, not kernels: skipped.
//! `FERROCONV_FIXTURE_FILTER=p03` runs only the fixtures whose file name contains `p03`;
//! `FERROCONV_FIXTURE_SEEDS=6` runs each (case, algorithm) under 6 seeds instead of 1.
#![cfg(feature = "emu")]

use std::path::{Path, PathBuf};

use ferroconv::cuda::emu::{EmuExecutor, Schedule};
use ferroconv::cuda::{GpuAlgorithm, GpuBackend};
use ferroconv::{ConvGeometry, ConvOptions, ConvPrimitives, ConvTransposeOptions, Dims, Element, bf16, f16};
use serde_json::Value;

mod emu_support;
use emu_support::{Inputs, compare, run_directions};

type Emu = GpuBackend<EmuExecutor>;

fn fixture_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shipped = manifest.join("tests/fixtures");
    if shipped.is_dir() { shipped } else { manifest.join("../shared/fixtures") }
}

/// Runs only the fixtures whose file name contains this variable's value (for debugging a kernel).
const FILTER_VARIABLE: &str = "FERROCONV_FIXTURE_FILTER";
/// How many seeds each (case, algorithm) runs under (default 1), for a deeper search.
const SEEDS_VARIABLE: &str = "FERROCONV_FIXTURE_SEEDS";

fn fixture_files(filter: Option<&str>) -> Vec<PathBuf> {
    let dir = fixture_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .filter(|path| filter.is_none_or(|f| path.file_name().unwrap().to_string_lossy().contains(f)))
        .collect();
    files.sort();
    files
}

/// A tensor of a fixture: shape and f64 data.
struct Data {
    shape: Vec<usize>,
    values: Vec<f64>,
}

fn data(case: &Value, key: &str) -> Option<Data> {
    let tensor = case.get(key).filter(|v| !v.is_null())?;
    let shape = tensor["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
    let values = tensor["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    Some(Data { shape, values })
}

fn ints(value: &Value) -> Vec<i64> {
    value.as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect()
}

fn geometry(case: &Value, input: &Data, weight: &Data, bias: Option<&Data>) -> ConvGeometry {
    let dims = case["dims"].as_u64().unwrap() as usize;
    let params = &case["params"];
    let list = |key: &str| Dims::Each(ints(&params[key]));
    let bias_shape = bias.map(|b| b.shape.as_slice());
    let result = if case["op"] == "conv" {
        let options = ConvOptions::new()
            .stride(list("stride"))
            .dilation(list("dilation"))
            .groups(params["groups"].as_i64().unwrap())
            .padding_mode(params["padding_mode"].as_str().unwrap().parse().unwrap());
        let options = match &params["padding"] {
            Value::String(s) if s == "same" => options.same(),
            Value::String(s) if s == "valid" => options.valid(),
            explicit => options.padding(Dims::Each(ints(explicit))),
        };
        ConvGeometry::conv(dims, &input.shape, &weight.shape, bias_shape, &options)
    } else {
        let mut options = ConvTransposeOptions::new()
            .stride(list("stride"))
            .padding(list("padding"))
            .output_padding(list("output_padding"))
            .dilation(list("dilation"))
            .groups(params["groups"].as_i64().unwrap());
        if let Some(size) = params.get("output_size").filter(|v| !v.is_null()) {
            options = options.output_size(Dims::Each(ints(size)));
        }
        ConvGeometry::conv_transpose(dims, &input.shape, &weight.shape, bias_shape, &options)
    };
    result.unwrap_or_else(|e| panic!("{}: the geometry of a valid case is rejected: {e}", case["name"]))
}

/// Checks `actual` against the fixture's `key` tensor with its tolerance; the failure, if any.
fn check(case: &Value, key: &str, actual: &[f64]) -> Option<String> {
    let tolerance = case.get("tolerance_per_tensor").and_then(|t| t.get(key)).unwrap_or(&case["tolerance"]);
    let (rtol, atol) = (tolerance["rtol"].as_f64().unwrap(), tolerance["atol"].as_f64().unwrap());
    compare(key, actual, &data(case, key).unwrap().values, rtol, atol)
}

/// Runs the case's forward and backward on `emu` in element type `T`; the failures.
fn run_case<T: Element>(emu: &Emu, case: &Value) -> ferroconv::Result<Vec<String>>
where
    Emu: ConvPrimitives<T>,
{
    let (input, weight) = (data(case, "input").unwrap(), data(case, "weight").unwrap());
    let bias = data(case, "bias");
    let g = geometry(case, &input, &weight, bias.as_ref());
    let convert = |d: &Data| d.values.iter().map(|&v| T::from_f64(v)).collect::<Vec<T>>();
    let inputs = Inputs {
        input: convert(&input),
        weight: convert(&weight),
        bias: bias.as_ref().map(convert),
        grad_output: convert(&data(case, "grad_output").unwrap()),
    };
    let results = run_directions(emu, &g, &inputs, |s| emu.upload(s), |b| emu.download(b))?;
    let mut failures: Vec<String> = [
        check(case, "output", &results.output),
        check(case, "grad_input", &results.grad_input),
        check(case, "grad_weight", &results.grad_weight),
    ]
    .into_iter()
    .flatten()
    .collect();
    failures.extend(results.grad_bias.and_then(|grad_bias| check(case, "grad_bias", &grad_bias)));
    Ok(failures)
}

#[test]
fn every_fixture_passes_on_the_emulator() {
    let filter = std::env::var(FILTER_VARIABLE).ok();
    let files = fixture_files(filter.as_deref());
    let seeds: u64 = std::env::var(SEEDS_VARIABLE).map_or(1, |n| n.parse().expect("FERROCONV_FIXTURE_SEEDS: a number"));
    let mut valid_cases = 0;
    let mut runs = 0;
    let mut failures = Vec::new();
    for (index, path) in files.iter().enumerate() {
        let text = std::fs::read_to_string(path).unwrap();
        let case: Value = serde_json::from_str(&text).unwrap();
        if case["expect_error"].as_bool().unwrap() {
            continue;
        }
        valid_cases += 1;
        let algorithms = [GpuAlgorithm::Auto, GpuAlgorithm::ImplicitGemm, GpuAlgorithm::Direct];
        let runs_per_case = algorithms.len() as u64 * seeds;
        for (r, algorithm) in (0..runs_per_case).map(|r| (r, algorithms[(r / seeds) as usize])) {
            // Consecutive seeds, so each case meets every fiber order (seed % 3) across its runs.
            let schedule = Schedule { seed: index as u64 * runs_per_case + r, os_threads: 2 };
            let emu = GpuBackend::new(EmuExecutor::with_schedule(schedule).unwrap()).with_algorithm(algorithm);
            let result = match case["dtype"].as_str().unwrap() {
                "f32" => run_case::<f32>(&emu, &case),
                "f64" => run_case::<f64>(&emu, &case),
                "f16" => run_case::<f16>(&emu, &case),
                "bf16" => run_case::<bf16>(&emu, &case),
                other => panic!("unknown dtype {other}"),
            };
            runs += 1;
            let context = format!("{} [{}, seed {:#x}]", case["name"], algorithm.name(), schedule.seed);
            match result {
                Ok(case_failures) => failures.extend(case_failures.into_iter().map(|f| format!("{context}: {f}"))),
                Err(e) => failures.push(format!("{context}: {e}")),
            }
        }
    }
    let expected_cases = if filter.is_some() { 1 } else { 150 };
    assert!(valid_cases >= expected_cases, "only {valid_cases} valid fixtures in {}", fixture_dir().display());
    assert!(failures.is_empty(), "{} failures in {runs} runs:\n{}", failures.len(), failures.join("\n"));
}
