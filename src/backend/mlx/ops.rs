//! The MLX graphs of the ops, on bf16 arrays. Shapes are checked by the
//! caller (`backend.rs`); these functions only build graphs, so the fused
//! path can reuse them inside a compiled function.
//!
//! Where each op rounds to bf16 (MLX 0.32.2 on the CPU; docs/mlx.md):
//! - `linear`: one rounding of an f32 accumulation (MLX's bf16 simd_gemm).
//! - `rms_norm_groups`: `fast::rms_norm`, whose CPU path normalises in f32,
//!   rounds, then multiplies by the weight in bf16 (transformers' order).
//! - `rope`: `fast::rope`, whose CPU path rounds cos/sin to bf16 and then
//!   rounds each product and the sum (as transformers' `q*cos + rot(q)*sin`).
//! - `attention`: `fast::scaled_dot_product_attention`; on the CPU, q is
//!   scaled in bf16 first, scores and output are bf16 matmuls, the softmax
//!   runs in f32 (precise) and is rounded to bf16.
//! - `swiglu`: silu in f32, rounded once, then the bf16 product with `up`
//!   (torch's silu on bf16 also rounds once).

use super::backend::MlxWeight;
use crate::backend::{AttnDims, MoeWeights};
use half::bf16;
use mlx_rs::error::Exception;
use mlx_rs::fast::{self, ScaledDotProductAttentionMask};
use mlx_rs::ops::indexing::TryIndexOp;
use mlx_rs::{Array, Dtype};

type R<T> = std::result::Result<T, Exception>;

/// RMSNorm over consecutive groups of `w.len()` elements of each row of
/// `x [rows, cols]`.
pub fn rms_norm_groups(x: &Array, w: &Array, eps: f32) -> R<Array> {
    let (rows, cols, g) = (x.dim(0), x.dim(1), w.dim(0));
    let grouped = x.reshape(&[rows, cols / g, g])?;
    fast::rms_norm(&grouped, Some(w), eps)?.reshape(&[rows, cols])
}

/// `x [n, in] @ w[out, in]^T -> [n, out]`.
pub fn linear(x: &Array, w: &Array) -> R<Array> {
    x.matmul(w.transpose()?)
}

/// NeoX-style RoPE (halves of each head rotated) of `x [n, heads * head_dim]`;
/// row `r` at position `positions[r]` (int32 `[n]`). Each row is its own
/// "batch" of `fast::rope` with a per-batch offset, so positions need not be
/// contiguous.
pub fn rope(x: &Array, positions: &Array, head_dim: i32, theta: f32) -> R<Array> {
    let (n, cols) = (x.dim(0), x.dim(1));
    let per_row = x.reshape(&[n, cols / head_dim, 1, head_dim])?;
    fast::rope_dynamic(&per_row, head_dim, false, theta, 1.0, positions, None)?.reshape(&[n, cols])
}

/// Which keys each query row may see.
pub enum AttnMask {
    /// Every row sees every key (one query at the end of the cache).
    None,
    /// Row `r` of `n` sees keys `0..=keys - n + r` (MLX's causal mode).
    Causal,
    /// `[n, keys]` booleans.
    Explicit(Array),
}

