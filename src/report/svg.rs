//! Minimal, dependency-free SVG charts for reports: a line chart with a
//! log-scale y axis (error along depth) and a bar chart (histograms).

use std::fmt::Write;

const W: f64 = 640.0;
const H: f64 = 360.0;
const L: f64 = 70.0; // left margin
const R: f64 = 150.0; // right margin (legend)
const T: f64 = 40.0;
const B: f64 = 60.0;
const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

fn header(title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"13\">{}</text>\n",
        (L + W - R) / 2.0,
        escape(title)
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Series of (label, y values) over shared x labels; y on a log10 scale.
/// Non-positive values are drawn at the bottom edge and marked "0".
pub fn log_line_chart(
    title: &str,
    y_label: &str,
    x_labels: &[String],
    series: &[(&str, Vec<f64>)],
) -> String {
    let pos: Vec<f64> = series
        .iter()
        .flat_map(|s| s.1.iter().copied())
        .filter(|v| *v > 0.0)
        .collect();
    let (mut lo, mut hi) = pos
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v.log10()), b.max(v.log10()))
        });
    if !lo.is_finite() {
        (lo, hi) = (-1.0, 0.0);
    }
    let (lo, hi) = (lo.floor(), hi.ceil().max(lo.floor() + 1.0));
    let pw = W - L - R;
    let ph = H - T - B;
    let x = |i: usize| {
        L + if x_labels.len() > 1 {
            pw * i as f64 / (x_labels.len() - 1) as f64
        } else {
            pw / 2.0
        }
    };
    let y = |v: f64| {
        if v > 0.0 {
            T + ph * (hi - v.log10()) / (hi - lo)
        } else {
            T + ph
        }
    };
    let mut s = header(title);
    let _ = writeln!(
        s,
        "<rect x=\"{L}\" y=\"{T}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#888\"/>"
    );
    let mut e = lo as i32;
    while e as f64 <= hi {
        let yy = T + ph * (hi - e as f64) / (hi - lo);
        let _ = writeln!(s, "<line x1=\"{L}\" x2=\"{}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">1e{e}</text>", L + pw, L - 6.0, yy + 4.0);
        e += 1;
    }
    for (i, lab) in x_labels.iter().enumerate() {
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"end\" transform=\"rotate(-40 {:.1} {})\">{}</text>",
            x(i),
            T + ph + 14.0,
            x(i),
            T + ph + 14.0,
            escape(lab)
        );
    }
    let _ = writeln!(
        s,
        "<text transform=\"rotate(-90)\" x=\"{}\" y=\"16\" text-anchor=\"middle\">{}</text>",
        -(T + ph / 2.0),
        escape(y_label)
    );
    for (k, (name, ys)) in series.iter().enumerate() {
        let c = COLORS[k % COLORS.len()];
        let pts: Vec<String> = ys
            .iter()
            .enumerate()
            .map(|(i, &v)| format!("{:.1},{:.1}", x(i), y(v)))
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"/>",
            pts.join(" ")
        );
        for (i, &v) in ys.iter().enumerate() {
            let _ = writeln!(s, "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{c}\"><title>{name}: {v:.3e}</title></circle>", x(i), y(v));
        }
        let ly = T + 14.0 + 18.0 * k as f64;
        let _ = writeln!(s, "<line x1=\"{}\" x2=\"{}\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"{c}\" stroke-width=\"2\"/><text x=\"{}\" y=\"{}\">{}</text>", W - R + 10.0, W - R + 30.0, W - R + 35.0, ly + 4.0, escape(name));
    }
    s + "</svg>\n"
}

/// One bar per (label, count).
pub fn bar_chart(title: &str, y_label: &str, bars: &[(String, f64)]) -> String {
    let max = bars.iter().map(|b| b.1).fold(0.0, f64::max).max(1.0);
    let pw = W - L - R;
    let ph = H - T - B;
    let bw = pw / bars.len().max(1) as f64;
    let mut s = header(title);
    let _ = writeln!(
        s,
        "<rect x=\"{L}\" y=\"{T}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#888\"/>"
    );
    let _ = writeln!(s, "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{max}</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">0</text>", L - 6.0, T + 4.0, L - 6.0, T + ph);
    let _ = writeln!(
        s,
        "<text transform=\"rotate(-90)\" x=\"{}\" y=\"16\" text-anchor=\"middle\">{}</text>",
        -(T + ph / 2.0),
        escape(y_label)
    );
    for (i, (lab, v)) in bars.iter().enumerate() {
        let h = ph * v / max;
        let x0 = L + bw * i as f64;
        let _ = writeln!(
            s,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{}\"><title>{}: {v}</title></rect><text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            x0 + bw * 0.1,
            T + ph - h,
            bw * 0.8,
            COLORS[0],
            escape(lab),
            x0 + bw / 2.0,
            T + ph + 14.0,
            escape(lab)
        );
    }
    s + "</svg>\n"
}
