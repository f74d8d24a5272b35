//! Greedy picks over one row of logits, shared by the backends (the host
//! fallback of `Backend::argmax`) and the engine's step records, so that
//! neither depends on the other. Values are compared as stored (f32); ties
//! go to the lower index, torch.argmax's choice; NaN is never picked (the
//! rule of the CUDA and MLX device argmax too, wherever the NaN sits).

/// Index of the greedy token: the largest value, ties to the lower index,
/// NaN never; 0 when every value is NaN.
pub fn argmax(v: &[f64]) -> usize {
    top_k_of(v, 1).first().map_or(0, |t| t.0 as usize)
}

/// The `k` largest non-NaN values with their indices, largest first.
pub fn top_k_of(v: &[f64], k: usize) -> Vec<(u32, f32)> {
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    if k == 0 {
        return best;
    }
    for (i, &x) in v.iter().enumerate() {
        let x = x as f32;
        if x.is_nan() || (best.len() == k && x <= best[k - 1].1) {
            continue;
        }
        let at = best.iter().position(|&(_, b)| x > b).unwrap_or(best.len());
        best.insert(at, (i as u32, x));
        best.truncate(k);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_is_never_picked_wherever_it_sits_and_ties_go_low() {
        let nan = f64::NAN;
        assert_eq!(argmax(&[nan, 1.0, 4.0, nan, 4.0]), 2);
        assert_eq!(argmax(&[1.0, nan, 4.0]), 2);
        assert_eq!(argmax(&[nan, nan]), 0);
        assert_eq!(argmax(&[0.0, 3.0, 1.0, 3.0]), 1);
        assert_eq!(
            top_k_of(&[nan, 2.0, 5.0, 2.0], 3),
            vec![(2, 5.0), (1, 2.0), (3, 2.0)]
        );
        assert!(top_k_of(&[1.0, 2.0], 0).is_empty());
    }
}
