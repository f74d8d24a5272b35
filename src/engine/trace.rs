//! A traced forward pass: every layer's intermediate tensors handed to a
//! sink as they are computed, so a precision investigation can compare two
//! engines op by op (and a sink can stream them to disk, holding one
//! tensor at a time).
//!
//! The pass is teacher-forced over the whole token list and runs the same
//! backend calls in the same order as `Engine::forward` with a capture (so
//! its layer outputs and logits are bitwise those of `teacher_forced`); only
//! the host copies are new.

use super::{finite, Engine, Mlp};
use crate::backend::{AttnPath, Backend, Numerics};
use crate::error::Result;
use serde::{Deserialize, Serialize};

/// One traced tensor kind. The names (`name()`) are the dump format's
/// (docs/dump-format.md): stable, and what another engine's dump uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "&'static str", try_from = "String")]
pub enum TraceOp {
    /// Embedding rows, `[tokens, hidden]` (not per layer).
    Embed,
    /// RMSNorm of the residual stream before attention, `[tokens, hidden]`.
    InputNorm,
    /// Projections before the per-head norm (graph path only: the fused op
    /// never materialises them), `[tokens, q_dim | kv_dim]`.
    QProj,
    KProj,
    /// Per-head RMSNorm of q and k, before RoPE (graph path only).
    QNorm,
    KNorm,
    /// Attention inputs: q and k normalised and rotated, v projected.
    Q,
    K,
    V,
    /// Attention output before o_proj, `[tokens, q_dim]`.
    Attention,
    /// o_proj output, `[tokens, hidden]`.
    OProj,
    /// Residual stream after attention, `[tokens, hidden]`.
    AttnResidual,
    /// RMSNorm before the MLP, `[tokens, hidden]`.
    PostNorm,
    /// MoE layers: router logits `[tokens, experts]`, the chosen experts
    /// `[tokens, top_k]` (ascending ids, as floats) and their weights.
    RouterLogits,
    Experts,
    ExpertWeights,
    /// MLP or MoE output, `[tokens, hidden]`.
    Mlp,
    /// The layer's output: the residual stream after the MLP.
    Output,
    /// Final RMSNorm and logits (not per layer).
    FinalNorm,
    Logits,
}

impl TraceOp {
    pub const ALL: [TraceOp; 20] = [
        TraceOp::Embed,
        TraceOp::InputNorm,
        TraceOp::QProj,
        TraceOp::KProj,
        TraceOp::QNorm,
        TraceOp::KNorm,
        TraceOp::Q,
        TraceOp::K,
        TraceOp::V,
        TraceOp::Attention,
        TraceOp::OProj,
        TraceOp::AttnResidual,
        TraceOp::PostNorm,
        TraceOp::RouterLogits,
        TraceOp::Experts,
        TraceOp::ExpertWeights,
        TraceOp::Mlp,
        TraceOp::Output,
        TraceOp::FinalNorm,
        TraceOp::Logits,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TraceOp::Embed => "embed",
            TraceOp::InputNorm => "input_norm",
            TraceOp::QProj => "q_proj",
            TraceOp::KProj => "k_proj",
            TraceOp::QNorm => "q_norm",
            TraceOp::KNorm => "k_norm",
            TraceOp::Q => "q",
            TraceOp::K => "k",
            TraceOp::V => "v",
            TraceOp::Attention => "attention",
            TraceOp::OProj => "o_proj",
            TraceOp::AttnResidual => "attn_residual",
            TraceOp::PostNorm => "post_norm",
            TraceOp::RouterLogits => "router_logits",
            TraceOp::Experts => "experts",
            TraceOp::ExpertWeights => "expert_weights",
            TraceOp::Mlp => "mlp",
            TraceOp::Output => "output",
            TraceOp::FinalNorm => "final_norm",
            TraceOp::Logits => "logits",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.name() == s)
    }

    /// Whether the op exists once per decoder layer (else once per pass).
    pub fn per_layer(self) -> bool {
        !matches!(self, TraceOp::Embed | TraceOp::FinalNorm | TraceOp::Logits)
    }

    /// Routing decisions, not activations: compared by agreement, not RMS.
    pub fn is_routing(self) -> bool {
        self == TraceOp::Experts
    }

    /// The tensor name in a dump: `layers.L.OP` or `OP`.
    pub fn tensor_name(self, layer: Option<usize>) -> String {
        match layer {
            Some(l) => format!("layers.{l}.{}", self.name()),
            None => self.name().to_string(),
        }
    }
}

impl From<TraceOp> for &'static str {
    fn from(o: TraceOp) -> Self {
        o.name()
    }
}

impl TryFrom<String> for TraceOp {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        TraceOp::parse(&s).ok_or_else(|| format!("unknown op `{s}`"))
    }
}

