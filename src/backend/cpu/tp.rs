//! Tensor parallelism simulated in the reference: the arithmetic a TP-N
//! engine does differently from one device, so the envelope TP adds is known
//! before a GPU is touched.
//!
//! Megatron-style sharding of Qwen3 over N ranks. Column-parallel products
//! (q, k, v, gate, up, the lm_head's vocabulary) and attention heads split
//! whole output rows or heads across ranks: every output is the same sum it
//! is on one device, so they need no simulation. Row-parallel products (the
//! attention output `o_proj`, the dense MLP's `down_proj`) split the inputs:
//! each rank computes a partial product over its contiguous shard, rounded
//! as its GEMM's bf16 output, and an all-reduce adds the ranks' partials in
//! an order its algorithm fixes, rounding each addition to the data type
//! (as NCCL reduces bf16 buffers). Expert parallelism (MoE) gives each rank
//! a contiguous block of experts; a rank combines its own chosen experts in
//! routing order and the all-reduce adds the ranks' combinations.
//!
//! The reduction orders model the algorithms' structure, not NCCL's exact
//! indexing: a ring reduces chunk c of N starting at rank c and going round;
//! a tree adds the ranks in pairs, then pairs of pairs, the same for every
//! element; a one-shot kernel sums every rank's value in f32 and rounds
//! once. In f64 nothing is rounded, so TP differs from one device only by
//! reassociation.

use super::math::dot8;
use super::{CpuTensor, CpuWeight, Numerics};
use crate::error::{Error, Result};

/// How an all-reduce orders the ranks' partials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReduceOrder {
    /// Chunk c of N (contiguous, of ceil(len / N) elements) is summed over
    /// ranks c, c + 1, ..., c + N - 1 (mod N): a ring's reduce-scatter.
    Ring,
    /// Ranks added pairwise, then the pairs' sums, for every element (a
    /// binary tree over the ranks in index order).
    Tree,
    /// Every rank's value read at once and summed in rank order in f32,
    /// rounded once: a one-shot all-reduce kernel (as serving engines'
    /// custom all-reduce does for small messages) rather than NCCL's.
    OneShot,
}

impl ReduceOrder {
    pub const ALL: [ReduceOrder; 3] = [ReduceOrder::Ring, ReduceOrder::Tree, ReduceOrder::OneShot];

    pub fn name(self) -> &'static str {
        match self {
            ReduceOrder::Ring => "ring",
            ReduceOrder::Tree => "tree",
            ReduceOrder::OneShot => "one-shot",
        }
    }
}

/// A simulated tensor-parallel configuration of the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TpSim {
    pub ranks: usize,
    pub order: ReduceOrder,
    /// Negative control: the all-reduce leaves out the last rank's partial
    /// (a rank whose contribution never arrives).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub drop_last_rank: bool,
}

impl TpSim {
    pub fn new(ranks: usize, order: ReduceOrder) -> Self {
        TpSim {
            ranks,
            order,
            drop_last_rank: false,
        }
    }
}

/// How a weight is divided among ranks, from its checkpoint key. Only the
/// row-parallel products change arithmetic; the rest are `Whole` here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Whole,
    /// Row-parallel: each rank holds a contiguous share of the inputs.
    Inputs,
}

impl Split {
    pub fn of(name: &str) -> Split {
        let row_parallel = name.ends_with("self_attn.o_proj.weight")
            || (name.ends_with("mlp.down_proj.weight") && !name.contains(".experts."));
        if row_parallel {
            Split::Inputs
        } else {
            Split::Whole
        }
    }
}

fn r16(x: f64) -> f64 {
    crate::util::round_bf16(x as f32) as f64
}

/// One addition of the all-reduce, in the buffer's type.
fn add(num: Numerics, a: f64, b: f64) -> f64 {
    match num {
        Numerics::Bf16 => r16(a + b),
        Numerics::F64 => a + b,
    }
}

fn tree(num: Numerics, vals: &[f64]) -> f64 {
    match vals.len() {
        0 => 0.0,
        1 => vals[0],
        n => add(num, tree(num, &vals[..n / 2]), tree(num, &vals[n / 2..])),
    }
}

/// The all-reduce of `parts` (one equal-length vector per rank).
pub fn all_reduce(num: Numerics, parts: &[Vec<f64>], order: ReduceOrder) -> Vec<f64> {
    let n = parts.len();
    let len = parts.first().map_or(0, Vec::len);
    let chunk = len.div_ceil(n.max(1)).max(1);
    (0..len)
        .map(|i| match order {
            ReduceOrder::Ring => {
                let first = (i / chunk) % n;
                (1..n).fold(parts[first][i], |acc, s| {
                    add(num, acc, parts[(first + s) % n][i])
                })
            }
            ReduceOrder::Tree => {
                let vals: Vec<f64> = parts.iter().map(|p| p[i]).collect();
                tree(num, &vals)
            }
            ReduceOrder::OneShot => match num {
                Numerics::Bf16 => r16(parts.iter().fold(0f32, |acc, p| acc + p[i] as f32) as f64),
                Numerics::F64 => parts.iter().fold(0.0, |acc, p| acc + p[i]),
            },
        })
        .collect()
}

