//! What the benchmark needs from a backend beyond the ops themselves, and the
//! answers of the CPU backend and of the CUDA backend (whose `synchronize` waits
//! for its stream, so GPU time stays inside the clock).

use crate::backend::{Conv, ConvTranspose};
use crate::bench::Direction;
use crate::cpu::{CpuBackend, Primitive};
use crate::cuda::{CudaExecutor, GpuBackend, Planner};
use crate::element::Element;
use crate::error::Result;
use crate::geometry::{ConvGeometry, OpKind};

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

    /// The algorithms that compute the primitives of one op of `direction`,
    /// in order, `+`-joined where they differ: what `auto` chose, or where a
    /// forced algorithm does not apply (a strided layer under `winograd`), the
    /// one that stood in. The bias gradient's channel sums are not counted.
    fn algorithms_run(&self, geometry: &ConvGeometry, direction: Direction) -> String;
}

/// The primitives one op of `direction` runs, in order, the bias gradient aside.
fn primitives(op: OpKind, direction: Direction) -> &'static [Primitive] {
    match (op, direction) {
        (OpKind::Conv, Direction::Fwd) => &[Primitive::Correlate],
        (OpKind::ConvTranspose, Direction::Fwd) => &[Primitive::CorrelateAdjoint],
        (OpKind::Conv, Direction::Bwd) => &[Primitive::CorrelateAdjoint, Primitive::CorrelateWeight],
        (OpKind::ConvTranspose, Direction::Bwd) => &[Primitive::Correlate, Primitive::CorrelateWeight],
    }
}

/// `names` joined by `+`, each repeat of the one before dropped.
fn joined(names: impl Iterator<Item = &'static str>) -> String {
    let mut names: Vec<&str> = names.collect();
    names.dedup();
    names.join("+")
}

/// `geometry`, or for a padding mode other than zeros the zero-padded geometry the primitives see.
fn as_run(geometry: &ConvGeometry) -> std::borrow::Cow<'_, ConvGeometry> {
    match geometry.zero_padded() {
        true => std::borrow::Cow::Borrowed(geometry),
        false => std::borrow::Cow::Owned(geometry.with_materialised_padding()),
    }
}

impl<T: Element> BenchTarget<T> for CpuBackend {
    fn upload(&self, data: Vec<T>) -> Result<Vec<T>> {
        Ok(data)
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    /// The padded input (for a padding mode other than zeros) plus the most
    /// scratch any one primitive of `direction` takes: they run one after another.
    fn workspace_bytes(&self, geometry: &ConvGeometry, direction: Direction) -> u64 {
        let g = as_run(geometry);
        let scratch = primitives(geometry.op, direction)
            .iter()
            .map(|&p| CpuBackend::workspace_bytes(self, &g, p, T::DTYPE))
            .max()
            .unwrap_or(0);
        padded_input_bytes(geometry, size_of::<T>()).saturating_add(scratch as u64)
    }

    fn algorithms_run(&self, geometry: &ConvGeometry, direction: Direction) -> String {
        let g = as_run(geometry);
        joined(primitives(geometry.op, direction).iter().map(|&p| self.algorithm_for_primitive(&g, p, T::DTYPE).name()))
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

    fn algorithms_run(&self, geometry: &ConvGeometry, direction: Direction) -> String {
        let (planner, g) = (self.planner::<T>(), as_run(geometry));
        joined(primitives(geometry.op, direction).iter().map(|&p| {
            match p {
                Primitive::Correlate => planner.correlate_algorithm(&g),
                Primitive::CorrelateAdjoint => planner.adjoint_algorithm(&g),
                Primitive::CorrelateWeight | Primitive::ChannelSums => planner.weight_algorithm(&g),
            }
            .name()
        }))
    }
}

/// The CUDA backend's scratch memory in one op: the split reductions' partial sums
/// (weight and bias gradients) and, for a padding mode other than zeros, a padded input.
fn gpu_workspace(planner: &Planner, g: &ConvGeometry, direction: Direction, element_bytes: usize) -> Result<u64> {
    let padded = padded_input_bytes(g, element_bytes);
    let partials = match direction {
        Direction::Fwd => 0,
        Direction::Bwd => {
            let (channels, volume) = (g.op_out_channels(), g.op_output_shape()[2..].iter().product());
            planner.correlate_weight_workspace(g)?.max(planner.channel_sums_workspace(g.batch, channels, volume)?)
        }
    };
    Ok(padded + partials)
}

/// The padded copy of the input that a padding mode other than zeros costs
/// both backends (forward and weight gradient; the data gradient's padded
/// counterpart is the same size), alive while one primitive runs on it.
fn padded_input_bytes(geometry: &ConvGeometry, element_bytes: usize) -> u64 {
    if geometry.zero_padded() {
        return 0;
    }
    let padded: u64 = geometry.padded_x_shape().iter().map(|&d| d as u64).product();
    padded.saturating_mul(element_bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::element::DType;
    use crate::geometry::{ConvOptions, PaddingMode};

    /// The CPU report is the padded input (only for a padding mode other than
    /// zeros) plus the largest scratch of the primitives the direction runs.
    #[test]
    fn cpu_workspace_is_the_padded_input_plus_the_largest_primitive_scratch() {
        let cpu = CpuBackend::with_threads(2).unwrap();
        let geometry = |mode| {
            ConvGeometry::conv(2, &[2, 3, 8, 8], &[4, 3, 3, 3], None, &ConvOptions::new().padding(1).padding_mode(mode))
                .unwrap()
        };
        let zeros = geometry(PaddingMode::Zeros);
        let scratch = |g: &ConvGeometry, p| cpu.workspace_bytes(g, p, DType::F32) as u64;
        assert_eq!(
            BenchTarget::<f32>::workspace_bytes(&cpu, &zeros, Direction::Fwd),
            scratch(&zeros, Primitive::Correlate)
        );
        let backward = scratch(&zeros, Primitive::CorrelateAdjoint).max(scratch(&zeros, Primitive::CorrelateWeight));
        assert_eq!(BenchTarget::<f32>::workspace_bytes(&cpu, &zeros, Direction::Bwd), backward);
        assert!(backward > 0);
        let reflect = geometry(PaddingMode::Reflect);
        let materialised = reflect.with_materialised_padding();
        let padded = 2 * 3 * 10 * 10 * 4;
        assert_eq!(
            BenchTarget::<f32>::workspace_bytes(&cpu, &reflect, Direction::Fwd),
            padded + scratch(&materialised, Primitive::Correlate)
        );
        // The transposed conv runs the adjoint forward.
        let t = ConvGeometry::conv_transpose(2, &[2, 4, 6, 6], &[4, 3, 3, 3], None, &Default::default()).unwrap();
        assert_eq!(
            BenchTarget::<f32>::workspace_bytes(&cpu, &t, Direction::Fwd),
            scratch(&t, Primitive::CorrelateAdjoint)
        );
    }
}
