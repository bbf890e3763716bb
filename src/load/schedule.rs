//! When each request of a load run is sent: an open-loop schedule computed in advance from the recording
//! (`--speed`), a fixed arrival rate (`--rate`) or a linear ramp (`--ramp`). Send times never depend on
//! how fast the server answers, so a slow server cannot slow the load down and hide its queueing.

use std::time::Duration;

/// How fast requests are sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Pace {
    /// The recorded timing, `factor` times faster: the real mix and burstiness.
    Speed(f64),
    /// A fixed number of requests per second, drawn from the recording round-robin.
    Rate(f64),
    /// A rate growing linearly from `from` to `to` per second over `over`, then staying at `to`.
    Ramp { from: f64, to: f64, over: Duration },
}

/// `60s`, `500ms`, `2m`, `1h`, `1.5s`; a bare number is seconds.
pub fn parse_duration(text: &str) -> crate::error::Result<Duration> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| crate::error::Error::input(format!("{text:?} is not a duration (like 30s, 500ms, 2m)")))?;
    let seconds = match unit.trim() {
        "" | "s" | "sec" | "secs" => value,
        "ms" => value / 1000.0,
        "us" | "µs" => value / 1_000_000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(crate::error::Error::input(format!("{text:?}: unknown unit {other:?} (use ms, s, m or h)")));
        }
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(crate::error::Error::input(format!("{text:?} is not a duration")));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// `500/s`, `500`, `30/m`, `500rps`: requests per second.
fn parse_per_second(text: &str) -> crate::error::Result<f64> {
    let t = text.trim();
    let (number, per) = match t.split_once('/') {
        Some((n, p)) => (n, p.trim()),
        None => (t.strip_suffix("rps").unwrap_or(t), "s"),
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| crate::error::Error::input(format!("{text:?} is not a rate (like 500/s)")))?;
    let factor = match per {
        "s" | "sec" => 1.0,
        "m" | "min" => 1.0 / 60.0,
        "h" => 1.0 / 3600.0,
        other => return Err(crate::error::Error::input(format!("{text:?}: unknown unit /{other} (use /s, /m or /h)"))),
    };
    if !value.is_finite() || value < 0.0 {
        return Err(crate::error::Error::input(format!("{text:?} is not a rate")));
    }
    Ok(value * factor)
}

impl Pace {
    /// `2x`, `0.5x`, `2`.
    pub fn parse_speed(text: &str) -> crate::error::Result<Pace> {
        let t = text.trim();
        let factor: f64 =
            t.strip_suffix(['x', 'X']).unwrap_or(t).parse().map_err(|_| {
                crate::error::Error::input(format!("--speed {text:?}: expected a factor like 2x or 0.5x"))
            })?;
        if !factor.is_finite() || factor <= 0.0 {
            return Err(crate::error::Error::input(format!("--speed {text:?}: the factor must be above 0")));
        }
        Ok(Pace::Speed(factor))
    }

    /// `500/s`.
    pub fn parse_rate(text: &str) -> crate::error::Result<Pace> {
        let rate = parse_per_second(text).map_err(|e| crate::error::Error::input(format!("--rate {e}")))?;
        if rate <= 0.0 {
            return Err(crate::error::Error::input(format!("--rate {text:?}: the rate must be above 0")));
        }
        Ok(Pace::Rate(rate))
    }

    /// `10/s..1000/s over 60s`.
    pub fn parse_ramp(text: &str) -> crate::error::Result<Pace> {
        let usage = || {
            crate::error::Error::input(format!(
                "--ramp {text:?}: expected FROM..TO over DURATION, like '10/s..1000/s over 60s'"
            ))
        };
        let (rates, over) = text.split_once(" over ").ok_or_else(usage)?;
        let (from, to) = rates.split_once("..").ok_or_else(usage)?;
        let from = parse_per_second(from).map_err(|e| crate::error::Error::input(format!("--ramp {e}")))?;
        let to = parse_per_second(to).map_err(|e| crate::error::Error::input(format!("--ramp {e}")))?;
        let over = parse_duration(over).map_err(|e| crate::error::Error::input(format!("--ramp {e}")))?;
        if to <= 0.0 {
            return Err(crate::error::Error::input(format!("--ramp {text:?}: the final rate must be above 0")));
        }
        if over.is_zero() {
            return Err(crate::error::Error::input(format!("--ramp {text:?}: the ramp needs a duration above 0")));
        }
        Ok(Pace::Ramp { from, to, over })
    }