/// One traced tensor: every token row, `[rows, cols]` row-major.
#[derive(Debug, Clone)]
pub struct Traced {
    pub layer: Option<usize>,
    pub op: TraceOp,
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

/// Where a traced pass puts its tensors. `wants` is asked first, so an
/// unwanted tensor is never copied to the host.
pub trait TraceSink {
    fn wants(&self, layer: Option<usize>, op: TraceOp) -> bool;
    fn put(&mut self, t: Traced) -> Result<()>;
}

impl<B: Backend> Engine<B> {
    /// Teacher-forced pass over `tokens` (positions 0..) by `path`, handing
    /// every wanted intermediate to `sink`.
    pub fn trace(&self, tokens: &[u32], path: AttnPath, sink: &mut dyn TraceSink) -> Result<()> {
        self.check_prompt(tokens, 0)?;
        let be = &self.backend;
        let n = tokens.len();
        let mut session = self.new_session(n)?;
        let positions: Vec<usize> = (0..n).collect();
        let d = &self.dims;
        let mut x = be.embed(&self.embed, tokens)?;
        tap(be, sink, None, TraceOp::Embed, &x)?;
        let mut h = self.attention_norm(0, &x)?;
        for (l, lw) in self.layers.iter().enumerate() {
            let at = Some(l);
            tap(be, sink, at, TraceOp::InputNorm, &h)?;
            let (q, k, v) = match path {
                AttnPath::Graph => {
                    let q = be.linear(&h, &lw.q)?;
                    let k = be.linear(&h, &lw.k)?;
                    let v = be.linear(&h, &lw.v)?;
                    tap(be, sink, at, TraceOp::QProj, &q)?;
                    tap(be, sink, at, TraceOp::KProj, &k)?;
                    let qn = be.rms_norm(&q, &lw.q_norm, d.eps)?;
                    let kn = be.rms_norm(&k, &lw.k_norm, d.eps)?;
                    tap(be, sink, at, TraceOp::QNorm, &qn)?;
                    tap(be, sink, at, TraceOp::KNorm, &kn)?;
                    let q = be.rope(&qn, &positions, d.head_dim, d.rope_theta)?;
                    let k = be.rope(&kn, &positions, d.head_dim, d.rope_theta)?;
                    (q, k, v)
                }
                AttnPath::Fused => self.attention_inputs(l, &h, &positions, path)?,
            };
            tap(be, sink, at, TraceOp::Q, &q)?;
            tap(be, sink, at, TraceOp::K, &k)?;
            tap(be, sink, at, TraceOp::V, &v)?;
            be.cache_append(&mut session.caches[l], &k, &v)?;
            let a = be.attention(&q, &session.caches[l], d, &positions)?;
            tap(be, sink, at, TraceOp::Attention, &a)?;
            let o = be.linear(&a, &lw.o)?;
            tap(be, sink, at, TraceOp::OProj, &o)?;
            let (x1, h2) = be.add_rms_norm(&x, &o, &lw.post_norm, d.eps)?;
            tap(be, sink, at, TraceOp::AttnResidual, &x1)?;
            tap(be, sink, at, TraceOp::PostNorm, &h2)?;
            let m = match &lw.mlp {
                Mlp::Dense { .. } => self.mlp(l, &h2)?,
                Mlp::Moe(w) => {
                    let want = [
                        TraceOp::RouterLogits,
                        TraceOp::Experts,
                        TraceOp::ExpertWeights,
                    ]
                    .iter()
                    .any(|&op| sink.wants(at, op));
                    if want {
                        let r = be.linear(&h2, &w.router)?;
                        let (logits, [rows, experts]) = be.to_host(&r)?;
                        finite(be, "router logits", || format!("layer {l}"), &logits)?;
                        let bf16 = be.numerics() == Numerics::Bf16;
                        let routes: Vec<Vec<(usize, f64)>> = logits
                            .chunks_exact(experts.max(1))
                            .map(|row| crate::backend::route(bf16, row, w.top_k, w.norm_topk_prob))
                            .collect();
                        let pick = |f: &dyn Fn(&(usize, f64)) -> f64| {
                            routes.iter().flat_map(|r| r.iter().map(f)).collect()
                        };
                        let put = |op, cols, data| Traced {
                            layer: at,
                            op,
                            rows,
                            cols,
                            data,
                        };
                        for (op, cols, data) in [
                            (TraceOp::RouterLogits, experts, logits.clone()),
                            (TraceOp::Experts, w.top_k, pick(&|r| r.0 as f64)),
                            (TraceOp::ExpertWeights, w.top_k, pick(&|r| r.1)),
                        ] {
                            if sink.wants(at, op) {
                                sink.put(put(op, cols, data))?;
                            }
                        }
                    }
                    self.mlp(l, &h2)?
                }
            };
            tap(be, sink, at, TraceOp::Mlp, &m)?;
            let (out, next) = self.residual_and_next_norm(l, &x1, &m)?;
            x = out;
            if let Some(next) = next {
                h = next;
            }
            tap(be, sink, at, TraceOp::Output, &x)?;
        }
        session.pos = n;
        let f = be.rms_norm(&x, &self.final_norm, d.eps)?;
        tap(be, sink, None, TraceOp::FinalNorm, &f)?;
        let logits = be.linear(&f, self.lm_head.as_ref().unwrap_or(&self.embed))?;
        tap(be, sink, None, TraceOp::Logits, &logits)?;
        Ok(())
    }
}

/// Hands `t` to `sink` as host values if it is wanted.
fn tap<B: Backend>(
    be: &B,
    sink: &mut dyn TraceSink,
    layer: Option<usize>,
    op: TraceOp,
    t: &B::Tensor,
) -> Result<()> {
    if !sink.wants(layer, op) {
        return Ok(());
    }
    let (data, [rows, cols]) = be.to_host(t)?;
    finite(be, op.name(), || op.tensor_name(layer), &data)?;
    sink.put(Traced {
        layer,
        op,
        rows,
        cols,
        data,
    })
}
