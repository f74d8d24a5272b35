//! The reference ops. Each has a bf16 branch that rounds where transformers'
//! eager bfloat16 Qwen3 rounds, and an f64 branch that never rounds.

use super::math::{dot8, dot_warp, par_ranges, sum_sq8, threads_for};
use super::{CpuBackend, CpuCache, CpuTensor, CpuWeight, Faults, Numerics};
use crate::backend::{check, AttnDims, MoeWeights};
use crate::error::{Error, Result};
use crate::util::round_bf16;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

#[inline]
fn r16(x: f32) -> f32 {
    round_bf16(x)
}

fn shape(op: &'static str, problem: String) -> Error {
    Error::Shape { op, problem }
}

/// RMSNorm of each `w.cols`-wide group. bf16: x*rsqrt(mean(x^2)+eps) in f32,
/// rounded, then multiplied by the weight and rounded (transformers' order).
pub fn rms_norm(num: Numerics, x: &CpuTensor, w: &CpuWeight, eps: f64) -> Result<CpuTensor> {
    let g = w.cols * w.rows;
    check::rms_norm(x.cols, g)?;
    let wv = w.to_f64();
    let mut out = Vec::with_capacity(x.data.len());
    match num {
        Numerics::Bf16 => {
            let w32: Vec<f32> = wv.iter().map(|&v| v as f32).collect();
            let mut buf = vec![0f32; g];
            for grp in x.data.chunks_exact(g) {
                for (b, &v) in buf.iter_mut().zip(grp) {
                    *b = v as f32;
                }
                let ms = sum_sq8(&buf) / g as f32;
                let r = 1.0 / (ms + eps as f32).sqrt();
                out.extend(
                    buf.iter()
                        .zip(&w32)
                        .map(|(&v, &wi)| r16(wi * r16(v * r)) as f64),
                );
            }
        }
        Numerics::F64 => {
            for grp in x.data.chunks_exact(g) {
                let ms = sum_sq8(grp) / g as f64;
                let r = 1.0 / (ms + eps).sqrt();
                out.extend(grp.iter().zip(&wv).map(|(&v, &wi)| wi * (v * r)));
            }
        }
    }
    Ok(CpuTensor::new(x.rows, x.cols, out))
}

/// `x [n, in] @ w^T -> [n, out]` in graph (8-lane) order; bf16 output in bf16 mode.
pub fn linear(num: Numerics, x: &CpuTensor, w: &CpuWeight) -> Result<CpuTensor> {
    check::linear((x.rows, x.cols), &w.name, (w.rows, w.cols))?;
    let (n, k, m) = (x.rows, x.cols, w.rows);
    let mut yt = vec![0f64; m * n]; // [out, n]; transposed at the end
    let threads = threads_for(n * k * m);
    match num {
        Numerics::Bf16 => {
            let x32: Vec<f32> = x.data.iter().map(|&v| v as f32).collect();
            par_ranges(m, n, threads, &mut yt, |start, end, chunk| {
                let mut wrow = vec![0f32; k];
                for o in start..end {
                    w.row_f32(o, &mut wrow);
                    for r in 0..n {
                        let xr = &x32[r * k..(r + 1) * k];
                        chunk[(o - start) * n + r] = r16(dot8(xr, &wrow)) as f64;
                    }
                }
            });
        }
        Numerics::F64 => {
            par_ranges(m, n, threads, &mut yt, |start, end, chunk| {
                let mut w32 = vec![0f32; k];
                let mut wrow = vec![0f64; k];
                for o in start..end {
                    w.row_f32(o, &mut w32);
                    for (d, &s) in wrow.iter_mut().zip(&w32) {
                        *d = s as f64;
                    }
                    for r in 0..n {
                        let xr = &x.data[r * k..(r + 1) * k];
                        chunk[(o - start) * n + r] = dot8(xr, &wrow);
                    }
                }
            });
        }
    }
    let mut y = vec![0f64; n * m];
    for o in 0..m {
        for r in 0..n {
            y[r * m + o] = yt[o * n + r];
        }
    }
    Ok(CpuTensor::new(n, m, y))
}

