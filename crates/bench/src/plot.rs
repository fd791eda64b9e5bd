//! `svg`: the latency distribution of every path as one chart, percentile against round
//! trip, in the style of a percentile plot: the x axis is logarithmic in microseconds and
//! the y axis stretches the tail (50 %, 90 %, 99 % are equally spaced).

use std::fmt::Write as _;

use crate::report::{Report, DISTRIBUTION_POINTS};

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 540.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 300.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
/// Highest quantile drawn: the distribution's last points are single samples.
const TOP_QUANTILE: f64 = 0.995;
const COLOURS: [&str; 16] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#393b79", "#637939", "#e7298a", "#000000", "#a6761d", "#66a61e",
];

/// Height of quantile `q` on a scale where each further nine takes the same room.
fn nines(q: f64) -> f64 {
    -(1.0 - q.min(TOP_QUANTILE)).log10()
}

/// The chart as an SVG document.
pub fn svg(report: &Report) -> String {
    let rows: Vec<_> = report
        .rows
        .iter()
        .filter(|r| r.distribution.len() == DISTRIBUTION_POINTS)
        .collect();
    let positive = |v: &f64| *v > 0.0;
    let lo = rows
        .iter()
        .flat_map(|r| r.distribution.iter().copied().filter(positive))
        .fold(f64::INFINITY, f64::min);
    let hi = rows
        .iter()
        .flat_map(|r| r.distribution.iter().copied().filter(positive))
        .fold(0.0, f64::max);
    let (lo, hi) = if lo.is_finite() && hi > 0.0 {
        (
            10f64.powf(lo.log10().floor()),
            10f64.powf(hi.log10().ceil()),
        )
    } else {
        (1.0, 10.0)
    };
    let (plot_w, plot_h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let x = |us: f64| LEFT + (us.max(lo).log10() - lo.log10()) / (hi.log10() - lo.log10()) * plot_w;
    let y = |q: f64| TOP + plot_h - nines(q) / nines(TOP_QUANTILE) * plot_h;

    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="22" font-size="15">qnllm bench: round-trip latency, one request at a time ({} B request, {} B reply)</text>"#,
        report.request_bytes, report.reply_bytes
    );
    // Axes and grid: a line per power of ten, and at the 0, 50, 90, 99 and 99.5 percentiles.
    let mut decade = lo;
    while decade <= hi * 1.000_001 {
        let px = x(decade);
        let _ = writeln!(
            out,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#ddd"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 18.0,
            format_us(decade)
        );
        decade *= 10.0;
    }
    for (q, label) in [
        (0.0, "0 %"),
        (0.5, "50 %"),
        (0.9, "90 %"),
        (0.99, "99 %"),
        (TOP_QUANTILE, "99.5 %"),
    ] {
        let py = y(q);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"##,
            LEFT + plot_w,
            LEFT - 8.0,
            py + 4.0
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">round trip (µs, log scale)</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 18.0
    );
    let _ = writeln!(
        out,
        r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">percentile</text>"#,
        TOP + plot_h / 2.0
    );
    for (i, row) in rows.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let points: Vec<String> = row
            .distribution
            .iter()
            .enumerate()
            .map(|(k, &us)| (k as f64 / (DISTRIBUTION_POINTS - 1) as f64, us))
            .filter(|&(q, _)| q <= TOP_QUANTILE)
            .map(|(q, us)| format!("{:.1},{:.1}", x(us), y(q)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        let ly = TOP + 10.0 + i as f64 * 20.0;
        let lx = WIDTH - RIGHT + 20.0;
        let _ = writeln!(
            out,
            r#"<line x1="{lx}" y1="{ly}" x2="{:.1}" y2="{ly}" stroke="{colour}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 24.0,
            lx + 30.0,
            ly + 4.0,
            escape(&row.path)
        );
    }
    out.push_str("</svg>\n");
    out
}

fn format_us(us: f64) -> String {
    if us >= 1_000.0 {
        format!("{} ms", us / 1_000.0)
    } else {
        format!("{us}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn each_further_nine_takes_the_same_height() {
        let (a, b, c) = (nines(0.9), nines(0.99), nines(0.5));
        assert!((b - a - a).abs() < 1e-9, "{a} {b}");
        assert!(c > 0.0 && c < a);
        assert_eq!(nines(0.0), 0.0);
        assert_eq!(nines(1.0), nines(TOP_QUANTILE), "the top is clamped");
    }
}
