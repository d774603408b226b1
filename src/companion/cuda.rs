//! The companion primitives on a GPU (or the emulator): one grid-stride launch each (kernels/companion.cu).

use super::{ChannelBlock, CompanionPrimitives, PoolGeometry};
use crate::cuda::{Executor, GpuBackend, KernelArgs, KernelFamily, check_len, to_i64, to_i64s};
use crate::element::Element;
use crate::error::{Error, Result, checked_product};

fn pool_args(g: &PoolGeometry) -> Result<KernelArgs> {
    Ok(KernelArgs {
        batch: to_i64("batch", g.batch)?,
        in_channels: to_i64("channels", g.channels)?,
        in_size: to_i64s("input size", &g.in_size)?,
        out_size: to_i64s("output size", &g.out_size)?,
        kernel_size: to_i64s("kernel_size", &g.kernel_size)?,
        stride: to_i64s("stride", &g.stride)?,
        dilation: to_i64s("dilation", &g.dilation)?,
        padding_lo: to_i64s("padding", &g.padding)?,
        ..KernelArgs::default()
    })
}

impl<E: Executor> GpuBackend<E> {
    /// An elementwise map over `len` elements: `out = family(x, y)`.
    fn elementwise<T: Element>(&self, family: KernelFamily, len: usize, x: u64, y: u64, out: u64) -> Result<()> {
        let args = KernelArgs { x, y, out, length: to_i64("length", len)?, ..KernelArgs::default() };
        self.executor().execute(&self.planner::<T>().grid_stride(family, len as u64, args, Some((out, len as u64)))?)
    }
}

impl<T: Element, E: Executor> CompanionPrimitives<T> for GpuBackend<E> {
    fn relu(&self, x: &Self::Buffer<T>, y: &mut Self::Buffer<T>) -> Result<()> {
        check_len("output", y, &[x.len()])?;
        self.elementwise::<T>(KernelFamily::Relu, x.len(), self.address(x), 0, self.address(y))
    }

    fn relu_backward(&self, y: &Self::Buffer<T>, dy: &Self::Buffer<T>, dx: &mut Self::Buffer<T>) -> Result<()> {
        check_len("grad_output", dy, &[y.len()])?;
        check_len("grad_input", dx, &[y.len()])?;
        self.elementwise::<T>(KernelFamily::ReluBackward, y.len(), self.address(y), self.address(dy), self.address(dx))
    }

    fn add(&self, a: &Self::Buffer<T>, b: &Self::Buffer<T>, out: &mut Self::Buffer<T>) -> Result<()> {
        check_len("b", b, &[a.len()])?;
        check_len("output", out, &[a.len()])?;
        self.elementwise::<T>(KernelFamily::Add, a.len(), self.address(a), self.address(b), self.address(out))
    }

    fn max_pool(&self, g: &PoolGeometry, x: &Self::Buffer<T>, y: &mut Self::Buffer<T>) -> Result<()> {
        check_len("input", x, &g.input_shape())?;
        check_len("output", y, &g.output_shape())?;
        let outputs = checked_product("output", &g.output_shape())? as u64;
        let args = KernelArgs { x: self.address(x), out: self.address(y), ..pool_args(g)? };
        let plan = self.planner::<T>().grid_stride(KernelFamily::MaxPool, outputs, args, Some((args.out, outputs)))?;
        self.executor().execute(&plan)
    }

    fn max_pool_backward(
        &self,
        g: &PoolGeometry,
        x: &Self::Buffer<T>,
        dy: &Self::Buffer<T>,
        dx: &mut Self::Buffer<T>,
    ) -> Result<()> {
        check_len("input", x, &g.input_shape())?;
        check_len("grad_output", dy, &g.output_shape())?;
        check_len("grad_input", dx, &g.input_shape())?;
        let inputs = x.len() as u64;
        let args = KernelArgs { x: self.address(x), y: self.address(dy), out: self.address(dx), ..pool_args(g)? };
        let plan =
            self.planner::<T>().grid_stride(KernelFamily::MaxPoolBackward, inputs, args, Some((args.out, inputs)))?;
        self.executor().execute(&plan)
    }

    fn copy_channels(&self, block: &ChannelBlock, src: &Self::Buffer<T>, dst: &mut Self::Buffer<T>) -> Result<()> {
        let b = *block;
        check_len("source", src, &[b.batch, b.src_channels, b.volume])?;
        check_len("destination", dst, &[b.batch, b.dst_channels, b.volume])?;
        if b.src_offset + b.count > b.src_channels || b.dst_offset + b.count > b.dst_channels {
            return Err(Error::InvalidArgument {
                what: "channel block",
                detail: format!("{b:?} lies outside its tensors"),
            });
        }
        let args = KernelArgs {
            x: self.address(src),
            out: self.address(dst),
            batch: to_i64("batch", b.batch)?,
            in_channels: to_i64("channels", b.src_channels)?,
            out_channels: to_i64("channels", b.dst_channels)?,
            length: to_i64("volume", b.volume)?,
            spare: [to_i64("offset", b.src_offset)?, to_i64("offset", b.dst_offset)?, to_i64("count", b.count)?],
            ..KernelArgs::default()
        };
        let work = checked_product("channel block", &[b.batch, b.count, b.volume])? as u64;
        // Only part of `dst` is written: it must not be listed as overwritten (nor poisoned).
        self.executor().execute(&self.planner::<T>().grid_stride(KernelFamily::CopyChannels, work, args, None)?)
    }
}
