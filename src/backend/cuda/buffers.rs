//! Where a launch's operands come from: outputs from the pools (pool.rs),
//! small integer inputs copied up, or read from the step buffers when they
//! are the staged step's (graphs.rs), zeroed f32 accumulators and block
//! counters. The accumulators and counters are shared by every launch and
//! recorded into step graphs, so every kernel that uses them leaves them
//! zero again; a miss in a pool while recording is an error, not an
//! allocation, because a recording may not allocate.

use super::launch::{err, DevArg};
use super::pool::{Buf, Pool, Take};
use super::tensor::CudaTensor;
use super::CudaBackend;
use crate::error::{Error, Result};
use cudarc::driver::{CudaSlice, DevicePtr, DeviceRepr};
use std::sync::Arc;

pub(super) const COUNTERS: usize = 1 << 20;

impl CudaBackend {
    pub(super) fn buf<T: DeviceRepr>(
        &self,
        pool: &Arc<Pool<T>>,
        what: &str,
        n: usize,
    ) -> Result<Buf<T>> {
        match pool.take(&self.stream, n) {
            Ok(Take::Got(b)) => Ok(b),
            Ok(Take::MissWhileRecording) => Err(Error::Backend {
                backend: crate::ident::BackendKind::Cuda,
                problem: format!(
                    "recording a decode step needs a new buffer for {what} ({n} elements): steps must repeat the warm-up step's shapes"
                ),
            }),
            Err(e) => Err(Error::Backend {
                backend: crate::ident::BackendKind::Cuda,
                problem: format!(
                    "allocating {what} ({} bytes): {e}",
                    n * std::mem::size_of::<T>()
                ),
            }),
        }
    }

    pub(super) fn tensor(&self, what: &str, rows: usize, cols: usize) -> Result<CudaTensor> {
        Ok(CudaTensor {
            rows,
            cols,
            data: self.buf(&self.pools.u16s, what, rows * cols)?,
        })
    }

    pub(super) fn ptr<T>(&self, s: &CudaSlice<T>) -> u64 {
        s.device_ptr(&self.stream).0
    }

    /// Small integer inputs on the device: the staged step buffer when they
    /// are the staged step's, else a pooled copy.
    pub(super) fn ints<T: DeviceRepr + Copy>(
        &self,
        pool: &Arc<Pool<T>>,
        what: &str,
        vals: &[T],
        staged: Option<u64>,
    ) -> Result<DevArg<T>> {
        if let Some(ptr) = staged {
            return Ok(DevArg { ptr, _keep: None });
        }
        self.no_host_transfer(what)?;
        let mut b = self.buf(pool, what, vals.len())?;
        self.stream.memcpy_htod(vals, &mut *b).map_err(err(what))?;
        Ok(DevArg {
            ptr: self.ptr(&b),
            _keep: Some(b),
        })
    }

    pub(super) fn positions(&self, positions: &[usize]) -> Result<DevArg<i32>> {
        let staged = match self.staged() {
            Some((_, p)) if positions == [p] => Some(self.step_ptrs.1),
            _ => None,
        };
        let p: Vec<i32> = positions.iter().map(|&p| p as i32).collect();
        self.ints(&self.pools.i32s, "positions", &p, staged)
    }

    /// `n` f32 accumulators that are zero now and that the caller's kernel
    /// leaves zero.
    pub(super) fn zeroed(&self, n: usize) -> Result<u64> {
        let mut z = self.zeros.lock().unwrap_or_else(|p| p.into_inner());
        if z.len() < n {
            self.no_host_transfer("growing the accumulators")?;
            *z = self
                .stream
                .alloc_zeros::<f32>(n)
                .map_err(|e| Error::Backend {
                    backend: crate::ident::BackendKind::Cuda,
                    problem: format!("allocating {n} f32 accumulators: {e}"),
                })?;
        }
        Ok(self.ptr(&z))
    }

    pub(super) fn counters(&self, n: usize, what: &str) -> Result<u64> {
        if n > COUNTERS {
            return Err(Error::Backend {
                backend: crate::ident::BackendKind::Cuda,
                problem: format!("{what} needs {n} block counters; the backend has {COUNTERS}"),
            });
        }
        Ok(self.ptr(&self.counters))
    }
}
