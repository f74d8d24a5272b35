//! The envelope tensor parallelism adds, known before a GPU is touched: the
//! CPU reference run as a simulated TP-N engine (`backend::cpu::tp`) for
//! each rank count and all-reduce order, against the same reference on one
//! device, in bf16 (where the orders round apart) and f64 (where only
//! reassociation is left).

use crate::backend::cpu::tp::{ReduceOrder, TpSim};
use crate::backend::cpu::CpuBackend;
use crate::backend::AttnPath;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::ident::Numerics;
use crate::model::Model;
use crate::verify::case::{Case, Key, Op};
use crate::verify::metrics::diff;
use serde::Serialize;

/// One simulated configuration against one device.
#[derive(Debug, Clone, Serialize)]
pub struct TpRow {
    pub numerics: Numerics,
    pub ranks: usize,
    pub order: ReduceOrder,
    /// Every logit bitwise the one-device run's.
    pub bitwise: bool,
    /// The worst row's relative RMS against one device.
    pub worst_rel_rms: f64,
    pub max_abs: f64,
    /// Teacher-forced rows whose argmax differs from one device's.
    pub argmax_changed: usize,
    /// bf16 only: this run's relative RMS error against f64 truth (one
    /// device, all rows) over one bf16 device's: the truth-relative rule's
    /// ratio (`truth_relative_factor`), which holds where routing flips
    /// and noise floors make a plain distance meaningless.
    pub truth_ratio: Option<f64>,
    /// With greedy steps requested: where this run's greedy generation
    /// parts from one device's (None: the same tokens), classified as a
    /// near-tie or a confident change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub greedy: Option<Greedy>,
}

/// A simulated run's greedy tokens against one device's.
#[derive(Debug, Clone, Serialize)]
pub struct Greedy {
    pub steps: usize,
    pub divergence: Option<crate::verify::divergence::Divergence>,
    /// For a regression on an MoE model: the routing flip at that step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routing_flip: Option<RoutingFlip>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TpEnvelope {
    pub model: String,
    pub path: AttnPath,
    pub tokens: usize,
    pub rows: Vec<TpRow>,
    /// Per numerics: bitwise-distinct logits over one device and every
    /// configuration.
    pub distinct: Vec<(Numerics, usize)>,
}