/// GQA attention of `q [n, q_dim]` over `k, v [keys, kv_dim]`.
pub fn attention(q: &Array, k: &Array, v: &Array, dims: &AttnDims, mask: &AttnMask) -> R<Array> {
    let (hd, nh, nkv) = (
        dims.head_dim as i32,
        dims.n_heads as i32,
        dims.n_kv_heads as i32,
    );
    let (n, keys) = (q.dim(0), k.dim(0));
    // [rows, heads * hd] -> [1, heads, rows, hd]
    let heads_first = |a: &Array, rows: i32, heads: i32| -> R<Array> {
        a.reshape(&[rows, heads, hd])?
            .swap_axes(0, 1)?
            .reshape(&[1, heads, rows, hd])
    };
    let q4 = heads_first(q, n, nh)?;
    let k4 = heads_first(k, keys, nkv)?;
    let v4 = heads_first(v, keys, nkv)?;
    let scale = (dims.head_dim as f64).powf(-0.5) as f32;
    let out = match mask {
        AttnMask::None => fast::scaled_dot_product_attention(&q4, &k4, &v4, scale, None, None)?,
        AttnMask::Causal => fast::scaled_dot_product_attention(
            &q4,
            &k4,
            &v4,
            scale,
            ScaledDotProductAttentionMask::Causal,
            None,
        )?,
        AttnMask::Explicit(m) => fast::scaled_dot_product_attention(&q4, &k4, &v4, scale, m, None)?,
    };
    // [1, heads, n, hd] -> [n, heads * hd]
    out.reshape(&[nh, n, hd])?
        .swap_axes(0, 1)?
        .reshape(&[n, nh * hd])
}

/// `silu(gate) * up`: silu in f32, rounded to bf16 once, then the bf16 product.
pub fn swiglu(gate: &Array, up: &Array) -> R<Array> {
    let g = gate.as_dtype(Dtype::Float32)?;
    let silu = g.multiply(mlx_rs::ops::sigmoid(&g)?)?;
    silu.as_dtype(Dtype::Bfloat16)?.multiply(up)
}

/// The index of the largest value of the last row of `logits [rows, cols]`,
/// as a `[1, 1]` int32 array: NaN never wins (it is first made -inf) and
/// ties go to the lower index, as the host's `logits::argmax` decides,
/// whatever order MLX's own arg-reduction visits the row in.
pub fn greedy_token(logits: &Array) -> R<Array> {
    let (rows, cols) = (logits.dim(0), logits.dim(1));
    let last = logits
        .try_index((rows - 1)..rows)?
        .as_dtype(Dtype::Float32)?;
    let minus_inf = Array::from_f32(f32::NEG_INFINITY);
    let clean = mlx_rs::ops::select(&mlx_rs::ops::is_nan(&last)?, &minus_inf, &last)?;
    let top = clean.max_axis(1, true)?;
    let index = mlx_rs::ops::arange::<i32, i32>(None, cols, None)?.reshape(&[1, cols])?;
    let past_end = Array::from_int(cols);
    let candidates = mlx_rs::ops::select(&clean.eq(&top)?, &index, &past_end)?;
    candidates.min_axis(1, true)
}

/// One token's choice: (expert, weight) pairs in ascending expert order,
/// weights rounded to bf16 (the precision the combine multiplies in).
pub type Route = Vec<(usize, bf16)>;

/// The MoE output: for each expert in ascending order, its SwiGLU MLP on the
/// rows that chose it, scaled by their weights (bf16 product) and added to
/// those rows' running sums (bf16 add), as the reference accumulates.
pub fn combine_experts(x: &Array, w: &MoeWeights<MlxWeight>, routes: &[Route]) -> R<Array> {
    let (n, hidden) = (x.dim(0), x.dim(1));
    let mut acc = mlx_rs::ops::zeros_dtype(&[n, hidden], Dtype::Bfloat16)?;
    for (e, ex) in w.experts.iter().enumerate() {
        let (rows, weights): (Vec<i32>, Vec<bf16>) = routes
            .iter()
            .enumerate()
            .filter_map(|(r, sel)| {
                sel.iter()
                    .find(|&&(se, _)| se == e)
                    .map(|&(_, p)| (r as i32, p))
            })
            .unzip();
        if rows.is_empty() {
            continue;
        }
        let m = rows.len() as i32;
        let idx = Array::from_slice(&rows, &[m]);
        let p = Array::from_slice(&weights, &[m, 1]);
        let xe = x.take_axis(&idx, 0)?;
        let h = swiglu(&linear(&xe, &ex.gate.array)?, &linear(&xe, &ex.up.array)?)?;
        let contrib = linear(&h, &ex.down.array)?.multiply(&p)?;
        let updated = acc.take_axis(&idx, 0)?.add(&contrib)?;
        let at = mlx_rs::ops::broadcast_to(idx.reshape(&[m, 1])?, &[m, hidden])?;
        acc = acc.put_along_axis(&at, &updated, 0)?;
    }
    Ok(acc)
}

