//! One test per error kind: the 20 rules of the fixtures README, then the
//! library's own. Each checks `kind()` and that the message names the
//! argument and its values.
//!
//! Not here: `device_mismatch` and `cuda`, which need tensors on a CUDA device
//! (this build has no CUDA tensors to mix with CPU ones).

use ferroconv::{
    ConvGeometry, ConvOptions, ConvTransposeOptions, DType, Device, GradRequest, Padding, PaddingMode, Tensor, conv,
    conv_backward, conv_transpose, conv_transpose1d, conv_transpose2d, conv1d, conv2d, conv3d,
};

fn zeros(shape: &[usize]) -> Tensor<f32> {
    Tensor::zeros(shape).expect("a small tensor")
}

/// Asserts that `result` failed with `kind` and a message containing every needle.
#[track_caller]
fn assert_error<T: std::fmt::Debug>(result: ferroconv::Result<T>, kind: &str, needles: &[&str]) {
    let err = result.expect_err("the call must fail");
    let message = err.to_string();
    assert_eq!(err.kind(), kind, "message: {message}");
    for needle in needles {
        assert!(message.contains(needle), "{kind}: message {message:?} does not mention {needle:?}");
    }
}

/// `conv2d` of a [1, 3, 8, 8] input with a [4, 3, 3, 3] weight, with `opts`.
fn conv2d_with(opts: ConvOptions) -> ferroconv::Result<Tensor<f32>> {
    conv2d(&zeros(&[1, 3, 8, 8]), &zeros(&[4, 3, 3, 3]), None, &opts)
}

/// `conv_transpose2d` of a [1, 4, 5, 5] input with a [4, 2, 3, 3] weight, with `opts`.
fn conv_transpose2d_with(opts: ConvTransposeOptions) -> ferroconv::Result<Tensor<f32>> {
    conv_transpose2d(&zeros(&[1, 4, 5, 5]), &zeros(&[4, 2, 3, 3]), None, &opts)
}

// ---------------------------------------------------------------------------
// The README's rules, in its order

#[test]
fn bad_input_rank() {
    let r = conv2d(&zeros(&[3, 8, 8]), &zeros(&[4, 3, 3, 3]), None, &ConvOptions::new());
    assert_error(r, "bad_input_rank", &["input", "rank 4", "[3, 8, 8]"]);
}

#[test]
fn weight_rank_mismatch() {
    let r = conv_transpose1d(&zeros(&[1, 4, 5]), &zeros(&[4, 2, 3, 3]), None, &ConvTransposeOptions::new());
    assert_error(r, "weight_rank_mismatch", &["weight", "rank 3", "[4, 2, 3, 3]"]);
}

#[test]
fn param_length_mismatch() {
    assert_error(conv2d_with(ConvOptions::new().stride([1, 1, 1])), "param_length_mismatch", &["stride", "[1, 1, 1]"]);
    assert_error(conv2d_with(ConvOptions::new().dilation([2])), "param_length_mismatch", &["dilation", "[2]"]);
    let r = conv_transpose2d_with(ConvTransposeOptions::new().output_size([10, 10, 10]));
    assert_error(r, "param_length_mismatch", &["output_size", "[10, 10, 10]"]);
}

#[test]
fn non_positive_stride() {
    assert_error(conv2d_with(ConvOptions::new().stride([2, 0])), "non_positive_stride", &["stride", "[2, 0]"]);
    let r = conv_transpose2d_with(ConvTransposeOptions::new().stride(-2));
    assert_error(r, "non_positive_stride", &["stride", "[-2, -2]"]);
}

#[test]
fn negative_padding() {
    // Rejected in every mode, though F.pad would crop silently.
    let opts = ConvOptions::new().padding([0, -1]).padding_mode(PaddingMode::Replicate);
    assert_error(conv2d_with(opts), "negative_padding", &["padding", "[0, -1]"]);
}

#[test]
fn non_positive_dilation() {
    assert_error(conv2d_with(ConvOptions::new().dilation([0, 1])), "non_positive_dilation", &["dilation", "[0, 1]"]);
}

#[test]
fn non_positive_groups() {
    assert_error(conv2d_with(ConvOptions::new().groups(-3)), "non_positive_groups", &["groups", "-3"]);
}

#[test]
fn negative_output_padding() {
    let r = conv_transpose2d_with(ConvTransposeOptions::new().stride(2).output_padding([0, -1]));
    assert_error(r, "negative_output_padding", &["output_padding", "[0, -1]"]);
}

