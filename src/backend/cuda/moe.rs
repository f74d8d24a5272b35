//! Mixture-of-experts layers. One token routes and runs its experts on the
//! device (grouped launches that index per-layer tables of expert weight
//! addresses, built once and kept), so a decode step needs no host round
//! trip and can be recorded; several tokens are routed on the host, expert
//! by expert, which a recorded step cannot do, except in a deterministic
//! batched decode step, where each token takes the one-token path so that
//! its bits are those it has alone.

use super::launch::{cfg, err, grid_for, shape};
use super::tensor::{CudaTensor, CudaWeight};
use super::CudaBackend;
use crate::backend::{check, route, Backend, MoeWeights};
use crate::error::Result;
use cudarc::driver::{CudaSlice, LaunchConfig};

/// Device arrays of each expert's gate, up and down weight addresses.
pub(super) struct ExpertTables {
    gate: CudaSlice<u64>,
    up: CudaSlice<u64>,
    down: CudaSlice<u64>,
}

impl CudaBackend {
    fn expert_tables(&self, w: &MoeWeights<CudaWeight>) -> Result<u64> {
        let key = self.ptr(&w.router.data);
        let mut tables = self.moe_tables.lock().unwrap_or_else(|p| p.into_inner());
        if let std::collections::btree_map::Entry::Vacant(slot) = tables.entry(key) {
            self.no_host_transfer("building the expert tables")?;
            let addrs = |f: &dyn Fn(&crate::backend::ExpertWeights<CudaWeight>) -> &CudaWeight| {
                let v: Vec<u64> = w.experts.iter().map(|e| self.ptr(&f(e).data)).collect();
                self.stream.clone_htod(&v).map_err(err("expert tables"))
            };
            slot.insert(ExpertTables {
                gate: addrs(&|e| &e.gate)?,
                up: addrs(&|e| &e.up)?,
                down: addrs(&|e| &e.down)?,
            });
        }
        Ok(key)
    }

    /// One token's MoE entirely on the device: routing, the selected
    /// experts' products as grouped launches, the ordered weighted sum.
    /// Same bits as the host-routed path whenever the routing agrees.
    fn moe_decode(&self, x: &CudaTensor, w: &MoeWeights<CudaWeight>) -> Result<CudaTensor> {
        let e0 = &w.experts[0];
        let (hidden, inter, k) = (x.cols, e0.gate.rows, w.top_k);
        check::linear((1, hidden), &e0.gate.name, (e0.gate.rows, e0.gate.cols))?;
        check::linear((1, inter), &e0.down.name, (e0.down.rows, e0.down.cols))?;
        let key = self.expert_tables(w)?;
        let logits = self.linear(x, &w.router)?;
        let sel = self.buf(&self.pools.i32s, "moe selection", k)?;
        let wsel = self.buf(&self.pools.f32s, "moe weights", k)?;
        let (ne, ki, renorm) = (w.experts.len() as i32, k as i32, w.norm_topk_prob as i32);
        let threads = (w.experts.len().div_ceil(32) * 32) as u32;
        // SAFETY: one block, a thread per expert (<= 1024, checked by the
        // caller), reads n_experts logits and writes top_k <= 64 entries.
        unsafe {
            self.launch(
                "moe_route_bf16",
                LaunchConfig {
                    grid_dim: (1, 1, 1),
                    block_dim: (threads, 1, 1),
                    shared_mem_bytes: 0,
                },
                &[&*logits.data, &ne, &ki, &renorm, &*sel, &*wsel],
            )
        }?;
        let tables = self.moe_tables.lock().unwrap_or_else(|p| p.into_inner());
        let t = tables.get(&key).expect("built above");
        let h = self.tensor("expert activations", k, inter)?;
        let parts = self.parts(inter, hidden);
        let (hk, im, pi) = (hidden as i32, inter as i32, parts as i32);
        // SAFETY: every expert's gate and up are inter x hidden (checked on
        // expert 0; all experts share a shape, checked at upload by name);
        // selections are expert indices below n_experts; h holds k x inter.
        unsafe {
            self.launch(
                "moe_gate_up_bf16",
                cfg((inter.div_ceil(8 / parts) as u32, k as u32, 1)),
                &[&*x.data, &t.gate, &t.up, &*sel, &*h.data, &hk, &im, &pi],
            )
        }?;
        let y = self.tensor("expert outputs", k, hidden)?;
        let parts = self.parts(hidden, inter);
        let (dk, dm, pi) = (inter as i32, hidden as i32, parts as i32);
        // SAFETY: every down is hidden x inter; y holds k x hidden.
        unsafe {
            self.launch(
                "moe_down_bf16",
                cfg((hidden.div_ceil(8 / parts) as u32, k as u32, 1)),
                &[&*h.data, &t.down, &*sel, &*y.data, &dk, &dm, &pi],
            )
        }?;
        drop(tables);
        let out = self.tensor("moe output", 1, hidden)?;
        let (wi, ki) = (hidden as i32, k as i32);
        // SAFETY: y holds k rows of width; out one row.
        unsafe {
            self.launch(
                "moe_combine_bf16",
                cfg((grid_for(hidden), 1, 1)),
                &[&*y.data, &*wsel, &*out.data, &wi, &ki],
            )
        }?;
        Ok(out)
    }

