//! Small self-contained SVG charts for the HTML reports (no scripts, nothing fetched). Written here because
//! two chart kinds with axes and a legend are a page of code, where a plotting crate would bring a whole
//! rendering stack for them.

use std::fmt::Write;

const WIDTH: f64 = 1000.0;
const HEIGHT: f64 = 300.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 48.0;

/// One line of a line chart.
pub struct Series {
    pub name: String,
    pub color: &'static str,
    pub points: Vec<(f64, f64)>,
    pub dashed: bool,
}

/// Escapes text for XML and HTML.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A number as a short axis label: `0.25`, `12`, `1.5k`.
pub fn short_number(v: f64) -> String {
    let abs = v.abs();
    if abs >= 10_000.0 {
        return format!("{}k", short_number(v / 1000.0));
    }
    let s = if abs >= 100.0 || abs == 0.0 {
        format!("{v:.0}")
    } else if abs >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    };
    if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s }
}

/// About `count` round tick values covering [0, max].
fn linear_ticks(max: f64, count: usize) -> Vec<f64> {
    if max <= 0.0 || !max.is_finite() {
        return vec![0.0, 1.0];
    }
    let raw = max / count as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * magnitude).find(|s| *s >= raw).unwrap_or(10.0 * magnitude);
    let top = (max / step).ceil() as usize;
    (0..=top).map(|i| i as f64 * step).collect()
}

/// 1, 2, 5 x 10^k ticks between `lo` and `hi` (both above 0).
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut ticks = Vec::new();
    let mut decade = 10f64.powf(lo.log10().floor());
    while decade <= hi * 1.0001 {
        for m in [1.0, 2.0, 5.0] {
            let v = m * decade;
            if v >= lo * 0.9999 && v <= hi * 1.0001 {
                ticks.push(v);
            }
        }
        decade *= 10.0;
    }
    ticks
}