#[test]
fn string_padding_for_transpose() {
    let opts = ConvTransposeOptions { padding: Padding::Same, ..ConvTransposeOptions::new() };
    assert_error(conv_transpose2d_with(opts), "string_padding_for_transpose", &["padding", "conv_transpose", "same"]);
    let opts = ConvTransposeOptions { padding: Padding::Valid, ..ConvTransposeOptions::new() };
    assert_error(conv_transpose2d_with(opts), "string_padding_for_transpose", &["padding", "valid"]);
}

#[test]
fn same_padding_with_stride() {
    let r = conv2d_with(ConvOptions::new().same().stride([1, 2]));
    assert_error(r, "same_padding_with_stride", &["padding", "same", "stride", "[1, 2]"]);
}

#[test]
fn channels_not_divisible_by_groups() {
    // conv: input channels.
    let r = conv2d(&zeros(&[1, 3, 8, 8]), &zeros(&[4, 1, 3, 3]), None, &ConvOptions::new().groups(2));
    assert_error(r, "channels_not_divisible_by_groups", &["groups", "input channels", "(3)", "(2)"]);
    // conv: output channels.
    let r = conv2d(&zeros(&[1, 4, 8, 8]), &zeros(&[3, 2, 3, 3]), None, &ConvOptions::new().groups(2));
    assert_error(r, "channels_not_divisible_by_groups", &["groups", "output channels", "(3)", "(2)"]);
    // conv_transpose: weight.shape[0].
    let r =
        conv_transpose2d(&zeros(&[1, 3, 5, 5]), &zeros(&[3, 2, 3, 3]), None, &ConvTransposeOptions::new().groups(2));
    assert_error(r, "channels_not_divisible_by_groups", &["groups", "weight.shape[0]", "(3)", "(2)"]);
}

#[test]
fn weight_shape_mismatch() {
    let r = conv2d(&zeros(&[1, 3, 8, 8]), &zeros(&[4, 2, 3, 3]), None, &ConvOptions::new());
    assert_error(r, "weight_shape_mismatch", &["weight", "[4, 2, 3, 3]", "input channels 3", "groups 1"]);
    let r = conv_transpose2d(&zeros(&[1, 5, 5, 5]), &zeros(&[4, 2, 3, 3]), None, &ConvTransposeOptions::new());
    assert_error(r, "weight_shape_mismatch", &["weight", "[4, 2, 3, 3]", "input channels 5"]);
}

#[test]
fn bias_shape_mismatch() {
    let r = conv2d(&zeros(&[1, 3, 8, 8]), &zeros(&[4, 3, 3, 3]), Some(&zeros(&[3])), &ConvOptions::new());
    assert_error(r, "bias_shape_mismatch", &["bias", "[4]", "[3]"]);
    // conv_transpose: C_out = weight.shape[1] * groups.
    let r = conv_transpose2d(
        &zeros(&[1, 4, 5, 5]),
        &zeros(&[4, 2, 3, 3]),
        Some(&zeros(&[2])),
        &ConvTransposeOptions::new().groups(2),
    );
    assert_error(r, "bias_shape_mismatch", &["bias", "[4]", "[2]"]);
}

#[test]
fn empty_spatial_input() {
    let r = conv2d(&zeros(&[1, 3, 0, 8]), &zeros(&[4, 3, 3, 3]), None, &ConvOptions::new());
    assert_error(r, "empty_spatial_input", &["input", "spatial", "[1, 3, 0, 8]"]);
}

#[test]
fn reflect_padding_too_large() {
    let opts = ConvOptions::new().padding([1, 4]).padding_mode(PaddingMode::Reflect);
    let r = conv2d(&zeros(&[1, 3, 8, 4]), &zeros(&[4, 3, 3, 3]), None, &opts);
    assert_error(r, "reflect_padding_too_large", &["padding", "reflect", "(4, 4)", "dim 1", "size 4"]);
    // "same" padding counts too: a 7-tap kernel pads (3, 3), too much for 3 elements.
    let opts = ConvOptions::new().same().padding_mode(PaddingMode::Reflect);
    let r = conv1d(&zeros(&[1, 1, 3]), &zeros(&[1, 1, 7]), None, &opts);
    assert_error(r, "reflect_padding_too_large", &["(3, 3)", "size 3"]);
}

#[test]
fn circular_padding_too_large() {
    let opts = ConvOptions::new().padding([5, 0]).padding_mode(PaddingMode::Circular);
    let r = conv2d(&zeros(&[1, 3, 4, 8]), &zeros(&[4, 3, 3, 3]), None, &opts);
    assert_error(r, "circular_padding_too_large", &["padding", "circular", "(5, 5)", "dim 0", "size 4"]);
}

