//! The Qwen3 forward pass, written once against `Backend`.
//!
//! Weights are scoped by their checkpoint keys; the forward has numbered
//! steps with shapes. The engine produces recorded runs (see `record`), the
//! only thing the verification layer consumes.

pub mod batch;
pub mod dump;
pub mod generate;
pub mod record;
pub mod trace;

use crate::backend::{AttnDims, AttnPath, Backend, MoeWeights};
use crate::error::{Error, Result};
use crate::ident::Numerics;
use crate::model::{Model, ModelHasher, Qwen3Config};

enum Mlp<W> {
    Dense { gate: W, up: W, down: W },
    Moe(MoeWeights<W>),
}

struct Layer<W> {
    input_norm: W,
    post_norm: W,
    q: W,
    k: W,
    v: W,
    /// Rows of q, k and v stacked: the fused path's single weight.
    qkv: W,
    o: W,
    q_norm: W,
    k_norm: W,
    mlp: Mlp<W>,
}

/// A model resident on a backend.
pub struct Engine<B: Backend> {
    pub backend: B,
    pub config: Qwen3Config,
    pub dims: AttnDims,
    pub model_origin: String,
    /// `Model::name()`: the preset of a synthetic model, else its origin.
    pub model_name: String,
    pub model_hash: String,
    embed: B::Weight,
    /// `None` when tied to the embedding.
    lm_head: Option<B::Weight>,
    final_norm: B::Weight,
    layers: Vec<Layer<B::Weight>>,
}

/// Bytes a model occupies on a backend that stores bf16: every tensor once,
/// plus the packed QKV copy of each layer's q, k and v projections (an
/// upper bound on the CPU reference, whose q, k and v are views of it).
pub fn resident_bytes(cfg: &Qwen3Config) -> usize {
    let qkv = cfg.num_hidden_layers * (cfg.q_dim() + 2 * cfg.kv_dim()) * cfg.hidden_size;
    2 * (crate::model::layout::parameter_count(cfg) + qkv)
}

/// Fetches tensors from the model, hashes them, reports progress, uploads.
struct Loader<'a, B: Backend> {
    model: &'a Model,
    backend: &'a B,
    hasher: ModelHasher,
    done: usize,
    total: usize,
    progress: &'a mut dyn FnMut(usize, usize),
}

impl<'a, B: Backend> Loader<'a, B> {
    fn fetch(&mut self, name: &str) -> Result<crate::model::safetensors::HostTensor<'a>> {
        let t = self.model.tensor(name)?;
        // `tensor` refuses non-finite values as stored; a bf16 backend also
        // refuses finite f32/f16 values that round to a bf16 infinity.
        if self.backend.numerics() == Numerics::Bf16 {
            if let Some((index, value)) = t.first_bf16_overflow() {
                return Err(Error::NonFiniteWeight {
                    path: self
                        .model
                        .dir
                        .clone()
                        .unwrap_or_else(|| self.model.origin.clone().into()),
                    tensor: format!("{name} (rounded to bf16, the backend's storage)"),
                    index,
                    value,
                });
            }
        }
        self.hasher.add(name, &t);
        self.done += 1;
        (self.progress)(self.done, self.total);
        Ok(t)
    }

    fn up(&mut self, name: &str) -> Result<B::Weight> {
        let t = self.fetch(name)?;
        self.backend.upload(name, &t)
    }
}

/// Refuses a host copy of activations or logits that holds a non-finite
/// value, naming where in the run it came from.
pub(crate) fn finite<B: Backend>(
    be: &B,
    what: &str,
    at: impl FnOnce() -> String,
    v: &[f64],
) -> Result<()> {
    match v.iter().position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(index) => Err(Error::NonFinite {
            backend: be.kind(),
            what: what.into(),
            at: at(),
            index,
            value: v[index],
        }),
    }
}

/// Per-sequence state: one KV cache per layer and the next position.
pub struct Session<C> {
    caches: Vec<C>,
    pub pos: usize,
    /// Positions its caches hold.
    pub capacity: usize,
}

/// q, k, v of one layer computed by each path from the same input.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LayerQkv {
    pub layer: usize,
    /// The normalised input both paths saw, `[tokens, hidden]`.
    pub input: Vec<f64>,
    /// One entry per requested path, in request order: [q, k, v].
    pub by_path: Vec<(AttnPath, [Vec<f64>; 3])>,
}

/// What a forward pass should hand back besides logits (host copies).
#[derive(Debug, Default)]
pub struct Capture {
    /// Each decoder layer's output, `[tokens, hidden]` per layer.
    pub layers: Option<Vec<Vec<f64>>>,
    /// Each layer's attention inputs after norm and RoPE: (q, k, v).
    pub qkv: Option<Vec<[Vec<f64>; 3]>>,
}

