//! Reports: markdown, JSON and SVG renderings of verification results.
//! Reads verify's result types only; computes nothing numeric itself.

pub mod svg;

use crate::verify::envelope::{Envelope, ULP_BUCKETS};
use crate::verify::parity::ParityReport;
use std::path::Path;

/// Per-level RMS along depth: fused vs graph, graph vs truth, fused vs truth.
pub fn depth_plot(rep: &ParityReport, tensor: &str) -> String {
    let rows: Vec<_> = rep
        .levels
        .iter()
        .filter_map(|l| {
            l.tensors
                .iter()
                .find(|t| t.tensor == tensor)
                .map(|t| (l.level.clone(), t))
        })
        .collect();
    let labels: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    let get = |f: &dyn Fn(&crate::verify::parity::TensorParity) -> Option<f64>| {
        rows.iter()
            .map(|r| f(r.1).unwrap_or(0.0))
            .collect::<Vec<_>>()
    };
    let graph_truth = get(&|t| t.graph_vs_truth.map(|d| d.rms));
    // The rule's line: the absolute limit, or factor x graph-truth.
    let (rule_name, rule_line) = match rep.rule {
        // The legend column holds about 20 characters; the report names
        // the tolerance.
        crate::verify::parity::ParityRule::Rms { limit, .. } => {
            (format!("limit {limit:e}"), vec![limit; labels.len()])
        }
        crate::verify::parity::ParityRule::TruthRelative { factor } => (
            format!("{factor} x graph-truth"),
            graph_truth.iter().map(|v| v * factor).collect(),
        ),
    };
    svg::log_line_chart(
        &format!("{} ({tensor})", rep.case),
        "RMS difference",
        &labels,
        &[
            ("fused vs graph", get(&|t| Some(t.fused_vs_graph.rms))),
            ("graph vs truth", graph_truth),
            ("fused vs truth", get(&|t| t.fused_vs_truth.map(|d| d.rms))),
            (rule_name.as_str(), rule_line),
        ],
    )
}

pub fn ulp_histogram_plot(env: &Envelope) -> String {
    let bars: Vec<(String, f64)> = ULP_BUCKETS
        .iter()
        .zip(env.ulp.buckets)
        .map(|(b, c)| (b.to_string(), c as f64))
        .collect();
    svg::bar_chart(
        &format!("{}: ULP distance vs run 0", env.case),
        "elements (log scale)",
        &bars,
        true,
    )
}

/// Histogram of first-divergence steps (runs that never diverge under "none").
pub fn divergence_plot(env: &Envelope, steps: usize) -> Option<String> {
    let fd = env.first_divergence.as_ref()?;
    let buckets = 8usize;
    let width = steps.div_ceil(buckets).max(1);
    let mut counts = vec![0f64; buckets + 1];
    for d in fd {
        match d {
            Some(s) => counts[(s / width).min(buckets - 1)] += 1.0,
            None => counts[buckets] += 1.0,
        }
    }
    let bars = (0..buckets)
        .map(|i| (format!("{}-{}", i * width, (i + 1) * width - 1), counts[i]))
        .chain(std::iter::once(("none".to_string(), counts[buckets])))
        .collect::<Vec<_>>();
    Some(svg::bar_chart(
        &format!("{}: first divergent step vs run 0", env.case),
        "runs",
        &bars,
        false,
    ))
}

/// Writes `<dir>/<stem>.md`, `.json` and the plots for a parity run.
pub fn write_parity_report(
    dir: &Path,
    stem: &str,
    reports: &[&ParityReport],
) -> crate::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
    let mut written = Vec::new();
    let mut md = format!("# Parity report `{stem}`\n\n");
    for (i, r) in reports.iter().enumerate() {
        md += &format!(
            "## {}\n\nRule: {}. Verdict: **{}**.\n\n```\n{}```\n\n",
            r.case,
            r.rule,
            if r.pass { "pass" } else { "FAIL" },
            r.to_text()
        );
        for tensor in ["q", "k", "out"] {
            if r.levels
                .iter()
                .any(|l| l.tensors.iter().any(|t| t.tensor == tensor))
            {
                let name = format!("{stem}-{i}-{tensor}.svg");
                let p = dir.join(&name);
                crate::util::write_atomically(&p, |w| {
                    std::io::Write::write_all(w, depth_plot(r, tensor).as_bytes())
                })?;
                md += &format!("![{} {tensor}]({name})\n\n", r.case);
                written.push(p);
            }
        }
    }
    let mdp = dir.join(format!("{stem}.md"));
    crate::util::write_atomically(&mdp, |w| std::io::Write::write_all(w, md.as_bytes()))?;
    let jp = dir.join(format!("{stem}.json"));
    crate::util::write_json_atomically(&jp, &reports)?;
    written.push(mdp);
    written.push(jp);
    Ok(written)
}