/// Why `ranks` cannot shard `model`: the query heads, the MLP's inner
/// width and the experts must divide evenly; key/value heads divide or are
/// replicated (a rank count that is a multiple of theirs).
pub fn check_shardable(e: &crate::model::Qwen3Config, ranks: usize) -> Result<()> {
    let mut bad = vec![];
    if ranks == 0 {
        bad.push("0 ranks".to_string());
    }
    let ranks = ranks.max(1);
    for (field, v) in [
        ("num_attention_heads", e.num_attention_heads),
        ("intermediate_size", e.intermediate_size),
    ] {
        if v % ranks != 0 {
            bad.push(format!("{field} = {v}"));
        }
    }
    // Fewer key/value heads than ranks are replicated (each rank keeps the
    // one its query heads read), which changes no sum.
    let kv = e.num_key_value_heads;
    if kv % ranks != 0 && ranks % kv != 0 {
        bad.push(format!("num_key_value_heads = {kv}"));
    }
    if let Some(m) = &e.moe {
        if m.num_experts % ranks != 0 {
            bad.push(format!("num_experts = {}", m.num_experts));
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(Error::invalid(
            "--ranks",
            format!("{ranks} ranks do not divide {}", bad.join(", ")),
        ))
    }
}

/// Teacher-forced logits of `prompt` on the reference, on one device
/// (`sim` None) or simulated tensor parallel.
pub fn reference_logits(
    model: &Model,
    numerics: Numerics,
    sim: Option<TpSim>,
    prompt: &[u32],
    path: AttnPath,
) -> Result<Vec<Vec<f64>>> {
    let backend = match sim {
        None => CpuBackend::new(numerics),
        Some(s) => {
            check_shardable(&model.config, s.ranks)?;
            CpuBackend::tensor_parallel(numerics, s)
        }
    };
    let e = Engine::load(model, backend)?;
    e.teacher_forced(prompt, path, &mut Default::default())
}

/// `got`'s relative RMS error against f64 truth over `one`'s (all rows).
pub fn truth_ratio(got: &[Vec<f64>], one: &[Vec<f64>], truth: &[Vec<f64>]) -> f64 {
    let (g, o, t) = (got.concat(), one.concat(), truth.concat());
    diff(&g, &t).rel_rms / diff(&o, &t).rel_rms
}

/// Compares `got` with `one` (one device's logits) row by row; `truth`
/// (f64, one device) for a bf16 run.
pub fn compare(
    numerics: Numerics,
    sim: TpSim,
    got: &[Vec<f64>],
    one: &[Vec<f64>],
    truth: Option<&[Vec<f64>]>,
) -> TpRow {
    let (mut worst, mut max_abs, mut changed) = (0.0f64, 0.0f64, 0);
    for (g, o) in got.iter().zip(one) {
        let d = diff(g, o);
        worst = worst.max(d.rel_rms);
        max_abs = max_abs.max(d.max_abs);
        changed += usize::from(crate::logits::argmax(g) != crate::logits::argmax(o));
    }
    TpRow {
        numerics,
        ranks: sim.ranks,
        order: sim.order,
        bitwise: got == one,
        worst_rel_rms: worst,
        max_abs,
        argmax_changed: changed,
        truth_ratio: truth
            .filter(|_| numerics == Numerics::Bf16)
            .map(|t| truth_ratio(got, one, t)),
        greedy: None,
    }
}

/// `steps` greedy tokens of `prompt` on the reference, one device or
/// simulated tensor parallel.
pub fn reference_greedy(
    model: &Model,
    numerics: Numerics,
    sim: Option<TpSim>,
    prompt: &[u32],
    steps: usize,
    path: AttnPath,
) -> Result<crate::engine::record::RecordedRun> {
    let backend = match sim {
        None => CpuBackend::new(numerics),
        Some(s) => {
            check_shardable(&model.config, s.ranks)?;
            CpuBackend::tensor_parallel(numerics, s)
        }
    };
    let opts = crate::engine::generate::GenerateOptions {
        max_tokens: steps,
        path,
        ..Default::default()
    };
    Engine::load(model, backend)?.generate(prompt, &opts, &mut |_| {})
}

/// Where `got` (greedy under `sim`) parts from `one` (one device, the same
/// prompt): a near-tie by the numerics' margin, unless the layer-by-layer
/// bisection of the two at that step (teacher-forced on the tokens before
/// it) finds a layer outside tolerance, which makes it a regression. On an
/// MoE model a regression is checked for a routing flip at that step: the
/// first MoE layer whose chosen experts differ, and whether either side's
/// choice there was a near-tie (`moe_routing_near_tie_bf16`).
pub fn greedy_outcome(
    model: &Model,
    numerics: Numerics,
    sim: TpSim,
    prompt: &[u32],
    path: AttnPath,
    got: &crate::engine::record::RecordedRun,
    one: &crate::engine::record::RecordedRun,
) -> Result<Greedy> {
    use crate::verify::divergence::{bisect, first_divergence, near_tie_threshold, Verdict};
    use crate::verify::tolerances::{tol, Tol};
    let tie = match numerics {
        Numerics::Bf16 => Tol::NearTieMarginBf16,
        Numerics::F64 => Tol::NearTieMarginF32,
    };
    let mut divergence = first_divergence(got, one, near_tie_threshold(tie, None));
    let mut routing_flip = None;
    if let Some(d) = divergence.as_mut() {
        check_shardable(&model.config, sim.ranks)?;
        let prefix: Vec<u32> = prompt
            .iter()
            .chain(&one.tokens[..d.step])
            .copied()
            .collect();
        // Layer outputs only: TP changes no q, k or v by itself (they
        // inherit the layer inputs' noise), so only a layer's output can
        // show a change past rounding. The routing of the same pass is
        // recorded on the way.
        let caps = |backend: CpuBackend| -> Result<_> {
            let e = Engine::load(model, backend)?;
            e.backend.record_routing_here(true);
            let mut c = super::divergence::last_row_captures(&e, &prefix, path)?;
            for l in &mut c {
                l.qkv = None;
            }
            let routing: Vec<_> = e
                .backend
                .take_routing_here()
                .into_iter()
                .map(|call| call.last().cloned())
                .collect();
            Ok((c, routing))
        };
        let (tp, tp_routing) = caps(CpuBackend::tensor_parallel(numerics, sim))?;
        let (alone, one_routing) = caps(CpuBackend::new(numerics))?;
        d.refine(&bisect(d.step, &tp, &alone));
        if matches!(d.verdict, Verdict::Regression { .. }) {
            routing_flip = tp_routing.iter().zip(&one_routing).enumerate().find_map(
                |(layer, pair)| match pair {
                    (Some(a), Some(b)) if a.experts != b.experts => Some(RoutingFlip {
                        moe_layer: layer,
                        experts_tp: a.experts.clone(),
                        experts_one: b.experts.clone(),
                        gap: a.boundary_gap.min(b.boundary_gap),
                        near_tie: f64::from(a.boundary_gap.min(b.boundary_gap))
                            <= tol(Tol::MoeRoutingNearTieBf16),
                    }),
                    _ => None,
                },
            );
        }
    }
    Ok(Greedy {
        steps: one.tokens.len(),
        divergence,
        routing_flip,
    })
}

/// The first MoE layer (in call order) whose chosen experts for the
/// divergent step's row differ between the simulated run and one device.
#[derive(Debug, Clone, Serialize)]
pub struct RoutingFlip {
    pub moe_layer: usize,
    pub experts_tp: Vec<usize>,
    pub experts_one: Vec<usize>,
    /// The smaller of the two sides' relative router gaps there.
    pub gap: f32,
    /// The gap is within `moe_routing_near_tie_bf16`: a flip rounding can
    /// cause.
    pub near_tie: bool,
}

/// Every (numerics, ranks, order) of the request against one device:
/// teacher-forced logits of `prompt`, and with `steps` > 0 the greedy
/// generation from it.
pub fn tp_envelope(
    model: &Model,
    prompt: &[u32],
    ranks: &[usize],
    orders: &[ReduceOrder],
    numerics: &[Numerics],
    path: AttnPath,
    steps: usize,
) -> Result<TpEnvelope> {
    let total = numerics.len() * (1 + ranks.len() * orders.len());
    let mut bar = crate::progress::Progress::new("tensor-parallel runs", total);
    let mut done = 0;
    let (mut rows, mut distinct) = (vec![], vec![]);
    let truth = if numerics.contains(&Numerics::Bf16) {
        Some(reference_logits(model, Numerics::F64, None, prompt, path)?)
    } else {
        None
    };
    for &num in numerics {
        let one = reference_logits(model, num, None, prompt, path)?;
        let one_greedy = match steps {
            0 => None,
            n => Some(reference_greedy(model, num, None, prompt, n, path)?),
        };
        done += 1;
        bar.set(done);
        let mut seen = vec![one.clone()];
        for &n in ranks {
            for &order in orders {
                let sim = TpSim::new(n, order);
                let got = reference_logits(model, num, Some(sim), prompt, path)?;
                done += 1;
                bar.set(done);
                let mut row = compare(num, sim, &got, &one, truth.as_deref());
                if let Some(o) = &one_greedy {
                    let g = reference_greedy(model, num, Some(sim), prompt, steps, path)?;
                    row.greedy = Some(greedy_outcome(model, num, sim, prompt, path, &g, o)?);
                }
                rows.push(row);
                if !seen.contains(&got) {
                    seen.push(got);
                }
            }
        }
        distinct.push((num, seen.len()));
    }
    Ok(TpEnvelope {
        model: model.name(),
        path,
        tokens: prompt.len(),
        rows,
        distinct,
    })
}

impl TpEnvelope {
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "tensor parallel, simulated on the CPU reference: {} ({} path, {} tokens teacher-forced) against one device\n",
            self.model,
            self.path.name(),
            self.tokens
        );
        s += "numerics  ranks  all-reduce  bitwise  worst rel RMS  max |diff|  argmax changed  vs truth (x one device's error)\n";
        for r in &self.rows {
            s += &format!(
                "{:<8}  {:>5}  {:<10}  {:<7}  {:>13.3e}  {:>10.3e}  {:>14}\n",
                format!("{:?}", r.numerics).to_lowercase(),
                r.ranks,
                r.order.name(),
                if r.bitwise { "yes" } else { "no" },
                r.worst_rel_rms,
                r.max_abs,
                format!("{}/{}", r.argmax_changed, self.tokens)
            );
            s.pop();
            s += &match r.truth_ratio {
                Some(x) => format!("  {x:>30.3}\n"),
                None => format!("  {:>30}\n", "-"),
            };
            if let Some(g) = &r.greedy {
                s += &match &g.divergence {
                    None => format!("          greedy: the same {} tokens as one device\n", g.steps),
                    Some(d) => format!(
                        "          greedy: parts from one device at step {} of {} ({} vs {}): {}, {}\n",
                        d.step,
                        g.steps,
                        d.token_a,
                        d.token_b,
                        match d.verdict {
                            crate::verify::divergence::Verdict::NearTie { .. } => "near-tie",
                            crate::verify::divergence::Verdict::Regression { .. } => "CONFIDENT CHANGE",
                        },
                        d.reason
                    ),
                };
                if let Some(f) = &g.routing_flip {
                    s += &format!(
                        "          routing: MoE layer {} sends the row to experts {:?} (one device {:?}), router gap {:.2e}: {}\n",
                        f.moe_layer,
                        f.experts_tp,
                        f.experts_one,
                        f.gap,
                        if f.near_tie {
                            "a routing near-tie, which rounding can flip"
                        } else {
                            "not a near-tie: a bug until shown otherwise"
                        }
                    );
                }
            }
        }
        for (num, d) in &self.distinct {
            let n = self.rows.iter().filter(|r| r.numerics == *num).count();
            s += &format!(
                "{}: {d} bitwise-distinct logits over one device and {n} configuration{}\n",
                format!("{num:?}").to_lowercase(),
                if n == 1 { "" } else { "s" }
            );
        }
        s
    }
}