impl Capture {
    pub fn all() -> Self {
        Capture {
            layers: Some(Vec::new()),
            qkv: Some(Vec::new()),
        }
    }
}

impl<B: Backend> Engine<B> {
    /// Uploads every tensor of `model` to `backend`, hashing the bytes loaded.
    pub fn load(model: &Model, backend: B) -> Result<Self> {
        Self::load_with_progress(model, backend, &mut |_, _| {})
    }

    pub fn load_with_progress(
        model: &Model,
        backend: B,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        let cfg = model.config.clone();
        if let Some(d) = backend.unsupported_dim(&cfg) {
            return Err(Error::UnsupportedShape {
                model: model.origin.clone(),
                backend: backend.kind(),
                field: d.field,
                value: d.value,
                supported: d.supported,
            });
        }
        if let Some(free) = backend.free_memory() {
            let need = resident_bytes(&cfg);
            if need > free {
                return Err(Error::Engine {
                    problem: format!(
                        "{} needs about {:.2} GiB resident (bf16 weights plus the packed QKV copies) but {} has {:.2} GiB free",
                        model.origin,
                        need as f64 / (1u64 << 30) as f64,
                        backend.kind(),
                        free as f64 / (1u64 << 30) as f64
                    ),
                });
            }
        }
        let mut ld = Loader {
            model,
            backend: &backend,
            hasher: ModelHasher::default(),
            done: 0,
            total: crate::model::layout::tensor_count(&model.config),
            progress,
        };
        let embed = ld.up("model.embed_tokens.weight")?;
        let final_norm = ld.up("model.norm.weight")?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(ld.up("lm_head.weight")?)
        };
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let mlp = if cfg.layer_is_moe(l) {
                let m = cfg.moe.as_ref().expect("moe layer has moe config");
                let router = ld.up(&format!("{p}.mlp.gate.weight"))?;
                let names: Vec<[String; 3]> = (0..m.num_experts)
                    .map(|e| {
                        ["gate_proj", "up_proj", "down_proj"]
                            .map(|n| format!("{p}.mlp.experts.{e}.{n}.weight"))
                    })
                    .collect();
                let tensors = names
                    .iter()
                    .map(|[g, u, d]| Ok([ld.fetch(g)?, ld.fetch(u)?, ld.fetch(d)?]))
                    .collect::<Result<Vec<_>>>()?;
                let experts = backend.upload_experts(&names, &tensors)?;
                drop(tensors);
                Mlp::Moe(MoeWeights {
                    router,
                    experts,
                    top_k: m.num_experts_per_tok,
                    norm_topk_prob: m.norm_topk_prob,
                })
            } else {
                Mlp::Dense {
                    gate: ld.up(&format!("{p}.mlp.gate_proj.weight"))?,
                    up: ld.up(&format!("{p}.mlp.up_proj.weight"))?,
                    down: ld.up(&format!("{p}.mlp.down_proj.weight"))?,
                }
            };
            let names = ["q_proj", "k_proj", "v_proj"].map(|n| format!("{p}.self_attn.{n}.weight"));
            let [tq, tk, tv] = [0, 1, 2].map(|i| ld.fetch(&names[i]));
            let (tq, tk, tv) = (tq?, tk?, tv?);
            let qkv =
                backend.upload_packed(&format!("{p}.self_attn.qkv_packed"), &[&tq, &tk, &tv])?;
            // q, k and v: views of the packed rows where the backend has
            // them, else copies of their own.
            let (qd, kd) = (cfg.q_dim(), cfg.kv_dim());
            let part =
                |i: usize, t: &crate::model::safetensors::HostTensor, start, rows| match backend
                    .row_view(&names[i], &qkv, start, rows)
                {
                    Some(w) => Ok(w),
                    None => backend.upload(&names[i], t),
                };
            let (q, k, v) = (
                part(0, &tq, 0, qd)?,
                part(1, &tk, qd, kd)?,
                part(2, &tv, qd + kd, kd)?,
            );
            layers.push(Layer {
                input_norm: ld.up(&format!("{p}.input_layernorm.weight"))?,
                post_norm: ld.up(&format!("{p}.post_attention_layernorm.weight"))?,
                q,
                k,
                v,
                qkv,
                o: ld.up(&format!("{p}.self_attn.o_proj.weight"))?,
                q_norm: ld.up(&format!("{p}.self_attn.q_norm.weight"))?,
                k_norm: ld.up(&format!("{p}.self_attn.k_norm.weight"))?,
                mlp,
            });
        }
        let model_hash = ld.hasher.finish(&cfg);
        let dims = AttnDims {
            n_heads: cfg.num_attention_heads,
            n_kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
            eps: cfg.rms_norm_eps,
            rope_theta: cfg.rope_theta,
        };
        Ok(Engine {
            model_hash,
            model_origin: model.origin.clone(),
            model_name: model.name(),
            backend,
            dims,
            config: cfg,
            embed,
            lm_head,
            final_norm,
            layers,
        })
    }

    pub fn new_session(&self, capacity: usize) -> Result<Session<B::Cache>> {
        let caches = (0..self.layers.len())
            .map(|_| self.backend.new_cache(&self.dims, capacity))
            .collect::<Result<_>>()?;
        Ok(Session {
            caches,
            pos: 0,
            capacity,
        })
    }

    /// q, k, v for attention: `[n, q_dim]`, `[n, kv_dim]`, `[n, kv_dim]`,
    /// normalised and rotated, by the chosen path.
    pub fn attention_inputs(
        &self,
        layer: usize,
        h: &B::Tensor,
        positions: &[usize],
        path: AttnPath,
    ) -> Result<(B::Tensor, B::Tensor, B::Tensor)> {
        let be = &self.backend;
        let lw = &self.layers[layer];
        let d = &self.dims;
        match path {
            AttnPath::Graph => {
                // q [n, q_dim], k/v [n, kv_dim]; norm per head_dim group; rotate.
                let q = be.linear(h, &lw.q)?;
                let k = be.linear(h, &lw.k)?;
                let v = be.linear(h, &lw.v)?;
                let q = be.rope(
                    &be.rms_norm(&q, &lw.q_norm, d.eps)?,
                    positions,
                    d.head_dim,
                    d.rope_theta,
                )?;
                let k = be.rope(
                    &be.rms_norm(&k, &lw.k_norm, d.eps)?,
                    positions,
                    d.head_dim,
                    d.rope_theta,
                )?;
                Ok((q, k, v))
            }
            AttnPath::Fused => be.fused_qkv(h, &lw.qkv, &lw.q_norm, &lw.k_norm, d, positions),
        }
    }

    /// Op-level record: for every layer, q/k/v by each of `paths` from the
    /// same normalised input (the graph path's residual stream on `tokens`).
    /// Separating the op from the run keeps earlier layers' differences out.
    pub fn record_attention_inputs(
        &self,
        tokens: &[u32],
        paths: &[AttnPath],
    ) -> Result<Vec<LayerQkv>> {
        let mut cap = Capture {
            layers: Some(Vec::new()),
            qkv: None,
        };
        let mut session = self.new_session(tokens.len())?;
        self.forward(&mut session, tokens, AttnPath::Graph, false, &mut cap)?;
        let outs = cap.layers.expect("requested");
        let positions: Vec<usize> = (0..tokens.len()).collect();
        let be = &self.backend;
        let mut x = be.embed(&self.embed, tokens)?;
        let mut rec = Vec::with_capacity(self.layers.len());
        for (l, out) in outs.iter().enumerate() {
            let h = self.attention_norm(l, &x)?;
            let by_path = paths
                .iter()
                .map(|&p| {
                    let (q, k, v) = self.attention_inputs(l, &h, &positions, p)?;
                    let qkv = [be.to_host(&q)?.0, be.to_host(&k)?.0, be.to_host(&v)?.0];
                    for (name, t) in ["q", "k", "v"].iter().zip(&qkv) {
                        finite(be, name, || format!("layer {l} ({} path)", p.name()), t)?;
                    }
                    Ok((p, qkv))
                })
                .collect::<Result<Vec<_>>>()?;
            rec.push(LayerQkv {
                layer: l,
                input: be.to_host(&h)?.0,
                by_path,
            });
            x = be.activation_from_host(out, tokens.len(), self.config.hidden_size)?;
        }
        Ok(rec)
    }

    /// q/k/v of layer `layer` by `path` from a given normalised input (host
    /// values, rounded to this backend's storage): used to compute truth for
    /// another backend's op on exactly the input that backend saw.
    pub fn attention_inputs_from_host(
        &self,
        layer: usize,
        input: &[f64],
        positions: &[usize],
        path: AttnPath,
    ) -> Result<[Vec<f64>; 3]> {
        let be = &self.backend;
        let h = be.activation_from_host(input, positions.len(), self.config.hidden_size)?;
        let (q, k, v) = self.attention_inputs(layer, &h, positions, path)?;
        Ok([be.to_host(&q)?.0, be.to_host(&k)?.0, be.to_host(&v)?.0])
    }

    /// Layer `layer`'s MLP (dense or MoE) on its normalised input.
    pub(super) fn mlp(&self, layer: usize, h2: &B::Tensor) -> Result<B::Tensor> {
        let be = &self.backend;
        match &self.layers[layer].mlp {
            Mlp::Dense { gate, up, down } => be.linear(&be.gate_up_swiglu(h2, gate, up)?, down),
            Mlp::Moe(w) => be.moe(h2, w),
        }
    }

    /// The layer's output (residual `x1` plus the MLP's `m`) and, but after
    /// the last layer, the next layer's input norm of it, in one call.
    pub(super) fn residual_and_next_norm(
        &self,
        layer: usize,
        x1: &B::Tensor,
        m: &B::Tensor,
    ) -> Result<(B::Tensor, Option<B::Tensor>)> {
        let be = &self.backend;
        match self.layers.get(layer + 1) {
            Some(next) => {
                let (x, h) = be.add_rms_norm(x1, m, &next.input_norm, self.dims.eps)?;
                Ok((x, Some(h)))
            }
            None => Ok((be.add(x1, m)?, None)),
        }
    }

    /// Input of layer `layer`'s attention: RMSNorm of the residual stream.
    pub fn attention_norm(&self, layer: usize, x: &B::Tensor) -> Result<B::Tensor> {
        self.backend
            .rms_norm(x, &self.layers[layer].input_norm, self.dims.eps)
    }

    /// Embeds `ids` at positions `session.pos..`, runs every layer, appends to
    /// the caches and returns logits of the last row (or of every row).
    pub fn forward(
        &self,
        session: &mut Session<B::Cache>,
        ids: &[u32],
        path: AttnPath,
        all_logits: bool,
        capture: &mut Capture,
    ) -> Result<B::Tensor> {
        if ids.is_empty() {
            return Err(Error::Prompt("empty input".into()));
        }
        let x = self.backend.embed(&self.embed, ids)?;
        self.forward_embedded(session, x, ids.len(), path, all_logits, capture)
    }

    /// `forward` from `n` rows already embedded (`x [n, hidden]`): the
    /// pipelined decode embeds a token the host has not read yet.
    pub(super) fn forward_embedded(
        &self,
        session: &mut Session<B::Cache>,
        mut x: B::Tensor,
        n: usize,
        path: AttnPath,
        all_logits: bool,
        capture: &mut Capture,
    ) -> Result<B::Tensor> {
        let be = &self.backend;
        if n == 0 {
            return Err(Error::Prompt("empty input".into()));
        }
        let end = session.pos + n;
        if end > self.config.max_position_embeddings {
            return Err(Error::Prompt(format!(
                "positions up to {} exceed max_position_embeddings {}",
                end - 1,
                self.config.max_position_embeddings
            )));
        }
        let positions: Vec<usize> = (session.pos..end).collect();
        // 1. x [n, hidden] = embedding rows; h = the first layer's input norm.
        let mut h = self.attention_norm(0, &x)?;
        for (l, lw) in self.layers.iter().enumerate() {
            // 2. q/k/v by the chosen path from h; cache append.
            let cache = &mut session.caches[l];
            let q = match (path, capture.qkv.as_mut()) {
                // The fused op may write k and v straight into the cache.
                (AttnPath::Fused, None) => {
                    let d = &self.dims;
                    be.fused_qkv_append(&h, &lw.qkv, &lw.q_norm, &lw.k_norm, d, &positions, cache)?
                }
                (_, c) => {
                    let (q, k, v) = self.attention_inputs(l, &h, &positions, path)?;
                    if let Some(c) = c {
                        c.push([be.to_host(&q)?.0, be.to_host(&k)?.0, be.to_host(&v)?.0]);
                    }
                    be.cache_append(cache, &k, &v)?;
                    q
                }
            };
            // 3. attention [n, q_dim] -> o_proj [n, hidden]; residual add and
            // the MLP's input norm.
            let a = be.attention(&q, &session.caches[l], &self.dims, &positions)?;
            let (x1, h2) =
                be.add_rms_norm(&x, &be.linear(&a, &lw.o)?, &lw.post_norm, self.dims.eps)?;
            // 4. MLP; residual add and the next layer's input norm.
            let m = self.mlp(l, &h2)?;
            let (out, next) = self.residual_and_next_norm(l, &x1, &m)?;
            x = out;
            if let Some(next) = next {
                h = next;
            }
            if let Some(c) = capture.layers.as_mut() {
                let out = be.to_host(&x)?.0;
                finite(be, "activations", || format!("layer {l}'s output"), &out)?;
                c.push(out);
            }
        }
        session.pos = end;
        // 5. final norm on the rows whose logits are wanted; lm_head [rows, vocab].
        let x = if all_logits {
            x
        } else {
            be.rows(&x, n - 1, 1)?
        };
        let x = be.rms_norm(&x, &self.final_norm, self.dims.eps)?;
        be.linear(&x, self.lm_head.as_ref().unwrap_or(&self.embed))
    }
}