/// cos/sin tables of one position, `half` entries each.
/// bf16: f32 inverse frequencies as transformers computes them, f32 angle,
/// cos/sin rounded to bf16 (its `.to(x.dtype)`). f64: exact.
fn rope_table(
    num: Numerics,
    pos: usize,
    half: usize,
    theta: f64,
    round: bool,
) -> (Vec<f64>, Vec<f64>) {
    let dim = 2 * half;
    let mut c = Vec::with_capacity(half);
    let mut s = Vec::with_capacity(half);
    for i in 0..half {
        match num {
            Numerics::Bf16 => {
                let inv = 1.0f32 / (theta as f32).powf((2 * i) as f32 / dim as f32);
                let a = inv * pos as f32;
                let (cv, sv) = if round {
                    (r16(a.cos()), r16(a.sin()))
                } else {
                    (a.cos(), a.sin())
                };
                c.push(cv as f64);
                s.push(sv as f64);
            }
            Numerics::F64 => {
                let inv = theta.powf(-((2 * i) as f64) / dim as f64);
                let a = inv * pos as f64;
                c.push(a.cos());
                s.push(a.sin());
            }
        }
    }
    (c, s)
}

/// Rotates one head in place. bf16 graph path: every product and the sum
/// rounded (transformers: `q * cos + rotate_half(q) * sin` in bf16).
#[inline]
fn rotate(num: Numerics, head: &mut [f64], c: &[f64], s: &[f64], round_each: bool) {
    let half = head.len() / 2;
    for i in 0..half {
        let (x1, x2) = (head[i], head[i + half]);
        match num {
            Numerics::Bf16 if round_each => {
                let (x1f, x2f, cf, sf) = (x1 as f32, x2 as f32, c[i] as f32, s[i] as f32);
                head[i] = r16(r16(x1f * cf) + r16(-x2f * sf)) as f64;
                head[i + half] = r16(r16(x2f * cf) + r16(x1f * sf)) as f64;
            }
            Numerics::Bf16 => {
                let (x1f, x2f, cf, sf) = (x1 as f32, x2 as f32, c[i] as f32, s[i] as f32);
                head[i] = (x1f * cf - x2f * sf) as f64;
                head[i + half] = (x2f * cf + x1f * sf) as f64;
            }
            Numerics::F64 => {
                head[i] = x1 * c[i] - x2 * s[i];
                head[i + half] = x2 * c[i] + x1 * s[i];
            }
        }
    }
}

pub fn rope(
    num: Numerics,
    x: &CpuTensor,
    positions: &[usize],
    head_dim: usize,
    theta: f64,
) -> Result<CpuTensor> {
    check::rope((x.rows, x.cols), positions.len(), head_dim)?;
    let mut out = x.data.clone();
    for (r, &p) in positions.iter().enumerate() {
        let (c, s) = rope_table(num, p, head_dim / 2, theta, true);
        for head in out[r * x.cols..(r + 1) * x.cols].chunks_exact_mut(head_dim) {
            rotate(num, head, &c, &s, true);
        }
    }
    Ok(CpuTensor::new(x.rows, x.cols, out))
}

