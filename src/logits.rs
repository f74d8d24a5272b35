//! Greedy picks over one row of logits, shared by the backends (the host
//! fallback of `Backend::argmax`) and the engine's step records, so that
//! neither depends on the other. Values are compared as stored (f32); ties
//! go to the lower index, torch.argmax's choice.

/// Index of the greedy token: the largest value, ties to the lower index.
pub fn argmax(v: &[f64]) -> usize {
    top_k_of(v, 1).first().map_or(0, |t| t.0 as usize)
}

/// The `k` largest values with their indices, largest first.
pub fn top_k_of(v: &[f64], k: usize) -> Vec<(u32, f32)> {
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    for (i, &x) in v.iter().enumerate() {
        let x = x as f32;
        if best.len() == k && x.partial_cmp(&best[k - 1].1) != Some(std::cmp::Ordering::Greater) {
            continue;
        }
        let at = best.iter().position(|&(_, b)| x > b).unwrap_or(best.len());
        best.insert(at, (i as u32, x));
        best.truncate(k);
    }
    best
}
