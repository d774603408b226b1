//! End-to-end runs of small suites on the CPU.

use super::*;
use crate::backend::GradRequest;
use crate::ops;
use crate::tensor::Tensor;

const SMALL: &str = r#"{"cases": [
    {"name": "c2", "op": "conv", "x": [2, 4, 6, 5], "w": [6, 2, 3, 2], "stride": [2, 1], "padding": [1, 0],
     "dilation": [1, 2], "groups": 2},
    {"name": "t1", "op": "conv_transpose", "x": [1, 3, 5], "w": [3, 2, 3], "stride": [2], "padding": [1],
     "dilation": [1], "groups": 1, "output_padding": [1]},
    {"name": "r2", "op": "conv", "x": [1, 2, 5, 5], "w": [2, 2, 3, 3], "stride": [1, 1], "padding": [1, 1],
     "dilation": [1, 1], "groups": 1, "padding_mode": "reflect"}
]}"#;

fn quick(directions: Vec<Direction>, algorithms: AlgorithmSelection) -> BenchConfig {
    BenchConfig {
        threads: 2,
        directions,
        algorithms,
        timing: Timing { repetitions: Repetitions::Fixed(3), ..Timing::default() },
        ..BenchConfig::default()
    }
}

/// Counts what the runner reports.
#[derive(Default)]
struct Log {
    started: Option<usize>,
    running: Vec<String>,
    done: usize,
}

impl Progress for Log {
    fn start(&mut self, runs: usize) {
        self.started = Some(runs);
    }
    fn running(&mut self, name: &str, direction: &str, algorithm: &str) {
        self.running.push(format!("{name} {direction} {algorithm}"));
    }
    fn done(&mut self, _: &Outcome) {
        self.done += 1;
    }
}

fn measured(outcomes: &[Outcome]) -> Vec<&Record> {
    outcomes
        .iter()
        .map(|o| match o {
            Outcome::Measured(r) => r,
            Outcome::Failed(f) => panic!("{f:?}"),
        })
        .collect()
}

#[test]
fn every_case_direction_and_algorithm_gets_a_record() {
    let suite = Suite::parse(SMALL).unwrap();
    let config = quick(Direction::ALL.to_vec(), AlgorithmSelection::All);
    let mut log = Log::default();
    let outcomes = run(&config, &suite, Some(100.0), &mut log).unwrap();
    let runs = 3 * 2 * CpuAlgorithm::ALL.len();
    assert_eq!((log.started, log.done, outcomes.len()), (Some(runs), runs, runs));
    let first_algorithm = CpuAlgorithm::ALL[0].name();
    assert_eq!(log.running[0], format!("c2 fwd {first_algorithm}"));

    let records = measured(&outcomes);
    let c2_fwd = records[0];
    assert_eq!((c2_fwd.device.as_str(), c2_fwd.dtype.as_str(), c2_fwd.threads), ("cpu", "f32", 2));
    assert_eq!(c2_fwd.out_shape, vec![2, 6, 3, 3]);
    // 2·N·C_out·prod(out)·(C_in/groups)·prod(k)
    assert_eq!(c2_fwd.flops, 2 * 2 * 6 * (3 * 3) * 2 * (3 * 2));
    assert_eq!(c2_fwd.reps, 3);
    let c2_bwd = records.iter().find(|r| r.name == "c2" && r.direction == "bwd").unwrap();
    assert_eq!(c2_bwd.flops, 2 * c2_fwd.flops);
    for r in &records {
        assert!(r.median_ms > 0.0 && r.min_ms <= r.median_ms, "{r:?}");
        assert!((r.gflops - r.flops as f64 / r.median_ms / 1e6).abs() <= 1e-9 * r.gflops);
        // A peak of 100 GFLOP/s makes the percentage the GFLOP/s.
        assert!((r.percent_of_peak.unwrap() - r.gflops).abs() <= 1e-9 * r.gflops);
    }
    let t1 = records.iter().find(|r| r.name == "t1").unwrap();
    assert_eq!((t1.op.as_str(), t1.out_shape.as_slice()), ("conv_transpose", &[1, 2, 10][..]));
    // The reflect-padded case holds at least its padded copy ([1, 2, 7, 7] f32); all report their scratch.
    let r2 = records.iter().find(|r| r.name == "r2").unwrap();
    assert!(r2.workspace_bytes >= 2 * 49 * 4, "{r2:?}");
    assert!(records.iter().all(|r| r.workspace_bytes > 0 && r.workspace_bytes < 1 << 20), "{records:?}");
}

#[test]
fn dtype_batch_mult_and_named_algorithm_are_honoured() {
    let suite = Suite::parse(SMALL).unwrap().select(&["t1"]).unwrap();
    let config = BenchConfig {
        dtype: DType::BF16,
        batch_mult: 3,
        ..quick(vec![Direction::Bwd], AlgorithmSelection::Named(CpuAlgorithm::ALL[0].name().into()))
    };
    let outcomes = run(&config, &suite, None, &mut Quiet).unwrap();
    let r = measured(&outcomes)[0];
    assert_eq!((r.dtype.as_str(), r.batch, r.direction.as_str()), ("bf16", 3, "bwd"));
    assert_eq!(r.algorithm, CpuAlgorithm::ALL[0].name());
    assert_eq!((r.peak_gflops, r.percent_of_peak), (None, None));
}

