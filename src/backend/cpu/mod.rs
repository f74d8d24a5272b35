//! The CPU reference backend: the oracle every other backend is judged by.
//!
//! Two numerics modes over the same checkpoint values:
//! - `Bf16`: rounds to bf16 exactly where `transformers`' eager Qwen3 does in
//!   bfloat16 (after every projection, norm, RoPE product, residual add,
//!   attention probability and MoE combine), accumulating in f32.
//! - `F64`: the same weights, every operation in f64, nothing rounded: truth.
//!
//! Activations are stored as f64 in both modes (in `Bf16` mode every stored
//! value is bf16-representable, an invariant the ops maintain).

mod math;
mod ops;
pub mod tp;

use super::routing::RowRouting;
use super::{AttnDims, Backend, DeviceInfo, MoeWeights};
use crate::error::{Error, Result};
use crate::model::safetensors::HostTensor;
use std::collections::BTreeMap;

pub use math::{dot8, dot_warp};

pub use crate::ident::Numerics;

#[derive(Debug, Clone)]
pub struct CpuTensor {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

impl CpuTensor {
    pub fn new(rows: usize, cols: usize, data: Vec<f64>) -> Self {
        debug_assert_eq!(rows * cols, data.len());
        CpuTensor { rows, cols, data }
    }

    pub fn row(&self, r: usize) -> &[f64] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }
}

/// Resident weight. `Bf16` mode keeps bf16 bits; `F64` mode keeps bf16 bits
/// too when the checkpoint is bf16 (exactly the same values) and f32 otherwise.
#[derive(Debug, Clone)]
pub enum WeightData {
    Bf16(Vec<u16>),
    F32(Vec<f32>),
}

#[derive(Debug, Clone)]
pub struct CpuWeight {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    /// Shared by a packed weight and its row views (`Backend::row_view`).
    pub data: std::sync::Arc<WeightData>,
    /// The first of this weight's rows in `data`.
    pub row0: usize,
    /// How tensor parallelism divides it (from its checkpoint key); only a
    /// simulated TP backend (`CpuBackend::tp`) acts on it.
    pub split: tp::Split,
}

impl CpuWeight {
    /// Row `r` widened to f32 into `buf`.
    #[inline]
    pub fn row_f32(&self, r: usize, buf: &mut [f32]) {
        let c = self.cols;
        let r = self.row0 + r;
        match &*self.data {
            WeightData::Bf16(v) => {
                for (o, &b) in buf.iter_mut().zip(&v[r * c..(r + 1) * c]) {
                    *o = f32::from_bits((b as u32) << 16);
                }
            }
            WeightData::F32(v) => buf.copy_from_slice(&v[r * c..(r + 1) * c]),
        }
    }

    pub fn to_f64(&self) -> Vec<f64> {
        let mut buf = vec![0f32; self.cols];
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for r in 0..self.rows {
            self.row_f32(r, &mut buf);
            out.extend(buf.iter().map(|&x| x as f64));
        }
        out
    }
}

pub struct CpuCache {
    pub len: usize,
    pub kv_dim: usize,
    pub k: Vec<f64>,
    pub v: Vec<f64>,
}

/// The reference backend. `Clone` is cheap: it holds settings, and a
/// routing record that a clone starts without.
#[derive(Debug, Clone)]
pub struct CpuBackend {
    pub numerics: Numerics,
    /// Planted bugs for negative controls; all off in normal use.
    pub faults: Faults,
    /// Simulate tensor parallelism (`tp`): row-parallel products and MoE
    /// combinations are summed per rank and all-reduced. None: one device.
    pub tp: Option<tp::TpSim>,
    /// The routing of every `moe` call while recording
    /// (`Backend::record_routing`).
    routing: RoutingLog,
}

/// A backend's routing record; a clone starts without one (a record
/// belongs to the run that asked for it).
#[derive(Debug, Default)]
struct RoutingLog(std::sync::Mutex<Option<Vec<Vec<RowRouting>>>>);

impl Clone for RoutingLog {
    fn clone(&self) -> Self {
        RoutingLog::default()
    }
}

