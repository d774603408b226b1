//! The layer types: shapes, PyTorch's initialisation (bounds and statistics),
//! seed reproducibility, and forward / backward equal to the functional API.

use ferroconv::{
    Conv1d, Conv2d, Conv3d, ConvNd, ConvTranspose1d, ConvTranspose2d, ConvTranspose3d, ConvTransposeNd, Device,
    Element, GradRequest, PaddingMode, Tensor, bf16, conv, conv_backward, conv_transpose, conv_transpose_backward, f16,
};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

fn ramp<T: Element>(shape: &[usize]) -> Tensor<T> {
    let n: usize = shape.iter().product();
    Tensor::from_f64(shape, &(0..n).map(|i| ((i * 37) % 101) as f64 / 50.0 - 1.0).collect::<Vec<_>>()).unwrap()
}

fn values<T: Element>(t: &Tensor<T>) -> Vec<f64> {
    t.to_f64_vec().unwrap()
}

// ---------------------------------------------------------------------------
// Shapes

#[test]
fn weight_and_bias_shapes_follow_pytorch() {
    let c = Conv2d::<f32>::builder(6, 8, [3, 5]).groups(2).build_seeded(0).unwrap();
    assert_eq!(c.weight().shape(), &[8, 3, 3, 5]);
    assert_eq!(c.bias().unwrap().shape(), &[8]);
    assert_eq!((c.in_channels(), c.out_channels(), c.kernel_size()), (6, 8, [3, 5]));

    let t = ConvTranspose2d::<f32>::builder(6, 8, 3).groups(2).build_seeded(0).unwrap();
    assert_eq!(t.weight().shape(), &[6, 4, 3, 3]);
    assert_eq!(t.bias().unwrap().shape(), &[8]);

    let depthwise = Conv1d::<f32>::builder(4, 12, 3).groups(4).bias(false).build_seeded(0).unwrap();
    assert_eq!(depthwise.weight().shape(), &[12, 1, 3]);
    assert!(depthwise.bias().is_none());

    assert_eq!(Conv3d::<f32>::builder(2, 3, [1, 2, 3]).build_seeded(0).unwrap().weight().shape(), &[3, 2, 1, 2, 3]);
    assert_eq!(ConvTranspose3d::<f32>::builder(2, 3, 2).build_seeded(0).unwrap().weight().shape(), &[2, 3, 2, 2, 2]);
    assert_eq!(ConvTranspose1d::<f32>::builder(2, 3, 4).build_seeded(0).unwrap().weight().shape(), &[2, 3, 4]);
}

#[test]
fn forward_shapes_of_every_rank() {
    let x1 = Tensor::<f32>::zeros(&[2, 4, 10]).unwrap();
    let x2 = Tensor::<f32>::zeros(&[2, 4, 10, 7]).unwrap();
    let x3 = Tensor::<f32>::zeros(&[2, 4, 6, 5, 4]).unwrap();
    let conv1 = Conv1d::<f32>::builder(4, 5, 3).stride(2).build_seeded(1).unwrap();
    let conv2 = Conv2d::<f32>::builder(4, 5, 3).same().dilation(2).build_seeded(1).unwrap();
    let conv3 = Conv3d::<f32>::builder(4, 5, 3).padding(1).padding_mode(PaddingMode::Circular).build_seeded(1).unwrap();
    assert_eq!(conv1.forward(&x1).unwrap().shape(), &[2, 5, 4]);
    assert_eq!(conv2.forward(&x2).unwrap().shape(), &[2, 5, 10, 7]);
    assert_eq!(conv3.forward(&x3).unwrap().shape(), &[2, 5, 6, 5, 4]);

    let up1 = ConvTranspose1d::<f32>::builder(4, 5, 3).stride(2).output_padding(1).build_seeded(1).unwrap();
    let up2 = ConvTranspose2d::<f32>::builder(4, 5, [2, 3]).stride([2, 1]).build_seeded(1).unwrap();
    let up3 = ConvTranspose3d::<f32>::builder(4, 5, 1).dilation(2).build_seeded(1).unwrap();
    assert_eq!(up1.forward(&x1).unwrap().shape(), &[2, 5, 22]);
    assert_eq!(up2.forward(&x2).unwrap().shape(), &[2, 5, 20, 9]);
    assert_eq!(up3.forward(&x3).unwrap().shape(), &[2, 5, 6, 5, 4]);
}

