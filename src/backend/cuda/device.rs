//! The CUDA implementation of `Backend`: device buffers of bf16 bits, one
//! kernel per op (kernels.rs), every launch checked. Reductions are fixed-
//! order (warp butterflies, block trees, no atomics): the `deterministic`
//! reduction mode, the only one implemented so far.

use super::kernels;
use crate::backend::{check, route, AttnDims, Backend, DeviceInfo, MoeWeights};
use crate::error::{Error, Result};
use crate::model::safetensors::HostTensor;
use crate::util::bf16_bits;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DriverError, LaunchConfig, PushKernelArg,
};
use std::collections::BTreeMap;
use std::sync::Arc;

pub struct CudaTensor {
    pub rows: usize,
    pub cols: usize,
    data: CudaSlice<u16>,
}

pub struct CudaWeight {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    data: CudaSlice<u16>,
}

pub struct CudaCache {
    len: usize,
    cap: usize,
    kv_dim: usize,
    k: CudaSlice<u16>,
    v: CudaSlice<u16>,
}

pub struct CudaBackend {
    stream: Arc<CudaStream>,
    functions: BTreeMap<&'static str, CudaFunction>,
    info: DeviceInfo,
    /// Largest dynamic shared memory a block may use without opting in.
    max_shared: usize,
}

fn err(op: &str) -> impl Fn(DriverError) -> Error + '_ {
    move |e| Error::Backend {
        backend: "cuda",
        problem: format!("{op}: {e}"),
    }
}

fn shape(op: &'static str, problem: String) -> Error {
    Error::Shape { op, problem }
}

const BLOCK: u32 = 256;

fn grid_for(n: usize) -> u32 {
    n.div_ceil(BLOCK as usize) as u32
}

impl CudaBackend {
    /// Opens GPU `ordinal`, compiles every kernel for its architecture.
    pub fn new(ordinal: usize) -> Result<Self> {
        let ctx = std::panic::catch_unwind(|| CudaContext::new(ordinal))
            .map_err(|_| Error::Backend {
                backend: "cuda",
                problem:
                    "could not load the CUDA driver (libcuda.so): no NVIDIA driver on this machine"
                        .into(),
            })?
            .map_err(|e| Error::Backend {
                backend: "cuda",
                problem: format!("no usable GPU {ordinal}: {e}"),
            })?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(err("compute capability"))?;
        let arch: &'static str = Box::leak(format!("sm_{major}{minor}").into_boxed_str());
        let functions = kernels::load_all(&ctx, arch)?;
        let name = ctx.name().map_err(err("device name"))?;
        let sms = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_err(err("SM count"))?;
        let mut driver = 0i32;
        // SAFETY: cuDriverGetVersion writes one int through a valid pointer.
        unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut driver) };
        let (mut nv_major, mut nv_minor) = (0i32, 0i32);
        // SAFETY: nvrtcVersion writes two ints through valid pointers.
        unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut nv_major, &mut nv_minor) };
        let mut details = BTreeMap::new();
        details.insert("compute_capability".into(), format!("{major}.{minor}"));
        details.insert("sm_count".into(), sms.to_string());
        details.insert(
            "driver_api".into(),
            format!("{}.{}", driver / 1000, (driver % 1000) / 10),
        );
        details.insert("nvrtc".into(), format!("{nv_major}.{nv_minor}"));
        details.insert("reduction_mode".into(), "deterministic".into());
        details.insert("cuda_graphs".into(), "off".into());
        details.insert("tf32".into(), "off".into());
        let info = DeviceInfo {
            backend: "cuda".into(),
            device: name,
            numerics: "bf16".into(),
            details,
        };
        Ok(CudaBackend {
            stream: ctx.default_stream(),
            functions,
            info,
            max_shared: 48 * 1024,
        })
    }

    fn func(&self, name: &'static str) -> Result<&CudaFunction> {
        self.functions.get(name).ok_or_else(|| Error::Backend {
            backend: "cuda",
            problem: format!("kernel {name} is not loaded"),
        })
    }

    fn alloc(&self, what: &str, n: usize) -> Result<CudaSlice<u16>> {
        self.stream
            .alloc_zeros::<u16>(n.max(1))
            .map_err(|e| Error::Backend {
                backend: "cuda",
                problem: format!("allocating {what} ({} bytes): {e}", 2 * n),
            })
    }

    fn positions(&self, positions: &[usize]) -> Result<CudaSlice<i32>> {
        let p: Vec<i32> = positions.iter().map(|&p| p as i32).collect();
        self.stream
            .clone_htod(&p)
            .map_err(err("positions to device"))
    }

    fn elementwise(
        &self,
        name: &'static str,
        a: &CudaTensor,
        b: &CudaTensor,
    ) -> Result<CudaTensor> {
        check::same_shape(name, (a.rows, a.cols), (b.rows, b.cols))?;
        let n = a.rows * a.cols;
        let mut out = self.alloc(name, n)?;
        let mut l = self.stream.launch_builder(self.func(name)?);
        l.arg(&a.data).arg(&b.data).arg(&mut out).arg(&n);
        // SAFETY: a, b and out hold n elements; one thread per element, guarded by i < n.
        unsafe {
            l.launch(LaunchConfig {
                grid_dim: (grid_for(n), 1, 1),
                block_dim: (BLOCK, 1, 1),
                shared_mem_bytes: 0,
            })
        }
        .map_err(err(name))?;
        Ok(CudaTensor {
            rows: a.rows,
            cols: a.cols,
            data: out,
        })
    }

    fn weight_from_bits(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
        bits: Vec<u16>,
    ) -> Result<CudaWeight> {
        let data = self.stream.clone_htod(&bits).map_err(|e| Error::Backend {
            backend: "cuda",
            problem: format!("uploading {name} ({} bytes): {e}", 2 * bits.len()),
        })?;
        Ok(CudaWeight {
            name: name.to_string(),
            rows,
            cols,
            data,
        })
    }
}

