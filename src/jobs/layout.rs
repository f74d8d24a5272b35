//! The layout perturbations of `verify::layout`, run on an engine's fused
//! path: each layer's q, k, v of a decode-sized block of rows, alone and
//! behind other rows in one batch, and again with other buffers held; the
//! block's logits from sessions whose KV caches differ in room.

use crate::backend::{AttnPath, Backend};
use crate::engine::{Capture, Engine, LayerQkv};
use crate::error::Result;
use crate::verify::case::{Case, Op};
use crate::verify::layout::{compare, LayoutReport};

/// Rows of the block: decode-sized, so that with the rows put before it a
/// batch stays within the backend's few-row kernels (CUDA: 2 to 8 rows).
pub const LAYOUT_ROWS: usize = 4;
/// How much more room the second session's KV caches have.
pub const EXTRA_CAPACITY: usize = 4096;

pub fn layout_case<B: Backend>(e: &Engine<B>) -> Case {
    Case::new(Op::Layout, e.backend.kind())
        .preset(&e.model_name)
        .numerics(e.backend.numerics())
        .path(AttnPath::Fused)
        .tokens(LAYOUT_ROWS)
}

/// Every layer's fused q, k, v of `input` at `positions`, keeping rows
/// `skip..` of each (q's rows, then k's, then v's, layer after layer).
fn fused_rows<B: Backend>(
    e: &Engine<B>,
    layers: &[LayerQkv],
    inputs: impl Fn(&LayerQkv) -> Vec<f64>,
    positions: &[usize],
    skip: usize,
) -> Result<Vec<f64>> {
    let (qd, kd) = (e.dims.q_dim(), e.dims.kv_dim());
    let mut out = Vec::new();
    for l in layers {
        let [q, k, v] =
            e.attention_inputs_from_host(l.layer, &inputs(l), positions, AttnPath::Fused)?;
        out.extend_from_slice(&q[skip * qd..]);
        out.extend_from_slice(&k[skip * kd..]);
        out.extend_from_slice(&v[skip * kd..]);
    }
    Ok(out)
}

/// The fused path on the first `LAYOUT_ROWS` of `tokens` under each
/// perturbation, bit for bit against the same rows laid out plainly.
pub fn fused_layout<B: Backend>(e: &Engine<B>, tokens: &[u32]) -> Result<LayoutReport> {
    let n = LAYOUT_ROWS.min(tokens.len());
    let block = &tokens[..n];
    let hidden = e.config.hidden_size;
    let layers = e.record_attention_inputs(block, &[])?;
    let positions: Vec<usize> = (0..n).collect();
    let reference = fused_rows(e, &layers, |l| l.input.clone(), &positions, 0)?;
    let mut perturbations = Vec::new();
    for m in [1, LAYOUT_ROWS] {
        // m other rows (the block's own, last first) at other positions,
        // then the block at its own.
        let before = |l: &LayerQkv| {
            let mut x: Vec<f64> = (0..m)
                .flat_map(|i| {
                    let r = n - 1 - i % n;
                    l.input[r * hidden..(r + 1) * hidden].to_vec()
                })
                .collect();
            x.extend_from_slice(&l.input);
            x
        };
        let pos: Vec<usize> = (n..n + m).chain(0..n).collect();
        let got = fused_rows(e, &layers, before, &pos, m)?;
        perturbations.push(compare(
            format!("rows at offset {m} of {}", n + m),
            &reference,
            &got,
        ));
    }
    {
        // Other buffers alive while the block runs: the allocator hands
        // the block's tensors other places.
        let _held = [(1, 13), (3, 7), (2, hidden + 1), (n, hidden)]
            .into_iter()
            .map(|(r, c)| e.backend.activation_from_host(&vec![0.5; r * c], r, c))
            .collect::<Result<Vec<_>>>()?;
        let got = fused_rows(e, &layers, |l| l.input.clone(), &positions, 0)?;
        perturbations.push(compare("with four other buffers held", &reference, &got));
    }
    let logits = |capacity: usize| -> Result<Vec<f64>> {
        let mut s = e.new_session(capacity)?;
        let l = e.forward(
            &mut s,
            block,
            AttnPath::Fused,
            true,
            &mut Capture::default(),
        )?;
        Ok(e.backend.to_host(&l)?.0)
    };
    let room = (n + EXTRA_CAPACITY).min(e.config.max_position_embeddings.max(n));
    perturbations.push(compare(
        format!("logits, KV caches of {room} positions against {n}"),
        &logits(n)?,
        &logits(room)?,
    ));
    Ok(LayoutReport::new(layout_case(e), perturbations))
}
