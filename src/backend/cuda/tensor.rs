//! The backend's tensor types, and moving their contents. Weights are
//! uploaded once as bf16 bits and never change; activations come from the
//! u16 pool, so their buffers go back to it on drop; a cache's storage is
//! allocated once at its capacity. Copies through the host are refused
//! while recording (`no_host_transfer`), since a graph cannot replay them;
//! device-to-device copies are recorded like launches.

use super::launch::{err, shape};
use super::pool::Buf;
use super::CudaBackend;
use crate::backend::{check, Backend};
use crate::error::{Error, Result};
use crate::model::safetensors::{Dtype, HostTensor};
use crate::util::bf16_bits;
use cudarc::driver::CudaSlice;

pub struct CudaTensor {
    pub rows: usize,
    pub cols: usize,
    pub(super) data: Buf<u16>,
}

pub struct CudaWeight {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    pub(super) data: CudaSlice<u16>,
}

pub struct CudaCache {
    pub(super) len: usize,
    pub(super) cap: usize,
    pub(super) kv_dim: usize,
    pub(super) k: CudaSlice<u16>,
    pub(super) v: CudaSlice<u16>,
}

impl CudaBackend {
    pub(super) fn upload_packed(&self, name: &str, parts: &[&HostTensor]) -> Result<CudaWeight> {
        let (rows, cols) = check::packed(name, parts)?;
        let mut bits = Vec::with_capacity(rows * cols);
        for t in parts {
            if t.dtype == Dtype::BF16 {
                bits.extend(
                    t.bytes
                        .chunks_exact(2)
                        .map(|c| u16::from_le_bytes([c[0], c[1]])),
                );
            } else {
                bits.extend((0..t.numel()).map(|i| bf16_bits(t.get_f32(i))));
            }
        }
        self.weight_from_bits(name, rows, cols, bits)
    }

    pub(super) fn weight_from_bits(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
        bits: Vec<u16>,
    ) -> Result<CudaWeight> {
        let data = self.stream.clone_htod(&bits).map_err(|e| Error::Backend {
            backend: crate::ident::BackendKind::Cuda,
            problem: format!("uploading {name} ({} bytes): {e}", 2 * bits.len()),
        })?;
        Ok(CudaWeight {
            name: name.to_string(),
            rows,
            cols,
            data,
        })
    }

    pub(super) fn rows(&self, x: &CudaTensor, start: usize, n: usize) -> Result<CudaTensor> {
        if start + n > x.rows {
            return Err(shape(
                "rows",
                format!("rows {start}..{} of {}", start + n, x.rows),
            ));
        }
        let mut out = self.tensor("row slice", n, x.cols)?;
        self.stream
            .memcpy_dtod(
                &x.data.slice(start * x.cols..(start + n) * x.cols),
                &mut *out.data,
            )
            .map_err(err("row slice"))?;
        Ok(out)
    }

    /// The rows of `parts`, in order, copied on the device.
    pub(super) fn concat_rows(&self, parts: &[CudaTensor]) -> Result<CudaTensor> {
        let cols = parts.first().map_or(0, |p| p.cols);
        if let Some(p) = parts.iter().find(|p| p.cols != cols) {
            return Err(shape(
                "concat_rows",
                format!("widths {cols} and {}", p.cols),
            ));
        }
        let rows = parts.iter().map(|p| p.rows).sum();
        let mut out = self.tensor("concatenated rows", rows, cols)?;
        let mut at = 0;
        for p in parts {
            let n = p.rows * cols;
            self.stream
                .memcpy_dtod(&p.data.slice(..n), &mut out.data.slice_mut(at..at + n))
                .map_err(err("concat_rows"))?;
            at += n;
        }
        Ok(out)
    }

    pub(super) fn activation_from_host(
        &self,
        data: &[f64],
        rows: usize,
        cols: usize,
    ) -> Result<CudaTensor> {
        if data.len() != rows * cols {
            return Err(shape(
                "activation_from_host",
                format!("{} values for {rows}x{cols}", data.len()),
            ));
        }
        self.no_host_transfer("an activation from the host")?;
        let bits: Vec<u16> = data.iter().map(|&v| bf16_bits(v as f32)).collect();
        let mut out = self.tensor("activation", rows, cols)?;
        self.stream
            .memcpy_htod(&bits, &mut *out.data)
            .map_err(err("activation to device"))?;
        Ok(out)
    }

    pub(super) fn to_host(&self, x: &CudaTensor) -> Result<(Vec<f64>, [usize; 2])> {
        self.no_host_transfer("copying a tensor to the host")?;
        let bits = self.stream.clone_dtoh(&*x.data).map_err(err("to host"))?;
        let v = bits[..x.rows * x.cols]
            .iter()
            .map(|&b| f32::from_bits((b as u32) << 16) as f64)
            .collect();
        Ok((v, [x.rows, x.cols]))
    }

    /// Device-to-device copy bandwidth in GB/s, counting the bytes read and
    /// written: the median of `reps` copies of `bytes` (after one warm copy).
    pub fn copy_bandwidth(&self, bytes: usize, reps: usize) -> Result<f64> {
        let n = bytes / 2;
        let src = self
            .stream
            .alloc_zeros::<u16>(n)
            .map_err(err("bandwidth source"))?;
        let mut dst = self
            .stream
            .alloc_zeros::<u16>(n)
            .map_err(err("bandwidth destination"))?;
        let mut times = Vec::with_capacity(reps);
        for i in 0..=reps {
            self.synchronize()?;
            let t = std::time::Instant::now();
            self.stream
                .memcpy_dtod(&src, &mut dst)
                .map_err(err("bandwidth copy"))?;
            self.synchronize()?;
            if i > 0 {
                times.push(t.elapsed().as_secs_f64());
            }
        }
        times.sort_by(|a, b| a.total_cmp(b));
        Ok(2.0 * (2 * n) as f64 / times[times.len() / 2] / 1e9)
    }
}
