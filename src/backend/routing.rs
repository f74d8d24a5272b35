//! MoE routing, shared by every backend because it is model logic, not a
//! device's: the softmax, top-k and renormalisation every backend must agree
//! on, and the routing record a backend may keep so that verification can
//! tell a near-tie between two experts from a bug.

/// MoE routing of one token, shared by every backend (it is model logic):
/// softmax over the router logits (f32 when `bf16`, else f64), top-k with
/// ties to the lower expert, renormalised if asked, weights rounded to bf16
/// when `bf16` (transformers casts them to the hidden dtype). Returns
/// (expert, weight) in ascending expert order.
pub fn route(bf16: bool, logits: &[f64], top_k: usize, renorm: bool) -> Vec<(usize, f64)> {
    let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let probs: Vec<f64> = match bf16 {
        true => {
            let e: Vec<f32> = logits
                .iter()
                .map(|&l| (l as f32 - m as f32).exp())
                .collect();
            let s: f32 = e.iter().sum();
            e.iter().map(|&x| (x / s) as f64).collect()
        }
        false => {
            let e: Vec<f64> = logits.iter().map(|&l| (l - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.iter().map(|&x| x / s).collect()
        }
    };
    // Highest probability first; ties go to the lower expert index.
    let mut idx: Vec<usize> = (0..probs.len()).collect();
    idx.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    idx.truncate(top_k);
    let mut sel: Vec<(usize, f64)> = idx.iter().map(|&e| (e, probs[e])).collect();
    if renorm {
        match bf16 {
            true => {
                let s: f32 = sel.iter().map(|&(_, p)| p as f32).sum();
                for (_, p) in sel.iter_mut() {
                    *p = (*p as f32 / s) as f64;
                }
            }
            false => {
                let s: f64 = sel.iter().map(|&(_, p)| p).sum();
                for (_, p) in sel.iter_mut() {
                    *p /= s;
                }
            }
        }
    }
    if bf16 {
        for (_, p) in sel.iter_mut() {
            *p = crate::util::round_bf16(*p as f32) as f64;
        }
    }
    sel.sort_by_key(|&(e, _)| e);
    sel
}

/// The first `k` indices of `v` by descending value, ties to the lower index.
fn ranked(v: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// One token's routing as recorded for diagnostics.
#[derive(Debug, Clone, PartialEq)]
pub struct RowRouting {
    /// The chosen experts, ascending.
    pub experts: Vec<usize>,
    /// How far the decision was from a tie: the router-logit gap between the
    /// k-th and (k+1)-th ranked experts, divided by the row's largest
    /// |logit| (infinite when every expert is chosen).
    pub boundary_gap: f32,
}

/// The routing record of one `moe` call from its bf16 logits (as f32).
pub fn routing_record(logits: &[f32], experts: usize, top_k: usize) -> Vec<RowRouting> {
    logits
        .chunks_exact(experts)
        .map(|l| {
            let order = ranked(l, experts);
            let mut chosen = order[..top_k].to_vec();
            chosen.sort_unstable();
            let scale = l.iter().fold(0f32, |m, v| m.max(v.abs()));
            let boundary_gap = match order.get(top_k) {
                Some(&next) if scale > 0.0 => (l[order[top_k - 1]] - l[next]) / scale,
                Some(_) => 0.0,
                None => f32::INFINITY,
            };
            RowRouting {
                experts: chosen,
                boundary_gap,
            }
        })
        .collect()
}
