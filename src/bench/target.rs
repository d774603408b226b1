//! What the benchmark needs from a backend beyond the ops themselves, and the
//! answers of the CPU backend and of the CUDA backend (whose `synchronize` waits
//! for its stream, so GPU time stays inside the clock).

use crate::backend::{Conv, ConvTranspose};
use crate::bench::Direction;
use crate::cpu::CpuBackend;
use crate::cuda::{CudaExecutor, GpuBackend, Planner};
use crate::element::Element;
use crate::error::Result;
use crate::geometry::ConvGeometry;

/// A backend the benchmark can time.
pub trait BenchTarget<T: Element>: Conv<T> + ConvTranspose<T> {
    /// A buffer on this backend holding `data`.
    fn upload(&self, data: Vec<T>) -> Result<Self::Buffer<T>>;

    /// Blocks until all work queued so far has finished. The timer calls it
    /// before every clock stop; backends that run synchronously do nothing.
    fn synchronize(&self) -> Result<()>;

    /// Bytes the backend allocates inside one op of `direction` beyond its
    /// operands (scratch, packed panels, padded copies): the `workspace_bytes` of the report.
    fn workspace_bytes(&self, geometry: &ConvGeometry, direction: Direction) -> u64;
}

impl<T: Element> BenchTarget<T> for CpuBackend {
    fn upload(&self, data: Vec<T>) -> Result<Vec<T>> {
        Ok(data)
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn workspace_bytes(&self, geometry: &ConvGeometry, direction: Direction) -> u64 {
        cpu_workspace_estimate(geometry, direction, size_of::<T>())
    }
}

impl<T: Element> BenchTarget<T> for GpuBackend<CudaExecutor> {
    fn upload(&self, data: Vec<T>) -> Result<Self::Buffer<T>> {
        GpuBackend::upload(self, &data)
    }

    fn synchronize(&self) -> Result<()> {
        self.executor().synchronize()
    }

    fn workspace_bytes(&self, geometry: &ConvGeometry, direction: Direction) -> u64 {
        gpu_workspace(&self.planner::<T>(), geometry, direction, size_of::<T>()).unwrap_or(u64::MAX)
    }
}

/// The CUDA backend's scratch memory in one op: the split reductions' partial sums
/// (weight and bias gradients) and, for a padding mode other than zeros, a padded input.
fn gpu_workspace(planner: &Planner, g: &ConvGeometry, direction: Direction, element_bytes: usize) -> Result<u64> {
    let padded = cpu_workspace_estimate(g, direction, element_bytes);
    let partials = match direction {
        Direction::Fwd => 0,
        Direction::Bwd => {
            let (channels, volume) = (g.op_out_channels(), g.op_output_shape()[2..].iter().product());
            planner.correlate_weight_workspace(g)?.max(planner.channel_sums_workspace(g.batch, channels, volume)?)
        }
    };
    Ok(padded + partials)
}

/// What the CPU backend allocates inside an op, read off its code until it
/// reports the number itself (then [`BenchTarget::workspace_bytes`] for
/// `CpuBackend` calls that instead; this is the one place to switch).
///
/// The direct algorithm reads its operands in place. Only a padding mode other
/// than zeros costs memory: a padded copy of the input (forward, weight
/// gradient) or of the input gradient (data gradient), one at a time and freed
/// before the next, so the peak is one padded input.
fn cpu_workspace_estimate(geometry: &ConvGeometry, _direction: Direction, element_bytes: usize) -> u64 {
    if geometry.zero_padded() {
        return 0;
    }
    let padded: u64 = geometry.padded_x_shape().iter().map(|&d| d as u64).product();
    padded.saturating_mul(element_bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::{ConvOptions, PaddingMode};

    #[test]
    fn workspace_is_the_padded_input_for_non_zero_padding_modes() {
        let cpu = CpuBackend::new();
        let geometry = |mode| {
            ConvGeometry::conv(2, &[2, 3, 8, 8], &[4, 3, 3, 3], None, &ConvOptions::new().padding(1).padding_mode(mode))
                .unwrap()
        };
        let zeros = geometry(PaddingMode::Zeros);
        assert_eq!(BenchTarget::<f32>::workspace_bytes(&cpu, &zeros, Direction::Fwd), 0);
        let reflect = geometry(PaddingMode::Reflect);
        for direction in Direction::ALL {
            assert_eq!(BenchTarget::<f32>::workspace_bytes(&cpu, &reflect, direction), 2 * 3 * 10 * 10 * 4);
            assert_eq!(BenchTarget::<half::bf16>::workspace_bytes(&cpu, &reflect, direction), 2 * 3 * 10 * 10 * 2);
        }
    }
}
