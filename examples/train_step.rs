//! A few steps of gradient descent with a layer's backward pass: a `Conv1d`
//! learns the second-difference filter [1, -2, 1] from examples of it.
//!
//! `cargo run --example train_step`

use ferroconv::{Conv1d, GradRequest, Tensor};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

fn main() -> ferroconv::Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut uniform = |n: usize| (0..n).map(|_| (rng.next_u32() as f64 / u32::MAX as f64) * 2.0 - 1.0).collect();

    // Inputs and the targets the filter [1, -2, 1] (no bias) gives them.
    let x = Tensor::<f64>::from_vec(&[8, 1, 64], uniform(8 * 64))?;
    let mut teacher = Conv1d::<f64>::builder(1, 1, 3).bias(false).build_seeded(0)?;
    teacher.set_parameters(Tensor::from_vec(&[1, 1, 3], vec![1.0, -2.0, 1.0])?, None)?;
    let target = teacher.forward(&x)?.to_vec()?;

    let mut student = Conv1d::<f64>::builder(1, 1, 3).build_seeded(1)?;
    let learning_rate = 0.5;
    for step in 0..=60 {
        let y = student.forward(&x)?;
        // Loss: mean squared error; its gradient with respect to the output.
        let diff: Vec<f64> = y.to_vec()?.iter().zip(&target).map(|(y, t)| y - t).collect();
        let n = diff.len() as f64;
        let loss = diff.iter().map(|d| d * d).sum::<f64>() / n;
        if step % 10 == 0 {
            let bias = student.bias().map(Tensor::to_vec).transpose()?;
            println!("step {step:2}: loss {loss:.2e}, weight {:+.4?}, bias {bias:+.4?}", student.weight().to_vec()?);
        }
        let grad_output = Tensor::from_vec(y.shape(), diff.iter().map(|d| 2.0 * d / n).collect())?;
        let grads = student.backward(&x, &grad_output, GradRequest { input: false, weight: true, bias: true })?;

        let descend = |param: &Tensor<f64>, grad: Option<Tensor<f64>>| -> ferroconv::Result<Tensor<f64>> {
            let grad = grad.expect("requested").to_vec()?;
            let values = param.to_vec()?.iter().zip(grad).map(|(p, g)| p - learning_rate * g).collect();
            Tensor::from_vec(param.shape(), values)
        };
        let weight = descend(student.weight(), grads.weight)?;
        let bias = student.bias().map(|b| descend(b, grads.bias)).transpose()?;
        student.set_parameters(weight, bias)?;
    }
    Ok(())
}