#[test]
fn kernel_larger_than_padded_input() {
    let r = conv2d(&zeros(&[1, 3, 8, 8]), &zeros(&[4, 3, 3, 3]), None, &ConvOptions::new().dilation([1, 4]));
    assert_error(r, "kernel_larger_than_padded_input", &["weight", "extent 9", "dim 1", "padded input size 8"]);
}

#[test]
fn output_size_out_of_range() {
    // The article's layer: the output of 16x16 with stride 2, padding 1 may be 31 or 32.
    let x = zeros(&[1, 16, 16, 16]);
    let w = zeros(&[16, 3, 3, 3]);
    let opts = ConvTransposeOptions::new().stride(2).padding(1).output_size([32, 33]);
    let r = conv_transpose2d(&x, &w, None, &opts);
    assert_error(r, "output_size_out_of_range", &["output_size", "33", "dim 1", "[31, 32]"]);
}

#[test]
fn output_padding_too_large() {
    let opts = ConvTransposeOptions::new().stride(2).dilation([1, 3]).output_padding([2, 2]);
    let r = conv_transpose2d_with(opts);
    assert_error(r, "output_padding_too_large", &["output_padding", "2", "dim 0", "stride (2)", "dilation (1)"]);
}

#[test]
fn non_positive_output_size() {
    let r = conv_transpose1d(&zeros(&[1, 4, 2]), &zeros(&[4, 2, 3]), None, &ConvTransposeOptions::new().padding(3));
    // (2 - 1)*1 - 2*3 + 1*(3 - 1) + 1 = -2
    assert_error(r, "non_positive_output_size", &["output size", "-2", "dim 0", "input 2", "padding 3", "kernel 3"]);
}

// ---------------------------------------------------------------------------
// The library's own kinds

#[test]
fn size_overflow() {
    let r = ConvGeometry::conv(2, &[1, 1, usize::MAX, 2], &[1, 1, 1, 1], None, &ConvOptions::new());
    assert_error(r, "size_overflow", &["input", &usize::MAX.to_string()]);
    let r = ConvGeometry::conv(1, &[1, 1, 4], &[1, 1, 1], None, &ConvOptions::new().padding(i64::MAX));
    assert_error(r, "size_overflow", &["padding", "spatial dim 0"]);
    assert_error(Tensor::<f32>::zeros(&[usize::MAX, 2]), "size_overflow", &["tensor", "[18446744073709551615, 2]"]);
}

#[test]
fn allocation_failed() {
    // 2^62 f32s: a valid element count whose byte size no allocator can give.
    let r = Tensor::<f32>::zeros(&[1 << 62]);
    assert_error(r, "allocation_failed", &["allocation", "bytes", "tensor"]);
}

#[test]
fn shape_mismatch() {
    let (x, w) = (zeros(&[1, 3, 8, 8]), zeros(&[4, 3, 3, 3]));
    let dy = zeros(&[1, 4, 8, 8]); // the output is [1, 4, 6, 6]
    let r = conv_backward(2, &x, &w, None, &dy, &ConvOptions::new(), GradRequest::ALL);
    assert_error(r, "shape_mismatch", &["grad_output", "[1, 4, 6, 6]", "[1, 4, 8, 8]"]);
}

#[test]
fn data_length() {
    let r = Tensor::<f32>::from_vec(&[2, 3], vec![0.0; 5]);
    assert_error(r, "data_length", &["tensor", "[2, 3]", "6", "5"]);
}

#[test]
fn device_unavailable() {
    // No machine has a 1000th GPU.
    let r = zeros(&[2]).to_device(Device::Cuda(999));
    assert_error(r, "device_unavailable", &["cuda:999"]);
}

#[test]
fn invalid_argument() {
    let r = conv(4, &zeros(&[1, 1, 2, 2, 2, 2]), &zeros(&[1, 1, 1, 1, 1, 1]), None, &ConvOptions::new());
    assert_error(r, "invalid_argument", &["spatial_dims", "4"]);
    let r = conv3d(&zeros(&[1, 1, 4, 4, 4]), &zeros(&[1, 1, 1, 0, 1]), None, &ConvOptions::new());
    assert_error(r, "invalid_argument", &["weight", "kernel size", "[1, 1, 1, 0, 1]"]);
    let r = conv_transpose(1, &zeros(&[1, 1, 4]), &zeros(&[1, 1, 0]), None, &ConvTransposeOptions::new());
    assert_error(r, "invalid_argument", &["weight", "[1, 1, 0]"]);
    assert_error("mirror".parse::<PaddingMode>(), "invalid_argument", &["padding_mode", "mirror"]);
    assert_error("f8".parse::<DType>(), "invalid_argument", &["dtype", "f8"]);
    assert_error("tpu:0".parse::<Device>(), "invalid_argument", &["device", "tpu:0"]);
}