#[test]
fn the_articles_shapes() {
    let x = Tensor::<f32>::zeros(&[1, 3, 32, 32]).unwrap();
    let conv = Conv2d::<f32>::builder(3, 16, 3).padding(1).build_seeded(0).unwrap();
    let y = conv.forward(&x).unwrap();
    assert_eq!(y.shape(), &[1, 16, 32, 32]);

    let x = Tensor::<f32>::zeros(&[1, 16, 16, 16]).unwrap();
    let up = ConvTranspose2d::<f32>::builder(16, 3, 3).stride(2).padding(1).build_seeded(0).unwrap();
    assert_eq!(up.forward(&x).unwrap().shape(), &[1, 3, 31, 31]);
    assert_eq!(up.forward_with_output_size(&x, [32, 32]).unwrap().shape(), &[1, 3, 32, 32]);
    let err = up.forward_with_output_size(&x, [33, 32]).unwrap_err();
    assert_eq!(err.kind(), "output_size_out_of_range");
    let padded = ConvTranspose2d::<f32>::builder(16, 3, 3).stride(2).padding(1).output_padding(1).build_seeded(0);
    assert_eq!(padded.unwrap().forward(&x).unwrap().shape(), &[1, 3, 32, 32]);
}

#[test]
fn the_builder_checks_what_the_pytorch_constructor_checks() {
    let kind = |r: ferroconv::Result<Conv2d<f32>>| r.unwrap_err().kind();
    assert_eq!(kind(Conv2d::builder(3, 16, 3).groups(0).build_seeded(0)), "non_positive_groups");
    assert_eq!(kind(Conv2d::builder(3, 16, 3).groups(2).build_seeded(0)), "channels_not_divisible_by_groups");
    assert_eq!(kind(Conv2d::builder(4, 6, 3).groups(4).build_seeded(0)), "channels_not_divisible_by_groups");
    assert_eq!(kind(Conv2d::builder(3, 16, [3, 0]).build_seeded(0)), "invalid_argument");
    assert_eq!(kind(Conv2d::builder(3, 16, [3, 3, 3]).build_seeded(0)), "param_length_mismatch");
    let t = ConvTranspose2d::<f32>::builder(4, 6, 3).groups(4).build_seeded(0);
    assert_eq!(t.unwrap_err().kind(), "channels_not_divisible_by_groups");
    // The rest is validated by forward, as in PyTorch.
    let strided = Conv2d::<f32>::builder(3, 16, 3).same().stride(2).build_seeded(0).unwrap();
    let x = Tensor::zeros(&[1, 3, 8, 8]).unwrap();
    assert_eq!(strided.forward(&x).unwrap_err().kind(), "same_padding_with_stride");
}

// ---------------------------------------------------------------------------
// Initialisation

/// Every value lies in [-bound, bound], and the extremes come close to it.
fn assert_uniform_within(what: &str, v: &[f64], bound: f64) {
    let max = v.iter().fold(0f64, |m, x| m.max(x.abs()));
    assert!(max <= bound, "{what}: |value| {max} exceeds the bound {bound}");
    if v.len() >= 200 {
        assert!(max > 0.95 * bound, "{what}: largest |value| {max} is far inside the bound {bound}");
    }
}

#[test]
fn parameters_lie_within_one_over_sqrt_fan_in() {
    // fan_in = weight.shape[1] * prod(kernel_size), for both ops.
    let conv = Conv2d::<f64>::builder(6, 8, [3, 5]).groups(2).build_seeded(3).unwrap();
    let bound = 1.0 / ((3 * 15) as f64).sqrt();
    assert_uniform_within("conv weight", &values(conv.weight()), bound);
    assert_uniform_within("conv bias", &values(conv.bias().unwrap()), bound);

    let up = ConvTranspose2d::<f64>::builder(2, 8, 3).build_seeded(3).unwrap();
    let bound = 1.0 / ((8 * 9) as f64).sqrt(); // out_channels / groups, not in_channels
    assert_uniform_within("conv_transpose weight", &values(up.weight()), bound);
    assert_uniform_within("conv_transpose bias", &values(up.bias().unwrap()), bound);

    let up = ConvTranspose3d::<f64>::builder(4, 8, 2).groups(2).build_seeded(3).unwrap();
    assert_uniform_within("grouped conv_transpose weight", &values(up.weight()), 1.0 / ((4 * 8) as f64).sqrt());
}

