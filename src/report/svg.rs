//! Minimal, dependency-free SVG charts for reports: a line chart with a
//! log-scale y axis (error along depth) and a bar chart (histograms, on a
//! linear or log scale).

use std::fmt::Write;

const W: f64 = 640.0;
const H: f64 = 360.0;
const L: f64 = 70.0; // left margin
const R: f64 = 150.0; // right margin (legend)
const T: f64 = 40.0;
const B: f64 = 60.0;
const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

/// Characters of a 13 px title that fit across the chart.
const TITLE_CHARS: usize = 88;

/// The title in at most two lines across the whole width (a case id is
/// often longer than the plot area): broken at the last space or comma that
/// fits, a second line too long ending in "...".
fn title_lines(title: &str) -> Vec<String> {
    if title.chars().count() <= TITLE_CHARS {
        return vec![title.to_string()];
    }
    let head: String = title.chars().take(TITLE_CHARS).collect();
    let cut = head.rfind([' ', ',']).map_or(head.len(), |i| i + 1);
    let (first, rest) = title.split_at(cut);
    let rest = rest.trim_start();
    let second = if rest.chars().count() > TITLE_CHARS {
        let r: String = rest.chars().take(TITLE_CHARS - 3).collect();
        format!("{r}...")
    } else {
        rest.to_string()
    };
    vec![first.trim_end().to_string(), second]
}

fn header(title: &str) -> String {
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    for (i, line) in title_lines(title).iter().enumerate() {
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"13\">{}</text>",
            W / 2.0,
            16 + 15 * i,
            escape(line)
        );
    }
    s
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

/// One bar per (label, count); with `log`, heights on a log10(1 + count)
/// scale with a tick per power of ten, so a bucket of a few elements beside
/// one of millions stays visible.
pub fn bar_chart(title: &str, y_label: &str, bars: &[(String, f64)], log: bool) -> String {
    let max = bars.iter().map(|b| b.1).fold(0.0, f64::max).max(1.0);
    let scale = |v: f64| if log { (1.0 + v.max(0.0)).log10() } else { v };
    let pw = W - L - R;
    let ph = H - T - B;
    let bw = pw / bars.len().max(1) as f64;
    let mut s = header(title);
    let _ = writeln!(
        s,
        "<rect x=\"{L}\" y=\"{T}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#888\"/>"
    );
    let top = scale(max);
    if log {
        let mut e = 0;
        while 10f64.powi(e) <= max {
            let yy = T + ph - ph * scale(10f64.powi(e)) / top;
            let _ = writeln!(s, "<line x1=\"{L}\" x2=\"{}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">1e{e}</text>", L + pw, L - 6.0, yy + 4.0);
            e += 1;
        }
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">0</text>",
            L - 6.0,
            T + ph
        );
    } else {
        let _ = writeln!(s, "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{max}</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">0</text>", L - 6.0, T + 4.0, L - 6.0, T + ph);
    }
    let _ = writeln!(
        s,
        "<text transform=\"rotate(-90)\" x=\"{}\" y=\"16\" text-anchor=\"middle\">{}</text>",
        -(T + ph / 2.0),
        escape(y_label)
    );
    for (i, (lab, v)) in bars.iter().enumerate() {
        let h = ph * scale(*v) / top;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_titles_wrap_into_two_lines_that_fit() {
        let t = "qkv(preset=qwen3-0.6b,numerics=bf16,path=graph,mode=fast,tokens=8,position=32767)@cuda: ULP distance vs run 0, a title far longer than any chart, and then longer still so that its second line must be cut short by the wrapping rule";
        let lines = title_lines(t);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines.iter().all(|l| l.chars().count() <= TITLE_CHARS),
            "{lines:?}"
        );
        assert!(
            t.starts_with(&lines[0]) && lines[1].ends_with("..."),
            "{lines:?}"
        );
        // Control: a short title stays one line, unchanged.
        assert_eq!(title_lines("short"), vec!["short".to_string()]);
    }

    /// On the log scale a bucket of one element beside one of a million
    /// is drawn; on the linear scale it is not.
    #[test]
    fn the_log_bar_chart_shows_small_buckets() {
        let bars = vec![("0".to_string(), 1e6), ("1".to_string(), 1.0)];
        let height = |svg: &str| -> f64 {
            let r = svg
                .split("<rect")
                .find(|r| r.contains("<title>1: 1</title>"))
                .unwrap();
            let h = r.split("height=\"").nth(1).unwrap();
            h[..h.find('"').unwrap()].parse().unwrap()
        };
        assert!(height(&bar_chart("t", "n", &bars, true)) > 10.0);
        assert!(height(&bar_chart("t", "n", &bars, false)) < 1.0);
    }
}