impl RoutingLog {
    fn with<T>(&self, f: impl FnOnce(&mut Option<Vec<Vec<RowRouting>>>) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Deliberate defects that negative-control tests plant to prove a check can fail.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// The fused path rotates as if every position were one further on.
    pub fused_rope_position_offset: usize,
    /// The fused path normalises k with the q-norm weight.
    pub fused_k_uses_q_norm: bool,
    /// The fused path uses this epsilon instead of the model's.
    pub fused_eps_override: Option<f64>,
    /// The fused path flips the lowest mantissa bit of element `(call * 7919) % n`
    /// of q on every call whose counter is odd: a one-ULP, run-dependent change.
    pub fused_one_ulp_flip: bool,
    /// The fused path moves q's first element one ULP in every odd row of
    /// a batch: an output that depends on where in the batch a row sits.
    pub fused_odd_row_flip: bool,
    /// Single-row RoPE (a decode step's, on the graph path) rotates one
    /// position too far: a bug only decode runs, as a decode-only kernel
    /// specialisation would have.
    pub decode_rope_position_offset: usize,
    /// The graph path's RoPE output has one element one ULP off on every
    /// odd call (the place moving from call to call): a graph path with a
    /// run-to-run envelope, as a nondeterministic GPU mode has, for the
    /// containment rules' controls.
    pub graph_one_ulp_flip: bool,
    /// `linear` over more than one row moves the last element of its first
    /// output row by one ulp: a sequence's bits depend on what it is
    /// batched with, as a kernel whose reduction split follows the batch
    /// size makes them.
    pub batch_dependent_linear: bool,
}

impl CpuBackend {
    /// Starts (or stops) recording the routing of every `moe` call, as
    /// `Backend::record_routing` does on accelerators. Not that trait
    /// method: the reference's own checks (decode steps against teacher-
    /// forced rows) are bitwise and excuse no routing near-tie, so they
    /// must see no record; an investigation asks for one here.
    pub fn record_routing_here(&self, on: bool) {
        self.routing.with(|log| *log = on.then(Vec::new));
    }

    /// The routing recorded since `record_routing_here(true)` or the last
    /// take, one entry per `moe` call in call order.
    pub fn take_routing_here(&self) -> Vec<Vec<RowRouting>> {
        self.routing
            .with(|log| log.as_mut().map(std::mem::take))
            .unwrap_or_default()
    }

    /// Appends one `moe` call's routing while recording.
    fn log_routing(&self, rows: impl FnOnce() -> Vec<RowRouting>) {
        self.routing.with(|log| {
            if let Some(l) = log.as_mut() {
                l.push(rows());
            }
        });
    }

    pub fn new(numerics: Numerics) -> Self {
        CpuBackend {
            numerics,
            faults: Faults::default(),
            tp: None,
            routing: RoutingLog::default(),
        }
    }

    pub fn with_faults(numerics: Numerics, faults: Faults) -> Self {
        CpuBackend {
            numerics,
            faults,
            tp: None,
            routing: RoutingLog::default(),
        }
    }

    /// The reference as a simulated tensor-parallel engine (`tp`).
    pub fn tensor_parallel(numerics: Numerics, sim: tp::TpSim) -> Self {
        CpuBackend {
            tp: Some(sim),
            ..CpuBackend::new(numerics)
        }
    }

    fn bf16(&self) -> bool {
        self.numerics == Numerics::Bf16
    }
}

fn shape_err(op: &'static str, problem: String) -> Error {
    Error::Shape { op, problem }
}

impl Backend for CpuBackend {
    type Tensor = CpuTensor;
    type Weight = CpuWeight;
    type Cache = CpuCache;

    fn kind(&self) -> super::BackendKind {
        super::BackendKind::Cpu
    }

    fn numerics(&self) -> Numerics {
        self.numerics
    }

    /// The host's available memory (Linux: MemAvailable), so a model that
    /// cannot fit is refused before anything is read. The engine sizes a
    /// model at bf16; the f64 mode keeps weights as f32, twice that, so it
    /// reports half.
    fn free_memory(&self) -> Option<usize> {
        let bytes = crate::util::host_memory_available()?;
        Some(match self.numerics {
            Numerics::Bf16 => bytes,
            Numerics::F64 => bytes / 2,
        })
    }

    fn device_info(&self) -> DeviceInfo {
        let mut details = BTreeMap::new();
        details.insert("arch".into(), std::env::consts::ARCH.into());
        details.insert(
            "reduction".into(),
            "graph: 8-lane interleaved; fused: 32-lane warp order + butterfly".into(),
        );
        if self.faults != Faults::default() {
            details.insert("faults".into(), format!("{:?}", self.faults));
        }
        if let Some(t) = &self.tp {
            details.insert(
                "tensor_parallel".into(),
                format!(
                    "{} ranks, {} all-reduce (simulated)",
                    t.ranks,
                    t.order.name()
                ),
            );
        }
        DeviceInfo {
            backend: super::BackendKind::Cpu,
            device: super::host_cpu_name(),
            numerics: self.numerics,
            details,
        }
    }

    fn upload(&self, name: &str, t: &HostTensor) -> Result<CpuWeight> {
        self.upload_packed(name, &[t])
    }