static FLIP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The fused path: for every token and head, project with warp-order dot
/// products, normalise q and k in f32 (f64), rotate with unrounded cos/sin,
/// and round once at the end, as a fused GPU kernel keeps intermediates in
/// registers.
#[allow(clippy::too_many_arguments)]
pub fn fused_qkv(
    num: Numerics,
    faults: &Faults,
    x: &CpuTensor,
    qkv: &CpuWeight,
    q_norm: &CpuWeight,
    k_norm: &CpuWeight,
    dims: &AttnDims,
    positions: &[usize],
) -> Result<(CpuTensor, CpuTensor, CpuTensor)> {
    let (qd, kd, hd) = (dims.q_dim(), dims.kv_dim(), dims.head_dim);
    check::fused_qkv(
        (x.rows, x.cols),
        (qkv.rows, qkv.cols),
        dims,
        positions.len(),
    )?;
    // Unrounded projections in warp order: [n, qd + 2kd].
    let proj = linear_unrounded(num, x, qkv)?;
    let eps = faults.fused_eps_override.unwrap_or(dims.eps);
    let qn = q_norm.to_f64();
    let kn = if faults.fused_k_uses_q_norm {
        qn.clone()
    } else {
        k_norm.to_f64()
    };
    let n = x.rows;
    let (mut q, mut k, mut v) = (
        Vec::with_capacity(n * qd),
        Vec::with_capacity(n * kd),
        Vec::with_capacity(n * kd),
    );
    for (r, &pos) in positions.iter().enumerate() {
        let row = &proj[r * (qd + 2 * kd)..(r + 1) * (qd + 2 * kd)];
        let (c, s) = rope_table(
            num,
            pos + faults.fused_rope_position_offset,
            hd / 2,
            dims.rope_theta,
            false,
        );
        for (dst, src, w) in [(&mut q, &row[..qd], &qn), (&mut k, &row[qd..qd + kd], &kn)] {
            for head in src.chunks_exact(hd) {
                let mut h = norm_head(num, head, w, eps);
                rotate(num, &mut h, &c, &s, false);
                dst.extend(h.iter().map(|&v| finish(num, v)));
            }
        }
        v.extend(row[qd + kd..].iter().map(|&x| finish(num, x)));
    }
    if faults.fused_odd_row_flip {
        for r in (1..n).step_by(2) {
            q[r * qd] = one_ulp_up(num, q[r * qd]);
        }
    }
    if faults.fused_one_ulp_flip {
        let call = FLIP_COUNTER.fetch_add(1, AtomicOrdering::Relaxed);
        if call % 2 == 1 && !q.is_empty() {
            let i = (call as usize * 7919) % q.len();
            q[i] = one_ulp_up(num, q[i]);
        }
    }
    Ok((
        CpuTensor::new(n, qd, q),
        CpuTensor::new(n, kd, k),
        CpuTensor::new(n, kd, v),
    ))
}

fn finish(num: Numerics, v: f64) -> f64 {
    match num {
        Numerics::Bf16 => r16(v as f32) as f64,
        Numerics::F64 => v,
    }
}

static GRAPH_FLIP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// `Faults::graph_one_ulp_flip`: on every odd call, one element of the
/// rotated tensor one ULP off, at a place that moves from call to call.
pub fn graph_flip(num: Numerics, x: &mut CpuTensor) {
    let call = GRAPH_FLIP_COUNTER.fetch_add(1, AtomicOrdering::Relaxed);
    if call % 2 == 1 && !x.data.is_empty() {
        let i = (call as usize * 7919) % x.data.len();
        x.data[i] = one_ulp_up(num, x.data[i]);
    }
}

pub(super) fn one_ulp_up(num: Numerics, v: f64) -> f64 {
    match num {
        Numerics::Bf16 => {
            let b = crate::util::bf16_bits(v as f32) ^ 1;
            f32::from_bits((b as u32) << 16) as f64
        }
        Numerics::F64 => f64::from_bits(v.to_bits() ^ 1),
    }
}

