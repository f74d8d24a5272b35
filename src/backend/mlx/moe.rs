//! MLX's MoE layers: the experts stacked at load (each expert's weight a
//! view of its projection's stack) and the layer routed on the host by the
//! shared rule or on the device (`MlxMoeRouting`).

use super::backend::{shape_err, to_i32, MlxBackend, MlxTensor, MlxWeight};
use super::{ops, MlxDevice};
use crate::backend::{routing_record, Backend, ExpertWeights, MoeWeights};
use crate::error::Result;
use crate::model::safetensors::HostTensor;
use half::bf16;
use mlx_rs::ops::indexing::TryIndexOp;

impl MlxBackend {
    /// Each projection of all the layer's experts as one `[experts, rows,
    /// cols]` array, every expert's weight a view of it (no second copy):
    /// what device routing gathers from.
    pub(super) fn stack_experts(
        &self,
        names: &[[String; 3]],
        experts: &[[HostTensor; 3]],
    ) -> Result<Vec<ExpertWeights<MlxWeight>>> {
        let n = experts.len();
        let mut stacks = Vec::with_capacity(3);
        for k in 0..3 {
            let parts: Vec<&HostTensor> = experts.iter().map(|t| &t[k]).collect();
            let label = names.first().map_or("experts", |n| n[k].as_str());
            let all = self.upload_packed(&format!("{label} (all {n} experts)"), &parts)?;
            let rows = all.rows / n.max(1);
            let shape = [
                to_i32(self.kind(), n, "experts")?,
                to_i32(self.kind(), rows, "rows")?,
                to_i32(self.kind(), all.cols, "columns")?,
            ];
            let stack = self.on("stack experts", || all.array.reshape(&shape))?;
            stacks.push((stack, rows, all.cols));
        }
        let mut out = Vec::with_capacity(n);
        let mut views = Vec::with_capacity(3 * n);
        for (e, name) in names.iter().enumerate() {
            let [gate, up, down] = [0, 1, 2].map(|k| {
                let (stack, rows, cols) = &stacks[k];
                let i = e as i32;
                self.on("expert view", || stack.try_index(i))
                    .map(|array| MlxWeight {
                        name: name[k].clone(),
                        array,
                        rows: *rows,
                        cols: *cols,
                        stack: Some(stack.clone()),
                    })
            });
            let w = ExpertWeights {
                gate: gate?,
                up: up?,
                down: down?,
            };
            views.extend([
                w.gate.array.clone(),
                w.up.array.clone(),
                w.down.array.clone(),
            ]);
            out.push(w);
        }
        // Views, once evaluated, share the stacked buffers.
        self.on("expert views", || mlx_rs::transforms::eval(views.iter()))?;
        Ok(out)
    }

    /// Router logits on MLX, then the routing on the host (the shared
    /// rule, bitwise the reference's) or on the device (`MlxMoeRouting`).
    pub(super) fn moe_layer(&self, x: &MlxTensor, w: &MoeWeights<MlxWeight>) -> Result<MlxTensor> {
        if w.router.cols != x.cols || w.top_k == 0 || w.top_k > w.experts.len() {
            return Err(shape_err(
                "moe",
                format!(
                    "router {}x{} for input width {}, top_k {} of {} experts",
                    w.router.rows,
                    w.router.cols,
                    x.cols,
                    w.top_k,
                    w.experts.len()
                ),
            ));
        }
        // 1. Router logits on MLX (bf16, as the reference rounds them).
        let experts = w.router.rows;
        let logits = self.on("moe router", || ops::linear(&x.array, &w.router.array))?;
        if let (super::MlxMoeRouting::Device, Some(g), Some(u), Some(d)) = (
            self.moe_routing.get(),
            w.experts.first().and_then(|e| e.gate.stack.as_ref()),
            w.experts.first().and_then(|e| e.up.stack.as_ref()),
            w.experts.first().and_then(|e| e.down.stack.as_ref()),
        ) {
            if let Some(log) = self.routing_log.borrow_mut().as_mut() {
                // Recording (verification) reads the logits the device
                // routed by; decode runs without it never wait here.
                let host = self.host_f32(&logits, "moe router")?;
                log.push(routing_record(&host, experts, w.top_k));
            }
            let out = self.on("moe on the device", || {
                ops::moe_on_device(
                    &x.array,
                    &logits,
                    [g, u, d],
                    w.top_k,
                    w.norm_topk_prob,
                    self.device == MlxDevice::Cpu,
                )
            })?;
            return Ok(self.out(out, x.rows, x.cols));
        }
        let logits = self.host_f32(&logits, "moe router")?;
        if let Some(log) = self.routing_log.borrow_mut().as_mut() {
            log.push(routing_record(&logits, experts, w.top_k));
        }
        // 2. Routing, shared by every backend (crate::backend::route): f32
        //    softmax, top-k with ties to the lower index, renormalised,
        //    weights rounded to bf16.
        let routes: Vec<ops::Route> = logits
            .chunks_exact(experts)
            .map(|l| {
                let l: Vec<f64> = l.iter().map(|&v| f64::from(v)).collect();
                crate::backend::route(true, &l, w.top_k, w.norm_topk_prob)
                    .into_iter()
                    .map(|(e, p)| (e, bf16::from_bits(crate::util::bf16_bits(p as f32))))
                    .collect()
            })
            .collect();
        // 3. Experts in ascending order, each on the rows that chose it.
        let acc = self.on("moe experts", || ops::combine_experts(&x.array, w, &routes))?;
        Ok(self.out(acc, x.rows, x.cols))
    }
}