/// `verify`'s tensor-parallel rows per fixture and numerics (graph path):
/// two ranks (every order adds a + b alike, so one) and four in each order.
pub const VERIFY_CONFIGS: [(usize, ReduceOrder); 4] = [
    (2, ReduceOrder::Ring),
    (4, ReduceOrder::Ring),
    (4, ReduceOrder::Tree),
    (4, ReduceOrder::OneShot),
];

/// The case of a tensor-parallel row.
pub fn tp_case(
    preset: &str,
    numerics: Numerics,
    path: AttnPath,
    tokens: usize,
    sim: TpSim,
) -> Case {
    Case::new(Op::TensorParallel, crate::ident::BackendKind::Cpu)
        .preset(preset)
        .numerics(numerics)
        .path(path)
        .tokens(tokens)
        .with(Key::Ranks, sim.ranks)
        .with(Key::AllReduce, sim.order.name())
}

/// A fixture's one-device logits on its sequence, and (bf16) its f64
/// truth: what every tensor-parallel row of one numerics is judged
/// against, computed once for them.
pub struct OneDevice {
    pub numerics: Numerics,
    pub logits: Vec<Vec<f64>>,
    pub truth: Option<Vec<Vec<f64>>>,
}

impl OneDevice {
    pub fn of(fx: &super::fixture::Fixture, numerics: Numerics, path: AttnPath) -> Result<Self> {
        let tf = |e: &Engine<CpuBackend>| e.teacher_forced(&fx.seq, path, &mut Default::default());
        Ok(OneDevice {
            numerics,
            logits: tf(fx.cpu(numerics))?,
            truth: match numerics {
                Numerics::Bf16 => Some(tf(&fx.truth)?),
                Numerics::F64 => None,
            },
        })
    }
}

/// One row's comparison on a fixture: `sim` against the fixture's own
/// one-device reference (and its f64 truth) on its sequence.
pub fn fixture_row(
    fx: &super::fixture::Fixture,
    sim: TpSim,
    path: AttnPath,
    one: &OneDevice,
) -> Result<TpRow> {
    let got = reference_logits(&fx.model, one.numerics, Some(sim), &fx.seq, path)?;
    Ok(compare(
        one.numerics,
        sim,
        &got,
        &one.logits,
        one.truth.as_deref(),
    ))
}