impl Backend for CudaBackend {
    type Tensor = CudaTensor;
    type Weight = CudaWeight;
    type Cache = CudaCache;

    fn device_info(&self) -> DeviceInfo {
        self.info.clone()
    }

    fn upload(&self, name: &str, t: &HostTensor) -> Result<CudaWeight> {
        self.upload_packed(name, &[t])
    }

    fn upload_packed(&self, name: &str, parts: &[&HostTensor]) -> Result<CudaWeight> {
        let (rows, cols) = check::packed(name, parts)?;
        let mut bits = Vec::with_capacity(rows * cols);
        for t in parts {
            bits.extend((0..t.numel()).map(|i| bf16_bits(t.get_f32(i))));
        }
        self.weight_from_bits(name, rows, cols, bits)
    }

    fn embed(&self, table: &CudaWeight, ids: &[u32]) -> Result<CudaTensor> {
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= table.rows) {
            return Err(Error::Prompt(format!(
                "token id {bad} is outside the vocabulary (size {})",
                table.rows
            )));
        }
        let dids = self.stream.clone_htod(ids).map_err(err("ids to device"))?;
        let hidden = table.cols as i32;
        let mut out = self.alloc("embedding output", ids.len() * table.cols)?;
        let mut l = self.stream.launch_builder(self.func("embed_bf16")?);
        l.arg(&table.data).arg(&dids).arg(&mut out).arg(&hidden);
        // SAFETY: every id was checked against the table's rows; out holds ids.len() rows.
        unsafe {
            l.launch(LaunchConfig {
                grid_dim: (ids.len() as u32, 1, 1),
                block_dim: (BLOCK, 1, 1),
                shared_mem_bytes: 0,
            })
        }
        .map_err(err("embed_bf16"))?;
        Ok(CudaTensor {
            rows: ids.len(),
            cols: table.cols,
            data: out,
        })
    }

    fn rms_norm(&self, x: &CudaTensor, w: &CudaWeight, eps: f64) -> Result<CudaTensor> {
        let width = w.rows * w.cols;
        check::rms_norm(x.cols, width)?;
        let groups = x.rows * x.cols / width;
        let mut out = self.alloc("rms_norm output", x.rows * x.cols)?;
        let (wi, e) = (width as i32, eps as f32);
        let mut l = self.stream.launch_builder(self.func("rms_norm_bf16")?);
        l.arg(&x.data).arg(&w.data).arg(&mut out).arg(&wi).arg(&e);
        // SAFETY: groups * width elements in x and out; w holds width elements.
        unsafe {
            l.launch(LaunchConfig {
                grid_dim: (groups as u32, 1, 1),
                block_dim: (128, 1, 1),
                shared_mem_bytes: 0,
            })
        }
        .map_err(err("rms_norm_bf16"))?;
        Ok(CudaTensor {
            rows: x.rows,
            cols: x.cols,
            data: out,
        })
    }

    fn linear(&self, x: &CudaTensor, w: &CudaWeight) -> Result<CudaTensor> {
        check::linear((x.rows, x.cols), &w.name, (w.rows, w.cols))?;
        let (n, k, m) = (x.rows as i32, x.cols as i32, w.rows as i32);
        let mut out = self.alloc("linear output", x.rows * w.rows)?;
        let warps = BLOCK / 32;
        let mut l = self.stream.launch_builder(self.func("linear_bf16")?);
        l.arg(&x.data)
            .arg(&w.data)
            .arg(&mut out)
            .arg(&n)
            .arg(&k)
            .arg(&m);
        // SAFETY: x is n x k, w is m x k, out n x m; warps past m return early.
        unsafe {
            l.launch(LaunchConfig {
                grid_dim: ((w.rows as u32).div_ceil(warps), 1, 1),
                block_dim: (BLOCK, 1, 1),
                shared_mem_bytes: 0,
            })
        }
        .map_err(err("linear_bf16"))?;
        Ok(CudaTensor {
            rows: x.rows,
            cols: w.rows,
            data: out,
        })
    }

    fn rope(
        &self,
        x: &CudaTensor,
        positions: &[usize],
        head_dim: usize,
        theta: f64,
    ) -> Result<CudaTensor> {
        check::rope((x.rows, x.cols), positions.len(), head_dim)?;
        let pos = self.positions(positions)?;
        let mut out = self.alloc("rope output", x.rows * x.cols)?;
        let total = x.rows * x.cols / 2;
        let (rows, width, hd, th) = (x.rows as i32, x.cols as i32, head_dim as i32, theta as f32);
        let mut l = self.stream.launch_builder(self.func("rope_bf16")?);
        l.arg(&x.data)
            .arg(&mut out)
            .arg(&pos)
            .arg(&rows)
            .arg(&width)
            .arg(&hd)
            .arg(&th);
        // SAFETY: one thread per rotated pair, guarded against the total.
        unsafe {
            l.launch(LaunchConfig {
                grid_dim: (grid_for(total), 1, 1),
                block_dim: (BLOCK, 1, 1),
                shared_mem_bytes: 0,
            })
        }
        .map_err(err("rope_bf16"))?;
        Ok(CudaTensor {
            rows: x.rows,
            cols: x.cols,
            data: out,
        })
    }

    fn fused_qkv(
        &self,
        x: &CudaTensor,
        qkv: &CudaWeight,
        q_norm: &CudaWeight,
        k_norm: &CudaWeight,
        dims: &AttnDims,
        positions: &[usize],
    ) -> Result<(CudaTensor, CudaTensor, CudaTensor)> {
        let (qd, kd, hd) = (dims.q_dim(), dims.kv_dim(), dims.head_dim);
        check::fused_qkv(
            (x.rows, x.cols),
            (qkv.rows, qkv.cols),
            dims,
            positions.len(),
        )?;
        if hd % 32 != 0 || hd > 1024 {
            return Err(shape(
                "fused_qkv",
                format!(
                    "packed {}x{}, input {}x{}, head_dim {hd}",
                    qkv.rows, qkv.cols, x.rows, x.cols
                ),
            ));
        }
        let pos = self.positions(positions)?;
        let (mut q, mut k, mut v) = (
            self.alloc("fused q", x.rows * qd)?,
            self.alloc("fused k", x.rows * kd)?,
            self.alloc("fused v", x.rows * kd)?,
        );
        let (hidden, nh, nkv, hdi) = (
            x.cols as i32,
            dims.n_heads as i32,
            dims.n_kv_heads as i32,
            hd as i32,
        );
        let (eps, theta) = (dims.eps as f32, dims.rope_theta as f32);
        let mut l = self.stream.launch_builder(self.func("qkv_fused_bf16")?);
        l.arg(&x.data)
            .arg(&qkv.data)
            .arg(&q_norm.data)
            .arg(&k_norm.data);
        l.arg(&mut q).arg(&mut k).arg(&mut v).arg(&pos);
        l.arg(&hidden)
            .arg(&nh)
            .arg(&nkv)
            .arg(&hdi)
            .arg(&eps)
            .arg(&theta);
        let cfg = LaunchConfig {
            grid_dim: (
                x.rows as u32,
                (dims.n_heads + 2 * dims.n_kv_heads) as u32,
                1,
            ),
            block_dim: (hd as u32, 1, 1),
            shared_mem_bytes: (hd * 4) as u32,
        };
        // SAFETY: grid covers tokens x head slots; block = head_dim threads, each
        // writing its own element; shared memory holds head_dim floats.
        unsafe { l.launch(cfg) }.map_err(err("qkv_fused_bf16"))?;
        Ok((
            CudaTensor {
                rows: x.rows,
                cols: qd,
                data: q,
            },
            CudaTensor {
                rows: x.rows,
                cols: kd,
                data: k,
            },
            CudaTensor {
                rows: x.rows,
                cols: kd,
                data: v,
            },
        ))
    }

    fn new_cache(&self, dims: &AttnDims, capacity: usize) -> Result<CudaCache> {
        let kvd = dims.kv_dim();
        Ok(CudaCache {
            len: 0,
            cap: capacity,
            kv_dim: kvd,
            k: self.alloc("key cache", capacity * kvd)?,
            v: self.alloc("value cache", capacity * kvd)?,
        })
    }

    fn cache_append(&self, cache: &mut CudaCache, k: &CudaTensor, v: &CudaTensor) -> Result<()> {
        if k.cols != cache.kv_dim
            || v.cols != cache.kv_dim
            || k.rows != v.rows
            || cache.len + k.rows > cache.cap
        {
            return Err(shape(
                "cache_append",
                format!(
                    "{} rows into a cache of {}/{}",
                    k.rows, cache.len, cache.cap
                ),
            ));
        }
        let (a, b) = (
            cache.len * cache.kv_dim,
            (cache.len + k.rows) * cache.kv_dim,
        );
        self.stream
            .memcpy_dtod(&k.data, &mut cache.k.slice_mut(a..b))
            .map_err(err("key cache append"))?;
        self.stream
            .memcpy_dtod(&v.data, &mut cache.v.slice_mut(a..b))
            .map_err(err("value cache append"))?;
        cache.len += k.rows;
        Ok(())
    }

    fn attention(
        &self,
        q: &CudaTensor,
        cache: &CudaCache,
        dims: &AttnDims,
        positions: &[usize],
    ) -> Result<CudaTensor> {
        let len = positions.iter().max().map_or(0, |p| p + 1);
        if q.cols != dims.q_dim()
            || positions.len() != q.rows
            || len > cache.len
            || dims.head_dim > 256
        {
            return Err(shape(
                "attention",
                format!(
                    "q {}x{}, cache {} rows, head_dim {}",
                    q.rows, q.cols, cache.len, dims.head_dim
                ),
            ));
        }
        if len * 4 > self.max_shared {
            return Err(Error::Backend {
                backend: "cuda",
                problem: format!("attention over {len} positions needs {} bytes of shared memory; this kernel handles up to {}", len * 4, self.max_shared / 4),
            });
        }
        let pos = self.positions(positions)?;
        let mut out = self.alloc("attention output", q.rows * q.cols)?;
        let (nh, nkv, hd) = (
            dims.n_heads as i32,
            dims.n_kv_heads as i32,
            dims.head_dim as i32,
        );
        let scale = (dims.head_dim as f64).powf(-0.5) as f32;
        let mut l = self.stream.launch_builder(self.func("attention_bf16")?);
        l.arg(&q.data)
            .arg(&cache.k)
            .arg(&cache.v)
            .arg(&mut out)
            .arg(&pos)
            .arg(&nh)
            .arg(&nkv)
            .arg(&hd)
            .arg(&scale);
        let cfg = LaunchConfig {
            grid_dim: (q.rows as u32, dims.n_heads as u32, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: (len * 4) as u32,
        };
        // SAFETY: positions are below cache.len; scores fit the dynamic shared
        // memory requested (checked above); head_dim <= 256 fits the q buffer.
        unsafe { l.launch(cfg) }.map_err(err("attention_bf16"))?;
        Ok(CudaTensor {
            rows: q.rows,
            cols: q.cols,
            data: out,
        })
    }

    fn add(&self, a: &CudaTensor, b: &CudaTensor) -> Result<CudaTensor> {
        self.elementwise("add_bf16", a, b)
    }

    fn swiglu(&self, gate: &CudaTensor, up: &CudaTensor) -> Result<CudaTensor> {
        self.elementwise("swiglu_bf16", gate, up)
    }

    fn moe(&self, x: &CudaTensor, w: &MoeWeights<CudaWeight>) -> Result<CudaTensor> {
        let logits = self.linear(x, &w.router)?;
        let (lh, [_, e]) = self.to_host(&logits)?;
        let mut per_expert: Vec<Vec<(i32, f32)>> = vec![Vec::new(); e];
        for r in 0..x.rows {
            for (ex, p) in route(true, &lh[r * e..(r + 1) * e], w.top_k, w.norm_topk_prob) {
                per_expert[ex].push((r as i32, p as f32));
            }
        }
        let mut out = self.alloc("moe output", x.rows * x.cols)?;
        let width = x.cols as i32;
        for (ex, toks) in per_expert.iter().enumerate().filter(|(_, t)| !t.is_empty()) {
            let idx: Vec<i32> = toks.iter().map(|t| t.0).collect();
            let wts: Vec<f32> = toks.iter().map(|t| t.1).collect();
            let didx = self.stream.clone_htod(&idx).map_err(err("moe indices"))?;
            let dw = self.stream.clone_htod(&wts).map_err(err("moe weights"))?;
            let mut xe = self.alloc("moe gathered rows", idx.len() * x.cols)?;
            let mut l = self.stream.launch_builder(self.func("gather_rows_bf16")?);
            l.arg(&x.data).arg(&didx).arg(&mut xe).arg(&width);
            // SAFETY: every index is a row of x; xe holds idx.len() rows.
            unsafe {
                l.launch(LaunchConfig {
                    grid_dim: (idx.len() as u32, 1, 1),
                    block_dim: (BLOCK, 1, 1),
                    shared_mem_bytes: 0,
                })
            }
            .map_err(err("gather_rows_bf16"))?;
            let xe = CudaTensor {
                rows: idx.len(),
                cols: x.cols,
                data: xe,
            };
            let ew = &w.experts[ex];
            let h = self.swiglu(&self.linear(&xe, &ew.gate)?, &self.linear(&xe, &ew.up)?)?;
            let y = self.linear(&h, &ew.down)?;
            let mut l = self
                .stream
                .launch_builder(self.func("moe_accumulate_bf16")?);
            l.arg(&mut out).arg(&y.data).arg(&didx).arg(&dw).arg(&width);
            // SAFETY: y holds idx.len() rows; indices are distinct rows of out
            // (a token meets each expert at most once).
            unsafe {
                l.launch(LaunchConfig {
                    grid_dim: (idx.len() as u32, 1, 1),
                    block_dim: (BLOCK, 1, 1),
                    shared_mem_bytes: 0,
                })
            }
            .map_err(err("moe_accumulate_bf16"))?;
        }
        Ok(CudaTensor {
            rows: x.rows,
            cols: x.cols,
            data: out,
        })
    }

    fn rows(&self, x: &CudaTensor, start: usize, n: usize) -> Result<CudaTensor> {
        if start + n > x.rows {
            return Err(shape(
                "rows",
                format!("rows {start}..{} of {}", start + n, x.rows),
            ));
        }
        let mut out = self.alloc("row slice", n * x.cols)?;
        self.stream
            .memcpy_dtod(
                &x.data.slice(start * x.cols..(start + n) * x.cols),
                &mut out,
            )
            .map_err(err("row slice"))?;
        Ok(CudaTensor {
            rows: n,
            cols: x.cols,
            data: out,
        })
    }

    fn activation_from_host(&self, data: &[f64], rows: usize, cols: usize) -> Result<CudaTensor> {
        if data.len() != rows * cols {
            return Err(shape(
                "activation_from_host",
                format!("{} values for {rows}x{cols}", data.len()),
            ));
        }
        let bits: Vec<u16> = data.iter().map(|&v| bf16_bits(v as f32)).collect();
        let data = self
            .stream
            .clone_htod(&bits)
            .map_err(err("activation to device"))?;
        Ok(CudaTensor { rows, cols, data })
    }

    fn to_host(&self, x: &CudaTensor) -> Result<(Vec<f64>, [usize; 2])> {
        let bits = self.stream.clone_dtoh(&x.data).map_err(err("to host"))?;
        let v = bits[..x.rows * x.cols]
            .iter()
            .map(|&b| f32::from_bits((b as u32) << 16) as f64)
            .collect();
        Ok((v, [x.rows, x.cols]))
    }

    fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(err("synchronize"))
    }

    fn free_memory(&self) -> Option<usize> {
        self.stream
            .context()
            .mem_get_info()
            .ok()
            .map(|(free, _)| free)
    }
}