fn open(out: &mut String, id: &str, title: &str) {
    let _ = write!(
        out,
        r#"<svg id="{}" class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{}">"#,
        escape(id),
        escape(title)
    );
    let _ = write!(out, r#"<title>{}</title>"#, escape(title));
    let _ = write!(
        out,
        r##"<text x="{LEFT}" y="20" font-size="15" font-weight="600" fill="#222">{}</text>"##,
        escape(title)
    );
}

fn axis_labels(out: &mut String, x_label: &str, y_label: &str) {
    let _ = write!(
        out,
        r##"<text x="{}" y="{}" font-size="12" text-anchor="middle" fill="#444">{}</text>"##,
        LEFT + (WIDTH - LEFT - RIGHT) / 2.0,
        HEIGHT - 8.0,
        escape(x_label)
    );
    let _ = write!(
        out,
        r##"<text x="14" y="{}" font-size="12" text-anchor="middle" fill="#444" transform="rotate(-90 14 {})">{}</text>"##,
        TOP + (HEIGHT - TOP - BOTTOM) / 2.0,
        TOP + (HEIGHT - TOP - BOTTOM) / 2.0,
        escape(y_label)
    );
}

fn y_grid(out: &mut String, ticks: &[f64], y_max: f64) {
    let plot_h = HEIGHT - TOP - BOTTOM;
    for t in ticks {
        let y = TOP + plot_h - t / y_max * plot_h;
        let _ = write!(
            out,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#e3e3e3"/><text x="{}" y="{:.1}" font-size="11" text-anchor="end" fill="#555">{}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            short_number(*t)
        );
    }
}

/// Lines over a shared x axis (seconds of the run); y from 0.
pub fn line_chart(id: &str, title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let mut out = String::new();
    open(&mut out, id, title);
    let points = series.iter().flat_map(|s| &s.points);
    let x_max = points.clone().map(|p| p.0).fold(0.0, f64::max).max(1.0);
    let y_top = points.map(|p| p.1).fold(0.0, f64::max);
    let y_ticks = linear_ticks(y_top, 5);
    let y_max = y_ticks.last().copied().unwrap_or(1.0).max(f64::MIN_POSITIVE);
    let x_ticks = linear_ticks(x_max, 10);
    let x_max = x_ticks.last().copied().unwrap_or(1.0).max(f64::MIN_POSITIVE);
    let (plot_w, plot_h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let sx = |x: f64| LEFT + x / x_max * plot_w;
    let sy = |y: f64| TOP + plot_h - y / y_max * plot_h;
    y_grid(&mut out, &y_ticks, y_max);
    for t in &x_ticks {
        let _ = write!(
            out,
            r##"<text x="{:.1}" y="{}" font-size="11" text-anchor="middle" fill="#555">{}</text>"##,
            sx(*t),
            HEIGHT - BOTTOM + 16.0,
            short_number(*t)
        );
    }
    let _ =
        write!(out, r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>"##);
    for s in series {
        if s.points.is_empty() {
            continue;
        }
        let coords: Vec<String> = s.points.iter().map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y))).collect();
        let dash = if s.dashed { r#" stroke-dasharray="5 4""# } else { "" };
        let _ = write!(
            out,
            r#"<polyline class="series" data-name="{}" fill="none" stroke="{}" stroke-width="2"{dash} points="{}"/>"#,
            escape(&s.name),
            s.color,
            coords.join(" ")
        );
        if s.points.len() == 1 {
            let (x, y) = s.points[0];
            let _ = write!(out, r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#, sx(x), sy(y), s.color);
        }
    }
    legend(&mut out, series);
    axis_labels(&mut out, x_label, y_label);
    out.push_str("</svg>");
    out
}

fn legend(out: &mut String, series: &[Series]) {
    let mut x = WIDTH - RIGHT;
    for s in series.iter().rev() {
        let w = 30.0 + 7.0 * s.name.chars().count() as f64;
        x -= w;
        let dash = if s.dashed { r#" stroke-dasharray="5 4""# } else { "" };
        let _ = write!(
            out,
            r##"<line x1="{x:.1}" x2="{:.1}" y1="16" y2="16" stroke="{}" stroke-width="2"{dash}/><text x="{:.1}" y="20" font-size="12" fill="#333">{}</text>"##,
            x + 18.0,
            s.color,
            x + 22.0,
            escape(&s.name)
        );
    }
}

/// Bars over a logarithmic x axis: `bars` are (from, to, count) with 0 < from < to.
pub fn log_histogram(id: &str, title: &str, x_label: &str, y_label: &str, bars: &[(f64, f64, u64)]) -> String {
    let mut out = String::new();
    open(&mut out, id, title);
    let lo = bars.iter().map(|b| b.0).fold(f64::INFINITY, f64::min);
    let hi = bars.iter().map(|b| b.1).fold(0.0, f64::max);
    let (lo, hi) = if bars.is_empty() || lo <= 0.0 || hi <= lo { (0.1, 1.0) } else { (lo, hi) };
    let count_max = bars.iter().map(|b| b.2).max().unwrap_or(0) as f64;
    let y_ticks = linear_ticks(count_max, 5);
    let y_max = y_ticks.last().copied().unwrap_or(1.0).max(f64::MIN_POSITIVE);
    let (plot_w, plot_h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let sx = |x: f64| LEFT + (x / lo).ln() / (hi / lo).ln() * plot_w;
    y_grid(&mut out, &y_ticks, y_max);
    for t in log_ticks(lo, hi) {
        let _ = write!(
            out,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{}" y2="{}" stroke="#999"/><text x="{x:.1}" y="{}" font-size="11" text-anchor="middle" fill="#555">{}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 4.0,
            HEIGHT - BOTTOM + 16.0,
            short_number(t),
            x = sx(t)
        );
    }
    for (from, to, count) in bars {
        let (x0, x1) = (sx(*from), sx(*to));
        let h = *count as f64 / y_max * plot_h;
        let _ = write!(
            out,
            r##"<rect class="bar" x="{x0:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="#4c78a8"><title>{} to {} ms: {count}</title></rect>"##,
            TOP + plot_h - h,
            (x1 - x0 - 1.0).max(1.0),
            short_number(*from),
            short_number(*to)
        );
    }
    let _ =
        write!(out, r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>"##);
    axis_labels(&mut out, x_label, y_label);
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_and_labels() {
        assert_eq!(linear_ticks(9.0, 5), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(log_ticks(0.3, 30.0), vec![0.5, 1.0, 2.0, 5.0, 10.0, 20.0]);
        assert_eq!(short_number(0.25), "0.25");
        assert_eq!(short_number(12.0), "12");
        assert_eq!(short_number(25000.0), "25k");
        assert_eq!(escape("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }

    #[test]
    fn charts_are_well_formed_and_escaped() {
        let line = line_chart(
            "lat",
            "Latency <over> time",
            "s",
            "ms",
            &[Series { name: "p99".into(), color: "#d62728", points: vec![(0.0, 1.0), (1.0, 3.0)], dashed: false }],
        );
        assert!(line.starts_with("<svg") && line.ends_with("</svg>"));
        assert!(line.contains("Latency &lt;over&gt; time") && line.contains("polyline"));
        let hist = log_histogram("h", "Histogram", "ms", "requests", &[(0.1, 0.2, 5), (0.2, 0.4, 10)]);
        assert_eq!(hist.matches("class=\"bar\"").count(), 2);
        let empty = log_histogram("h", "Histogram", "ms", "requests", &[]);
        assert!(empty.ends_with("</svg>"));
    }
}