#[test]
fn low_precision_parameters_are_the_rounded_draws() {
    let exact = Conv2d::<f64>::builder(3, 4, 3).build_seeded(11).unwrap();
    let half = Conv2d::<f16>::builder(3, 4, 3).build_seeded(11).unwrap();
    let brain = Conv2d::<bf16>::builder(3, 4, 3).build_seeded(11).unwrap();
    let rounded = |t: &Tensor<f64>, f: fn(f64) -> f64| values(t).into_iter().map(f).collect::<Vec<_>>();
    assert_eq!(values(half.weight()), rounded(exact.weight(), |v| f16::from_f64(v).to_f64()));
    assert_eq!(values(brain.bias().unwrap()), rounded(exact.bias().unwrap(), |v| bf16::from_f64(v).to_f64()));
}

#[test]
fn weights_are_uniform_and_independent() {
    // 36,864 draws from U(-b, b): mean 0 and variance b²/3, checked to about 4 standard errors.
    let layer = Conv2d::<f64>::builder(64, 64, 3).build_seeded(2024).unwrap();
    let v = values(layer.weight());
    let b = 1.0 / ((64 * 9) as f64).sqrt();
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    assert!(mean.abs() < 4.0 * b / (3.0 * n).sqrt(), "mean {mean}");
    // The variance of x² for U(-b, b) is 4b⁴/45.
    assert!((var - b * b / 3.0).abs() < 4.0 * (4.0 / 45.0f64).sqrt() * b * b / n.sqrt(), "variance {var}");
    // A quarter of the values in each quarter of the range.
    for q in 0..4 {
        let (lo, hi) = (-b + q as f64 * b / 2.0, -b + (q + 1) as f64 * b / 2.0);
        let share = v.iter().filter(|&&x| (lo..hi).contains(&x)).count() as f64 / n;
        assert!((share - 0.25).abs() < 0.01, "quarter {q}: {share}");
    }
    // Neighbours are uncorrelated.
    let lag: f64 = v.windows(2).map(|w| w[0] * w[1]).sum::<f64>() / (n - 1.0);
    assert!(lag.abs() < 4.0 * (b * b / 3.0) / n.sqrt(), "lag-1 correlation {lag}");
}

// ---------------------------------------------------------------------------
// Seeds

#[test]
fn the_same_seed_gives_the_same_parameters() {
    let a = ConvTranspose2d::<f32>::builder(3, 5, 3).build_seeded(99).unwrap();
    let b = ConvTranspose2d::<f32>::builder(3, 5, 3).build_seeded(99).unwrap();
    let c = ConvTranspose2d::<f32>::builder(3, 5, 3).build_seeded(100).unwrap();
    assert_eq!(values(a.weight()), values(b.weight()));
    assert_eq!(values(a.bias().unwrap()), values(b.bias().unwrap()));
    assert_ne!(values(a.weight()), values(c.weight()));
}

#[test]
fn build_seeded_is_build_with_a_seeded_chacha8() {
    let seeded = Conv1d::<f32>::builder(2, 3, 4).build_seeded(5).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let built = Conv1d::<f32>::builder(2, 3, 4).build(&mut rng).unwrap();
    assert_eq!(values(seeded.weight()), values(built.weight()));
    // One generator for two layers: the second continues the stream.
    let second = Conv1d::<f32>::builder(2, 3, 4).build(&mut rng).unwrap();
    assert_ne!(values(second.weight()), values(built.weight()));
}

// ---------------------------------------------------------------------------
// Forward and backward are the functional API's

#[test]
fn conv_layers_equal_the_functional_api() {
    fn check<const N: usize>(layer: ConvNd<f32, N>, input: &[usize]) {
        let x = ramp::<f32>(input);
        let y = layer.forward(&x).unwrap();
        let expected = conv(N, &x, layer.weight(), layer.bias(), layer.options()).unwrap();
        assert_eq!(y.to_vec().unwrap(), expected.to_vec().unwrap());
        let dy = ramp::<f32>(y.shape());
        let got = layer.backward(&x, &dy, GradRequest::ALL).unwrap();
        let want = conv_backward(N, &x, layer.weight(), layer.bias(), &dy, layer.options(), GradRequest::ALL).unwrap();
        assert_eq!(got.input.unwrap().to_vec().unwrap(), want.input.unwrap().to_vec().unwrap());
        assert_eq!(got.weight.unwrap().to_vec().unwrap(), want.weight.unwrap().to_vec().unwrap());
        assert_eq!(got.bias.map(|b| b.to_vec().unwrap()), want.bias.map(|b| b.to_vec().unwrap()));
    }
    check(Conv1d::builder(2, 4, 3).stride(2).padding(1).build_seeded(1).unwrap(), &[2, 2, 9]);
    check(
        Conv2d::builder(4, 4, [3, 2]).groups(2).padding_mode(PaddingMode::Reflect).padding(1).build_seeded(1).unwrap(),
        &[1, 4, 6, 5],
    );
    check(Conv3d::builder(2, 3, 2).dilation(2).bias(false).build_seeded(1).unwrap(), &[1, 2, 4, 5, 4]);
}