    pub(super) fn moe(&self, x: &CudaTensor, w: &MoeWeights<CudaWeight>) -> Result<CudaTensor> {
        let e0 = w
            .experts
            .first()
            .ok_or_else(|| shape("moe", "no experts".into()))?;
        let on_device =
            x.cols % 8 == 0 && e0.gate.rows % 8 == 0 && w.top_k <= 64 && w.experts.len() <= 1024;
        if on_device && x.rows == 1 {
            return self.moe_decode(x, w);
        }
        // A deterministic batched step: each token by the one-token path,
        // so its routing and sums are those it has alone (the host-routed
        // path below may round a routing weight differently).
        if on_device && self.rows_alone() {
            let rows = (0..x.rows)
                .map(|r| self.moe_decode(&self.rows(x, r, 1)?, w))
                .collect::<Result<Vec<_>>>()?;
            return self.concat_rows(&rows);
        }
        self.no_host_transfer("MoE routing of several tokens")?;
        let logits = self.linear(x, &w.router)?;
        let (lh, [_, e]) = self.to_host(&logits)?;
        let mut per_expert: Vec<Vec<(i32, f32)>> = vec![Vec::new(); e];
        for r in 0..x.rows {
            for (ex, p) in route(true, &lh[r * e..(r + 1) * e], w.top_k, w.norm_topk_prob) {
                per_expert[ex].push((r as i32, p as f32));
            }
        }
        let mut out = self.tensor("moe output", x.rows, x.cols)?;
        self.stream
            .memset_zeros(&mut *out.data)
            .map_err(err("moe output"))?;
        let width = x.cols as i32;
        for (ex, toks) in per_expert.iter().enumerate().filter(|(_, t)| !t.is_empty()) {
            let idx: Vec<i32> = toks.iter().map(|t| t.0).collect();
            let wts: Vec<f32> = toks.iter().map(|t| t.1).collect();
            let didx = self.ints(&self.pools.i32s, "moe indices", &idx, None)?;
            let dw = self.stream.clone_htod(&wts).map_err(err("moe weights"))?;
            let xe = self.tensor("moe gathered rows", idx.len(), x.cols)?;
            // SAFETY: every index is a row of x; xe holds idx.len() rows.
            unsafe {
                self.launch(
                    "gather_rows_bf16",
                    cfg((idx.len() as u32, 1, 1)),
                    &[&*x.data, &didx.ptr, &*xe.data, &width],
                )
            }?;
            let ew = &w.experts[ex];
            let h = self.swiglu(&self.linear(&xe, &ew.gate)?, &self.linear(&xe, &ew.up)?)?;
            let y = self.linear(&h, &ew.down)?;
            // SAFETY: y holds idx.len() rows; indices are distinct rows of out
            // (a token meets each expert at most once).
            unsafe {
                self.launch(
                    "moe_accumulate_bf16",
                    cfg((idx.len() as u32, 1, 1)),
                    &[&*out.data, &*y.data, &didx.ptr, &dw, &width],
                )
            }?;
        }
        Ok(out)
    }
}
