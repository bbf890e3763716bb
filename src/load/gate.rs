//! `--fail-if` gates for CI: `p99>200ms`, `errors>1%`, `errors>10`, `rps<450`. A run fails (exit 1) when
//! any gate holds.

use super::report::LoadReport;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Metric {
    P50,
    P90,
    P99,
    P999,
    Max,
    Mean,
    Errors,
    Rps,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Above,
    AtLeast,
    Below,
    AtMost,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Threshold {
    Millis(f64),
    Count(f64),
    Percent(f64),
}

/// One parsed `--fail-if` expression.
#[derive(Debug, Clone, PartialEq)]
pub struct Gate {
    pub expr: String,
    metric: Metric,
    op: Op,
    threshold: Threshold,
}

/// A gate checked against a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GateResult {
    pub expr: String,
    /// The measured value, as shown to the user (`p99 was 231.4ms`).
    pub measured: String,
    pub failed: bool,
}

const USAGE: &str = "expected METRIC>VALUE with METRIC one of p50, p90, p99, p999, max, mean (VALUE a duration: \
                     200ms, 1.5s; bare numbers are ms), errors (a count or a percentage of requests: 10, 1%) or \
                     rps (achieved requests per second); operators > >= < <=";

impl Gate {
    pub fn parse(text: &str) -> crate::error::Result<Gate> {
        let expr: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        let at =
            expr.find(['>', '<']).ok_or_else(|| crate::error::Error::input(format!("--fail-if {text:?}: {USAGE}")))?;
        let (name, rest) = expr.split_at(at);
        let (op, value) = if let Some(v) = rest.strip_prefix(">=") {
            (Op::AtLeast, v)
        } else if let Some(v) = rest.strip_prefix("<=") {
            (Op::AtMost, v)
        } else if let Some(v) = rest.strip_prefix('>') {
            (Op::Above, v)
        } else {
            (Op::Below, &rest[1..])
        };
        let metric = match name.to_ascii_lowercase().as_str() {
            "p50" | "median" => Metric::P50,
            "p90" => Metric::P90,
            "p99" => Metric::P99,
            "p999" | "p99.9" => Metric::P999,
            "max" => Metric::Max,
            "mean" => Metric::Mean,
            "errors" => Metric::Errors,
            "rps" => Metric::Rps,
            _ => {
                return Err(crate::error::Error::input(format!(
                    "--fail-if {text:?}: unknown metric {name:?}; {USAGE}"
                )));
            }
        };
        let bad =
            || crate::error::Error::input(format!("--fail-if {text:?}: cannot read the value {value:?}; {USAGE}"));
        let threshold = match metric {
            Metric::Errors => match value.strip_suffix('%') {
                Some(p) => Threshold::Percent(p.parse().map_err(|_| bad())?),
                None => Threshold::Count(value.parse().map_err(|_| bad())?),
            },
            Metric::Rps => Threshold::Count(value.strip_suffix("/s").unwrap_or(value).parse().map_err(|_| bad())?),
            _ => Threshold::Millis(parse_millis(value).ok_or_else(bad)?),
        };
        Ok(Gate { expr, metric, op, threshold })
    }

    /// Whether the run fails this gate, and what was measured. A latency gate with no response at all
    /// fails: nothing shows the latency was good.
    pub fn check(&self, report: &LoadReport) -> GateResult {
        let (name, latency) = match self.metric {
            Metric::P50 => ("p50", report.latency.p50),
            Metric::P90 => ("p90", report.latency.p90),
            Metric::P99 => ("p99", report.latency.p99),
            Metric::P999 => ("p99.9", report.latency.p999),
            Metric::Max => ("max", report.latency.max),
            Metric::Mean => ("mean", report.latency.mean),
            Metric::Errors => ("errors", None),
            Metric::Rps => ("rps", None),
        };
        let (value, measured) = match (self.metric, self.threshold) {
            (Metric::Errors, Threshold::Percent(_)) => {
                let pct =
                    if report.requests == 0 { 0.0 } else { 100.0 * report.errors as f64 / report.requests as f64 };
                (Some(pct), format!("errors were {} of {} ({pct:.2}%)", report.errors, report.requests))
            }
            (Metric::Errors, _) => {
                (Some(report.errors as f64), format!("errors were {} of {}", report.errors, report.requests))
            }
            (Metric::Rps, _) => (Some(report.achieved_rps), format!("achieved {:.1} requests/s", report.achieved_rps)),
            _ => match latency {
                Some(ms) => (Some(ms), format!("{name} was {}", format_ms(ms))),
                None => (None, format!("{name} unknown: no response was received")),
            },
        };
        let limit = match self.threshold {
            Threshold::Millis(v) | Threshold::Count(v) | Threshold::Percent(v) => v,
        };
        let failed = match value {
            None => true,
            Some(v) => match self.op {
                Op::Above => v > limit,
                Op::AtLeast => v >= limit,
                Op::Below => v < limit,
                Op::AtMost => v <= limit,
            },
        };
        GateResult { expr: self.expr.clone(), measured, failed }
    }
}

/// `200ms`, `1.5s`, `800us`, `200` (ms) in milliseconds.
fn parse_millis(value: &str) -> Option<f64> {
    let split = value.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let v: f64 = number.parse().ok()?;
    let ms = match unit {
        "" | "ms" => v,
        "s" => v * 1000.0,
        "us" | "µs" => v / 1000.0,
        "m" | "min" => v * 60_000.0,
        _ => return None,
    };
    ms.is_finite().then_some(ms)
}

/// A latency in milliseconds as people read it: `0.42ms`, `12.3ms`, `1.25s`.
pub fn format_ms(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2}s", ms / 1000.0)
    } else if ms >= 100.0 {
        format!("{ms:.0}ms")
    } else if ms >= 10.0 {
        format!("{ms:.1}ms")
    } else {
        format!("{ms:.2}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(p99: Option<f64>, errors: u64, requests: u64) -> LoadReport {
        let mut r = LoadReport::default();
        r.latency.p99 = p99;
        r.errors = errors;
        r.requests = requests;
        r.achieved_rps = 480.0;
        r
    }

    #[test]
    fn parses_and_checks() {
        let g = Gate::parse("p99 > 200ms").unwrap();
        assert_eq!(g.expr, "p99>200ms");
        assert!(g.check(&report(Some(231.0), 0, 10)).failed);
        assert!(!g.check(&report(Some(199.0), 0, 10)).failed);
        assert!(g.check(&report(None, 10, 10)).failed, "no data fails a latency gate");
        assert_eq!(g.check(&report(Some(231.4), 0, 10)).measured, "p99 was 231ms");
        let e = Gate::parse("errors>1%").unwrap();
        assert!(e.check(&report(Some(1.0), 2, 100)).failed);
        assert!(!e.check(&report(Some(1.0), 1, 100)).failed);
        let n = Gate::parse("errors>=3").unwrap();
        assert!(n.check(&report(Some(1.0), 3, 100)).failed);
        assert!(Gate::parse("rps<500").unwrap().check(&report(Some(1.0), 0, 1)).failed);
        assert!(!Gate::parse("p99>1.5s").unwrap().check(&report(Some(1.0), 0, 1)).failed);
        assert!(Gate::parse("p98>1").is_err());
        assert!(Gate::parse("p99").is_err());
        assert!(Gate::parse("p99>fast").is_err());
        assert!(Gate::parse("errors>x%").is_err());
    }
}
