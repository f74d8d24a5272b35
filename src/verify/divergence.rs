//! Where two greedy generations part, whether that is a near-tie or a
//! regression, and (given teacher-forced captures of both) the first layer
//! and op where they separate.

use crate::engine::record::RecordedRun;
use crate::verify::metrics::{diff, Diff};
use crate::verify::tolerances::{tol, Tol};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Verdict {
    /// The margin at the divergent step is below the threshold: either side
    /// could have been picked by rounding alone.
    NearTie { margin: f32, threshold: f64 },
    /// A confident step changed: a bug until shown otherwise.
    Regression { margin: f32, threshold: f64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Divergence {
    pub step: usize,
    pub token_a: u32,
    pub token_b: u32,
    /// top-1 minus top-2 logit of each run at that step.
    pub margin_a: f32,
    pub margin_b: f32,
    pub verdict: Verdict,
    /// Why the verdict is what it is.
    pub reason: String,
}

/// The near-tie threshold: the named tolerance, or twice the largest logit
/// difference seen run to run (a margin is a difference of two logits, each
/// of which can move by the envelope), whichever is larger.
pub fn near_tie_threshold(tolerance: Tol, envelope_max_abs: Option<f64>) -> f64 {
    tol(tolerance).max(2.0 * envelope_max_abs.unwrap_or(0.0))
}

/// First divergent token of `a` and `b` (same prompt), classified.
pub fn first_divergence(a: &RecordedRun, b: &RecordedRun, threshold: f64) -> Option<Divergence> {
    let step = a.tokens.iter().zip(&b.tokens).position(|(x, y)| x != y)?;
    let (ma, mb) = (a.steps[step].margin, b.steps[step].margin);
    let margin = ma.min(mb);
    Some(Divergence {
        step,
        token_a: a.tokens[step],
        token_b: b.tokens[step],
        margin_a: ma,
        margin_b: mb,
        verdict: if (margin as f64) < threshold {
            Verdict::NearTie { margin, threshold }
        } else {
            Verdict::Regression { margin, threshold }
        },
        reason: if (margin as f64) < threshold {
            format!("top-1/top-2 margin {margin:.4} is below {threshold}")
        } else {
            format!("confident step: margin {margin:.4} is not below {threshold}")
        },
    })
}

impl Divergence {
    /// A small margin only excuses a divergence that rounding can explain:
    /// when the bisection finds an op or layer outside tolerance, the
    /// divergence is a regression whatever the margin.
    pub fn refine(&mut self, bisection: &Bisection) {
        if let (Verdict::NearTie { margin, threshold }, Some(w)) =
            (&self.verdict, &bisection.first_outside)
        {
            self.reason =
                format!("margin {margin:.4} is below {threshold}, but {w} is outside tolerance");
            self.verdict = Verdict::Regression {
                margin: *margin,
                threshold: *threshold,
            };
        }
    }
}

/// One layer of a bisection: q, k, v (when captured) and the layer output at
/// the divergent position.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BisectLayer {
    pub layer: usize,
    pub q: Option<Diff>,
    pub k: Option<Diff>,
    pub v: Option<Diff>,
    pub out: Diff,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bisection {
    pub step: usize,
    pub layers: Vec<BisectLayer>,
    /// `layer 3 q`: the first op or layer output outside tolerance.
    pub first_outside: Option<String>,
    /// At `first_outside`, each side's RMS distance from f64 truth (a, b),
    /// when truth was captured too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truth_at_first: Option<(f64, f64)>,
}

/// Per-layer captures of one side at the divergent row: (q, k, v) if the
/// backend exposes them, and the layer output.
pub struct LayerCapture {
    pub qkv: Option<[Vec<f64>; 3]>,
    pub out: Vec<f64>,
}

/// Compares two sides layer by layer. An op is outside tolerance at
/// `fused_vs_graph_rms`; a layer output when its relative RMS exceeds
/// `bisect_layer_rel_rms`.
pub fn bisect(step: usize, a: &[LayerCapture], b: &[LayerCapture]) -> Bisection {
    bisect_with_truth(step, a, b, None)
}

/// `bisect`, and with `truth` (f64 captures of the same positions) each
/// side's distance from truth where they first part.
pub fn bisect_with_truth(
    step: usize,
    a: &[LayerCapture],
    b: &[LayerCapture],
    truth: Option<&[LayerCapture]>,
) -> Bisection {
    let op_tol = tol(Tol::FusedVsGraphRms);
    let mut truth_at_first = None;
    let from_truth = |l: usize, which: Option<usize>, x: &LayerCapture, y: &LayerCapture| {
        let t = truth?.get(l)?;
        let pick = |c: &LayerCapture| match which {
            Some(i) => c.qkv.as_ref().map(|q| q[i].clone()),
            None => Some(c.out.clone()),
        };
        let (tx, ax, bx) = (pick(t)?, pick(x)?, pick(y)?);
        Some((diff(&ax, &tx).rms, diff(&bx, &tx).rms))
    };
    let out_tol = tol(Tol::BisectLayerRelRms);
    let mut first = None;
    let layers = a
        .iter()
        .zip(b)
        .enumerate()
        .map(|(l, (x, y))| {
            let ops = x
                .qkv
                .as_ref()
                .zip(y.qkv.as_ref())
                .map(|(p, q)| [diff(&p[0], &q[0]), diff(&p[1], &q[1]), diff(&p[2], &q[2])]);
            if first.is_none() {
                if let Some(ops) = &ops {
                    for (i, (d, name)) in ops.iter().zip(["q", "k", "v"]).enumerate() {
                        if first.is_none() && (!d.finite_ok() || d.rms >= op_tol) {
                            first = Some(format!("layer {l} {name}"));
                            truth_at_first = from_truth(l, Some(i), x, y);
                        }
                    }
                }
            }
            let out = diff(&x.out, &y.out);
            if first.is_none() && (!out.finite_ok() || out.rel_rms >= out_tol) {
                first = Some(format!("layer {l} output"));
                truth_at_first = from_truth(l, None, x, y);
            }
            BisectLayer {
                layer: l,
                q: ops.map(|o| o[0]),
                k: ops.map(|o| o[1]),
                v: ops.map(|o| o[2]),
                out,
            }
        })
        .collect();
    Bisection {
        step,
        layers,
        first_outside: first,
        truth_at_first,
    }
}

impl Bisection {
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "bisection at step {}\nlayer  q RMS      k RMS      v RMS      out rel RMS\n",
            self.step
        );
        let f = |d: &Option<Diff>| d.map_or("-        ".into(), |d| format!("{:.3e}", d.rms));
        for l in &self.layers {
            s += &format!(
                "{:>5}  {}  {}  {}  {:.3e}\n",
                l.layer,
                f(&l.q),
                f(&l.k),
                f(&l.v),
                l.out.rel_rms
            );
        }
        s += &self.verdict();
        s.push('\n');
        s
    }

    /// One line: where the two runs first part, and which is nearer truth
    /// there (`a`/`b` as the caller named its sides).
    pub fn verdict(&self) -> String {
        match (&self.first_outside, self.truth_at_first) {
            (None, _) => "every layer within tolerance at this step".into(),
            (Some(w), None) => format!("first outside tolerance: {w}"),
            (Some(w), Some((a, b))) => format!(
                "first outside tolerance: {w}; from truth there: a {a:.3e}, b {b:.3e} ({} nearer)",
                if a < b {
                    "a"
                } else if b < a {
                    "b"
                } else {
                    "neither"
                }
            ),
        }
    }
}
