//! Latency and error accounting for a load run. Connections collect samples locally and hand them over in
//! batches, so the hot path takes no shared lock per request; the aggregate keeps HDR histograms (total,
//! per endpoint, per second of the run) in microseconds.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::error::{Error, Result};

/// Largest latency kept exactly; longer ones are counted at this value.
const HIGHEST_US: u64 = 3_600_000_000;

/// Why a request did not count as a success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrorClass {
    /// The connection to the target could not be opened.
    Connect,
    /// No complete response within --timeout.
    Timeout,
    /// The connection broke, or the answer was not HTTP.
    Io,
    /// A 4xx status where the recording had another status.
    Status4xx,
    /// A 5xx status where the recording had another status.
    Status5xx,
    /// With --check: the response differs from the recording (beyond noise).
    Mismatch,
    /// Not sent: --max-inflight requests were already waiting or on the wire.
    Dropped,
}

impl ErrorClass {
    pub const ALL: [ErrorClass; 7] = [
        ErrorClass::Connect,
        ErrorClass::Timeout,
        ErrorClass::Io,
        ErrorClass::Status4xx,
        ErrorClass::Status5xx,
        ErrorClass::Mismatch,
        ErrorClass::Dropped,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ErrorClass::Connect => "connect",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Io => "io",
            ErrorClass::Status4xx => "4xx",
            ErrorClass::Status5xx => "5xx",
            ErrorClass::Mismatch => "mismatch",
            ErrorClass::Dropped => "dropped",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counts per error class.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorCounts([u64; 7]);

impl ErrorCounts {
    pub fn add(&mut self, class: ErrorClass, n: u64) {
        self.0[class.index()] += n;
    }

    pub fn get(&self, class: ErrorClass) -> u64 {
        self.0[class.index()]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    pub fn by_name(&self) -> BTreeMap<String, u64> {
        ErrorClass::ALL.iter().map(|c| (c.name().to_string(), self.get(*c))).collect()
    }
}

/// One finished request, as a connection saw it.
#[derive(Debug)]
pub struct Sample {
    pub endpoint: u32,
    /// From the intended send time to the end of the response; `None` when no response came.
    pub latency: Option<Duration>,
    pub done: Instant,
    pub error: Option<ErrorClass>,
    /// For mismatches: which test and what differed first.
    pub mismatch: Option<MismatchExample>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct MismatchExample {
    pub endpoint: String,
    pub test: String,
    pub difference: String,
}

pub fn new_histogram(significant_figures: u8) -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, HIGHEST_US, significant_figures)
        .map_err(|e| Error::internal(format!("cannot create a latency histogram: {e}")))
}

fn record(h: &mut Histogram<u64>, latency: Duration) {
    let us = (latency.as_micros() as u64).clamp(1, HIGHEST_US);
    h.saturating_record(us);
}

pub struct EndpointStats {
    pub name: String,
    pub latency: Histogram<u64>,
    pub responses: u64,
    pub errors: ErrorCounts,
}

/// One second of the run, by completion time.
struct Second {
    latency: Histogram<u64>,
    responses: u64,
    errors: u64,
}

/// A second of the run once it is over: what the timeline plots.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SecondSummary {
    /// Seconds since the start.
    pub t: u64,
    /// Requests the schedule asked for in this second (filled in at the end).
    pub asked: u64,
    pub responses: u64,
    pub errors: u64,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

/// Milliseconds of a histogram percentile; `None` when it is empty.
pub fn percentile_ms(h: &Histogram<u64>, percentile: f64) -> Option<f64> {
    (!h.is_empty()).then(|| h.value_at_percentile(percentile) as f64 / 1000.0)
}

pub fn max_ms(h: &Histogram<u64>) -> Option<f64> {
    (!h.is_empty()).then(|| h.max() as f64 / 1000.0)
}

pub fn mean_ms(h: &Histogram<u64>) -> Option<f64> {
    (!h.is_empty()).then(|| h.mean() / 1000.0)
}

/// Everything measured so far.
pub struct Aggregate {
    started: Instant,
    pub total: Histogram<u64>,
    pub endpoints: Vec<EndpointStats>,
    pub responses: u64,
    pub errors: ErrorCounts,
    open_seconds: BTreeMap<u64, Second>,
    pub timeline: Vec<SecondSummary>,
    pub mismatches: Vec<MismatchExample>,
    /// The last response, for the achieved rate when the server lags behind the schedule.
    pub last_done: Option<Instant>,
}

/// How many mismatch examples the report keeps.
const MISMATCH_EXAMPLES: usize = 10;
/// Seconds the live view looks back over.
pub const WINDOW_SECONDS: u64 = 5;

impl Aggregate {
    pub fn new(started: Instant, endpoint_names: &[String]) -> Result<Aggregate> {
        let endpoints = endpoint_names
            .iter()
            .map(|name| {
                Ok(EndpointStats {
                    name: name.clone(),
                    latency: new_histogram(3)?,
                    responses: 0,
                    errors: ErrorCounts::default(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Aggregate {
            started,
            total: new_histogram(3)?,
            endpoints,
            responses: 0,
            errors: ErrorCounts::default(),
            open_seconds: BTreeMap::new(),
            timeline: Vec::new(),
            mismatches: Vec::new(),
            last_done: None,
        })
    }

    pub fn add(&mut self, samples: &mut Vec<Sample>) {
        for s in samples.drain(..) {
            let second = s.done.saturating_duration_since(self.started).as_secs();
            let Some(endpoint) = self.endpoints.get_mut(s.endpoint as usize) else { continue };
            let slot = match self.open_seconds.entry(second) {
                std::collections::btree_map::Entry::Occupied(o) => Some(o.into_mut()),
                std::collections::btree_map::Entry::Vacant(v) => match new_histogram(2) {
                    Ok(latency) => Some(v.insert(Second { latency, responses: 0, errors: 0 })),
                    Err(_) => None,
                },
            };
            if let Some(latency) = s.latency {
                record(&mut self.total, latency);
                record(&mut endpoint.latency, latency);
                endpoint.responses += 1;
                self.responses += 1;
                if let Some(slot) = slot {
                    record(&mut slot.latency, latency);
                    slot.responses += 1;
                    if s.error.is_some() {
                        slot.errors += 1;
                    }
                }
            } else if let Some(slot) = slot {
                slot.errors += u64::from(s.error.is_some());
            }
            if let Some(class) = s.error {
                endpoint.errors.add(class, 1);
                self.errors.add(class, 1);
            }
            if let Some(mut m) = s.mismatch
                && self.mismatches.len() < MISMATCH_EXAMPLES
            {
                m.endpoint.clone_from(&endpoint.name);
                self.mismatches.push(m);
            }
            self.last_done = Some(self.last_done.map_or(s.done, |d| d.max(s.done)));
        }
    }

    /// p50 and p99 over the last few seconds, and the responses of the last full second.
    pub fn recent(&self, now: Instant) -> (Option<f64>, Option<f64>, u64) {
        let current = now.saturating_duration_since(self.started).as_secs();
        let mut merged = match new_histogram(2) {
            Ok(h) => h,
            Err(_) => return (None, None, 0),
        };
        for (_, s) in self.open_seconds.range(current.saturating_sub(WINDOW_SECONDS)..current) {
            let _ = merged.add(&s.latency);
        }
        let last = current.checked_sub(1).and_then(|s| self.open_seconds.get(&s)).map_or(0, |s| s.responses);
        (percentile_ms(&merged, 50.0), percentile_ms(&merged, 99.0), last)
    }

    /// Turns seconds that the live view no longer needs into timeline points (all of them with `all`).
    pub fn close_seconds(&mut self, now: Instant, all: bool) {
        let current = now.saturating_duration_since(self.started).as_secs();
        let keep_from = if all { u64::MAX } else { current.saturating_sub(WINDOW_SECONDS + 1) };
        let later = self.open_seconds.split_off(&keep_from);
        let done = std::mem::replace(&mut self.open_seconds, later);
        for (t, s) in done {
            self.timeline.push(SecondSummary {
                t,
                asked: 0,
                responses: s.responses,
                errors: s.errors,
                p50: percentile_ms(&s.latency, 50.0),
                p90: percentile_ms(&s.latency, 90.0),
                p99: percentile_ms(&s.latency, 99.0),
                max: max_ms(&s.latency),
            });
        }
    }
}

/// Samples of one connection, handed to the aggregate in batches.
pub struct Batch {
    samples: Vec<Sample>,
    since: Instant,
}

/// Batches are handed over at this size, or after this long, whichever comes first.
const BATCH_SIZE: usize = 256;
const BATCH_AGE: Duration = Duration::from_millis(100);

impl Batch {
    pub fn new() -> Batch {
        Batch { samples: Vec::with_capacity(BATCH_SIZE), since: Instant::now() }
    }

    pub fn push(&mut self, sample: Sample) {
        if self.samples.is_empty() {
            self.since = sample.done;
        }
        self.samples.push(sample);
    }

    /// Whether it is time to hand the batch over (`idle`: the connection has nothing else to do).
    pub fn due(&self, idle: bool) -> bool {
        !self.samples.is_empty() && (idle || self.samples.len() >= BATCH_SIZE || self.since.elapsed() >= BATCH_AGE)
    }

    pub fn flush_into(&mut self, aggregate: &std::sync::Mutex<Aggregate>) {
        if self.samples.is_empty() {
            return;
        }
        if let Ok(mut a) = aggregate.lock() {
            a.add(&mut self.samples);
        }
        self.samples.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregates_by_endpoint_and_second() {
        let start = Instant::now();
        let mut a = Aggregate::new(start, &["GET /a".into(), "GET /b".into()]).unwrap();
        let mut samples = vec![
            Sample {
                endpoint: 0,
                latency: Some(Duration::from_millis(2)),
                done: start + Duration::from_millis(10),
                error: None,
                mismatch: None,
            },
            Sample {
                endpoint: 1,
                latency: Some(Duration::from_millis(300)),
                done: start + Duration::from_millis(1300),
                error: Some(ErrorClass::Status5xx),
                mismatch: None,
            },
            Sample {
                endpoint: 1,
                latency: None,
                done: start + Duration::from_millis(1400),
                error: Some(ErrorClass::Timeout),
                mismatch: None,
            },
        ];
        a.add(&mut samples);
        assert_eq!(a.responses, 2);
        assert_eq!(a.errors.total(), 2);
        assert_eq!(a.endpoints[1].errors.get(ErrorClass::Timeout), 1);
        let p50 = percentile_ms(&a.endpoints[1].latency, 50.0).unwrap();
        assert!((p50 - 300.0).abs() < 1.0, "{p50}");
        a.close_seconds(start, true);
        assert_eq!(a.timeline.len(), 2);
        assert_eq!((a.timeline[1].t, a.timeline[1].responses, a.timeline[1].errors), (1, 1, 2));
    }
}
