//! The companion ops (ReLU, max pooling, cat/split) against PyTorch's fixtures in tests/companion_fixtures.

use ferroconv::{DType, Device, Element, MaxPoolOptions, Tensor, bf16, f16};
use serde_json::Value;

fn dims(v: &Value) -> Vec<i64> {
    v.as_array().expect("list").iter().map(|x| x.as_i64().expect("int")).collect()
}

fn shape(t: &Value) -> Vec<usize> {
    t["shape"].as_array().expect("shape").iter().map(|x| x.as_u64().expect("dim") as usize).collect()
}

fn data(t: &Value) -> Vec<f64> {
    t["data"].as_array().expect("data").iter().map(|x| x.as_f64().expect("number")).collect()
}

fn load<T: Element>(t: &Value, device: Device) -> Tensor<T> {
    Tensor::from_f64(&shape(t), &data(t)).and_then(|t| t.to_device(device)).expect("fixture tensor")
}

/// `|a - e| <= atol + rtol |e|` elementwise; NaN never passes.
fn check(case: &str, what: &str, got: &[f64], expected: &Value, tolerance: &Value) -> Result<(), String> {
    let (rtol, atol) = (tolerance["rtol"].as_f64().unwrap(), tolerance["atol"].as_f64().unwrap());
    let want = data(expected);
    if got.len() != want.len() {
        return Err(format!("{case}: {what} has {} elements, expected {}", got.len(), want.len()));
    }
    for (i, (&a, &e)) in got.iter().zip(&want).enumerate() {
        let within = (a - e).abs() <= atol + rtol * e.abs(); // false for NaN
        if !within {
            return Err(format!("{case}: {what}[{i}] = {a}, expected {e} (rtol {rtol}, atol {atol})"));
        }
    }
    Ok(())
}

fn pool_options(params: &Value) -> MaxPoolOptions {
    MaxPoolOptions::new(dims(&params["kernel_size"]))
        .stride(dims(&params["stride"]))
        .padding(dims(&params["padding"]))
        .dilation(dims(&params["dilation"]))
        .ceil_mode(params["ceil_mode"].as_bool().unwrap())
}

fn run_case<T: Element>(case: &Value, device: Device) -> Result<(), String> {
    let name = case["name"].as_str().unwrap();
    let tol = &case["tolerance_per_tensor"];
    let f64s = |t: &Tensor<T>| t.to_f64_vec().map_err(|e| format!("{name}: {e}"));
    let fail = |e: ferroconv::Error| format!("{name}: unexpected error {e}");
    match case["op"].as_str().unwrap() {
        "max_pool" => {
            let spatial = case["dims"].as_u64().unwrap() as usize;
            let opts = pool_options(&case["params"]);
            let x = load::<T>(&case["input"], device);
            let result = ferroconv::max_pool(spatial, &x, &opts);
            if case["expect_error"].as_bool().unwrap() {
                let kind = case["error_kind"].as_str().unwrap();
                return match result {
                    Err(e) if e.kind() == kind => Ok(()),
                    Err(e) => Err(format!("{name}: expected {kind}, got {} ({e})", e.kind())),
                    Ok(_) => Err(format!("{name}: expected {kind}, got Ok")),
                };
            }
            let y = result.map_err(fail)?;
            check(name, "output", &f64s(&y)?, &case["output"], &tol["output"])?;
            let dy = load::<T>(&case["grad_output"], device);
            let dx = ferroconv::max_pool_backward(spatial, &x, &dy, &opts).map_err(fail)?;
            check(name, "grad_input", &f64s(&dx)?, &case["grad_input"], &tol["grad_input"])
        }
        "relu" => {
            let y = ferroconv::relu(&load::<T>(&case["input"], device)).map_err(fail)?;
            check(name, "output", &f64s(&y)?, &case["output"], &tol["output"])?;
            let dx = ferroconv::relu_backward(&y, &load::<T>(&case["grad_output"], device)).map_err(fail)?;
            check(name, "grad_input", &f64s(&dx)?, &case["grad_input"], &tol["grad_input"])
        }
        "cat" => {
            let parts: Vec<Tensor<T>> =
                case["inputs"].as_array().unwrap().iter().map(|t| load::<T>(t, device)).collect();
            let refs: Vec<&Tensor<T>> = parts.iter().collect();
            let y = ferroconv::cat_channels(&refs).map_err(fail)?;
            check(name, "output", &f64s(&y)?, &case["output"], &tol["output"])?;
            let sizes: Vec<usize> = parts.iter().map(|p| p.shape()[1]).collect();
            let grads = ferroconv::split_channels(&load::<T>(&case["grad_output"], device), &sizes).map_err(fail)?;
            for (i, (g, want)) in grads.iter().zip(case["grad_inputs"].as_array().unwrap()).enumerate() {
                check(name, &format!("grad_inputs[{i}]"), &f64s(g)?, want, &tol["grad_input"])?;
            }
            Ok(())
        }
        other => Err(format!("{name}: unknown op {other}")),
    }
}

fn run_all(device: Device) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/companion_fixtures");
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .expect("fixture folder")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 30, "expected the companion fixtures, found {}", paths.len());
    let failures: Vec<String> = paths
        .iter()
        .filter_map(|path| {
            let case: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
            let dtype: DType = case["dtype"].as_str().unwrap().parse().unwrap();
            match dtype {
                DType::F32 => run_case::<f32>(&case, device),
                DType::F64 => run_case::<f64>(&case, device),
                DType::F16 => run_case::<f16>(&case, device),
                DType::BF16 => run_case::<bf16>(&case, device),
            }
            .err()
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{device}: {} of {} cases failed:\n{}",
        failures.len(),
        paths.len(),
        failures.join("\n")
    );
}

#[test]
fn companion_ops_match_pytorch_on_the_cpu() {
    run_all(Device::Cpu);
}

/// The CUDA kernels of the companion ops (kernels/companion.cu), on the emulator.
#[cfg(feature = "emu")]
#[test]
fn companion_ops_match_pytorch_on_the_emulator() {
    run_all(Device::Emu);
}

#[test]
fn cat_rejects_mismatched_spatial_sizes() {
    let a = Tensor::<f32>::zeros(&[1, 2, 3, 3]).unwrap();
    let b = Tensor::<f32>::zeros(&[1, 2, 3, 4]).unwrap();
    let e = ferroconv::cat_channels(&[&a, &b]).unwrap_err();
    assert_eq!(e.kind(), "shape_mismatch");
    assert!(e.to_string().contains("[1, 2, 3, 4]"), "{e}");
}

#[test]
fn split_rejects_sizes_that_do_not_add_up() {
    let t = Tensor::<f32>::zeros(&[1, 3, 2]).unwrap();
    let e = ferroconv::split_channels(&t, &[1, 1]).unwrap_err();
    assert_eq!(e.kind(), "invalid_argument");
    assert!(e.to_string().contains("[1, 1]"), "{e}");
}