    pub fn describe(&self) -> String {
        match self {
            Pace::Speed(f) => format!("recorded timing at {}x", trim_float(*f)),
            Pace::Rate(r) => format!("{}/s", trim_float(*r)),
            Pace::Ramp { from, to, over } => {
                format!("ramp {}/s..{}/s over {}s", trim_float(*from), trim_float(*to), trim_float(over.as_secs_f64()))
            }
        }
    }
}

fn trim_float(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The send times of one run.
#[derive(Debug, Clone)]
pub struct Schedule {
    pace: Pace,
    /// Seconds from the first recorded request to each request, in recorded order.
    recorded: Vec<f64>,
    /// Recorded seconds of one pass through the requests: their span plus one mean gap, so that a loop
    /// does not send the last and the first request at the same moment.
    period: f64,
    /// Seconds from the start after which nothing is sent.
    length: f64,
    /// Without --duration, `--speed` and `--rate` send each recorded request once.
    single_pass: bool,
}

impl Schedule {
    /// `recorded`: seconds from the first recorded request to each (sorted, first 0; at least one).
    /// `duration`: how long to send; without it, one pass through the requests (a ramp: its length).
    pub fn new(pace: Pace, recorded: Vec<f64>, duration: Option<Duration>) -> Schedule {
        let n = recorded.len().max(1);
        let span = recorded.last().copied().unwrap_or(0.0).max(0.0);
        let gap = if n > 1 && span > 0.0 { span / (n - 1) as f64 } else { 1.0 };
        let period = span + gap;
        let natural = match &pace {
            Pace::Speed(f) => period / f,
            Pace::Rate(r) => n as f64 / r,
            Pace::Ramp { over, .. } => over.as_secs_f64(),
        };
        let single_pass = duration.is_none() && !matches!(pace, Pace::Ramp { .. });
        let length = duration.map(|d| d.as_secs_f64()).unwrap_or(natural);
        Schedule { pace, recorded, period, length, single_pass }
    }

    pub fn pace(&self) -> &Pace {
        &self.pace
    }

    /// How long sending lasts.
    pub fn length(&self) -> Duration {
        Duration::from_secs_f64(self.length)
    }

    /// The k-th send (from 0): seconds after the start, and which recorded request. `None` past the end.
    pub fn at(&self, k: u64) -> Option<(f64, usize)> {
        let n = self.recorded.len() as u64;
        if n == 0 || (self.single_pass && k >= n) {
            return None;
        }
        let index = (k % n) as usize;
        let t = match &self.pace {
            Pace::Speed(f) => ((k / n) as f64 * self.period + self.recorded[index]) / f,
            Pace::Rate(r) => k as f64 / r,
            Pace::Ramp { from, to, over } => ramp_time(*from, *to, over.as_secs_f64(), k as f64),
        };
        (t < self.length || (self.single_pass && t <= self.length)).then_some((t, index))
    }

    /// How many requests the schedule sends in all.
    pub fn planned(&self) -> u64 {
        // Counting is exact (no rounding at the end) and cheap next to sending the requests.
        (0..).take_while(|k| self.at(*k).is_some()).count() as u64
    }

    /// The asked rate: requests per second over the schedule's length.
    pub fn requested_rps(&self) -> f64 {
        match &self.pace {
            Pace::Rate(r) => *r,
            _ if self.length > 0.0 => self.planned() as f64 / self.length,
            _ => 0.0,
        }
    }
}

/// When the k-th request of a ramp is due: where the requests sent so far, the integral of the rate,
/// reach k (rate(t) = from + (to - from) t / over, then `to`).
fn ramp_time(from: f64, to: f64, over: f64, k: f64) -> f64 {
    if k <= 0.0 {
        return 0.0;
    }
    let slope = (to - from) / over;
    let sent_by_end = from * over + slope * over * over / 2.0;
    if k >= sent_by_end {
        return over + (k - sent_by_end) / to;
    }
    if slope.abs() < 1e-12 {
        return k / from;
    }
    // slope/2 t^2 + from t - k = 0, the root that is positive (written to avoid cancellation).
    2.0 * k / (from + (from * from + 2.0 * slope * k).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn times(s: &Schedule) -> Vec<(f64, usize)> {
        (0..).map_while(|k| s.at(k)).collect()
    }

    #[test]
    fn parses_flags() {
        assert_eq!(Pace::parse_speed("2x").unwrap(), Pace::Speed(2.0));
        assert_eq!(Pace::parse_speed("0.5").unwrap(), Pace::Speed(0.5));
        assert!(Pace::parse_speed("0x").is_err());
        assert_eq!(Pace::parse_rate("500/s").unwrap(), Pace::Rate(500.0));
        assert_eq!(Pace::parse_rate("120/m").unwrap(), Pace::Rate(2.0));
        assert_eq!(Pace::parse_rate("75").unwrap(), Pace::Rate(75.0));
        assert!(Pace::parse_rate("fast").is_err());
        assert_eq!(
            Pace::parse_ramp("10/s..1000/s over 60s").unwrap(),
            Pace::Ramp { from: 10.0, to: 1000.0, over: Duration::from_secs(60) }
        );
        assert!(Pace::parse_ramp("10/s..1000/s").is_err());
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("3 parsecs").is_err());
    }

    #[test]
    fn speed_keeps_recorded_gaps_and_loops() {
        let recorded = vec![0.0, 0.1, 0.4];
        let once = Schedule::new(Pace::Speed(2.0), recorded.clone(), None);
        let t = times(&once);
        assert_eq!(t.len(), 3);
        assert!((t[1].0 - 0.05).abs() < 1e-9 && (t[2].0 - 0.2).abs() < 1e-9, "{t:?}");
        // One pass is 0.4s + a mean gap of 0.2s = 0.6s recorded, 0.3s at 2x; one second holds 3 passes + 1.
        let looped = Schedule::new(Pace::Speed(2.0), recorded, Some(Duration::from_secs(1)));
        let t = times(&looped);
        assert_eq!(t.iter().map(|x| x.1).collect::<Vec<_>>(), vec![0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1]);
        assert!((t[3].0 - 0.3).abs() < 1e-9, "{t:?}");
        assert!(t.iter().all(|x| x.0 < 1.0));
    }

    #[test]
    fn rate_is_evenly_spaced_round_robin() {
        let s = Schedule::new(Pace::Rate(200.0), vec![0.0, 5.0], Some(Duration::from_secs(3)));
        let t = times(&s);
        assert_eq!(t.len(), 600);
        assert!((t[1].0 - 0.005).abs() < 1e-12);
        assert_eq!(t[599].1, 1);
        assert_eq!(s.requested_rps(), 200.0);
        // Without a duration: each recorded request once.
        assert_eq!(times(&Schedule::new(Pace::Rate(10.0), vec![0.0, 1.0, 2.0], None)).len(), 3);
    }

    #[test]
    fn ramp_integrates_the_rate() {
        let pace = Pace::Ramp { from: 10.0, to: 100.0, over: Duration::from_secs(10) };
        let s = Schedule::new(pace, vec![0.0], None);
        // (10 + 100) / 2 * 10 = 550 requests.
        assert_eq!(s.planned(), 550);
        let t = times(&s);
        // N(t) = 10t + 4.5t^2: 14.5 requests in the first second, 95.5 in the last.
        let first = t.iter().filter(|x| x.0 < 1.0).count();
        let last = t.iter().filter(|x| x.0 >= 9.0).count();
        assert!((14..=15).contains(&first), "{first}");
        assert!((95..=96).contains(&last), "{last}");
        // Held at the final rate after the ramp.
        let held = Schedule::new(
            Pace::Ramp { from: 0.0, to: 50.0, over: Duration::from_secs(2) },
            vec![0.0],
            Some(Duration::from_secs(4)),
        );
        assert_eq!(held.planned(), 150);
    }
}