/// One head's RMSNorm without intermediate rounding (values in f32 or f64).
fn norm_head(num: Numerics, head: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    match num {
        Numerics::Bf16 => {
            let h32: Vec<f32> = head.iter().map(|&v| v as f32).collect();
            let mut acc = [0f32; 32];
            for (i, &v) in h32.iter().enumerate() {
                acc[i % 32] += v * v;
            }
            let ms = super::math::butterfly(acc) / h32.len() as f32;
            let r = 1.0 / (ms + eps as f32).sqrt();
            h32.iter()
                .zip(w)
                .map(|(&v, &wi)| (v * r * wi as f32) as f64)
                .collect()
        }
        Numerics::F64 => {
            let mut acc = [0f64; 32];
            for (i, &v) in head.iter().enumerate() {
                acc[i % 32] += v * v;
            }
            let ms = super::math::butterfly(acc) / head.len() as f64;
            let r = 1.0 / (ms + eps).sqrt();
            head.iter().zip(w).map(|(&v, &wi)| v * r * wi).collect()
        }
    }
}

/// Warp-order projection without the final rounding (f32 values in bf16 mode).
fn linear_unrounded(num: Numerics, x: &CpuTensor, w: &CpuWeight) -> Result<Vec<f64>> {
    let (n, k, m) = (x.rows, x.cols, w.rows);
    let mut yt = vec![0f64; m * n];
    let x32: Vec<f32> = x.data.iter().map(|&v| v as f32).collect();
    par_ranges(
        m,
        n,
        threads_for(n * k * m),
        &mut yt,
        |start, end, chunk| {
            let mut w32 = vec![0f32; k];
            let mut w64 = vec![0f64; k];
            for o in start..end {
                w.row_f32(o, &mut w32);
                if num == Numerics::F64 {
                    for (d, &s) in w64.iter_mut().zip(&w32) {
                        *d = s as f64;
                    }
                }
                for r in 0..n {
                    chunk[(o - start) * n + r] = match num {
                        Numerics::Bf16 => dot_warp(&x32[r * k..(r + 1) * k], &w32) as f64,
                        Numerics::F64 => dot_warp(&x.data[r * k..(r + 1) * k], &w64),
                    };
                }
            }
        },
    );
    let mut y = vec![0f64; n * m];
    for o in 0..m {
        for r in 0..n {
            y[r * m + o] = yt[o * n + r];
        }
    }
    Ok(y)
}

/// Eager attention. bf16: scores = bf16(bf16(q.k) * scale), softmax in f32,
/// probabilities rounded to bf16, output accumulated in f32 and rounded.
pub fn attention(
    num: Numerics,
    q: &CpuTensor,
    cache: &CpuCache,
    dims: &AttnDims,
    positions: &[usize],
) -> Result<CpuTensor> {
    let (hd, nh, nkv) = (dims.head_dim, dims.n_heads, dims.n_kv_heads);
    let kvd = dims.kv_dim();
    if q.cols != dims.q_dim() || positions.len() != q.rows {
        return Err(shape(
            "attention",
            format!("q {}x{} for {} heads of {hd}", q.rows, q.cols, nh),
        ));
    }
    if let Some(&p) = positions.iter().max() {
        if p >= cache.len {
            return Err(shape(
                "attention",
                format!("position {p} but the cache holds {} rows", cache.len),
            ));
        }
    }
    let group = nh / nkv;
    let mut out = vec![0f64; q.rows * q.cols];
    for (r, &pos) in positions.iter().enumerate() {
        for h in 0..nh {
            let kvh = h / group;
            let qh = &q.data[r * q.cols + h * hd..r * q.cols + (h + 1) * hd];
            let o = &mut out[r * q.cols + h * hd..r * q.cols + (h + 1) * hd];
            let keys = (0..=pos).map(|j| &cache.k[j * kvd + kvh * hd..j * kvd + (kvh + 1) * hd]);
            let vals = |j: usize| &cache.v[j * kvd + kvh * hd..j * kvd + (kvh + 1) * hd];
            match num {
                Numerics::Bf16 => {
                    let scale = (hd as f64).powf(-0.5) as f32;
                    let q32: Vec<f32> = qh.iter().map(|&v| v as f32).collect();
                    let mut k32 = vec![0f32; hd];
                    let scores: Vec<f32> = keys
                        .map(|kj| {
                            for (d, &s) in k32.iter_mut().zip(kj) {
                                *d = s as f32;
                            }
                            r16(r16(dot8(&q32, &k32)) * scale)
                        })
                        .collect();
                    let m = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                    let e: Vec<f32> = scores.iter().map(|&s| (s - m).exp()).collect();
                    let sum: f32 = e.iter().sum();
                    let mut acc = vec![0f32; hd];
                    for (j, &ej) in e.iter().enumerate() {
                        let p = r16(ej / sum);
                        for (a, &vv) in acc.iter_mut().zip(vals(j)) {
                            *a += p * vv as f32;
                        }
                    }
                    for (d, a) in o.iter_mut().zip(acc) {
                        *d = r16(a) as f64;
                    }
                }
                Numerics::F64 => {
                    let scale = 1.0 / (hd as f64).sqrt();
                    let scores: Vec<f64> = keys.map(|kj| dot8(qh, kj) * scale).collect();
                    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|&s| (s - m).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for (j, &ej) in e.iter().enumerate() {
                        let p = ej / sum;
                        for (a, &vv) in o.iter_mut().zip(vals(j)) {
                            *a += p * vv;
                        }
                    }
                }
            }
        }
    }
    Ok(CpuTensor::new(q.rows, q.cols, out))
}