/// MoE on the device: `x [n, hidden]`, the router's bf16 `logits [n, E]`,
/// each projection of every expert stacked `[E, rows, cols]` (gate, up,
/// down). The routing rule is `backend::route`'s, in f32: softmax, the
/// `top_k` largest probabilities with ties to the lower expert (each
/// expert's rank counted against every other's, so no sort's tie order
/// matters), renormalised if asked, weights rounded to bf16. The chosen
/// experts' products are gathered (`gather_mm`) and each row's
/// contributions added in ascending expert order in bf16, the reference's
/// order of accumulation. `f32_products`: MLX's CPU `gather_mm` takes only
/// float32, so there the products run on f32 copies (bf16 values are exact
/// in f32; each product is rounded to bf16 once, as a bf16 matmul rounds
/// its f32 sum).
pub fn moe_on_device(
    x: &Array,
    logits: &Array,
    [gate, up, down]: [&Array; 3],
    top_k: usize,
    renorm: bool,
    f32_products: bool,
) -> R<Array> {
    use mlx_rs::ops::{arange, gather_mm, logical_and, logical_or, select};
    let (n, hidden, experts) = (x.dim(0), x.dim(1), logits.dim(1));
    let k = top_k as i32;
    let l = logits.as_dtype(Dtype::Float32)?;
    let e = l.subtract(l.max_axis(1, true)?)?.exp()?;
    let p = e.divide(e.sum_axis(1, true)?)?;
    // rank[r, i] = #{ j : p[j] > p[i] or (p[j] == p[i] and j < i) }.
    let (pi, pj) = (p.reshape(&[n, experts, 1])?, p.reshape(&[n, 1, experts])?);
    let idx = arange::<i32, i32>(None, experts, None)?;
    let (ii, jj) = (
        idx.reshape(&[1, experts, 1])?,
        idx.reshape(&[1, 1, experts])?,
    );
    let beats = logical_or(pj.gt(&pi)?, logical_and(pj.eq(&pi)?, jj.lt(&ii)?)?)?;
    let rank = beats.as_dtype(Dtype::Int32)?.sum_axis(2, false)?;
    // The chosen experts in ascending order: their indices sort before
    // every unchosen one's (all keys distinct, so the sort is exact).
    let key = select(
        &rank.lt(Array::from_int(k))?,
        &idx.reshape(&[1, experts])?,
        idx.add(Array::from_int(experts))?,
    )?;
    let chosen = mlx_rs::ops::argsort_axis(&key, 1)?.try_index((.., ..k))?;
    let mut w = p.take_along_axis(&chosen, 1)?;
    if renorm {
        w = w.divide(w.sum_axis(1, true)?)?;
    }
    let w = w.as_dtype(Dtype::Bfloat16)?.reshape(&[n, k, 1])?;
    let chosen = chosen.as_dtype(Dtype::Uint32)?;
    let product = |a: &Array, b: &Array| -> R<Array> {
        let bt = b.swap_axes(-1, -2)?;
        if f32_products {
            let a32 = a.as_dtype(Dtype::Float32)?;
            let b32 = bt.as_dtype(Dtype::Float32)?;
            gather_mm(&a32, &b32, None, &chosen, false)?.as_dtype(Dtype::Bfloat16)
        } else {
            gather_mm(a, &bt, None, &chosen, false)
        }
    };
    let x4 = x.reshape(&[n, 1, 1, hidden])?;
    let h = swiglu(&product(&x4, gate)?, &product(&x4, up)?)?;
    let y = product(&h, down)?;
    let contrib = y.reshape(&[n, k, hidden])?.multiply(&w)?;
    let mut acc = contrib.try_index((.., 0))?;
    for s in 1..k {
        acc = acc.add(contrib.try_index((.., s))?)?;
    }
    Ok(acc)
}