#[test]
fn conv_transpose_layers_equal_the_functional_api() {
    fn check<const N: usize>(layer: ConvTransposeNd<f32, N>, input: &[usize]) {
        let x = ramp::<f32>(input);
        let y = layer.forward(&x).unwrap();
        let expected = conv_transpose(N, &x, layer.weight(), layer.bias(), layer.options()).unwrap();
        assert_eq!(y.to_vec().unwrap(), expected.to_vec().unwrap());
        let dy = ramp::<f32>(y.shape());
        let got = layer.backward(&x, &dy, GradRequest { input: true, weight: true, bias: false }).unwrap();
        let request = GradRequest::ALL;
        let want = conv_transpose_backward(N, &x, layer.weight(), layer.bias(), &dy, layer.options(), request).unwrap();
        assert_eq!(got.input.unwrap().to_vec().unwrap(), want.input.unwrap().to_vec().unwrap());
        assert_eq!(got.weight.unwrap().to_vec().unwrap(), want.weight.unwrap().to_vec().unwrap());
        assert!(got.bias.is_none(), "not requested");
    }
    check(ConvTranspose1d::builder(2, 4, 3).stride(3).output_padding(2).build_seeded(1).unwrap(), &[2, 2, 5]);
    check(ConvTranspose2d::builder(4, 6, 3).groups(2).padding(1).stride(2).build_seeded(1).unwrap(), &[1, 4, 4, 3]);
    check(ConvTranspose3d::builder(2, 1, [1, 2, 3]).dilation([1, 2, 1]).build_seeded(1).unwrap(), &[1, 2, 2, 3, 2]);
}

#[test]
fn the_output_size_reaches_backward_too() {
    let layer = ConvTranspose2d::<f64>::builder(3, 2, 3).stride(2).padding(1).build_seeded(8).unwrap();
    let x = ramp::<f64>(&[1, 3, 5, 5]);
    let y = layer.forward_with_output_size(&x, [10, 9]).unwrap();
    assert_eq!(y.shape(), &[1, 2, 10, 9]);
    let dy = ramp::<f64>(y.shape());
    let grads = layer.backward_with_output_size(&x, [10, 9], &dy, GradRequest::ALL).unwrap();
    assert_eq!(grads.input.unwrap().shape(), x.shape());
    // Without the output size, grad_output of that shape is refused.
    assert_eq!(layer.backward(&x, &dy, GradRequest::ALL).unwrap_err().kind(), "shape_mismatch");
}

// ---------------------------------------------------------------------------
// Devices and parameters

#[test]
fn parameters_move_between_devices_explicitly() {
    let layer = Conv2d::<f32>::builder(3, 4, 3).build_seeded(0).unwrap();
    assert_eq!(layer.device(), Device::Cpu);
    let moved = layer.to_device(Device::Cpu).unwrap();
    assert_eq!(values(moved.weight()), values(layer.weight()));
    let err = layer.to_device(Device::Cuda(999)).unwrap_err();
    assert_eq!(err.kind(), "device_unavailable");
}

#[test]
fn set_parameters_takes_only_the_same_shapes() {
    let mut layer = Conv1d::<f64>::builder(1, 1, 2).build_seeded(0).unwrap();
    let w = Tensor::from_vec(&[1, 1, 2], vec![1.0, -1.0]).unwrap();
    let b = Tensor::from_vec(&[1], vec![0.5]).unwrap();
    layer.set_parameters(w.clone(), Some(b.clone())).unwrap();
    let x = Tensor::from_vec(&[1, 1, 3], vec![1.0, 4.0, 9.0]).unwrap();
    assert_eq!(layer.forward(&x).unwrap().to_vec().unwrap(), vec![-2.5, -4.5]);

    let wrong = Tensor::zeros(&[1, 1, 3]).unwrap();
    assert_eq!(layer.set_parameters(wrong, Some(b)).unwrap_err().kind(), "shape_mismatch");
    assert_eq!(layer.set_parameters(w, None).unwrap_err().kind(), "invalid_argument");
}