fn refuse(what: &str, problem: String) -> Error {
    Error::invalid(what, problem)
}

/// `x w^T` with `w` row-parallel over `tp.ranks`: each rank's partial over
/// its contiguous share of the inputs (the reference's own dot product over
/// the share, rounded as a bf16 GEMM output), then the all-reduce.
pub fn row_parallel_linear(
    num: Numerics,
    tp: &TpSim,
    x: &CpuTensor,
    w: &CpuWeight,
) -> Result<CpuTensor> {
    crate::backend::check::linear((x.rows, x.cols), &w.name, (w.rows, w.cols))?;
    let (n, k, m) = (x.rows, x.cols, w.rows);
    if tp.ranks == 0 || k % tp.ranks != 0 {
        return Err(refuse(
            "tensor parallel",
            format!(
                "{}: {k} inputs do not split over {} ranks",
                w.name, tp.ranks
            ),
        ));
    }
    let share = k / tp.ranks;
    let x32: Vec<f32> = x.data.iter().map(|&v| v as f32).collect();
    let mut w32 = vec![0f32; k];
    let mut w64 = vec![0f64; k];
    let mut parts = vec![vec![0f64; n * m]; tp.ranks];
    for o in 0..m {
        w.row_f32(o, &mut w32);
        for (d, &s) in w64.iter_mut().zip(&w32) {
            *d = s as f64;
        }
        for r in 0..n {
            for (rank, part) in parts.iter_mut().enumerate() {
                let s = r * k + rank * share..r * k + (rank + 1) * share;
                let ws = rank * share..(rank + 1) * share;
                part[r * m + o] = match num {
                    Numerics::Bf16 => r16(dot8(&x32[s], &w32[ws]) as f64),
                    Numerics::F64 => dot8(&x.data[s], &w64[ws]),
                };
            }
        }
    }
    if tp.drop_last_rank {
        parts.pop();
    }
    Ok(CpuTensor::new(n, m, all_reduce(num, &parts, tp.order)))
}

/// The rank that holds expert `e` of `experts` under expert parallelism
/// over `ranks` (contiguous blocks).
pub fn expert_rank(e: usize, experts: usize, ranks: usize) -> Result<usize> {
    if ranks == 0 || experts % ranks != 0 {
        return Err(refuse(
            "expert parallel",
            format!("{experts} experts do not split over {ranks} ranks"),
        ));
    }
    Ok(e / (experts / ranks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_starts_each_chunk_at_its_own_rank() {
        // Three ranks whose values only sum exactly in some orders: bf16
        // keeps 8 bits, so 256 + 1 + 1 rounds differently from 1 + 1 + 256.
        let parts = vec![vec![256.0; 3], vec![1.0; 3], vec![1.0; 3]];
        let ring = all_reduce(Numerics::Bf16, &parts, ReduceOrder::Ring);
        // chunk 0: (256 + 1) + 1 -> 256 twice; chunk 1: (1 + 1) + 256 = 258;
        // chunk 2: (1 + 256) + 1 -> 256.
        assert_eq!(ring, vec![256.0, 258.0, 256.0]);
        let tree = all_reduce(Numerics::Bf16, &parts, ReduceOrder::Tree);
        // 256 + (1 + 1) = 258 everywhere.
        assert_eq!(tree, vec![258.0; 3]);
        let exact = all_reduce(Numerics::F64, &parts, ReduceOrder::Ring);
        assert_eq!(exact, vec![258.0; 3]);
        // f32 holds 257 and 258 exactly: one rounding at the end.
        let one_shot = all_reduce(Numerics::Bf16, &parts, ReduceOrder::OneShot);
        assert_eq!(one_shot, vec![258.0; 3]);
        let two = vec![vec![256.0], vec![1.0]];
        assert_eq!(
            all_reduce(Numerics::Bf16, &two, ReduceOrder::OneShot),
            vec![256.0]
        );
    }

    #[test]
    fn only_row_parallel_keys_split_their_inputs() {
        assert_eq!(
            Split::of("model.layers.3.self_attn.o_proj.weight"),
            Split::Inputs
        );
        assert_eq!(
            Split::of("model.layers.3.mlp.down_proj.weight"),
            Split::Inputs
        );
        for whole in [
            "model.layers.3.mlp.experts.7.down_proj.weight",
            "model.layers.3.self_attn.q_proj.weight",
            "model.layers.3.mlp.up_proj.weight",
            "lm_head.weight",
        ] {
            assert_eq!(Split::of(whole), Split::Whole, "{whole}");
        }
    }
}