/// Writes `<dir>/<stem>.md`, `.json` and plots for envelopes.
pub fn write_envelope_report(
    dir: &Path,
    stem: &str,
    envs: &[&Envelope],
    steps: usize,
) -> crate::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
    let mut written = Vec::new();
    let mut md = format!("# Envelope report `{stem}`\n\n");
    for (i, e) in envs.iter().enumerate() {
        md += &format!("## {}\n\n```\n{}```\n\n", e.case, e.to_text());
        let name = format!("{stem}-{i}-ulp.svg");
        let p = dir.join(&name);
        crate::util::write_atomically(&p, |w| {
            std::io::Write::write_all(w, ulp_histogram_plot(e).as_bytes())
        })?;
        md += &format!("![ULP histogram]({name})\n\n");
        written.push(p);
        if let Some(svg) = divergence_plot(e, steps) {
            let name = format!("{stem}-{i}-divergence.svg");
            let p = dir.join(&name);
            crate::util::write_atomically(&p, |w| std::io::Write::write_all(w, svg.as_bytes()))?;
            md += &format!("![first divergence]({name})\n\n");
            written.push(p);
        }
    }
    let mdp = dir.join(format!("{stem}.md"));
    crate::util::write_atomically(&mdp, |w| std::io::Write::write_all(w, md.as_bytes()))?;
    let jp = dir.join(format!("{stem}.json"));
    crate::util::write_json_atomically(&jp, &envs)?;
    written.push(mdp);
    written.push(jp);
    Ok(written)
}

/// Along depth, each layer's output: A against B (relative RMS), each
/// against truth when given, and the tolerance line; None when the dumps
/// hold no layer outputs.
pub fn bisect_plot(b: &crate::verify::bisect::Bisection) -> Option<String> {
    use crate::engine::trace::TraceOp;
    let rows: Vec<_> = b
        .rows
        .iter()
        .filter(|r| r.op == TraceOp::Output && r.a_vs_b.is_some())
        .collect();
    if rows.is_empty() {
        return None;
    }
    let labels: Vec<String> = rows.iter().map(|r| r.label()).collect();
    let rel = |f: &dyn Fn(&crate::verify::bisect::OpRow) -> Option<f64>| {
        rows.iter().map(|r| f(r).unwrap_or(0.0)).collect::<Vec<_>>()
    };
    let limit = format!("limit {}", b.limit);
    let mut series = vec![
        ("A vs B", rel(&|r| r.a_vs_b.map(|d| d.rel_rms))),
        (limit.as_str(), vec![b.limit; rows.len()]),
    ];
    if b.truth.is_some() {
        series.push(("A vs truth", rel(&|r| r.a_vs_truth.map(|d| d.rel_rms))));
        series.push(("B vs truth", rel(&|r| r.b_vs_truth.map(|d| d.rel_rms))));
    }
    Some(svg::log_line_chart(
        &format!(
            "{} vs {}: layer outputs ({} = {})",
            b.a,
            b.b,
            b.tolerance.name(),
            b.limit
        ),
        "relative RMS",
        &labels,
        &series,
    ))
}

/// Along depth, each layer's output: their RMS error against truth, the
/// bf16-faithful reference's, and the pass line (factor x reference).
pub fn theirs_plot(r: &crate::verify::bisect::TheirsReport) -> Option<String> {
    use crate::engine::trace::TraceOp;
    let rows: Vec<_> = r
        .rows
        .iter()
        .filter(|x| x.op == TraceOp::Output && x.theirs_vs_truth.is_some())
        .collect();
    if rows.is_empty() {
        return None;
    }
    let labels: Vec<String> = rows.iter().map(|x| x.label()).collect();
    let rms = |f: &dyn Fn(&crate::verify::bisect::TheirsRow) -> Option<f64>| {
        rows.iter().map(|x| f(x).unwrap_or(0.0)).collect::<Vec<_>>()
    };
    let reference = rms(&|x| x.reference_vs_truth.map(|d| d.rms));
    let line = reference.iter().map(|v| v * r.factor).collect();
    let pass_line = format!("{} x reference", r.factor);
    Some(svg::log_line_chart(
        &format!("{} against f64 truth: layer outputs", r.theirs),
        "RMS error against truth",
        &labels,
        &[
            ("theirs", rms(&|x| x.theirs_vs_truth.map(|d| d.rms))),
            ("bf16 reference", reference),
            (pass_line.as_str(), line),
        ],
    ))
}