#[test]
fn records_name_the_algorithms_that_ran() {
    let suite = Suite::parse(SMALL).unwrap();
    let forced = |algorithm: &str| {
        let config = quick(Direction::ALL.to_vec(), AlgorithmSelection::Named(algorithm.into()));
        let outcomes = run(&config, &suite, None, &mut Quiet).unwrap();
        let algorithm = algorithm.to_string();
        move |name: &str, direction: &str| {
            let r = measured(&outcomes).into_iter().find(|r| r.name == name && r.direction == direction).unwrap();
            assert_eq!(r.algorithm, algorithm);
            r.ran.clone()
        }
    };
    // c2 is strided (no Winograd); r2 is a 3×3 stride-1 conv Winograd takes,
    // forward, input gradient and weight gradient.
    let winograd = forced("winograd");
    assert_eq!(winograd("c2", "fwd"), "implicit_gemm");
    assert_eq!(winograd("r2", "fwd"), "winograd");
    assert_eq!(winograd("r2", "bwd"), "winograd");
    // GEMM and col2im runs r2's input gradient (an adjoint) only: its weight gradient runs implicit GEMM.
    let col2im = forced("gemm_col2im");
    assert_eq!(col2im("r2", "fwd"), "implicit_gemm");
    assert_eq!(col2im("r2", "bwd"), "gemm_col2im+implicit_gemm");
    // Under auto, c2's two channels per group go to the direct SIMD path.
    let auto = run(&quick(vec![Direction::Fwd], AlgorithmSelection::Auto), &suite, None, &mut Quiet).unwrap();
    assert_eq!(measured(&auto)[0].ran, "simd_direct");
}

#[test]
fn bad_configurations_are_errors() {
    let suite = Suite::parse(SMALL).unwrap();
    let bad = |config: BenchConfig| run(&config, &suite, None, &mut Quiet).unwrap_err().to_string();
    assert!(
        bad(BenchConfig { batch_mult: 0, ..quick(vec![Direction::Fwd], AlgorithmSelection::Auto) }).contains("batch")
    );
    assert!(bad(quick(vec![], AlgorithmSelection::Auto)).contains("direction"));
    assert!(bad(quick(vec![Direction::Fwd], AlgorithmSelection::Named("fft".into()))).contains("\"fft\""));
    assert!(
        bad(BenchConfig { threads: 0, ..quick(vec![Direction::Fwd], AlgorithmSelection::Auto) }).contains("threads")
    );
    let cuda = bad(BenchConfig { device: Device::Cuda(0), ..quick(vec![Direction::Fwd], AlgorithmSelection::Auto) });
    assert!(cuda.contains("cuda:0"), "{cuda}");
    assert!(check_device(Device::Cuda(0)).is_err() && check_device(Device::Cpu).is_ok());
}

/// The bench computes what the tensor API computes: the buffers are wired to the right arguments.
#[test]
fn prepared_runs_compute_the_ops_results() {
    let suite = Suite::parse(SMALL).unwrap();
    let cpu = CpuBackend::with_threads(2).unwrap();
    for case in suite.cases() {
        let g = case.geometry(1).unwrap();
        let mut fwd = Prepared::<f64, CpuBackend>::new(&cpu, g.clone(), Direction::Fwd).unwrap();
        let mut bwd = Prepared::<f64, CpuBackend>::new(&cpu, g.clone(), Direction::Bwd).unwrap();
        fwd.run(&cpu).unwrap();
        bwd.run(&cpu).unwrap();
        assert_eq!((fwd.direction(), bwd.direction()), (Direction::Fwd, Direction::Bwd));
        assert_eq!(bwd.flops(), 2 * fwd.flops());

        let tensor = |shape: Vec<usize>, data: &Vec<f64>| Tensor::from_vec(&shape, data.clone()).unwrap();
        let (x, w) = (tensor(g.op_input_shape(), &fwd.input), tensor(g.weight_shape(), &fwd.weight));
        let prepared::Outputs::Fwd { output } = &fwd.outputs else { unreachable!() };
        let expected = ops::forward(&g, &x, &w, None, crate::Activation::Identity).unwrap();
        assert_eq!(output, &expected.to_vec().unwrap(), "{} fwd", case.name);

        let prepared::Outputs::Bwd { grad_output, grad_input, grad_weight, grad_bias } = &bwd.outputs else {
            unreachable!()
        };
        let grads = ops::backward(&g, &x, &w, &tensor(g.op_output_shape(), grad_output), GradRequest::ALL).unwrap();
        assert_eq!(grad_input, &grads.input.unwrap().to_vec().unwrap(), "{} grad input", case.name);
        assert_eq!(grad_weight, &grads.weight.unwrap().to_vec().unwrap(), "{} grad weight", case.name);
        let channels = g.op_out_channels();
        let volume = grad_output.len() / (g.batch * channels);
        let mut sums = vec![0.0; channels];
        for (i, v) in grad_output.iter().enumerate() {
            sums[(i / volume) % channels] += v;
        }
        for (got, want) in grad_bias.iter().zip(&sums) {
            assert!((got - want).abs() < 1e-12, "{} grad bias: {got} vs {want}", case.name);
        }
    }
}

#[test]
fn algorithm_selection_parses_and_resolves() {
    assert_eq!("auto".parse::<AlgorithmSelection>().unwrap().cpu_algorithms().unwrap(), vec![CpuAlgorithm::Auto]);
    assert_eq!("all".parse::<AlgorithmSelection>().unwrap(), AlgorithmSelection::All);
    for &a in CpuAlgorithm::ALL {
        assert_eq!(a.name().parse::<AlgorithmSelection>().unwrap().cpu_algorithms().unwrap(), vec![a]);
    }
}

#[test]
fn direction_flops_and_names() {
    let g = Suite::builtin().unwrap().case("r50_3x3_64").unwrap().geometry(1).unwrap();
    assert_eq!(Direction::Bwd.flops(&g), 2 * Direction::Fwd.flops(&g));
    assert_eq!(Direction::parse_list("bwd").unwrap(), vec![Direction::Bwd]);
    assert_eq!(Direction::ALL.map(Direction::name), ["fwd", "bwd"]);
}
