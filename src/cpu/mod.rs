//! The CPU backend: rayon over disjoint output slices, so every element is
//! computed by one task in a fixed order and results are bitwise identical for
//! any number of threads.

mod direct;
mod isa;
mod kernels;
mod padding;

pub use isa::CpuIsa;

use crate::backend::{Activation, Backend, ConvPrimitives};
use crate::element::Element;
use crate::error::{Result, try_filled_vec};
use crate::geometry::ConvGeometry;

/// The CPU backend. Runs on rayon's global pool, or on a pool of its own.
///
/// ```
/// use ferroconv::{Activation, Conv, ConvGeometry, ConvOptions, CpuBackend};
/// # fn main() -> ferroconv::Result<()> {
/// let cpu = CpuBackend::with_threads(2)?;
/// let g = ConvGeometry::conv(1, &[1, 1, 4], &[1, 1, 2], None, &ConvOptions::new())?;
/// let mut y = vec![0f32; 3];
/// Conv::forward(&cpu, &g, &vec![1., 2., 3., 4.], &vec![1., 1.], None, Activation::Identity, &mut y)?;
/// assert_eq!(y, vec![3., 5., 7.]);
/// # Ok(()) }
/// ```
#[derive(Debug, Default)]
pub struct CpuBackend {
    pool: Option<rayon::ThreadPool>,
    algorithm: CpuAlgorithm,
}

/// Which CPU algorithm computes the primitives.
///
/// `Auto` picks per problem (see `select_algorithm`); the others force one, for
/// benchmarks and for tests that check every algorithm against the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum CpuAlgorithm {
    /// Chosen per problem.
    #[default]
    Auto,
    /// Direct loops over kernel taps.
    Direct,
}

impl CpuAlgorithm {
    /// Every algorithm that can be forced.
    pub const ALL: &'static [CpuAlgorithm] = &[CpuAlgorithm::Direct];

    /// A short name for tables and benchmark ids.
    pub fn name(self) -> &'static str {
        match self {
            CpuAlgorithm::Auto => "auto",
            CpuAlgorithm::Direct => "direct",
        }
    }
}

impl CpuBackend {
    /// A backend on rayon's global pool (as many threads as cores, or `RAYON_NUM_THREADS`).
    pub fn new() -> Self {
        CpuBackend { pool: None, algorithm: CpuAlgorithm::Auto }
    }

    /// A backend with a pool of its own of `threads` threads.
    pub fn with_threads(threads: usize) -> Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().map_err(|e| {
            crate::Error::InvalidArgument { what: "threads", detail: format!("cannot start {threads} threads: {e}") }
        })?;
        Ok(CpuBackend { pool: Some(pool), algorithm: CpuAlgorithm::Auto })
    }

    /// The same backend, forced to use `algorithm`.
    pub fn with_algorithm(mut self, algorithm: CpuAlgorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// The algorithm this backend was asked to use.
    pub fn algorithm(&self) -> CpuAlgorithm {
        self.algorithm
    }

    /// The shared backend on the global pool.
    pub fn global() -> &'static CpuBackend {
        static GLOBAL: CpuBackend = CpuBackend { pool: None, algorithm: CpuAlgorithm::Auto };
        &GLOBAL
    }

    /// Number of threads ops run on.
    pub fn threads(&self) -> usize {
        self.pool.as_ref().map_or_else(rayon::current_num_threads, |p| p.current_num_threads())
    }

    fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(pool) => pool.install(f),
            None => f(),
        }
    }
}

impl Backend for CpuBackend {
    type Buffer<T: Element> = Vec<T>;

    fn name(&self) -> String {
        format!("cpu ({} threads)", self.threads())
    }
}

/// Checks that a buffer has the length its geometry implies.
fn check_len<T>(what: &'static str, buffer: &[T], shape: &[usize]) -> Result<()> {
    let expected = crate::error::checked_product(what, shape)?;
    if buffer.len() != expected {
        return Err(crate::Error::DataLength { what, shape: shape.to_vec(), expected, got: buffer.len() });
    }
    Ok(())
}

impl<T: Element> ConvPrimitives<T> for CpuBackend {
    fn alloc(&self, len: usize) -> Result<Vec<T>> {
        try_filled_vec("buffer", len, T::default())
    }

    fn correlate(
        &self,
        g: &ConvGeometry,
        x: &Vec<T>,
        w: &Vec<T>,
        bias: Option<&Vec<T>>,
        activation: Activation,
        y: &mut Vec<T>,
    ) -> Result<()> {
        check_len("x", x, &g.x_shape())?;
        check_len("weight", w, &g.weight_shape())?;
        check_len("y", y, &g.y_shape())?;
        if let Some(b) = bias {
            check_len("bias", b, &[g.out_channels])?;
        }
        self.install(|| direct::correlate(g, x, w, bias.map(Vec::as_slice), activation, y));
        Ok(())
    }

    fn correlate_adjoint(
        &self,
        g: &ConvGeometry,
        y: &Vec<T>,
        w: &Vec<T>,
        bias: Option<&Vec<T>>,
        activation: Activation,
        x: &mut Vec<T>,
    ) -> Result<()> {
        check_len("y", y, &g.y_shape())?;
        check_len("weight", w, &g.weight_shape())?;
        check_len("x", x, &g.x_shape())?;
        if let Some(b) = bias {
            check_len("bias", b, &[g.in_channels])?;
        }
        self.install(|| direct::correlate_adjoint(g, y, w, bias.map(Vec::as_slice), activation, x));
        Ok(())
    }

    fn correlate_weight(&self, g: &ConvGeometry, x: &Vec<T>, y: &Vec<T>, dw: &mut Vec<T>) -> Result<()> {
        check_len("x", x, &g.x_shape())?;
        check_len("y", y, &g.y_shape())?;
        check_len("grad_weight", dw, &g.weight_shape())?;
        self.install(|| direct::correlate_weight(g, x, y, dw));
        Ok(())
    }

    fn channel_sums(&self, batch: usize, channels: usize, volume: usize, t: &Vec<T>, sums: &mut Vec<T>) -> Result<()> {
        check_len("tensor", t, &[batch, channels, volume])?;
        check_len("sums", sums, &[channels])?;
        self.install(|| direct::channel_sums(batch, channels, volume, t, sums));
        Ok(())
    }

    fn pad(&self, g: &ConvGeometry, x: &Vec<T>, padded: &mut Vec<T>) -> Result<()> {
        check_len("x", x, &g.x_shape())?;
        check_len("padded x", padded, &g.padded_x_shape())?;
        self.install(|| padding::pad(g, x, padded));
        Ok(())
    }

    fn fold_padding(&self, g: &ConvGeometry, padded: &Vec<T>, x: &mut Vec<T>) -> Result<()> {
        check_len("padded x", padded, &g.padded_x_shape())?;
        check_len("x", x, &g.x_shape())?;
        self.install(|| padding::fold(g, padded, x));
        Ok(())
    }
}