    fn upload_packed(&self, name: &str, parts: &[&HostTensor]) -> Result<CpuWeight> {
        let (rows, cols) = super::check::packed(name, parts)?;
        let all_bf16 = parts
            .iter()
            .all(|t| t.dtype == crate::model::safetensors::Dtype::BF16);
        let data = if all_bf16 || self.bf16() {
            // bf16 mode rounds f16/f32 checkpoints to bf16, as loading them
            // with dtype=bfloat16 in transformers does.
            let mut v = Vec::with_capacity(rows * cols);
            for t in parts {
                for i in 0..t.numel() {
                    v.push(crate::util::bf16_bits(t.get_f32(i)));
                }
            }
            WeightData::Bf16(v)
        } else {
            WeightData::F32(parts.iter().flat_map(|t| t.to_f32_vec()).collect())
        };
        Ok(CpuWeight {
            name: name.to_string(),
            rows,
            cols,
            data: std::sync::Arc::new(data),
            row0: 0,
            split: tp::Split::of(name),
        })
    }

    /// A view of the packed rows: the same values as uploading the part
    /// alone (a bf16 part widened to f32 is exact), without a second copy.
    fn row_view(&self, name: &str, w: &CpuWeight, start: usize, rows: usize) -> Option<CpuWeight> {
        (start + rows <= w.rows).then(|| CpuWeight {
            name: name.to_string(),
            rows,
            cols: w.cols,
            data: w.data.clone(),
            row0: w.row0 + start,
            split: tp::Split::of(name),
        })
    }

    fn embed(&self, table: &CpuWeight, ids: &[u32]) -> Result<CpuTensor> {
        let mut out = Vec::with_capacity(ids.len() * table.cols);
        let mut buf = vec![0f32; table.cols];
        for &id in ids {
            if id as usize >= table.rows {
                return Err(Error::Prompt(format!(
                    "token id {id} is outside the vocabulary (size {})",
                    table.rows
                )));
            }
            table.row_f32(id as usize, &mut buf);
            out.extend(buf.iter().map(|&x| x as f64));
        }
        Ok(CpuTensor::new(ids.len(), table.cols, out))
    }

    fn rms_norm(&self, x: &CpuTensor, w: &CpuWeight, eps: f64) -> Result<CpuTensor> {
        ops::rms_norm(self.numerics, x, w, eps)
    }

    fn linear(&self, x: &CpuTensor, w: &CpuWeight) -> Result<CpuTensor> {
        if let (Some(sim), tp::Split::Inputs) = (&self.tp, w.split) {
            return tp::row_parallel_linear(self.numerics, sim, x, w);
        }
        let mut y = ops::linear(self.numerics, x, w)?;
        if self.faults.batch_dependent_linear && y.rows > 1 && y.cols > 0 {
            let last = y.cols - 1;
            y.data[last] = ops::one_ulp_up(self.numerics, y.data[last]);
        }
        Ok(y)
    }

    fn rope(
        &self,
        x: &CpuTensor,
        positions: &[usize],
        head_dim: usize,
        theta: f64,
    ) -> Result<CpuTensor> {
        let mut out = if positions.len() == 1 && self.faults.decode_rope_position_offset > 0 {
            let shifted = [positions[0] + self.faults.decode_rope_position_offset];
            ops::rope(self.numerics, x, &shifted, head_dim, theta)?
        } else {
            ops::rope(self.numerics, x, positions, head_dim, theta)?
        };
        if self.faults.graph_one_ulp_flip {
            ops::graph_flip(self.numerics, &mut out);
        }
        Ok(out)
    }

    fn fused_qkv(
        &self,
        x: &CpuTensor,
        qkv: &CpuWeight,
        q_norm: &CpuWeight,
        k_norm: &CpuWeight,
        dims: &AttnDims,
        positions: &[usize],
    ) -> Result<(CpuTensor, CpuTensor, CpuTensor)> {
        ops::fused_qkv(
            self.numerics,
            &self.faults,
            x,
            qkv,
            q_norm,
            k_norm,
            dims,
            positions,
        )
    }

    fn new_cache(&self, dims: &AttnDims, capacity: usize) -> Result<CpuCache> {
        Ok(CpuCache {
            len: 0,
            kv_dim: dims.kv_dim(),
            k: Vec::with_capacity(capacity * dims.kv_dim()),
            v: Vec::with_capacity(capacity * dims.kv_dim()),
        })
    }

    fn cache_append(&self, cache: &mut CpuCache, k: &CpuTensor, v: &CpuTensor) -> Result<()> {
        if k.cols != cache.kv_dim || v.cols != cache.kv_dim || k.rows != v.rows {
            return Err(shape_err(
                "cache_append",
                format!(
                    "k {}x{}, v {}x{}, cache rows of {}",
                    k.rows, k.cols, v.rows, v.cols, cache.kv_dim
                ),
            ));
        }
        cache.k.extend_from_slice(&k.data);
        cache.v.extend_from_slice(&v.data);
        cache.len += k.rows;
        Ok(())
    }