#[inline]
fn silu32(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

pub fn swiglu(num: Numerics, gate: &CpuTensor, up: &CpuTensor) -> Result<CpuTensor> {
    check::same_shape("swiglu", (gate.rows, gate.cols), (up.rows, up.cols))?;
    let data = gate
        .data
        .iter()
        .zip(&up.data)
        .map(|(&g, &u)| match num {
            Numerics::Bf16 => r16(r16(silu32(g as f32)) * u as f32) as f64,
            Numerics::F64 => g / (1.0 + (-g).exp()) * u,
        })
        .collect();
    Ok(CpuTensor::new(gate.rows, gate.cols, data))
}

pub fn moe(be: &CpuBackend, x: &CpuTensor, w: &MoeWeights<CpuWeight>) -> Result<CpuTensor> {
    use crate::backend::Backend;
    let num = be.numerics;
    let logits = be.linear(x, &w.router)?;
    be.log_routing(|| {
        let l32: Vec<f32> = logits.data.iter().map(|&v| v as f32).collect();
        crate::backend::routing::routing_record(&l32, w.experts.len(), w.top_k)
    });
    // Under simulated expert parallelism each rank combines its own chosen
    // experts (in routing order) and the ranks' combinations are
    // all-reduced; one device is one rank.
    let ranks = be.tp.map_or(1, |t| t.ranks);
    let mut by_rank = vec![vec![0f64; x.rows * x.cols]; ranks];
    for r in 0..x.rows {
        let xr = be.rows(x, r, 1)?;
        for (e, p) in crate::backend::route(
            num == Numerics::Bf16,
            logits.row(r),
            w.top_k,
            w.norm_topk_prob,
        ) {
            let rank = super::tp::expert_rank(e, w.experts.len(), ranks)?;
            let o = &mut by_rank[rank][r * x.cols..(r + 1) * x.cols];
            let ex = &w.experts[e];
            let h = be.swiglu(&be.linear(&xr, &ex.gate)?, &be.linear(&xr, &ex.up)?)?;
            let y = be.linear(&h, &ex.down)?;
            for (acc, &yv) in o.iter_mut().zip(&y.data) {
                *acc = match num {
                    Numerics::Bf16 => r16(*acc as f32 + r16(yv as f32 * p as f32)) as f64,
                    Numerics::F64 => *acc + yv * p,
                };
            }
        }
    }
    let out = match be.tp {
        None => by_rank.pop().unwrap_or_default(),
        Some(sim) => super::tp::all_reduce(num, &by_rank, sim.order),
    };
    Ok(CpuTensor::new(x.rows, x.cols, out))
}