    fn attention(
        &self,
        q: &CpuTensor,
        cache: &CpuCache,
        dims: &AttnDims,
        positions: &[usize],
    ) -> Result<CpuTensor> {
        ops::attention(self.numerics, q, cache, dims, positions)
    }

    fn add(&self, a: &CpuTensor, b: &CpuTensor) -> Result<CpuTensor> {
        super::check::same_shape("add", (a.rows, a.cols), (b.rows, b.cols))?;
        let data = a
            .data
            .iter()
            .zip(&b.data)
            .map(|(&x, &y)| match self.numerics {
                Numerics::Bf16 => crate::util::round_bf16(x as f32 + y as f32) as f64,
                Numerics::F64 => x + y,
            })
            .collect();
        Ok(CpuTensor::new(a.rows, a.cols, data))
    }

    fn swiglu(&self, gate: &CpuTensor, up: &CpuTensor) -> Result<CpuTensor> {
        ops::swiglu(self.numerics, gate, up)
    }

    fn moe(&self, x: &CpuTensor, w: &MoeWeights<CpuWeight>) -> Result<CpuTensor> {
        ops::moe(self, x, w)
    }

    fn concat_rows(&self, parts: &[CpuTensor]) -> Result<CpuTensor> {
        let cols = parts.first().map_or(0, |p| p.cols);
        if let Some(p) = parts.iter().find(|p| p.cols != cols) {
            return Err(shape_err(
                "concat_rows",
                format!("widths {cols} and {}", p.cols),
            ));
        }
        let rows = parts.iter().map(|p| p.rows).sum();
        Ok(CpuTensor::new(
            rows,
            cols,
            parts.iter().flat_map(|p| p.data.iter().copied()).collect(),
        ))
    }

    fn rows(&self, x: &CpuTensor, start: usize, n: usize) -> Result<CpuTensor> {
        if start + n > x.rows {
            return Err(shape_err(
                "rows",
                format!("rows {start}..{} of {}", start + n, x.rows),
            ));
        }
        Ok(CpuTensor::new(
            n,
            x.cols,
            x.data[start * x.cols..(start + n) * x.cols].to_vec(),
        ))
    }

    fn activation_from_host(&self, data: &[f64], rows: usize, cols: usize) -> Result<CpuTensor> {
        if data.len() != rows * cols {
            return Err(shape_err(
                "activation_from_host",
                format!("{} values for {rows}x{cols}", data.len()),
            ));
        }
        let data = match self.numerics {
            Numerics::Bf16 => data
                .iter()
                .map(|&v| crate::util::round_bf16(v as f32) as f64)
                .collect(),
            Numerics::F64 => data.to_vec(),
        };
        Ok(CpuTensor::new(rows, cols, data))
    }

    fn to_host(&self, x: &CpuTensor) -> Result<(Vec<f64>, [usize; 2])> {
        Ok((x.data.clone(), [x.rows, x.cols]))
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::model::safetensors::{Dtype, HostTensor};
    use std::borrow::Cow;

    fn tensor(dtype: Dtype, rows: usize, cols: usize, seed: u32) -> HostTensor<'static> {
        let vals: Vec<f32> = (0..rows * cols)
            .map(|i| ((i as u32).wrapping_mul(2654435761) ^ seed) % 1000)
            .map(|h| h as f32 / 997.0 - 0.5)
            .collect();
        let bytes = match dtype {
            Dtype::F32 => vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
            _ => vals
                .iter()
                .flat_map(|&v| crate::util::bf16_bits(v).to_le_bytes())
                .collect(),
        };
        HostTensor {
            dtype,
            shape: vec![rows, cols],
            bytes: Cow::Owned(bytes),
        }
    }

    /// A row view holds exactly the values of the part uploaded alone, in
    /// both numerics and for mixed dtypes, and shares the packed memory.
    #[test]
    fn row_views_equal_separate_uploads_and_share_memory() {
        for numerics in Numerics::ALL {
            let be = CpuBackend::new(numerics);
            let parts = [
                tensor(Dtype::BF16, 6, 8, 1),
                tensor(Dtype::F32, 2, 8, 2),
                tensor(Dtype::BF16, 2, 8, 3),
            ];
            let refs: Vec<&HostTensor> = parts.iter().collect();
            let packed = be.upload_packed("qkv", &refs).unwrap();
            let mut start = 0;
            for (i, t) in parts.iter().enumerate() {
                let alone = be.upload("part", t).unwrap();
                let view = be.row_view("part", &packed, start, t.shape[0]).unwrap();
                assert_eq!(view.to_f64(), alone.to_f64(), "{numerics:?} part {i}");
                assert!(std::sync::Arc::ptr_eq(&view.data, &packed.data));
                start += t.shape[0];
            }
            // Control: rows past the packed weight are refused.
            assert!(be.row_view("past", &packed, 8, 3).is_none());
        }
    }
}
